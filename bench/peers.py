"""Peer implementations for the side-by-side quality benchmark: what a user would write with each tool's own
documentation, on the same model, splits and token length as AutoTune.

    python bench/peers.py --peer bare_asha --data rotten_tomatoes --budget 300 --seed 0 --out /tmp/x.json
    python bench/peers.py --peer hf_trainer --data trec_question_type --budget 300 --layers 3

Peers (each `run_<peer>(csv_or_splits, budget_s, seed, workdir, max_length=64, num_hidden_layers=3) -> dict`):
  bare_asha   Ray Tune + OptunaSearch (define-by-run, seeded TPE) + ASHA over method in {head, lora, full},
              a report (and checkpoint) every half epoch, ASHA grace period = one report, time_budget_s.
              Best = best checkpoint by validation accuracy, scored on test.
  random      the same trainable and ASHA, random search (Ray's BasicVariantGenerator over tune.choice etc.).
  hf_trainer  HF `Trainer.hyperparameter_search(backend="optuna")`, LoRA only (Trainer cannot search the
              method): lr, batch size and epochs in hp_space, rank and alpha in model_init; evaluation every half
              epoch (Optuna's default MedianPruner sees each one); a callback stops training when time is up.
              Trainer hands back hyperparameters only, so the best config is retrained inside the budget.

Same for every peer: the packaged MiniLM truncated to `num_hidden_layers` layers with mean pooling and a linear
head (`autotune.training.model.build_model`), the splits of `make_splits` (seed 0), `max_length` tokens,
LoRA on query/value (peft), AdamW with weight decay 0.01, 6% linear warmup then linear decay, gradient norm
clipped at 1.0, the same learning-rate ranges as search_spaces/default.yaml, and 2 CPU cores: the Ray peers run
2 trials at once with torch.set_num_threads(1) each; Trainer runs one trial at a time in one process
(optuna's n_jobs > 1 would share one Trainer between threads), so it gets torch.set_num_threads(2).

The clock starts when `run_<peer>` is called (the CLI passes the process start instead) and stops when the
chosen model has a test score: `seconds` includes ray.init, tokenization, the search, rebuilding the best model
and the test pass, and the search is stopped early enough for all of it to fit in `budget_s`. The Ray peers
hold back ~15 s plus the test pass (timed on 128 test rows before ray.init): at time_budget_s Ray asks
each running trial to stop, which a function trainable only sees at its next report, and kills its actor 10 s
later. hf_trainer holds back the test pass (timed from its validation passes) and, while searching, three
epochs at the slowest pace seen, for the retrain. Trainer's objective for a trial is its LAST evaluation (not
its best), so hf_trainer's val_best is that; the Ray peers' val_best is the best checkpoint's.
Result: {"test_accuracy", "val_best", "trials", "completed", "pruned", "cut", "failed", "seconds", "curve",
"time_to_best_s", "best_config", ...}; `curve` is [[seconds since start, best validation accuracy so far], ...]
over every evaluation any trial made; `cut` counts trials stopped by the time budget.
"""

from __future__ import annotations

import time

T_PROCESS = time.time()  # before the heavy imports: the CLI's clock starts at process start

import argparse
import csv
import json
import math
import os
import random
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# bench/corpora.py must not shadow the HF `datasets` package that transformers probes for: drop bench/ from the
# path (python puts it first when this file runs as a script) and import it as bench.corpora.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("head", "lora", "full")
LR_RANGE = {"head": (1e-3, 3e-2), "lora": (3e-4, 5e-3), "full": (2e-5, 2e-4)}  # as search_spaces/default.yaml
RANK_RANGE = (2, 16)
ALPHA_RANGE = (8.0, 32.0)
BATCH_SIZES = (8, 16, 32)
EPOCHS = (1, 3)
LORA_TARGETS = ["query", "value"]
LORA_DROPOUT = 0.05
WEIGHT_DECAY, WARMUP, CLIP = 0.01, 0.06, 1.0
EVAL_BATCH = 64


