"""What a fine-tuning method is: a typed set of knobs plus `apply()`, which turns a model into a
`Prepared` model whose trainable tensors are exactly the ones the method claims.

A method module imports torch/peft only inside functions, so the config layer can read every method's
knobs (for validation and search-space checks) without heavy imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


class MethodParams(BaseModel):
    """Knobs common to every method. Subclasses add their own; all knobs have defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float = Field(1e-4, gt=0, le=1.0, description="Peak AdamW learning rate (linear warmup, linear decay).")
    epochs: float | None = Field(
        None, gt=0, le=1000, description="Passes over the training split for this trial. null = training.epochs."
    )
    batch_size: int | None = Field(None, ge=1, le=4096, description="Training batch size of this trial. null = training.batch_size.")


class LayerChoice(MethodParams):
    """Knobs of a method that can be limited to some encoder layers: by index, or the k layers the job's
    layer-importance probe ranked highest (search/layer_probe.py; in a space: `layers: {importance_top_k: ...}`)."""

    layers: list[int] | None = Field(None, min_length=1, description="0-based encoder layers to train / adapt (null = all).")
    importance_top_k: int | None = Field(
        None, ge=1, le=1000,
        description="Train / adapt only the k encoder layers the layer-importance probe ranks highest (gradient "
                    "energy per weight on a few training batches, computed once per job before the search).")

    @model_validator(mode="after")
    def _one_layer_choice(self):
        if self.layers is not None and self.importance_top_k is not None:
            raise ValueError("give either layers or importance_top_k, not both")
        return self


def resolve_importance(method: str, params: MethodParams, ranking: list[int] | None) -> MethodParams:
    """`importance_top_k: k` -> `layers:` the probe's top k (sorted), so the trial records - and validate and
    deploy rebuild - concrete layers. Other params are returned as they are."""
    k = getattr(params, "importance_top_k", None)
    if k is None:
        return params
    from autotune.errors import TrialFailed

    if not ranking:
        raise TrialFailed(f"{method}.importance_top_k needs the layer-importance ranking, which the tune stage "
                          f"computes before the search; this trial was started without it")
    if k > len(ranking):
        raise TrialFailed(f"{method}.importance_top_k: {k} is more layers than the model has ({len(ranking)})")
    return params.model_copy(update={"layers": sorted(ranking[:k]), "importance_top_k": None})


class Prepared:
    """A model made ready for training by a method.

    Default behaviour: the trainable tensors are the parameters with `requires_grad`; the exported model is
    the training model itself. Methods override what differs (LoRA merges, sparse stores deltas).
    """

    def __init__(self, model: "nn.Module", describe: str = ""):
        self.model = model
        self.describe = describe

    # --- what trains -------------------------------------------------------------------------------
    def trainable_named_parameters(self) -> list[tuple[str, "torch.nn.Parameter"]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    @property
    def trainable_params(self) -> int:
        """Number of scalar entries the optimizer updates (what every trial reports)."""
        return sum(p.numel() for _, p in self.trainable_named_parameters())

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: no decay on biases and LayerNorm weights (the usual transformer recipe)."""
        decay, no_decay = [], []
        for name, p in self.trainable_named_parameters():
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def after_optimizer_step(self, step: int) -> None:
        """Hook for methods that must act after each step (e.g. AdaLoRA's rank allocation)."""

    # --- checkpoint and export ---------------------------------------------------------------------
    def trainable_state(self) -> dict[str, "torch.Tensor"]:
        """Only the tensors that training changed: enough to rebuild the model from the base weights."""
        return {n: p.detach().contiguous().clone() for n, p in self.trainable_named_parameters()}

    def load_trainable_state(self, state: dict[str, "torch.Tensor"]) -> None:
        params = dict(self.trainable_named_parameters())
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the method: missing={missing[:5]} unexpected={unexpected[:5]}")
        import torch

        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state[name])

    def export(self) -> "nn.Module":
        """A plain AutotuneForSequenceClassification with the method folded into its weights."""
        return self.model


class Method:
    """One fine-tuning method. Subclass, set `name`, `Params`, `summary`, implement `apply`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    cost_rank: ClassVar[int] = 50  # relative cost of a training step (lower = cheaper): start-up trials go cheapest first
    frozen_encoder: ClassVar[bool] = False  # trains only the classifier: trials run on cached pooled features
    Params: ClassVar[type[BaseModel]] = MethodParams
    trains: ClassVar[bool] = True  # False: apply() fits the model without gradient steps; the trial only evaluates

    def apply(self, model: "nn.Module", params: MethodParams, ctx: "ApplyContext") -> Prepared:
        raise NotImplementedError

    def calibration_batches(self, params: BaseModel) -> int:
        """How many training batches apply() needs in `ctx.calibration_batches` (0: none, ALL_BATCHES: the
        whole training split). The trial hands them over for a fresh apply, never for a restore."""
        return 0

    def unmet_requirements(self) -> list[str]:
        """What this machine lacks for the method, as 'what must hold (got what was found)' lines; checked when
        a space that lists the method is validated. Empty: runs anywhere."""
        return []


ALL_BATCHES = 2**31 - 1  # Method.calibration_batches(): the whole training split


class ApplyContext(BaseModel):
    """What a method may need beyond its knobs: a sample of training batches (for gradient-based
    selection), the trial's planned number of optimizer steps (for schedules such as AdaLoRA's) and a seed.
    Kept small and explicit."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    seed: int = 0
    calibration_batches: list[Any] = Field(default_factory=list)
    total_steps: int | None = None  # optimizer steps the trial plans (training.loop.rung_steps); None = unknown
    restore_state: dict[str, Any] | None = None  # a trainable_state() to rebuild exactly (no re-selection)


def encoder_layers(model: "nn.Module"):
    """The list of transformer blocks of the encoder (BERT-like `encoder.layer`, or DistilBERT-like)."""
    enc = model.encoder
    for path in ("encoder.layer", "transformer.layer", "layers", "layer", "h"):
        obj = enc
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"cannot find the transformer layers of {type(enc).__name__}")


def check_layers(method: str, layers: list[int] | None, model: "nn.Module") -> list[int] | None:
    """The sorted distinct layer indices, or TrialFailed naming the ones the model does not have."""
    if layers is None:
        return None
    from autotune.errors import TrialFailed

    n = len(encoder_layers(model))
    chosen = sorted(set(layers))
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise TrialFailed(f"{method}.layers: layer(s) {bad} do not exist (the model has {n} layers: 0..{n - 1})")
    return chosen


def layers_of(method: str, params: MethodParams, model: "nn.Module") -> list[int] | None:
    """The params' `layers`, checked against the model; an unresolved `importance_top_k` is refused (the trial
    resolves it into `layers` with resolve_importance before apply)."""
    if getattr(params, "importance_top_k", None) is not None:
        from autotune.errors import TrialFailed

        raise TrialFailed(f"{method}.importance_top_k was not resolved into layers (resolve_importance)")
    return check_layers(method, params.layers, model)


def freeze_all(model: "nn.Module") -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze_head(model: "nn.Module") -> None:
    for p in model.classifier.parameters():
        p.requires_grad_(True)


def train_only(model: "nn.Module", params) -> int:
    """Freeze everything, then train the head and the given encoder parameters; returns their entry count."""
    freeze_all(model)
    unfreeze_head(model)
    n = 0
    for p in params:
        p.requires_grad_(True)
        n += p.numel()
    return n
