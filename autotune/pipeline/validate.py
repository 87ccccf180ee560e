"""Validate stage: the best trial's model on the untouched test split, with bootstrap intervals,
against the majority-class and head-only baselines and the registered champion; then the gates."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from autotune.pipeline.context import JobContext


class Gate(BaseModel):
    name: str
    passed: bool
    detail: str


class ValidateResult(BaseModel):
    n_test: int
    test_accuracy: float
    test_accuracy_ci: tuple[float, float]
    test_macro_f1: float
    test_macro_f1_ci: tuple[float, float]
    test_loss: float
    majority_accuracy: float
    head_accuracy: float | None = None
    head_accuracy_ci: tuple[float, float] | None = None
    champion: dict[str, Any] | None = None
    forgetting_cosine_drift: float | None = None
    gates: list[Gate]
    passed: bool
    predictions_path: str


def bootstrap_ci(correct, n_samples: int, seed: int, stat=None) -> tuple[float, float]:
    """95% percentile interval of the mean of `correct` (or of stat(indices)) over resamples."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(correct)
    idx = rng.integers(0, n, size=(n_samples, n))
    if stat is None:
        values = np.asarray(correct, dtype=float)[idx].mean(axis=1)
    else:
        values = np.array([stat(row) for row in idx])
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap_macro_f1_ci(labels, preds, num_labels: int, n_samples: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of macro-F1 over resamples (the same resamples as bootstrap_ci), vectorised:
    per resample, F1 of each class present in its labels or predictions, averaged (as loop.macro_f1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(labels)
    idx = rng.integers(0, n, size=(n_samples, n))
    y, p = np.asarray(labels)[idx], np.asarray(preds)[idx]
    total = np.zeros(n_samples)
    present = np.zeros(n_samples)
    for c in range(num_labels):
        yc, pc = y == c, p == c
        tp = (yc & pc).sum(1)
        denom = yc.sum(1) + pc.sum(1)  # 2tp + fp + fn
        here = denom > 0
        total += np.where(here, 2 * tp / np.maximum(denom, 1), 0.0)
        present += here
    values = total / np.maximum(present, 1)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def load_best(ctx: JobContext, checkpoint: str, method: str, knobs: dict):
    """The trained model of a checkpoint: base model + method + trained tensors. The knobs are the ones the
    trial recorded in its checkpoint (e.g. the concrete `layers` an `importance_top_k` stood for), else `knobs`."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from autotune.search.trainable import RECORD_FILE, STATE_FILE
    from autotune.training.model import rebuild_trained

    pre = ctx.results["preprocess"]
    state = load_file(f"{checkpoint}/{STATE_FILE}")
    record = Path(checkpoint) / RECORD_FILE
    if record.is_file():
        rec = json.loads(record.read_text())
        if rec.get("method") == method and isinstance(rec.get("knobs"), dict):
            knobs = rec["knobs"]
    return rebuild_trained(ctx.job.config.model, pre.labels, method, knobs, state)


def run(ctx: JobContext) -> ValidateResult:
    import numpy as np

    from autotune.training.loop import evaluate
    from autotune.training.model import load_tokens

    cfg = ctx.job.config
    vcfg = cfg.validate_stage
    tune_res = ctx.results["tune"]
    pre = ctx.results["preprocess"]
    test = load_tokens(pre.tokens_path)["test"]
    labels = test["labels"]
    n = len(labels)

    prepared = load_best(ctx, tune_res.best_checkpoint, tune_res.best_method, tune_res.best_knobs)
    model = prepared.export()
    ev = evaluate(model, test, cfg.training.eval_batch_size)
    preds = np.array(ev.predictions)
    correct = preds == labels
    k = len(pre.labels)
    acc_ci = bootstrap_ci(correct, vcfg.bootstrap_samples, cfg.seed)
    f1_ci = bootstrap_macro_f1_ci(labels, preds, k, vcfg.bootstrap_samples, cfg.seed)
    majority_label = pre.labels.index(pre.stats["majority_label"])
    majority = float((labels == majority_label).mean())

    ctx.best_model = (tune_res.best_checkpoint, model)  # deploy ships this one (same process: no rebuild)
    head_acc = head_ci = None
    if cfg.diagnostics and tune_res.head_checkpoint:
        if tune_res.head_checkpoint == tune_res.best_checkpoint:  # the best model is the head-only one
            head_ev = ev
        else:
            head_model = load_best(ctx, tune_res.head_checkpoint, "head", tune_res.head_knobs).export()
            head_ev = evaluate(head_model, test, cfg.training.eval_batch_size)
        head_correct = np.array(head_ev.predictions) == labels
        head_acc = float(head_correct.mean())
        head_ci = bootstrap_ci(head_correct, vcfg.bootstrap_samples, cfg.seed)

    champion = _champion(ctx, correct, test)
    drift = _forgetting(ctx, model) if cfg.diagnostics else None

    gates: list[Gate] = []
    if vcfg.min_test_accuracy is not None:
        ok = ev.accuracy >= vcfg.min_test_accuracy
        gates.append(Gate(name="min_test_accuracy", passed=ok,
                          detail=f"test accuracy {ev.accuracy:.4f} must be >= {vcfg.min_test_accuracy}"))
    if vcfg.min_improvement is not None and champion is not None:
        lo, hi = champion["diff_ci"]
        sure = vcfg.min_improvement_confidence
        ok = champion["diff"] >= vcfg.min_improvement and (sure is None or lo > 0)
        need = f"must be >= {vcfg.min_improvement}" + (f" with its {sure:.0%} interval above 0" if sure else "")
        gates.append(Gate(name="min_improvement", passed=ok,
                          detail=f"improvement over champion v{champion['version']} {champion['diff']:+.4f} "
                                 f"({champion['ci_level']:.0%} CI {lo:+.4f}..{hi:+.4f}, paired bootstrap) {need}"))
    preds_path = ctx.out / "predictions_test.json"
    preds_path.write_text(json.dumps({"predictions": ev.predictions, "labels": labels.tolist()}))
    result = ValidateResult(
        n_test=n, test_accuracy=ev.accuracy, test_accuracy_ci=acc_ci, test_macro_f1=ev.macro_f1, test_macro_f1_ci=f1_ci,
        test_loss=ev.loss, majority_accuracy=majority, head_accuracy=head_acc, head_accuracy_ci=head_ci,
        champion=champion, forgetting_cosine_drift=drift, gates=gates, passed=all(g.passed for g in gates),
        predictions_path=str(preds_path),
    )
    _log(ctx, result)
    return result


def _champion(ctx: JobContext, correct, test) -> dict[str, Any] | None:
    """If the registered model has a `champion` version, evaluate it on the same test split."""
    import numpy as np

    from autotune.artifact import load_artifact_model
    from autotune.training.loop import evaluate

    name = ctx.job.config.tracking.registered_model or ctx.job.config.name
    from mlflow.exceptions import MlflowException

    try:
        version = ctx.tracker.version_by_alias(name, "champion")
    except MlflowException as exc:
        from autotune.errors import StageError

        raise StageError(f"cannot read the champion of {name!r} from the registry: {exc}") from None
    if version is None:
        return None  # no registered model, or no champion alias yet
    local = ctx.tracker.download_version(version, str(ctx.out / "champion"))
    model = load_artifact_model(local)
    # only its predictions count (our label indices may lie outside its head: a label it never saw)
    ev = evaluate(model, {**test, "labels": np.zeros_like(test["labels"])}, ctx.job.config.training.eval_batch_size)
    # compare by label name: the champion was trained on other data, its label indices may differ from ours
    names = ctx.results["preprocess"].labels
    theirs = {int(k): v for k, v in (model.config.id2label or {}).items()}
    champ_names = [theirs.get(int(p), f"#{p}") for p in ev.predictions]
    champ_correct = np.array(champ_names) == np.array([names[int(y)] for y in test["labels"]])
    diff = float(correct.mean() - champ_correct.mean())
    vcfg = ctx.job.config.validate_stage
    rng = np.random.default_rng(ctx.job.config.seed)
    idx = rng.integers(0, len(correct), size=(vcfg.bootstrap_samples, len(correct)))
    diffs = correct[idx].mean(1) - champ_correct[idx].mean(1)  # paired: same resampled examples
    level = vcfg.min_improvement_confidence or 0.95
    lo, hi = np.percentile(diffs, [50 * (1 - level), 100 - 50 * (1 - level)])
    return {"version": str(version.version), "accuracy": float(champ_correct.mean()), "diff": diff,
            "diff_ci": (float(lo), float(hi)), "ci_level": level, "n": int(len(correct))}


GENERAL_TEXT_SENTENCES = 128


def general_text() -> list[str]:
    """Held-out general English the task never saw: sentences from Python's own documentation topics
    (pydoc_data ships with CPython, so this needs no download)."""
    import re

    from pydoc_data.topics import topics

    sentences = []
    for key in sorted(topics):
        for s in re.split(r"(?<=[.!?])\s+", " ".join(topics[key].split())):
            if 8 <= len(s.split()) <= 40 and s[0].isupper():
                sentences.append(s)
    step = max(1, len(sentences) // GENERAL_TEXT_SENTENCES)
    return sentences[::step][:GENERAL_TEXT_SENTENCES]


def _forgetting(ctx: JobContext, tuned) -> float | None:
    """1 - mean cosine similarity between base and tuned mean-pooled sentence embeddings on general text:
    0 = the encoder did not move; larger = more drift from what the pretrained model knew."""
    import torch

    from autotune.training.model import build_model, load_tokenizer

    cfg = ctx.job.config
    tok = load_tokenizer(cfg.model)
    base = build_model(cfg.model, ctx.results["preprocess"].labels)
    enc = tok(general_text(), truncation=True, max_length=cfg.model.max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        def embed(m):
            m.eval()
            h = m.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            return (h * mask).sum(1) / mask.sum(1)
        cos = torch.nn.functional.cosine_similarity(embed(base), embed(tuned), dim=-1)
    return float(1 - cos.mean())


def _log(ctx: JobContext, r: ValidateResult) -> None:
    m = {"test.accuracy": r.test_accuracy, "test.accuracy_ci_low": r.test_accuracy_ci[0],
         "test.accuracy_ci_high": r.test_accuracy_ci[1], "test.macro_f1": r.test_macro_f1,
         "test.macro_f1_ci_low": r.test_macro_f1_ci[0], "test.macro_f1_ci_high": r.test_macro_f1_ci[1],
         "test.loss": r.test_loss, "baseline.majority_accuracy": r.majority_accuracy}
    if r.head_accuracy is not None:
        m["baseline.head_accuracy"] = r.head_accuracy
    if r.champion:
        m["champion.accuracy"] = r.champion["accuracy"]
        m["champion.diff"] = r.champion["diff"]
    if r.forgetting_cosine_drift is not None:
        m["forgetting.cosine_drift"] = r.forgetting_cosine_drift
    ctx.tracker.log_metrics(ctx.parent_run_id, m)
    ctx.tracker.set_tags(ctx.parent_run_id, {
        "autotune.gates": "passed" if r.passed else "failed",
        **({"autotune.gate_failure": "; ".join(g.detail for g in r.gates if not g.passed)} if not r.passed else {}),
    })
    ctx.tracker.log_dict(ctx.parent_run_id, r.model_dump(mode="json"), "validate/result.json")