# ---------------------------------------------------------------- splits (shared by every tool, AutoTune too)

def make_splits(csv_path, n_train: int = 1000, n_val: int = 300, n_test: int = 600, seed: int = 0,
                out_dir: Path | None = None) -> dict:
    """Stratified split of a text,label CSV: n_train / n_val / the rest capped at n_test.

    Per class, the examples are shuffled with `seed` and each split takes that class's share of its size
    (largest remainder), so class proportions match the file's in every split. Writes train.csv, val.csv and
    test.csv (text,label) into `out_dir` (default: a folder beside the CSV named after it and the sizes).
    Returns {"train": [(text, label), ...], "val": [...], "test": [...], "labels": sorted labels, "dir": Path}.
    """
    csv_path = Path(csv_path)
    with csv_path.open(newline="", encoding="utf-8") as fh:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(fh)]
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        by_label[row[1]].append(row)
    rng = random.Random(seed)
    labels = sorted(by_label)
    for lab in labels:
        rng.shuffle(by_label[lab])
    n_test = min(n_test, len(rows) - n_train - n_val)
    if n_test <= 0:
        raise ValueError(f"{csv_path}: {len(rows)} rows cannot give {n_train} train + {n_val} val + a test split")

    def shares(total: int, available: dict[str, int]) -> dict[str, int]:
        pool = sum(available.values())
        exact = {lab: total * available[lab] / pool for lab in labels}
        out = {lab: min(available[lab], int(exact[lab])) for lab in labels}
        for lab in sorted(labels, key=lambda l: exact[l] - int(exact[l]), reverse=True):
            if sum(out.values()) >= total:
                break
            if out[lab] < available[lab]:
                out[lab] += 1
        return out

    splits: dict[str, list[tuple[str, str]]] = {}
    left = {lab: len(by_label[lab]) for lab in labels}
    taken = {lab: 0 for lab in labels}
    for name, size in (("train", n_train), ("val", n_val), ("test", n_test)):
        counts = shares(size, left)
        part = []
        for lab in labels:
            part += by_label[lab][taken[lab]: taken[lab] + counts[lab]]
            taken[lab] += counts[lab]
            left[lab] -= counts[lab]
        random.Random(seed + len(name)).shuffle(part)
        splits[name] = part
    out = Path(out_dir) if out_dir is not None else csv_path.parent / f"{csv_path.stem}_splits_{n_train}_{n_val}_{n_test}_s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        with (out / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label"])
            w.writerows(part)
    return {**splits, "labels": labels, "dir": out}


def _splits(csv_or_splits, workdir: Path) -> dict:
    if isinstance(csv_or_splits, dict):
        return csv_or_splits
    return make_splits(csv_or_splits, seed=0, out_dir=workdir / "splits")


# ---------------------------------------------------------------- the model and data every peer trains

def build(config: dict, labels: list[str], num_hidden_layers: int, max_length: int):
    """The benchmark model for one config: AutoTune's MiniLM + mean pooling + linear head, then the method."""
    from autotune.config.job import ModelConfig
    from autotune.training.model import build_model

    model = build_model(ModelConfig(num_hidden_layers=num_hidden_layers, max_length=max_length), labels)
    if config["method"] == "head":
        model.encoder.requires_grad_(False)
    elif config["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=int(config["lora_rank"]), lora_alpha=float(config["lora_alpha"]), target_modules=LORA_TARGETS,
            lora_dropout=LORA_DROPOUT, modules_to_save=["classifier"]))
    return model


def tokenize(splits: dict, max_length: int) -> dict[str, dict[str, Any]]:
    """Token ids padded to max_length (loop.batches trims each batch to its longest row), int64 numpy."""
    import numpy as np

    from autotune.config.job import ModelConfig
    from autotune.training.model import load_tokenizer

    tok = load_tokenizer(ModelConfig(max_length=max_length))
    index = {lab: i for i, lab in enumerate(splits["labels"])}
    out = {}
    for name in ("train", "val", "test"):
        enc = tok([t for t, _ in splits[name]], truncation=True, max_length=max_length, padding="max_length",
                  return_tensors="np")
        out[name] = {"input_ids": enc["input_ids"].astype(np.int64),
                     "attention_mask": enc["attention_mask"].astype(np.int64),
                     "labels": np.array([index[l] for _, l in splits[name]], dtype=np.int64)}
    return out


