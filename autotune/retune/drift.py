"""Data drift between the rows the champion was trained on and this cycle's rows: label shares (total
variation, chi-square), text length (KS), vocabulary (out-of-vocabulary rate) and, given an embed function,
sentence embeddings (unbiased squared MMD with a permutation test). A retuning cycle logs `metrics()`,
shows `summary()` and widens its search when `exceeded(thresholds)` is non-empty."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

TOKEN = re.compile(r"[a-z0-9']+")
SIGNIFICANCE = 0.05  # an MMD only counts as drift when its permutation p-value is below this


@dataclass
class DriftThresholds:
    """Effect sizes above which a cycle widens its search."""

    label_tv: float = 0.15  # total-variation distance between label distributions
    length_ks: float = 0.25  # two-sample KS statistic on words per text
    oov_rate: float = 0.25  # share of current tokens absent from the reference vocabulary
    embedding_mmd: float = 0.05  # squared MMD of mean-pooled sentence embeddings (only when p < 0.05)


@dataclass
class DriftReport:
    n_reference: int
    n_current: int
    label_tv: float
    label_chi2: float  # chi-square statistic on the 2 x labels count table; 0 when only one label
    label_chi2_p: float  # its p-value; 1.0 when undefined
    new_labels: list[str]  # present in current, absent in reference
    label_share_reference: dict[str, float]
    label_share_current: dict[str, float]
    length_mean_reference: float
    length_mean_current: float
    length_ks: float
    oov_rate: float
    embedding_mmd: float | None = None  # None when no embed function was given; unbiased, so can dip below 0
    embedding_p: float | None = None

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics (`drift.*`); absent embedding figures are left out."""
        keys = ("label_tv", "label_chi2_p", "length_ks", "oov_rate", "embedding_mmd", "embedding_p",
                "length_mean_reference", "length_mean_current", "n_reference", "n_current")
        return {f"drift.{k}": float(v) for k in keys if (v := getattr(self, k)) is not None}

    def exceeded(self, t: DriftThresholds) -> list[str]:
        """Why this cycle should widen its search; [] when nothing moved past `t`. New labels always count."""
        reasons = []
        if self.new_labels:
            reasons.append(f"new labels in current data: {', '.join(self.new_labels)}")
        if self.label_tv > t.label_tv:
            reasons.append(f"label distribution moved: total variation {self.label_tv:.2f} > {t.label_tv:g}")
        if self.length_ks > t.length_ks:
            reasons.append(f"text length moved: KS {self.length_ks:.2f} > {t.length_ks:g} "
                           f"(mean {self.length_mean_reference:.1f} -> {self.length_mean_current:.1f} words)")
        if self.oov_rate > t.oov_rate:
            reasons.append(f"vocabulary moved: {self.oov_rate:.1%} of current tokens unseen in reference "
                           f"> {t.oov_rate:.0%}")
        if (self.embedding_mmd is not None and self.embedding_p is not None
                and self.embedding_mmd > t.embedding_mmd and self.embedding_p < SIGNIFICANCE):
            reasons.append(f"embeddings moved: MMD {self.embedding_mmd:.3f} > {t.embedding_mmd:g} "
                           f"(permutation p {_p(self.embedding_p)})")
        return reasons

    def summary(self) -> str:
        """One line for logs and run descriptions."""
        parts = [f"labels TV {self.label_tv:.2f} (chi2 p {_p(self.label_chi2_p)})",
                 f"length {self.length_mean_reference:.1f}->{self.length_mean_current:.1f} words "
                 f"(KS {self.length_ks:.2f})",
                 f"OOV {self.oov_rate:.1%}"]
        if self.embedding_mmd is not None:
            parts.append(f"embeddings MMD {self.embedding_mmd:.3f} (p {_p(self.embedding_p)})")
        if self.new_labels:
            parts.append(f"new labels {', '.join(self.new_labels)}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _p(p: float | None) -> str:
    return "n/a" if p is None else ("<0.01" if p < 0.01 else f"{p:.2f}")


def _words(text: str) -> int:
    return len(text.split())


def _tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def drift_report(reference: Sequence[tuple[str, str]], current: Sequence[tuple[str, str]],
                 embed: Callable[[list[str]], Any] | None = None, sample: int = 256, permutations: int = 200,
                 seed: int = 0) -> DriftReport:
    """Compare `current` (text, label) rows with `reference` rows.

    embed: optional callable list[str] -> array (n, d), called once per side on a seeded random sample of at
    most `sample` texts. MMD: unbiased squared MMD with an RBF kernel, bandwidth by the median heuristic
    (sigma = median pairwise distance on the pooled sample); p-value by a permutation test with
    `permutations` seeded shuffles, (1 + #{shuffled >= observed}) / (1 + permutations). When either sample
    has fewer than two texts the MMD is undefined and left as None. Deterministic given `seed`."""
    import numpy as np
    from scipy import stats

    if not reference:
        raise ValueError("drift_report: the reference data is empty (no (text, label) rows)")
    if not current:
        raise ValueError("drift_report: the current data is empty (no (text, label) rows)")
    if sample < 2:
        raise ValueError(f"drift_report: sample must be >= 2 (got {sample})")
    if permutations < 0:
        raise ValueError(f"drift_report: permutations must be >= 0 (got {permutations})")
    ref_text, ref_label = [t for t, _ in reference], [str(l) for _, l in reference]
    cur_text, cur_label = [t for t, _ in current], [str(l) for _, l in current]

    ref_counts, cur_counts = Counter(ref_label), Counter(cur_label)
    labels = sorted(set(ref_counts) | set(cur_counts))
    share_ref = {l: ref_counts[l] / len(ref_label) for l in labels}
    share_cur = {l: cur_counts[l] / len(cur_label) for l in labels}
    tv = 0.5 * sum(abs(share_ref[l] - share_cur[l]) for l in labels)
    chi2, chi2_p = 0.0, 1.0
    if len(labels) > 1:
        table = np.array([[ref_counts[l] for l in labels], [cur_counts[l] for l in labels]])
        res = stats.chi2_contingency(table)
        chi2, chi2_p = float(res.statistic), float(res.pvalue)

    ref_len = np.array([_words(t) for t in ref_text])
    cur_len = np.array([_words(t) for t in cur_text])
    ks = float(stats.ks_2samp(ref_len, cur_len).statistic)

    vocab = {tok for t in ref_text for tok in _tokens(t)}
    cur_tokens = [tok for t in cur_text for tok in _tokens(t)]
    oov = sum(tok not in vocab for tok in cur_tokens) / len(cur_tokens) if cur_tokens else 0.0

    mmd = mmd_p = None
    if embed is not None:
        rng = np.random.default_rng(seed)
        x = _embed_sample(embed, ref_text, sample, rng, "reference")
        y = _embed_sample(embed, cur_text, sample, rng, "current")
        if len(x) >= 2 and len(y) >= 2:
            if x.shape[1] != y.shape[1]:
                raise ValueError(f"drift_report: embed returned {x.shape[1]} dimensions for the reference "
                                 f"texts but {y.shape[1]} for the current ones")
            mmd, mmd_p = _mmd_permutation_test(x, y, permutations, rng)

    return DriftReport(
        n_reference=len(reference), n_current=len(current), label_tv=float(tv), label_chi2=chi2,
        label_chi2_p=chi2_p, new_labels=sorted(set(cur_counts) - set(ref_counts)),
        label_share_reference=share_ref, label_share_current=share_cur,
        length_mean_reference=float(ref_len.mean()), length_mean_current=float(cur_len.mean()),
        length_ks=ks, oov_rate=float(oov), embedding_mmd=mmd, embedding_p=mmd_p,
    )


def _embed_sample(embed, texts: list[str], sample: int, rng, side: str):
    import numpy as np

    idx = np.sort(rng.choice(len(texts), size=min(sample, len(texts)), replace=False))
    chosen = [texts[i] for i in idx]
    out = np.asarray(embed(chosen), dtype=np.float64)
    if out.ndim != 2 or out.shape[0] != len(chosen):
        raise ValueError(f"drift_report: embed must return an array of shape (n_texts, dim); got {out.shape} "
                         f"for {len(chosen)} {side} texts")
    if not np.isfinite(out).all():
        raise ValueError(f"drift_report: embed returned non-finite values for the {side} texts")
    return out


def _mmd_permutation_test(x, y, permutations: int, rng) -> tuple[float, float]:
    """Unbiased squared MMD (RBF kernel, median-heuristic bandwidth) and its permutation p-value. The kernel
    matrix is computed once; each shuffle is a membership vector, so all statistics are two matrix products."""
    import numpy as np

    z = np.concatenate([x, y])
    n, m, total = len(x), len(y), len(x) + len(y)
    sq = (z * z).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    med = float(np.median(d2[np.triu_indices(total, k=1)]))  # median squared distance = sigma^2
    k = np.exp(-d2 / (2 * (med if med > 0 else 1.0)))
    np.fill_diagonal(k, 0.0)  # U-statistic: no i == j terms (and a, b are disjoint, so k_xy is unaffected)

    a = np.zeros((permutations + 1, total))
    a[0, :n] = 1.0  # row 0: the observed split
    for row in range(1, permutations + 1):
        a[row, rng.permutation(total)[:n]] = 1.0
    b = 1.0 - a
    ka, kb = a @ k, b @ k
    stat = ((ka * a).sum(1) / (n * (n - 1)) + (kb * b).sum(1) / (m * (m - 1)) - 2 * (ka * b).sum(1) / (n * m))
    observed = float(stat[0])
    p = (1 + int((stat[1:] >= observed - 1e-12).sum())) / (1 + permutations)
    return observed, float(p)


def embedder(model_cfg, batch_size: int = 64) -> Callable[[list[str]], Any]:
    """embed(texts) -> float32 array (n, hidden): mean-pooled last hidden states of the base (pretrained, not
    fine-tuned) encoder, truncated at model_cfg.max_length, in eval mode under no_grad; built as the validate
    stage builds its forgetting baseline (so num_hidden_layers truncation applies). Runs on the CPU."""
    import numpy as np
    import torch

    from autotune.training.model import build_model, load_tokenizer

    if batch_size < 1:
        raise ValueError(f"embedder: batch_size must be >= 1 (got {batch_size})")
    tok = load_tokenizer(model_cfg)
    encoder = build_model(model_cfg, ["0", "1"]).encoder  # the head is discarded; labels are placeholders
    encoder.eval()

    def embed(texts: list[str]):
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                enc = tok(list(texts[start:start + batch_size]), truncation=True, max_length=model_cfg.max_length,
                          padding=True, return_tensors="pt")
                h = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                out.append(((h * mask).sum(1) / mask.sum(1).clamp(min=1)).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, encoder.config.hidden_size), dtype=np.float32)

    return embed


