"""The Ray Tune trainable: one trial = build the model, apply the sampled method, run the train loop,
report every rung (with a checkpoint of the trained tensors) so ASHA can stop weak trials early."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from autotune.config.job import ModelConfig, TrainingConfig
from autotune.config.space import CompiledSpace
from autotune.search.callbacks_keys import DEADLINE_KEY

STATE_FILE = "trainable.safetensors"
RECORD_FILE = "trial.json"


@dataclass(frozen=True)
class TrialSpec:
    """Everything a trial needs besides its sampled config; shipped once through the object store."""

    model: ModelConfig
    training: TrainingConfig
    space: CompiledSpace
    labels: list[str]
    seed: int
    cpus: float
    gpus: float = 0.0
    cache_features: bool = True  # methods with a frozen encoder train on cached pooled features
    layer_ranking: list[int] | None = None  # the layer-importance probe's ranking (importance_top_k), if any


def run_trial(config: dict[str, Any], spec: TrialSpec, data: dict[str, dict[str, Any]]) -> None:
    import torch
    from ray import tune
    from safetensors.torch import save_file

    from autotune.methods import ApplyContext, get_method
    from autotune.methods.base import resolve_importance
    from autotune.training.loop import batches, evaluate_only, rung_steps, train
    from autotune.training.model import build_model

    import time

    setup_start = time.perf_counter()
    # concurrent trials on one box thrash unless each uses only its CPU share
    torch.set_num_threads(max(1, int(spec.cpus)))
    method_name, knobs = spec.space.decode(config)
    method = get_method(method_name)
    params = method.Params(**knobs)  # raises on a bad knob combination: the trial fails, the search goes on
    resolved = resolve_importance(method_name, params, spec.layer_ranking)  # importance_top_k -> concrete layers
    # the layers an importance_top_k stood for, reported with each rung (MLflow tag autotune.layers_trained)
    chosen = {"layers_trained": json.dumps(resolved.layers)} if resolved is not params else {}
    params = resolved
    training = trial_training(spec.training, params)

    torch.manual_seed(spec.seed)  # same head init for every trial of the job
    model = build_model(spec.model, spec.labels)
    restored, start_step = _restore(tune.get_checkpoint())
    # training batches the method asks for at apply time (gradient/Fisher selection, centroids): not on restore
    n_calib = method.calibration_batches(params) if restored is None else 0
    calib = list(itertools.islice(batches(data["train"], training.batch_size), n_calib)) if n_calib else []
    planned_steps, _ = rung_steps(len(data["train"]["labels"]), training)  # schedules planned over the trial
    prepared = method.apply(model, params, ApplyContext(seed=spec.seed, calibration_batches=calib,
                                                        total_steps=planned_steps, restore_state=restored))
    if restored is not None:  # a retried or resumed trial continues from its last rung
        prepared.load_trainable_state(restored)
    if spec.gpus > 0 and torch.cuda.is_available():
        prepared.model.to("cuda")  # Ray set CUDA_VISIBLE_DEVICES to this trial's (share of a) GPU
    cached = bool(method.frozen_encoder and spec.cache_features)
    prefix = None
    if not cached and spec.cache_features and method.trains:  # upper layers only: start from the frozen bottom's output
        from autotune.training.features import cache_key
        from autotune.training.prefix import enable

        data, prefix = enable(prepared, data, spec.training.eval_batch_size, key=cache_key(spec.model, data))
    setup_seconds = time.perf_counter() - setup_start  # model load + method apply + caches (budget planning)
    if cached:  # the encoder never changes: train the head on its output
        from autotune.methods.base import Prepared
        from autotune.training.features import feature_splits, head_on_features

        data, _ = feature_splits(prepared.model, spec.model, data, spec.training.eval_batch_size)
        prepared = Prepared(head_on_features(prepared.model), describe=prepared.describe + " (cached features)")

    import ray

    where = {"node_ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id()}

    def on_rung(metrics: dict[str, float], rung: int) -> None:
        extra = {}  # the ranks an AdaLoRA-like method settled on, with the last rung (JSON: layer -> rank)
        if hasattr(prepared, "final_ranks") and metrics.get("rung") == metrics.get("total_rungs"):
            extra["final_ranks"] = json.dumps(prepared.final_ranks())
        with tempfile.TemporaryDirectory() as tmp:
            save_file(prepared.trainable_state(), os.path.join(tmp, STATE_FILE))
            with open(os.path.join(tmp, RECORD_FILE), "w") as fh:
                json.dump({"method": method_name, "knobs": params.model_dump(mode="json"), "rung": rung,
                       "step": int(metrics["step"]), "metrics": metrics, **extra}, fh)
            tune.report(dict(metrics, method=method_name, setup_seconds=setup_seconds, cached_features=cached,
                             cached_prefix_layers=prefix.depth if prefix is not None else 0, **where, **chosen,
                             **extra),
                        checkpoint=tune.Checkpoint.from_directory(tmp))

    if not method.trains:  # fitted in apply() (zero_shot): no optimizer step, one evaluation, one rung
        evaluate_only(prepared, data, training, on_rung)
        return
    deadline = config.get(DEADLINE_KEY)
    if deadline is not None and (restored is not None or deadline <= time.time() or cached):
        # a resumed job counts its budget anew (its trials keep their plan); a head on cached features is
        # slow only in its first epoch (rows are encoded as they come), so its pace would mislead the plan
        deadline = None
    with prefix.skipping_bottom() if prefix is not None else contextlib.nullcontext():
        train(prepared, data, training, params.learning_rate, spec.seed, on_rung, start_step=start_step,
              deadline=deadline)


def trial_training(training: TrainingConfig, params) -> TrainingConfig:
    """The job's training settings with the trial's own `epochs` / `batch_size` knobs, where it has them."""
    update = {k: getattr(params, k) for k in ("epochs", "batch_size") if getattr(params, k, None) is not None}
    return training.model_copy(update=update) if update else training


def _restore(checkpoint) -> tuple[dict | None, int]:
    """(trainable state, step) from a Tune checkpoint, or (None, 0) for a fresh trial."""
    if checkpoint is None:
        return None, 0
    from safetensors.torch import load_file

    with checkpoint.as_directory() as d:
        state = load_file(os.path.join(d, STATE_FILE))
        with open(os.path.join(d, RECORD_FILE)) as fh:
            record = json.load(fh)
    return state, int(record["step"])
