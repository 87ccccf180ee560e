"""Every CPU method of the registry side by side on real data: trainable parameters, best validation accuracy,
seconds per epoch and optimizer memory per method, and where the zero-training baseline stands.

    python bench/methods.py [--data rotten_tomatoes trec_question_type] [--layers 3] [--examples 1600]
                            [--lr-factors 1 3] [--quick]

For each data set, one AutoTune job (stages preprocess + tune, FIFO: no early stopping, so every point trains
its full 2 epochs) searches a grid: every method at its documented defaults (`autotune schema`; 2 epochs,
batch 16), at each learning rate factor x its default learning rate (zero_shot has none: one point). Data as in
bench/portfolio.py: a stratified sample of `--examples` split 5/8 train, 3/16 validation, 3/16 test (1000 / 300 /
300 of 1,600), the packaged MiniLM cut to `--layers` layers, max length 64, 2 trials at a time. Only train and
validation data are used. Prints a table per data set and writes bench/results/methods.json (every trial row).
`--quick`: a tiny config-built model on 400 synthetic rows, 3 methods (a smoke run for CI: no download).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUICK_METHODS = ["zero_shot", "head", "bitfit"]


def cpu_methods() -> list[str]:
    from autotune.methods import REGISTRY

    return [name for name, _ in sorted(REGISTRY.items(), key=lambda kv: kv[1].cost_rank) if name != "qlora"]  # GPU only


def grid(methods: list[str], factors: list[float]) -> tuple[dict, list[dict]]:
    """(inline space, initial points): each method's knobs at their defaults, its learning rate over the factors."""
    from autotune.methods import REGISTRY

    space, points = {}, []
    for name in methods:
        lr = getattr(REGISTRY[name].Params(), "learning_rate", None)
        if lr is None:
            space[name] = {}
            points.append({"method": name, "knobs": {}})
            continue
        rates = sorted({float(f"{lr * f:.3g}") for f in factors})
        space[name] = {"learning_rate": {"choices": rates}} if len(rates) > 1 else {"learning_rate": rates[0]}
        points += [{"method": name, "knobs": {"learning_rate": r}} if len(rates) > 1 else {"method": name, "knobs": {}}
                   for r in rates]
    return {"methods": space}, points


def job_for(name: str, csv_path: Path, out: Path, layers: int | None, examples: int, methods: list[str],
            factors: list[float], model: str | None = None) -> dict:
    with csv_path.open(newline="", encoding="utf-8") as fh:
        examples = min(examples, sum(1 for _ in csv.DictReader(fh)))  # a small set is split whole
    frac = 0.625
    rest = (1 - frac) / 2
    space, points = grid(methods, factors)
    model_cfg = {"max_length": 64, "num_hidden_layers": layers}
    if model:
        model_cfg["name_or_path"] = model
    return {
        "name": f"methods-{name}",
        "output_dir": str(out),
        "stages": ["preprocess", "tune"],
        "model": model_cfg,
        "data": {"path": str(csv_path), "text_column": "text", "label_column": "label", "max_examples": examples,
                 "split": {"train": frac, "validation": rest, "test": rest}},
        "search": {"portfolio": False, "space": space, "initial_points": points},
        "budget": {"num_trials": len(points), "max_concurrent_trials": 2},
        "training": {"epochs": 2, "batch_size": 16},
        "scheduler": {"kind": "fifo"},
    }


def read_trials(out: Path) -> list[dict]:
    with (out / "trials.csv").open() as fh:
        return list(csv.DictReader(fh))


def summarise(rows: list[dict]) -> list[dict]:
    """One line per method: its best point (best-rung validation accuracy), seconds per epoch (median over its
    points; zero_shot: the seconds of its one fit), trainable parameters and optimizer state."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method and r["status"] != "failed"]
        if not mine:
            out.append({"method": method, "failed": True})
            continue
        best = max(mine, key=lambda r: float(r["best_val_accuracy"] or 0))
        epochs = 2 if method != "zero_shot" else 1
        out.append({
            "method": method, "best_val_accuracy": float(best["best_val_accuracy"] or 0),
            "at": best["knobs"], "points": len(mine),
            "trainable_params": int(float(best["trainable_params"] or 0)),
            "optimizer_state_bytes": int(float(best["optimizer_state_bytes"] or 0)),
            "seconds_per_epoch": statistics.median(float(r["seconds"] or 0) for r in mine) / epochs,
        })
    return sorted(out, key=lambda r: -r.get("best_val_accuracy", -1))


def print_table(name: str, summary: list[dict]) -> str:
    lines = [f"\n{name}: per method, best of its points (FIFO, 2 epochs), sorted by validation accuracy",
             f"{'method':<10} {'val acc':>8} {'trainable':>11} {'optim. state':>13} {'s/epoch':>8}  best point"]
    for r in summary:
        if r.get("failed"):
            lines.append(f"{r['method']:<10} {'failed':>8}")
            continue
        lines.append(f"{r['method']:<10} {r['best_val_accuracy']:>8.4f} {r['trainable_params']:>11,} "
                     f"{r['optimizer_state_bytes'] / 1024:>10.1f} KiB {r['seconds_per_epoch']:>8.1f}  {r['at']}")
    text = "\n".join(lines)
    print(text)
    return text


def main(argv: list[str] | None = None) -> int:
    from bench import corpora
    from bench.overhead import make_assets
    from bench.quality import write_bench_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["rotten_tomatoes", "trec_question_type"])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--examples", type=int, default=1600)
    ap.add_argument("--lr-factors", nargs="+", type=float, default=[1.0, 3.0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/autotune-methods"))
    ap.add_argument("--cache-dir", type=Path, default=None, help="where the data sets are kept (default: WORKDIR/cache)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "methods.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model, synthetic rows, 3 methods")
    args = ap.parse_args(argv)
    load_start = __import__("os").getloadavg()
    methods = QUICK_METHODS if args.quick else cpu_methods()
    model = synthetic = None
    if args.quick:
        args.data, args.layers, args.lr_factors = ["synthetic"], None, [1.0]
        tiny, synthetic = make_assets(args.workdir)
        model = str(tiny)

    results, summaries, tables = {}, [], []
    for name in args.data:
        csv_path = synthetic or corpora.load(name, args.cache_dir or args.workdir / "cache")
        out = args.workdir / name
        job = args.workdir / f"{name}.yaml"
        job.parent.mkdir(parents=True, exist_ok=True)
        job.write_text(yaml.safe_dump(job_for(name, csv_path, out, args.layers, args.examples, methods,
                                              args.lr_factors, model), sort_keys=False))
        start = time.time()
        subprocess.run([sys.executable, "-m", "autotune.cli", "submit", str(job), "--force"], check=True,
                       stdout=subprocess.DEVNULL if args.quick else None)
        print(f"{name}: {time.time() - start:.0f} s")
        results[name] = read_trials(out)
        summary = summarise(results[name])
        summaries += [{"data": name, **row} for row in summary]
        tables.append(print_table(name, summary))
    write_bench_report(args, load_start, "FIFO, 2 epochs, batch 16, each method at its defaults x --lr-factors; "
                       "best-rung validation accuracy; seconds = a trial's training time (caches included) / 2",
                       methods=methods, summary=summaries, trials=results, table="\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
