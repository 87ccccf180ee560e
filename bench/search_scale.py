"""How the search itself scales: milliseconds per suggestion and per completed trial as a study grows (issue 14,
bench 4). No training: the objective is a cheap synthetic function of the sampled knobs.

    python bench/search_scale.py [--trials 1000] [--checkpoints 100 1000] [--storages sqlite journal memory] \
        [--out bench/results/search_scale.json]
    python bench/search_scale.py --quick     # smoke run (CI): 50 trials, all three storages
    python bench/search_scale.py --storages sqlite --samplers autotune optuna-tpe   # ours vs Optuna's own TPE

AutoTune's own pieces, without Ray: the job is `pipelines/demo.yaml` loaded with `autotune.config.loader.load_job`;
the sampler is `autotune.search.tuner.make_sampler(job)` (TPE, multivariate, group, constant liar, seeded); the
space is the job's `CompiledSpace.define_by_run` (method first, then that method's knobs); the first trials are
`startup_points(job)`, enqueued as the searcher does. Each trial: `study.ask()` + `define_by_run(trial)` (the
suggestion), then `study.tell(trial, value)` (completion). Storages: SQLite in a temporary folder (`sqlite:///...`,
AutoTune's default: OUTPUT_DIR/optuna.db), Optuna's JournalStorage on a file, and in-memory.
At each checkpoint N the table gives the median ms per suggestion and per completed trial (ask + space + tell) over
trials 0.9N..N (the cost at that study size), and the mean over all N trials. Bar (issue 14): < 100 ms per completed
trial at 1,000 trials with the default storage (SQLite).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.quality import write_bench_report  # noqa: E402  (stdlib-only imports: cheap)

STORAGES = ("sqlite", "journal", "memory")
BAR_MS = 100.0
BAR_AT = 1000


def objective(method: str, knobs: dict) -> float:
    """Deterministic, smooth-ish stand-in for validation accuracy: best near lr 1e-3 / 1e-4 for full."""
    lr = knobs.get("learning_rate", 1e-3)
    target = 1e-4 if method == "full" else 1e-3
    score = 0.9 - 0.05 * abs(math.log10(lr) - math.log10(target))
    score += {"head": -0.05, "full": 0.02, "lora": 0.01, "sparse": 0.0}.get(method, 0.0)
    for k, v in sorted(knobs.items()):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "learning_rate":
            score += 0.001 * math.sin(float(v) * 7.0 + len(k))
    return score


def make_storage(kind: str, folder: Path):
    import optuna

    if kind == "sqlite":
        return f"sqlite:///{folder / 'optuna.db'}"
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    return optuna.storages.InMemoryStorage()


def sampler_for(job, which: str):
    """AutoTune's sampler (make_sampler), or Optuna's own TPESampler with the same settings (side by side)."""
    import optuna

    from autotune.search.tuner import make_sampler

    sampler = make_sampler(job)
    if which == "optuna-tpe" and isinstance(sampler, optuna.samplers.TPESampler):
        cfg = job.config.sampler
        return optuna.samplers.TPESampler(seed=job.config.seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=cfg.n_startup_trials)
    return sampler


def run_study(job, kind: str, n_trials: int, folder: Path, which: str = "autotune") -> dict:
    import optuna

    from autotune.search.tuner import startup_points

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    study = optuna.create_study(study_name=f"bench-{kind}-{which}", storage=make_storage(kind, folder),
                                sampler=sampler_for(job, which), direction="maximize")
    for point in startup_points(job):
        study.enqueue_trial(point)
    create_s = time.perf_counter() - t0
    space = job.space
    suggest_ms, trial_ms, methods = [], [], {}
    for _ in range(n_trials):
        s = time.perf_counter()
        trial = study.ask()
        config = space.define_by_run(trial)
        flat = dict(trial.params, **(config or {}))
        s2 = time.perf_counter()
        method, knobs = space.decode(flat)
        value = objective(method, knobs)
        s3 = time.perf_counter()
        study.tell(trial, value)
        e = time.perf_counter()
        suggest_ms.append((s2 - s) * 1e3)
        trial_ms.append(((s2 - s) + (e - s3)) * 1e3)  # ask + space + tell (the objective itself not counted)
        methods[method] = methods.get(method, 0) + 1
    return {"storage": kind, "sampler": which, "trials": n_trials, "create_s": create_s, "suggest_ms": suggest_ms, "trial_ms": trial_ms,
            "methods": methods, "best_value": study.best_value}


def window(values: list[float], n: int) -> list[float]:
    return values[max(0, int(0.9 * n)) : n] or values[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", type=Path, default=ROOT / "pipelines" / "demo.yaml")
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--storages", nargs="+", choices=STORAGES, default=list(STORAGES))
    ap.add_argument("--samplers", nargs="+", choices=["autotune", "optuna-tpe"], default=["autotune"],
                    help="optuna-tpe: also Optuna's own TPESampler with the same settings, side by side")
    ap.add_argument("--quick", action="store_true", help="smoke run: 50 trials, all three storages")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "search_scale.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.trials, args.checkpoints = 50, [50]
    checkpoints = sorted(c for c in set(args.checkpoints) if c <= args.trials) or [args.trials]

    from rich.console import Console
    from rich.table import Table

    from autotune.config.loader import load_job

    job = load_job(args.job)
    load_start = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as t:
        for kind in args.storages:
            for which in args.samplers:
                folder = Path(t) / f"{kind}-{which}"
                folder.mkdir()
                s = time.perf_counter()
                run = run_study(job, kind, args.trials, folder, which)
                run["wall_s"] = time.perf_counter() - s
                runs.append(run)
                print(f"{kind} ({which}): {args.trials} trials in {run['wall_s']:.1f} s", flush=True)

    rows = []
    for run in runs:
        for n in checkpoints:
            sug, tri = window(run["suggest_ms"], n), window(run["trial_ms"], n)
            rows.append({"storage": run["storage"], "sampler": run["sampler"], "at_trials": n,
                         "suggest_ms_median": statistics.median(sug), "suggest_ms_max": max(sug),
                         "trial_ms_median": statistics.median(tri), "trial_ms_min": min(tri), "trial_ms_max": max(tri),
                         "trial_ms_mean_all": statistics.fmean(run["trial_ms"][:n])})
    bar = None
    at = BAR_AT if BAR_AT in checkpoints else None
    sq = [r for r in rows if r["storage"] == "sqlite" and r["sampler"] == "autotune" and r["at_trials"] == at]
    if sq:
        bar = {"storage": "sqlite", "at_trials": at, "limit_ms": BAR_MS, "trial_ms_median": sq[0]["trial_ms_median"],
               "result": "PASS" if sq[0]["trial_ms_median"] < BAR_MS else "FAIL"}

    table = Table(title=f"search cost per trial, {job.config.sampler.kind.upper()} (make_sampler) on the demo space "
                        f"({', '.join(job.space.methods)}), synthetic objective")
    for col in ("storage", "sampler", "at trials", "ms/suggestion (median)", "ms/trial (median \\[min, max])", "ms/trial mean 0..N",
                f"bar < {BAR_MS:.0f} ms @ {BAR_AT}"):
        table.add_column(col, justify="left" if col == "storage" else "right")
    for r in rows:
        mark = "n/a"
        if bar and r["storage"] == "sqlite" and r["sampler"] == "autotune" and r["at_trials"] == BAR_AT:
            mark = bar["result"]
        table.add_row(r["storage"] + (" (default)" if r["storage"] == "sqlite" else ""), r["sampler"], str(r["at_trials"]),
                      f"{r['suggest_ms_median']:.1f}",
                      f"{r['trial_ms_median']:.1f} [{r['trial_ms_min']:.1f}, {r['trial_ms_max']:.1f}]",
                      f"{r['trial_ms_mean_all']:.1f}", mark)
    Console(width=160).print(table)
    write_bench_report(args, load_start, "ms per trial = ask + define_by_run + tell (objective excluded); at N: "
                       "median over trials 0.9N..N; raw per-trial samples in runs[].suggest_ms / trial_ms",
                       sampler=job.config.sampler.model_dump(), methods=list(job.space.methods), bar=bar,
                       summary=rows, runs=runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