def trainable_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_trainable(model, state: dict) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise RuntimeError(f"checkpoint keys the model does not have: {unexpected[:5]}")


def _time_test_pass(data: dict, labels: list[str], num_hidden_layers: int, max_length: int) -> float:
    """Seconds the final test pass will take (a head-only model on 128 test rows, scaled, x1.3)."""
    import torch

    from autotune.training.loop import evaluate

    torch.set_num_threads(2)
    model = build({"method": "head"}, labels, num_hidden_layers, max_length)
    part = {k: v[:128] for k, v in data["test"].items()}
    start = time.time()
    evaluate(model, part, EVAL_BATCH)
    return 1.3 * (time.time() - start) * len(data["test"]["labels"]) / len(part["labels"])


def _summary(t0: float, curve: list, test_acc, val_best, trials: int, completed: int, pruned: int, cut: int,
             failed: int, time_to_best, best_config, **extra) -> dict:
    return {"test_accuracy": test_acc, "val_best": val_best, "trials": trials, "completed": completed,
            "pruned": pruned, "cut": cut, "failed": failed, "seconds": round(time.time() - t0, 2), "curve": curve,
            "time_to_best_s": time_to_best, "best_config": best_config, **extra}


# ---------------------------------------------------------------- Ray Tune peers (bare_asha, random)

def train_fn(config, data=None, labels=None, num_hidden_layers=3, max_length=64, seed=0):
    """The Ray Tune trainable: a plain PyTorch loop, report + checkpoint every half epoch."""
    import torch
    from ray import tune
    from transformers import get_linear_schedule_with_warmup

    from autotune.training.loop import batches, evaluate
    from autotune.training.model import quiet_transformers

    quiet_transformers()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    method = config["method"]
    model = build(config, labels, num_hidden_layers, max_length)
    params = [p for p in model.parameters() if p.requires_grad]
    bs, epochs = int(config["batch_size"]), int(config["epochs"])
    n = len(data["train"]["labels"])
    steps_per_epoch = math.ceil(n / bs)
    half = math.ceil(steps_per_epoch / 2)
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(params, lr=config[f"{method}_lr"], weight_decay=WEIGHT_DECAY)
    sched = get_linear_schedule_with_warmup(opt, int(WARMUP * total), total)
    order_gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=order_gen).tolist()
        for i, batch in enumerate(batches(data["train"], bs, order)):
            model.train()
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
            sched.step()
            opt.zero_grad()
            if i + 1 == half or i + 1 == steps_per_epoch:
                acc = evaluate(model, data["val"], EVAL_BATCH).accuracy
                with tempfile.TemporaryDirectory() as d:
                    torch.save(trainable_state(model), os.path.join(d, "model.pt"))
                    tune.report({"val_accuracy": acc}, checkpoint=tune.Checkpoint.from_directory(d))


def optuna_space(trial):
    """Define-by-run: the method first, then only that method's knobs."""
    method = trial.suggest_categorical("method", list(METHODS))
    trial.suggest_float(f"{method}_lr", *LR_RANGE[method], log=True)
    if method == "lora":
        trial.suggest_int("lora_rank", *RANK_RANGE, log=True)
        trial.suggest_float("lora_alpha", *ALPHA_RANGE)
    trial.suggest_categorical("batch_size", list(BATCH_SIZES))
    trial.suggest_int("epochs", *EPOCHS)