def drift_plot(report: DriftReport, path) -> Path:
    """A small PNG: label shares reference vs current (left), mean words per text (right), titled with the
    summary. Creates parent directories; returns the path."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = sorted(set(report.label_share_reference) | set(report.label_share_current))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3), gridspec_kw={"width_ratios": [3, 1]})
    try:
        xs = np.arange(len(labels))
        ax1.bar(xs - 0.2, [report.label_share_reference.get(l, 0.0) for l in labels], 0.4,
                label=f"reference (n={report.n_reference})", color="tab:blue")
        ax1.bar(xs + 0.2, [report.label_share_current.get(l, 0.0) for l in labels], 0.4,
                label=f"current (n={report.n_current})", color="tab:orange")
        ax1.set_xticks(xs, labels, rotation=30 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center",
                       fontsize=7)
        top = max([*report.label_share_reference.values(), *report.label_share_current.values(), 0.01])
        ax1.set_ylim(0, top * 1.3)  # headroom for the legend
        ax1.set_ylabel("label share")
        ax1.legend(fontsize=7, loc="upper right")
        means = [report.length_mean_reference, report.length_mean_current]
        bars = ax2.bar(["reference", "current"], means, color=["tab:blue", "tab:orange"])
        ax2.bar_label(bars, fmt="%.1f", fontsize=7)
        ax2.set_ylim(0, max(max(means), 1.0) * 1.2)
        ax2.set_ylabel("mean words per text")
        ax2.tick_params(labelsize=7)
        fig.suptitle(textwrap.shorten(report.summary(), width=110, placeholder=" ..."), fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
