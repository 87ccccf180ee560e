"""The explicit train/eval loop every trial runs. Read it top to bottom:

    for each step: batch -> forward -> loss -> backward -> clip -> AdamW step -> LR schedule
    at each rung (geometric in examples seen: 1/8, 1/4, 1/2, 1, 2 epochs ...): evaluate on validation,
    hand metrics to `on_rung`

Units: steps are optimizer steps; seconds are wall-clock; samples/s counts training examples only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from autotune.config.job import TrainingConfig
from autotune.errors import TrialFailed


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    macro_f1: float
    predictions: list[int]


def batches(split: dict[str, Any], batch_size: int, order=None):
    """Yield dicts of torch tensors, trimmed to the longest row of each batch (padding is right-sided)."""
    import torch

    n = len(split["labels"])
    idx = order if order is not None else range(n)
    idx = list(idx)
    for start in range(0, n, batch_size):
        sel = idx[start : start + batch_size]
        if "features" in split:  # cached frozen-encoder features (training/features.py)
            yield {"features": torch.as_tensor(split["features"][sel]), "labels": torch.as_tensor(split["labels"][sel])}
            continue
        mask = torch.as_tensor(split["attention_mask"][sel])
        width = max(1, int(mask.sum(1).max()))
        if "hidden" in split:  # cached outputs of the frozen bottom layers (training/prefix.py), one per row
            rows = [split["hidden"][i] for i in sel]
            hidden = rows[0].new_zeros((len(rows), width, rows[0].shape[-1]))
            for j, row in enumerate(rows):
                hidden[j, : row.shape[0]] = row
            yield {"inputs_embeds": hidden, "attention_mask": mask[:, :width],
                   "labels": torch.as_tensor(split["labels"][sel])}
            continue
        yield {
            "input_ids": torch.as_tensor(split["input_ids"][sel])[:, :width],
            "attention_mask": mask[:, :width],
            "labels": torch.as_tensor(split["labels"][sel]),
        }


def bucket_by_length(order: list[int], split: dict[str, Any], batch_size: int, generator,
                     window_batches: int = 50) -> list[int]:
    """Reorder a shuffled epoch so each batch holds rows of similar length (less padding, same rows).

    Within windows of `window_batches` batches of the shuffled order, rows are sorted by token count and cut
    into batches; the batches of the whole epoch are then shuffled with the same seeded generator. Every row
    is still seen once per epoch, in an order that depends only on the seed (as HF's group_by_length)."""
    import torch

    lengths = split["attention_mask"].sum(1) if "attention_mask" in split else None
    if lengths is None:  # cached features: nothing to pad
        return order
    window = batch_size * window_batches
    chunks: list[list[int]] = []
    for start in range(0, len(order), window):
        part = sorted(order[start : start + window], key=lambda i: int(lengths[i]))
        chunks += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    full = [c for c in chunks if len(c) == batch_size]
    short = [c for c in chunks if len(c) < batch_size]  # at most one: it stays last, as batches() cuts every batch_size
    perm = torch.randperm(len(full), generator=generator).tolist()
    return [i for c in perm for i in full[c]] + [i for c in short for i in c]


def macro_f1(labels: list[int], preds: list[int], num_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions (as sklearn)."""
    scores = []
    for c in sorted(set(labels) | set(preds)):
        tp = sum(1 for y, p in zip(labels, preds) if y == c and p == c)
        fp = sum(1 for y, p in zip(labels, preds) if y != c and p == c)
        fn = sum(1 for y, p in zip(labels, preds) if y == c and p != c)
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / max(1, len(scores))


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()} if device.type != "cpu" else batch


def evaluate(model, split: dict[str, Any], batch_size: int) -> EvalResult:
    import torch

    model.eval()
    device = next(model.parameters()).device
    total_loss, preds = 0.0, []
    with torch.no_grad():
        for batch in batches(split, batch_size):
            out = model(**_to(batch, device))
            total_loss += float(out.loss) * len(batch["labels"])
            preds += out.logits.argmax(-1).tolist()
    labels = split["labels"].tolist()
    n = len(labels)
    num_labels = int(getattr(getattr(model, "config", None), "num_labels", 0) or (max(labels) + 1))
    acc = sum(int(p == y) for p, y in zip(preds, labels)) / n
    return EvalResult(total_loss / n, acc, macro_f1(labels, preds, num_labels), preds)


def schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warmup to 1, then linear decay to 0 (multiplier on the peak learning rate)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def examples_after(step: int, n_train: int, batch_size: int) -> int:
    """Training examples seen after `step` optimizer steps (each epoch's last batch may be short)."""
    steps_per_epoch = math.ceil(n_train / batch_size)
    return (step // steps_per_epoch) * n_train + min((step % steps_per_epoch) * batch_size, n_train)


def rung_count(epochs: float, cfg: TrainingConfig) -> int:
    """How many rungs a trial of `epochs` epochs has (before rounding to whole steps merges any)."""
    if cfg.evals_per_epoch is not None:
        return max(1, math.ceil(epochs * cfg.evals_per_epoch))
    n, fidelity = 1, cfg.first_rung
    while fidelity < epochs * (1 - 1e-9):
        n, fidelity = n + 1, fidelity * cfg.rung_growth
    return n


def rung_steps(n_train: int, cfg: TrainingConfig) -> tuple[int, list[int]]:
    """(total optimizer steps, the step after which each rung's evaluation happens).

    Geometric (default): the first rung comes after `first_rung` epochs' worth of training examples, each
    next one after `rung_growth` times as many, and the trial's last step is always the last rung - so
    rungs sit at the same numbers of examples seen whatever a trial's batch size or epochs, and ASHA
    compares trials at equal fidelity. With `evals_per_epoch`: evenly spaced rungs instead."""
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    if cfg.evals_per_epoch is not None:
        n_rungs = max(1, math.ceil(cfg.epochs * cfg.evals_per_epoch))
        return total, sorted({max(1, round(total * (r + 1) / n_rungs)) for r in range(n_rungs)})
    rungs, target = {total}, cfg.first_rung * n_train
    last = examples_after(total, n_train, cfg.batch_size)
    step = 0
    while target < last:
        while examples_after(step, n_train, cfg.batch_size) < target:
            step += 1
        rungs.add(max(1, step))
        target *= cfg.rung_growth
    return total, sorted(rungs)


def fit_plan(step: int, total_steps: int, rungs: list[int], seconds_per_step: float, seconds_left: float,
             eval_seconds: float) -> tuple[int, list[int]]:
    """Budget-aware plan: when the steps still planned would run past the deadline, end the trial earlier -
    at the last step that leaves time for its final evaluation - so it finishes (annealed, evaluated) instead
    of being cut mid-plan. Only ever shortens; rungs past the new end are dropped, the new end is a rung."""
    if seconds_per_step <= 0 or (total_steps - step) * seconds_per_step + eval_seconds <= seconds_left:
        return total_steps, rungs
    fits = step + max(1, int((seconds_left - eval_seconds) / seconds_per_step))
    if fits >= total_steps:
        return total_steps, rungs
    return fits, sorted({r for r in rungs if r < fits} | {fits})


def clip_grad_norm(params, max_norm: float) -> None:
    """`torch.nn.utils.clip_grad_norm_`, without its second pass over every gradient when nothing is clipped.

    clip_grad_norm_ always multiplies each gradient by min(1, max_norm / (norm + 1e-6)), also when that is 1:
    for full fine-tuning a needless read and write of every gradient each step (~half of its cost, ~2% of a
    step on a CPU, bench/throughput.py). The result is the same to the bit: the scale is torch's own expression,
    in the norm's dtype, and it is applied exactly when it is below 1."""
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norm = torch.nn.utils.get_total_norm(grads)
    if max_norm / (norm + 1e-6) < 1:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)


def train(prepared, data: dict[str, dict[str, Any]], cfg: TrainingConfig, learning_rate: float, seed: int,
          on_rung: Callable[[dict[str, float], int], None], start_step: int = 0,
          deadline: float | None = None) -> dict[str, float]:
    """Train `prepared.model` on data['train'], evaluating on data['validation'] at every rung.

    `on_rung(metrics, rung)` is called after each evaluation (the trial reports to Ray Tune there).
    `start_step` > 0 continues a trial restored from its checkpoint: the data order and learning-rate
    schedule pick up where they were (AdamW's moments restart from zero: checkpoints hold weights only).
    `deadline` (absolute time, from a budget): the plan is shortened to end by then (see fit_plan); the
    learning-rate schedule then decays to zero at the new end. Raises TrialFailed on a non-finite loss.
    Returns the last metrics.
    """
    import torch

    torch.manual_seed(seed)
    model = prepared.model
    device = next(model.parameters()).device  # the trial moved the model to its GPU, if it has one
    train_split, val_split = data["train"], data["validation"]
    n_train = len(train_split["labels"])
    total_steps, rungs = rung_steps(n_train, cfg)
    optimizer = torch.optim.AdamW(prepared.param_groups(cfg.weight_decay), lr=learning_rate)
    lr_factor = schedule(int(cfg.warmup_ratio * total_steps), total_steps)
    order_gen = torch.Generator().manual_seed(seed)  # same data order for every trial of a job: a fair race

    trainable = prepared.trainable_params
    trained = [p for g in optimizer.param_groups for p in g["params"]]
    step, seen, since_rung_loss, since_rung_n = 0, 0, 0.0, 0
    start = time.perf_counter()
    wall_start, trained_steps, eval_seconds, planned = time.time(), 0, 0.0, total_steps
    metrics: dict[str, float] = {}
    while step < total_steps:
        order = torch.randperm(n_train, generator=order_gen).tolist()
        if cfg.length_bucketing:
            order = bucket_by_length(order, train_split, cfg.batch_size, order_gen)
        for batch in batches(train_split, cfg.batch_size, order):
            if step < start_step:  # restored trial: replay the data order without training
                step += 1
                continue
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * lr_factor(step)
            model.train()
            loss = model(**_to(batch, device)).loss
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrialFailed(f"loss became {loss_value} at step {step} (learning_rate={learning_rate:g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_grad_norm(trained, cfg.max_grad_norm)
            optimizer.step()
            prepared.after_optimizer_step(step)
            step += 1
            trained_steps += 1
            if deadline is not None and trained_steps % 4 == 0:  # re-plan against the budget every few steps
                now = time.time()
                per_step = (now - wall_start - eval_seconds * len([r for r in rungs if start_step < r <= step])) / trained_steps
                eval_est = eval_seconds or 8 * per_step  # a validation pass costs ~8 steps before one is timed
                new_total, new_rungs = fit_plan(step, total_steps, rungs, per_step, deadline - now, eval_est + 1.0)
                if new_total < total_steps:
                    total_steps, rungs = new_total, new_rungs
                    lr_factor = schedule(min(int(cfg.warmup_ratio * planned), max(0, total_steps - 1)), total_steps)
            seen += len(batch["labels"])
            since_rung_loss += loss_value * len(batch["labels"])
            since_rung_n += len(batch["labels"])

            if step in rungs:
                rung = rungs.index(step) + 1
                eval_start = time.perf_counter()
                ev = evaluate(model, val_split, cfg.eval_batch_size)
                eval_seconds = time.perf_counter() - eval_start
                elapsed = time.perf_counter() - start
                metrics = {
                    "val_accuracy": ev.accuracy,
                    "val_macro_f1": ev.macro_f1,
                    "val_loss": ev.loss,
                    "train_loss": since_rung_loss / max(1, since_rung_n),
                    "trainable_params": trainable,
                    "optimizer_state_bytes": _optimizer_state_bytes(optimizer),
                    "rung": rung,
                    "total_rungs": len(rungs),
                    "step": step,
                    "examples": examples_after(step, n_train, cfg.batch_size),  # the fidelity ASHA compares at
                    "epoch": step / math.ceil(n_train / cfg.batch_size),
                    "seconds": elapsed,
                    "samples_per_s": seen / elapsed if elapsed > 0 else 0.0,
                    "eval_seconds": eval_seconds,  # one pass over the validation split (budget planning)
                    "planned_steps": planned,  # before a budget shortened the plan (total_rungs says where it ends)
                }
                since_rung_loss, since_rung_n = 0.0, 0
                on_rung(metrics, rung)
            if step >= total_steps:
                break
    return metrics


def evaluate_only(prepared, data: dict[str, dict[str, Any]], cfg: TrainingConfig,
                  on_rung: Callable[[dict[str, float], int], None]) -> dict[str, float]:
    """For a method fitted without gradient steps (`Method.trains = False`, e.g. zero_shot): one evaluation
    on data['validation'], reported as the trial's only rung with the keys `train` reports except train_loss
    (step 0, no optimizer state; `examples` = the training examples the fit looked at). Returns the metrics."""
    start = time.perf_counter()
    ev = evaluate(prepared.model, data["validation"], cfg.eval_batch_size)
    elapsed = time.perf_counter() - start
    metrics = {
        "val_accuracy": ev.accuracy,
        "val_macro_f1": ev.macro_f1,
        "val_loss": ev.loss,
        "trainable_params": prepared.trainable_params,
        "optimizer_state_bytes": 0,
        "rung": 1,
        "total_rungs": 1,
        "step": 0,
        "examples": len(data["train"]["labels"]),
        "epoch": 0.0,
        "seconds": elapsed,
        "samples_per_s": 0.0,
        "eval_seconds": elapsed,
        "planned_steps": 0,
    }
    on_rung(metrics, 1)
    return metrics


def _optimizer_state_bytes(optimizer) -> int:
    """Bytes held by AdamW's moment estimates: scales with trained entries, not with the model."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if hasattr(value, "numel") and value.ndim > 0:
                total += value.numel() * value.element_size()
    return total