def random_space() -> dict:
    """Ray's own sampling primitives; every knob is drawn, the trainable reads those of its method."""
    from ray import tune

    space = {"method": tune.choice(list(METHODS)), "batch_size": tune.choice(list(BATCH_SIZES)),
             "epochs": tune.randint(EPOCHS[0], EPOCHS[1] + 1),  # randint excludes its upper bound
             "lora_rank": tune.lograndint(RANK_RANGE[0], RANK_RANGE[1] + 1),
             "lora_alpha": tune.uniform(*ALPHA_RANGE)}
    space.update({f"{m}_lr": tune.loguniform(*LR_RANGE[m]) for m in METHODS})
    return space


def _ray_peer(kind: str, csv_or_splits, budget_s: float, seed: int, workdir: Path, max_length: int,
              num_hidden_layers: int, t0: float | None) -> dict:
    t0 = time.time() if t0 is None else t0
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    splits = _splits(csv_or_splits, workdir)
    labels = splits["labels"]
    data = tokenize(splits, max_length)
    test_pass_s = _time_test_pass(data, labels, num_hidden_layers, max_length)

    import optuna
    import ray
    import torch
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from autotune.training.loop import evaluate

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a cluster some `ray start` recorded

    class Curve(tune.Callback):
        """Driver-side record: when each report arrived, and which trials were running when the budget hit."""

        def __init__(self, deadline: float):
            self.deadline, self.best, self.points = deadline, -1.0, []
            self.reported: dict[tuple[str, int], float] = {}
            self.started: dict[str, dict] = {}  # trial path -> config (a trial cut before its first report
            self.running: set[str] = set()       # has no config in the ResultGrid)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started[trial.path] = dict(trial.config)

        def on_step_begin(self, iteration, trials, **info):
            if time.time() < self.deadline:
                self.running = {t.path for t in trials if t.status == "RUNNING"}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            now = time.time() - t0
            self.reported[(trial.trial_id, result["training_iteration"])] = now
            if result["val_accuracy"] > self.best:
                self.best = result["val_accuracy"]
                self.points.append([round(now, 2), self.best])

    if kind == "bare_asha":
        # metric/mode here too: OptunaSearch built with a space ignores the ones in TuneConfig.
        search_alg = OptunaSearch(optuna_space, metric="val_accuracy", mode="max",
                                  sampler=optuna.samplers.TPESampler(seed=seed))
        param_space = None
    else:
        # max_concurrent here: TuneConfig.max_concurrent_trials is ignored for a search_alg that is a
        # BasicVariantGenerator, which then queues hundreds of pending trials.
        search_alg = BasicVariantGenerator(random_state=seed, max_concurrent=2)
        param_space = random_space()
    asha = ASHAScheduler(time_attr="training_iteration", max_t=2 * EPOCHS[1], grace_period=1, reduction_factor=2)
    trainable = tune.with_resources(
        tune.with_parameters(train_fn, data=data, labels=labels, num_hidden_layers=num_hidden_layers,
                             max_length=max_length, seed=seed),
        {"cpu": 1})
    # Leave room for Tune's start-up before its clock starts (~2 s), for stopping the running trials (Ray asks
    # a trial to stop, which a function trainable only notices at its next report, and kills its actor 10 s
    # later), for rebuilding the best model and for the test pass.
    reserve = 2.0 + 11.0 + 2.0 + test_pass_s
    time_budget = budget_s - (time.time() - t0) - reserve
    if time_budget <= 5:
        ray.shutdown()
        raise RuntimeError(f"budget {budget_s}s is used up before the search could start")
    curve = Curve(time.time() + time_budget)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", search_alg=search_alg, scheduler=asha,
                                    num_samples=-1, max_concurrent_trials=2, time_budget_s=time_budget,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{kind}_s{seed}", storage_path=str(workdir / "ray"), verbose=0, callbacks=[curve],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_accuracy",
                                                    checkpoint_score_order="max")),
    )
    results = tuner.fit()
    search_end = time.time() - t0

    trials = completed = pruned = cut = failed = 0
    errors = []
    by_path = {r.path: r for r in results}
    for path, config in curve.started.items():  # trials that started; never-started ones are not counted
        trials += 1
        r = by_path.get(path)
        if r is not None and r.error is not None:
            failed += 1
            errors.append(str(r.error).splitlines()[-1][:300])
        elif r is not None and r.metrics.get("training_iteration", 0) >= 2 * int(config["epochs"]):
            completed += 1
        elif path in curve.running:  # still training when the time budget ran out
            cut += 1
        else:  # stopped early by ASHA
            pruned += 1
    try:
        best = results.get_best_result("val_accuracy", "max", scope="all")
    except RuntimeError:
        best = None
    test_acc = val_best = time_to_best = best_config = None
    if best is not None and best.best_checkpoints:
        ckpt, metrics = max(best.best_checkpoints, key=lambda cm: cm[1]["val_accuracy"])
        val_best = metrics["val_accuracy"]
        time_to_best = curve.reported.get((metrics["trial_id"], metrics["training_iteration"]))
        time_to_best = round(time_to_best, 2) if time_to_best is not None else None
        best_config = {k: v for k, v in best.config.items()
                       if k in ("method", "batch_size", "epochs") or k.startswith(best.config["method"])}
        best_config["at_half_epoch"] = metrics["training_iteration"]
        torch.set_num_threads(2)
        model = build(best.config, labels, num_hidden_layers, max_length)
        with ckpt.as_directory() as d:
            load_trainable(model, torch.load(os.path.join(d, "model.pt")))
        test_acc = evaluate(model, data["test"], EVAL_BATCH).accuracy
    out = _summary(t0, curve.points, test_acc, val_best, trials, completed, pruned, cut, failed, time_to_best,
                   best_config, search_seconds=round(search_end, 2), reserve_s=round(reserve, 1),
                   errors=errors[:5])
    ray.shutdown()
    return out


