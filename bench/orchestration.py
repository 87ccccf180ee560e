"""Orchestration overhead (issue 14, bench 1): the same fixed-work trials through AutoTune, bare Ray Tune +
OptunaSearch, and a bare Optuna loop, at concurrency 1 and 2, side by side in one run.

    python bench/orchestration.py [--trial-s 20] [--trials 4] [--concurrency 1 2] [--repeats 1] [--quick]

A trial is a CPU-bound loop of known duration, no sleeping: `steps` x `n` products of two 192 x 192 float32
matrices on one torch thread (torch releases the GIL inside them, so the bare Optuna loop's threads run in
parallel too), with a report after each half. `n` is calibrated in this process so that a trial's work alone takes
`--trial-s` seconds: that is the ideal per trial, and trials x trial-s / concurrency the ideal wall time.
- AutoTune runs it as a real job (`autotune submit`: preprocess + tune, FIFO) through a method plugin installed
  the way a third party would (entry point `autotune.methods`): head-only training of the tiny config-built model
  on 400 synthetic rows, 20 steps of batch 16, 2 rungs, with the fixed work added to every training step (the
  tiny model's own compute is a few ms per step and counts as AutoTune's overhead).
- Bare Ray Tune: a function trainable doing the same steps and reports, OptunaSearch (TPE) over a learning rate,
  FIFO, `max_concurrent_trials`, one CPU per trial.
- Bare Optuna: `study.optimize(n_trials, n_jobs=concurrency)` on an in-memory study, the same objective.
Each runs as its own process (imports and start-up included). Measured: wall time from launch to exit, the
search part (first trial start to last trial end), median seconds per trial as the trial itself measures them,
and the time from launch to the first report the driver receives. Bars: AutoTune's wall time within 5% of bare
Ray Tune's and its search within 15% of ideal for 20-s trials. Prints a table; writes bench/results/orchestration.json.
`--quick`: 1-s trials, 2 trials, concurrency 1 (a smoke run for CI).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STEPS, RUNGS, SIZE = 20, 2, 192
WORK_ENV = "AUTOTUNE_BENCH_WORK_N"  # matmuls per training step, for the plugin inside AutoTune's trials


def work(n: int) -> None:
    """The fixed work: n products of two SIZE x SIZE matrices (one thread; the GIL is released inside)."""
    import torch

    a = torch.full((SIZE, SIZE), 0.5)
    for _ in range(n):
        torch.mm(a, a)


def calibrate(trial_s: float) -> int:
    """Matmuls per step so that STEPS steps take trial_s on one thread here (median of 5 timings)."""
    import torch

    torch.set_num_threads(1)
    work(200)  # warm
    rates = []
    for _ in range(5):
        t = time.perf_counter()
        work(400)
        rates.append(400 / (time.perf_counter() - t))
    return max(1, round(statistics.median(rates) * trial_s / STEPS))


# --- the AutoTune side: a method plugin ----------------------------------------------------------------------
def _plugin_class():
    from autotune.methods import REGISTRY
    from autotune.methods.base import Method

    head = REGISTRY["head"]

    class FixedWork(Method):
        """Head-only training plus the fixed work in every training step (a forward pre-hook in train mode)."""

        name = "fixed_work"
        summary = "head-only training plus a fixed CPU-bound workload per training step (bench/orchestration.py)"
        cost_rank = 1
        Params = head.Params

        def apply(self, model, params, ctx):
            prepared = head.apply(model, params, ctx)
            n = int(os.environ[WORK_ENV])

            def fixed(module, args, kwargs):
                if module.training:
                    work(n)

            prepared.model.register_forward_pre_hook(fixed, with_kwargs=True)
            return prepared

    return FixedWork


def __getattr__(name: str):  # the entry point names bench.orchestration:FixedWork; built on first use
    if name == "FixedWork":
        return _plugin_class()
    raise AttributeError(name)


def install_plugin(site: Path) -> dict:
    """A dist-info on a path, as pip would leave it, whose entry point offers FixedWork; the env that sees it."""
    info = site / "autotune_bench_fixed_work-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: autotune-bench-fixed-work\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[autotune.methods]\nfixed_work = bench.orchestration:FixedWork\n")
    path = os.pathsep.join(filter(None, [str(site), str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def run_autotune(tmp: Path, env: dict, n: int, trials: int, conc: int) -> dict:
    from bench.overhead import make_assets

    model_dir, data = make_assets(tmp / "assets") if not (tmp / "assets" / "data.csv").exists() else (
        tmp / "assets" / "tiny", tmp / "assets" / "data.csv")
    out = tmp / f"autotune-c{conc}"
    job = tmp / f"autotune-c{conc}.yaml"
    job.write_text(f"""
