"""Per-trial overhead of running a trial through AutoTune's search (Ray Tune actor, Optuna ask/tell, MLflow
child run, checkpoint per rung) versus calling the same train loop directly in one process.

    python bench/overhead.py [--trials 12] [--concurrency 2]

Both paths train the same tiny config-built model on the same synthetic data with the same knobs (head-only
trials of ~0.3 s work), side by side in one run. Prints a table and writes bench/results/overhead.json.
Medians are quoted; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_assets(tmp: Path) -> tuple[Path, Path]:
    from bench.quality import tiny_bert

    model_dir = tiny_bert(tmp / "tiny")
    rng = random.Random(0)
    data = tmp / "data.csv"
    with data.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for i in range(400):
            w.writerow([" ".join(rng.sample(["good", "bad", "film", "plot", "the", "very", "dull", "fine"], 5)) + f" {i}", i % 2])
    return model_dir, data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from autotune import api

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        model_dir, data = make_assets(tmp)
        job = tmp / "bench.yaml"
        job.write_text(f"""
name: bench-overhead
output_dir: {tmp / 'out'}
stages: [preprocess, tune]
model: {{name_or_path: {model_dir}, max_length: 16}}
data: {{path: {data}}}
search: {{space: {{methods: {{head: {{learning_rate: {{low: 1.0e-3, high: 1.0e-2, log: true}}}}}}}}}}
budget: {{num_trials: {args.trials}, max_concurrent_trials: {args.concurrency}}}
training: {{epochs: 1, batch_size: 16, evals_per_epoch: 2}}
scheduler: {{kind: fifo}}
""")
        quiet = Console(file=open("/dev/null", "w"))
        t0 = time.perf_counter()
        api.submit(job, console=quiet)
        search_wall = time.perf_counter() - t0
        state = json.loads((tmp / "out" / "state" / "tune.json").read_text())["outputs"]
        trials = state["trials"]
        trial_wall = [r["seconds"] for r in trials if r["seconds"]]
        train_secs = [r["metrics"]["seconds"] for r in trials]
        tune_stage = state["seconds"]
        ray_init = state["ray_init_seconds"]

        # the same trials, directly: build model, apply method, train, in one process, one after another
        from autotune.config.job import ModelConfig, TrainingConfig
        from autotune.data.prepare import prepare
        from autotune.config.job import DataConfig
        from autotune.methods import REGISTRY, ApplyContext
        from autotune.training.loop import train
        from autotune.training.model import build_model, load_tokenizer, tokenize_splits

        mcfg = ModelConfig(name_or_path=str(model_dir), max_length=16)
        prepared_data = prepare(data, DataConfig())
        tokens, _ = tokenize_splits(prepared_data, load_tokenizer(mcfg), 16, None)
        direct = []
        for r in trials:
            s = time.perf_counter()
            model = build_model(mcfg, prepared_data.labels)
            p = REGISTRY["head"].apply(model, REGISTRY["head"].Params(**r["knobs"]), ApplyContext())
            train(p, tokens, TrainingConfig(epochs=1, batch_size=16, evals_per_epoch=2), r["knobs"]["learning_rate"], 0,
                  on_rung=lambda m, k: None)
            direct.append(time.perf_counter() - s)

    med = statistics.median
    result = {
        "trials": args.trials, "concurrency": args.concurrency,
        "submit_wall_s": search_wall, "tune_stage_s": tune_stage,
        "median_trial_wall_s": med(trial_wall), "median_in_trial_train_s": med(train_secs),
        "median_direct_trial_s": med(direct),
        "ray_init_s": ray_init,
        # wall seconds one trial occupies a slot, Ray start excluded: (stage - init) x slots / trials
        "slot_seconds_per_trial_s": (tune_stage - ray_init) * args.concurrency / args.trials,
    }
    result["overhead_per_trial_s"] = result["slot_seconds_per_trial_s"] - result["median_direct_trial_s"]
    table = Table(title=f"per-trial overhead, {args.trials} head-only trials on a tiny model, concurrency {args.concurrency}")
    table.add_column("measure")
    table.add_column("seconds", justify="right")
    for k, v in result.items():
        if k.endswith("_s"):
            table.add_row(k, f"{v:.2f}")
    Console().print(table)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'overhead.json'}")


if __name__ == "__main__":
    main()