def run_bare_asha(csv_or_splits, budget_s: float, seed: int, workdir: Path, max_length: int = 64,
                  num_hidden_layers: int = 3, t0: float | None = None) -> dict:
    """Ray Tune + OptunaSearch (seeded TPE, define-by-run over method and its knobs) + ASHA."""
    return _ray_peer("bare_asha", csv_or_splits, budget_s, seed, workdir, max_length, num_hidden_layers, t0)


def run_random(csv_or_splits, budget_s: float, seed: int, workdir: Path, max_length: int = 64,
               num_hidden_layers: int = 3, t0: float | None = None) -> dict:
    """Ray Tune random search (BasicVariantGenerator) + the same ASHA and trainable."""
    return _ray_peer("random", csv_or_splits, budget_s, seed, workdir, max_length, num_hidden_layers, t0)


# ---------------------------------------------------------------- HF Trainer.hyperparameter_search (optuna)

def run_hf_trainer(csv_or_splits, budget_s: float, seed: int, workdir: Path, max_length: int = 64,
                   num_hidden_layers: int = 3, t0: float | None = None) -> dict:
    """LoRA only: lr / batch size / epochs in hp_space, rank / alpha in model_init; retrain the best config."""
    t0 = time.time() if t0 is None else t0
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    splits = _splits(csv_or_splits, workdir)
    labels = splits["labels"]

    import numpy as np
    import optuna
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from autotune.config.job import ModelConfig
    from autotune.training.model import load_tokenizer, quiet_transformers

    quiet_transformers()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(2)  # one trial at a time gets both cores
    tok = load_tokenizer(ModelConfig(max_length=max_length))
    index = {lab: i for i, lab in enumerate(labels)}

    def dataset(rows):
        enc = tok([t for t, _ in rows], truncation=True, max_length=max_length)
        return [{"input_ids": ids, "attention_mask": m, "labels": index[l]}
                for ids, m, (_, l) in zip(enc["input_ids"], enc["attention_mask"], rows)]

    train_ds, val_ds, test_ds = dataset(splits["train"]), dataset(splits["val"]), dataset(splits["test"])
    n_train = len(train_ds)

    def hard_end() -> float:
        # Training must end here: the test pass (timed from the validation passes seen so far) comes after.
        return t0 + budget_s - 1.0 - 1.3 * clock.eval_s_per_example * len(test_ds)

    class Clock(TrainerCallback):
        """Stops training at the deadline; records every evaluation and how long an epoch takes."""

        def __init__(self):
            self.curve, self.best, self.cut = [], -1.0, 0
            self.eval_s_per_example = 0.01  # until the first validation pass is timed
            self.epoch_seconds: list[float] = []
            self.trial = None  # the running Optuna trial while searching, None while retraining

        def on_train_begin(self, args, state, control, **kw):
            self.began = time.time()

        def on_step_end(self, args, state, control, **kw):
            deadline = search_deadline() if self.trial is not None else hard_end()
            if time.time() >= deadline and state.global_step < state.max_steps:
                control.should_training_stop = True
                self.cut += 1

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            acc = (metrics or {}).get("eval_accuracy")
            if metrics and "eval_runtime" in metrics:
                self.eval_s_per_example = max(self.eval_s_per_example, metrics["eval_runtime"] / len(val_ds))
            if acc is not None and acc > self.best:
                self.best = acc
                self.curve.append([round(time.time() - t0, 2), acc])

        def on_train_end(self, args, state, control, **kw):
            if state.epoch:
                self.epoch_seconds.append((time.time() - self.began) / state.epoch)
            if self.trial is not None and time.time() >= search_deadline() - 5:
                self.trial.study.stop()  # no new trial: what is left is for retraining the best one

    clock = Clock()

    def search_deadline() -> float:
        # Retraining the best config costs up to 3 epochs at the slowest pace seen so far (a quarter of the
        # budget before any trial has finished).
        per_epoch = max(clock.epoch_seconds) if clock.epoch_seconds else 0.25 * budget_s / EPOCHS[1]
        return hard_end() - EPOCHS[1] * per_epoch

    best_params: dict = {}

    def model_init(trial):
        from autotune.training.model import build_model

        if trial is not None:
            rank = trial.suggest_int("lora_rank", *RANK_RANGE, log=True)
            alpha = trial.suggest_float("lora_alpha", *ALPHA_RANGE)
        else:
            rank, alpha = best_params.get("lora_rank", 8), best_params.get("lora_alpha", 16.0)
        from peft import LoraConfig, get_peft_model

        model = build_model(ModelConfig(num_hidden_layers=num_hidden_layers, max_length=max_length), labels)
        return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS,
                                                lora_dropout=LORA_DROPOUT, modules_to_save=["classifier"]))

    def hp_space(trial):
        clock.trial = trial
        bs = trial.suggest_categorical("per_device_train_batch_size", list(BATCH_SIZES))
        params = {"learning_rate": trial.suggest_float("learning_rate", *LR_RANGE["lora"], log=True),
                  "per_device_train_batch_size": bs,
                  "num_train_epochs": trial.suggest_int("num_train_epochs", *EPOCHS)}
        params["eval_steps"] = math.ceil(math.ceil(n_train / bs) / 2)  # every half epoch
        return params

    def compute_metrics(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    def make_trainer(**overrides) -> Trainer:
        # label_names: Trainer cannot find the label argument through a PeftModel's forward(*args, **kwargs).
        args = TrainingArguments(**{
            "output_dir": str(workdir / "hf"), "eval_strategy": "steps", "eval_steps": 10, "save_strategy": "no",
            "logging_strategy": "no", "report_to": "none", "disable_tqdm": True, "use_cpu": True, "seed": seed,
            "per_device_eval_batch_size": EVAL_BATCH, "weight_decay": WEIGHT_DECAY, "warmup_steps": WARMUP,
            "max_grad_norm": CLIP, "lr_scheduler_type": "linear", "label_names": ["labels"],
            "dataloader_pin_memory": False, **overrides})
        return Trainer(model_init=model_init, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                       data_collator=DataCollatorWithPadding(tok), compute_metrics=compute_metrics,
                       callbacks=[clock])

    trainer = make_trainer()
    storage = optuna.storages.InMemoryStorage()
    best_run = None
    try:
        best_run = trainer.hyperparameter_search(
            hp_space=hp_space, compute_objective=lambda m: m["eval_accuracy"], n_trials=10_000,
            direction="maximize", backend="optuna", timeout=max(1.0, hard_end() - time.time()),
            sampler=optuna.samplers.TPESampler(seed=seed), storage=storage, study_name="hf")
    except ValueError:  # no trial finished: study.best_trial raises
        pass
    search_end = time.time() - t0
    study = optuna.load_study(study_name="hf", storage=storage)
    states = [t.state for t in study.trials]
    cut_in_search = clock.cut
    n_complete = sum(s == optuna.trial.TrialState.COMPLETE for s in states)
    out_extra = {"search_seconds": round(search_end, 2)}
    test_acc = val_best = time_to_best = best_config = None
    if best_run is not None:
        best_trial = study.best_trial
        val_best = best_trial.value
        time_to_best = round(best_trial.datetime_complete.timestamp() - t0, 2)
        best_params.update(best_run.hyperparameters)
        best_config = {"method": "lora", **best_run.hyperparameters}
        # Trainer returns hyperparameters, not a model: train the best config once more (same seed, so the same
        # model as in its trial). A fresh Trainer: setting them on the search's trainer.args would keep the last
        # trial's batch size (Trainer copies it to a private field only in its hp-search setup).
        clock.trial = None
        trainer = make_trainer(eval_strategy="no", learning_rate=best_params["learning_rate"],
                               per_device_train_batch_size=best_params["per_device_train_batch_size"],
                               num_train_epochs=best_params["num_train_epochs"])
        trainer.train()
        out_extra["retrain_cut"] = clock.cut > cut_in_search
        out_extra["retrain_seconds"] = round(time.time() - t0 - search_end, 2)
        pred = trainer.predict(test_ds)
        test_acc = float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())
    return _summary(t0, clock.curve, test_acc, val_best, len(states), n_complete - cut_in_search,
                    sum(s == optuna.trial.TrialState.PRUNED for s in states), cut_in_search,
                    sum(s == optuna.trial.TrialState.FAIL for s in states), time_to_best, best_config, **out_extra)