name: bench-orchestration
output_dir: {out}
stages: [preprocess, tune]
model: {{name_or_path: {model_dir}, max_length: 16}}
data: {{path: {data}, split: {{train: 0.8, validation: 0.1, test: 0.1}}}}
search: {{portfolio: false, space: {{methods: {{fixed_work: {{learning_rate: {{low: 1.0e-3, high: 1.0e-2, log: true}}}}}}}}}}
budget: {{num_trials: {trials}, max_concurrent_trials: {conc}, resources_per_trial: {{cpu: 1}}}}
training: {{epochs: 1, batch_size: 16, evals_per_epoch: {RUNGS}}}
scheduler: {{kind: fifo}}
""")
    launch = time.time()
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "submit", str(job), "--force"],
                          env={**env, WORK_ENV: str(n)}, capture_output=True, text=True)
    wall = time.time() - launch
    if proc.returncode != 0:
        raise RuntimeError(f"autotune submit failed ({proc.returncode}): {proc.stderr[-2000:]}")
    state = json.loads((out / "state" / "tune.json").read_text())["outputs"]
    rows = state["trials"]
    seen = {int(r["metrics"]["examples"]) for r in rows}  # batch 16: STEPS steps are STEPS x 16 examples
    assert seen == {STEPS * 16}, f"AutoTune trials saw {seen} examples, not {STEPS * 16}: the comparison would be unfair"
    rungs = [json.loads(line) for line in (out / "rungs.jsonl").read_text().splitlines()]
    trial_s = [r["metrics"]["seconds"] for r in rows]  # the train loop's own clock (model build excluded)
    search = state["seconds"] - state.get("ray_init_seconds", 0.0)  # the tune stage without Ray's start (as the peer)
    return {"wall_s": wall, "search_s": search, "trial_s": trial_s,
            "first_report_s": min(r["t"] for r in rungs), "trials": len(rows)}


# --- the peers: one process each -------------------------------------------------------------------------------
def _objective_steps(n: int, report) -> float:
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    for step in range(1, STEPS + 1):
        work(n)
        if step % (STEPS // RUNGS) == 0:
            report(step // (STEPS // RUNGS), time.perf_counter() - start)
    return time.perf_counter() - start


def peer_ray(n: int, trials: int, conc: int, launch: float) -> dict:
    import ray
    from ray import tune
    from ray.tune import Callback
    from ray.tune.search.optuna import OptunaSearch

    first: list[float] = []

    class FirstReport(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not first:
                first.append(time.time() - launch)

    def trainable(config):
        seconds = _objective_steps(n, lambda rung, s: tune.report({"score": config["lr"] * rung, "seconds": s}))
        tune.report({"score": config["lr"] * RUNGS, "seconds": seconds, "done_trial": 1})

    ray.init(include_dashboard=False, log_to_driver=False)
    started = time.time()
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"lr": tune.loguniform(1e-3, 1e-2)},
        tune_config=tune.TuneConfig(search_alg=OptunaSearch(metric="score", mode="max", seed=0), num_samples=trials,
                                    max_concurrent_trials=conc),
        run_config=tune.RunConfig(verbose=0, callbacks=[FirstReport()], storage_path=os.environ["BENCH_TMP"]),
    )
    results = tuner.fit()
    search = time.time() - started
    trial_s = [r.metrics["seconds"] for r in results]
    ray.shutdown()
    return {"search_s": search, "trial_s": trial_s, "first_report_s": first[0] if first else None,
            "trials": len(trial_s)}


def peer_optuna(n: int, trials: int, conc: int, launch: float) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first: list[float] = []
    trial_s: list[float] = []

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-3, 1e-2, log=True)

        def report(rung, s):
            if not first:
                first.append(time.time() - launch)
            trial.report(lr * rung, rung)

        trial_s.append(_objective_steps(n, report))
        return lr * RUNGS

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    started = time.time()
    study.optimize(objective, n_trials=trials, n_jobs=conc)
    return {"search_s": time.time() - started, "trial_s": trial_s, "first_report_s": first[0], "trials": len(trial_s)}


def run_peer(tool: str, tmp: Path, env: dict, n: int, trials: int, conc: int) -> dict:
    launch = time.time()
    proc = subprocess.run([sys.executable, __file__, "--peer", tool, "--n", str(n), "--trials", str(trials),
                           "--concurrency", str(conc), "--launch", repr(launch)],
                          env={**env, "BENCH_TMP": str(tmp / f"{tool}-c{conc}")}, capture_output=True, text=True)
    wall = time.time() - launch
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} peer failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"wall_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}


# --- the runner --------------------------------------------------------------------------------------------------
TOOLS = ("autotune", "bare_ray_tune", "bare_optuna")


def summarise(samples: list[dict], trial_s: float, trials: int) -> list[dict]:
    med = statistics.median
    rows = []
    for conc in sorted({s["concurrency"] for s in samples}):
        ideal = trials * trial_s / conc
        by_tool = {t: [s for s in samples if s["concurrency"] == conc and s["tool"] == t] for t in TOOLS}
        ray_wall = med(s["wall_s"] for s in by_tool["bare_ray_tune"]) if by_tool["bare_ray_tune"] else None
        for tool, mine in by_tool.items():
            if not mine:
                continue
            wall = med(s["wall_s"] for s in mine)
            search = med(s["search_s"] for s in mine)
            rows.append({
                "concurrency": conc, "tool": tool, "ideal_s": ideal, "wall_s": wall, "search_s": search,
                "wall_over_ideal": wall / ideal, "search_over_ideal": search / ideal,
                "trial_s_median": med(x for s in mine for x in s["trial_s"]),
                "first_report_s": med(s["first_report_s"] for s in mine if s["first_report_s"] is not None),
                "wall_vs_bare_ray": wall / ray_wall if ray_wall else None,
            })
    return rows


def print_table(rows: list[dict], trial_s: float, trials: int) -> str:
    lines = [f"orchestration overhead: {trials} fixed-work trials of {trial_s:g} s (ideal), medians",
             f"{'conc':>4} {'tool':<14} {'ideal s':>8} {'wall s':>8} {'search s':>9} {'search/ideal':>13} "
             f"{'wall/bare Ray':>14} {'s/trial':>8} {'1st report s':>13}"]
    for r in rows:
        vs = f"{r['wall_vs_bare_ray']:.3f}" if r["wall_vs_bare_ray"] else "-"
        lines.append(f"{r['concurrency']:>4} {r['tool']:<14} {r['ideal_s']:>8.1f} {r['wall_s']:>8.1f} {r['search_s']:>9.1f} "
                     f"{r['search_over_ideal']:>13.3f} {vs:>14} {r['trial_s_median']:>8.2f} {r['first_report_s']:>13.1f}")
    text = "\n".join(lines)
    print(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trial-s", type=float, default=20.0)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/autotune-orchestration"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "orchestration.json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--peer", choices=["ray", "optuna"], help=argparse.SUPPRESS)  # internal: run one peer
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--launch", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer:
        peer = peer_ray if args.peer == "ray" else peer_optuna
        print(json.dumps(peer(args.n, args.trials, args.concurrency[0], args.launch)))
        return 0
    if args.quick:
        args.trial_s, args.trials, args.concurrency = 1.0, 2, [1]
    from bench.quality import write_bench_report

    load_start = os.getloadavg()
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = install_plugin(args.workdir / "site")
    n = calibrate(args.trial_s)
    print(f"calibrated: {n} matmuls of {SIZE}x{SIZE} per step, {STEPS} steps = {args.trial_s:g} s of work per trial")
    samples = []
    for repeat in range(args.repeats):
        for conc in args.concurrency:
            for tool in TOOLS:  # interleaved: each repeat runs every tool at every concurrency
                if tool == "autotune":
                    s = run_autotune(args.workdir, env, n, args.trials, conc)
                else:
                    s = run_peer("ray" if tool == "bare_ray_tune" else "optuna", args.workdir, env, n, args.trials, conc)
                samples.append({"repeat": repeat, "concurrency": conc, "tool": tool, **s})
                print(f"  repeat {repeat} concurrency {conc} {tool}: wall {s['wall_s']:.1f} s, search {s['search_s']:.1f} s")
    rows = summarise(samples, args.trial_s, args.trials)
    table = print_table(rows, args.trial_s, args.trials)
    bars = [{"concurrency": r["concurrency"], "wall_vs_bare_ray": r["wall_vs_bare_ray"], "within_5pct": r["wall_vs_bare_ray"] <= 1.05,
             "search_over_ideal": r["search_over_ideal"], "within_15pct_of_ideal": r["search_over_ideal"] <= 1.15}
            for r in rows if r["tool"] == "autotune"]
    write_bench_report(args, load_start, "wall = launch to exit of the tool's own process; search = first trial start "
                       "to last trial end as the tool measures it (AutoTune: its tune stage); ideal = trials x trial-s / "
                       "concurrency; medians over --repeats",
                       matmuls_per_step=n, steps=STEPS, summary=rows, samples=samples, bar=bars, table=table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
