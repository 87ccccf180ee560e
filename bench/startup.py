"""Start-up cost of the command line (issue 14, bench 5): wall seconds of `autotune validate pipelines/demo.yaml`
and of `autotune status JOB_FOLDER`, each a fresh subprocess (interpreter start, imports, work, exit).

    python bench/startup.py [--repeats 7] [--out bench/results/startup.json]
    python bench/startup.py --quick     # smoke run (CI): validate, and status of a folder holding no job, 3 each

`autotune status` needs a job folder that a run has written (state/job.json, the job's MLflow store with its
parent run; see autotune/api.py status()). The full run makes the smallest real one first, not timed: the tiny
config-built BERT (hidden 32, 2 layers, as tests/conftest.py) and a 1-trial head-only job with stages
[preprocess, tune] (as tests/tiny_jobs.py; this starts a local Ray once), then times `autotune status` on it.
The quick run does not start Ray: it times `status` on an empty folder, which exits 2 at once ("not an AutoTune
job directory") - a floor for the command's start-up, not the status of a job; the table says so.
The executable is the `autotune` console script next to this Python (`python -m autotune` when absent).
Bars (issue 14): validate < 1 s, status < 2 s (medians). Writes JSON with machine info, medians, spreads and
raw samples.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
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

BARS = {"validate": 1.0, "status": 2.0}
SCRUB_ENV = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AUTOTUNE_OPTUNA_STORAGE")


def autotune_cli() -> list[str]:
    exe = Path(sys.executable).with_name("autotune")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "autotune"]


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
    e.setdefault("TOKENIZERS_PARALLELISM", "false")
    return e


def timed(cmd: list[str]) -> tuple[float, int, str]:
    s = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env(), timeout=300)
    return time.perf_counter() - s, proc.returncode, (proc.stdout + proc.stderr)[-1500:]


def make_job_folder(tmp: Path) -> Path:
    """A 1-trial head-only job on the tiny model, run for real (preprocess + tune): what status reads."""
    import yaml

    from bench.throughput import tiny_assets

    model_dir, data = tiny_assets(tmp, rows=120)
    out = tmp / "job"
    job = {
        "name": "bench-startup", "output_dir": str(out), "seed": 0, "stages": ["preprocess", "tune"],
        "model": {"name_or_path": str(model_dir), "max_length": 16}, "data": {"path": str(data)},
        "search": {"space": {"methods": {"head": {"learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True}}}}},
        "budget": {"num_trials": 1, "max_concurrent_trials": 1, "resources_per_trial": {"cpu": 1}},
        "training": {"epochs": 1, "batch_size": 16, "evals_per_epoch": 1, "warmup_ratio": 0.0},
        "scheduler": {"kind": "fifo"},
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    proc = subprocess.run([*autotune_cli(), "submit", str(path), "--force"], cwd=ROOT, capture_output=True, text=True,
                          env=env(), timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"making the job folder failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return out


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", type=Path, default=ROOT / "pipelines" / "demo.yaml", help="what validate checks")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 repeats; status of an empty folder (no Ray)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "startup.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 3)

    from rich.console import Console
    from rich.table import Table

    cli = autotune_cli()
    load_start = os.getloadavg()
    samples: list[dict] = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if args.quick:
            folder = tmp / "empty"
            folder.mkdir()
            status_kind, expect = "empty folder (no job: exits 2 at once)", 2
            setup_s = 0.0
        else:
            s = time.perf_counter()
            folder = make_job_folder(tmp)
            setup_s = time.perf_counter() - s
            status_kind, expect = "1-trial head-only job (tiny BERT)", 0
        commands = {"validate": [*cli, "validate", str(args.job)], "status": [*cli, "status", str(folder)]}
        timed(commands["validate"])  # one unmeasured run of each: page cache, .pyc files
        timed(commands["status"])
        for rep in range(args.repeats):
            for name in (("validate", "status") if rep % 2 == 0 else ("status", "validate")):
                secs, rc, tail = timed(commands[name])
                ok = rc == (0 if name == "validate" else expect)
                samples.append({"command": name, "repeat": rep, "seconds": secs, "exit_code": rc, "ok": ok,
                                **({} if ok else {"output_tail": tail})})
                if not ok:
                    print(f"{name} exited {rc}:\n{tail}", file=sys.stderr)
        if not args.quick:
            shutil.rmtree(folder, ignore_errors=True)

    rows = []
    for name in ("validate", "status"):
        mine = [s for s in samples if s["command"] == name]
        secs = spread([s["seconds"] for s in mine])
        rows.append({"command": name, "target": str(args.job.relative_to(ROOT)) if name == "validate" and
                     args.job.is_relative_to(ROOT) else (str(args.job) if name == "validate" else status_kind),
                     "seconds": secs, "bar_s": BARS[name], "ok": all(s["ok"] for s in mine),
                     "bar": ("PASS" if secs["median"] < BARS[name] else "FAIL") if not (args.quick and name == "status")
                     else "n/a (no job)"})
    table = Table(title=f"CLI start-up, wall seconds per subprocess, median of {args.repeats}")
    for col in ("command", "on", "median s \\[min, max]", "exit codes as expected", "bar"):
        table.add_column(col, justify="left" if col in ("command", "on") else "right")
    for r in rows:
        s = r["seconds"]
        table.add_row(f"autotune {r['command']}", r["target"], f"{s['median']:.2f} [{s['min']:.2f}, {s['max']:.2f}]",
                      "yes" if r["ok"] else "NO", f"{r['bar']} (< {r['bar_s']:.0f} s)")
    Console(width=160).print(table)
    if args.quick:
        print("quick mode: `autotune status` timed on a folder without a job (it exits 2 at once); "
              "the full run times it on a real 1-trial job folder")
    write_bench_report(args, load_start, "wall seconds around subprocess.run (interpreter start to exit); one "
                       "unmeasured run of each command first; the two commands alternate",
                       cli=cli, status_target=status_kind, job_folder_setup_s=setup_s, bars_s=BARS, summary=rows,
                       samples=samples)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