PEERS = {"bare_asha": run_bare_asha, "random": run_random, "hf_trainer": run_hf_trainer}


def main() -> None:
    ap = argparse.ArgumentParser(description="Run one benchmark peer and write its JSON.")
    ap.add_argument("--peer", choices=sorted(PEERS), required=True)
    ap.add_argument("--data", required=True, help="a bench/corpora.py name or a text,label CSV")
    ap.add_argument("--budget", type=float, required=True, help="seconds, from process start to a test score")
    ap.add_argument("--seed", type=int, default=0, help="search seed (the split always uses seed 0)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=3, help="encoder layers kept (num_hidden_layers)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary folder")
    ap.add_argument("--cache-dir", type=Path, default=None, help="where data sets are cached")
    args = ap.parse_args()

    from bench import corpora as bench_datasets

    csv_path = Path(args.data)
    if not csv_path.is_file():
        csv_path = bench_datasets.load(args.data, args.cache_dir or bench_datasets.default_cache_dir())
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"peer_{args.peer}_"))
    result = PEERS[args.peer](csv_path, args.budget, args.seed, workdir, max_length=args.max_length,
                              num_hidden_layers=args.layers, t0=T_PROCESS)
    result.update({"peer": args.peer, "data": args.data, "budget_s": args.budget, "seed": args.seed,
                   "num_hidden_layers": args.layers, "max_length": args.max_length})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    brief = {k: result[k] for k in ("test_accuracy", "val_best", "trials", "completed", "pruned", "cut", "failed",
                                    "seconds", "time_to_best_s", "best_config")}
    print(json.dumps(brief))


if __name__ == "__main__":
    main()
