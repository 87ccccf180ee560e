"""`lora`: low-rank adapters via peft on the chosen linear modules (optionally only some layers); the
classifier head trains densely. Export merges the adapters into the weights (`merge_and_unload`).

Its descendants are knobs of the same method: DoRA (`use_dora`: a trained magnitude per output row beside
the low-rank direction), rsLoRA (`use_rslora`), and initialisations that run on CPU (`init`): PiSSA and
OLoRA start the adapter on the principal (SVD / QR) part of each weight and leave the residual in the base
weight, so they are deterministic functions of the pretrained weights and a checkpoint of the adapters
rebuilds the model exactly. What to adapt is a list of module names (`target_modules`) or a preset.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from autotune.errors import TrialFailed
from autotune.methods.base import LayerChoice, Method, Prepared, layers_of

DEFAULT_TARGETS = ["query", "value"]
Preset = Literal["attention_qv", "attention_all", "all_linear"]

# preset -> module names per naming family (BERT-like: BERT, RoBERTa, MiniLM, ELECTRA; DistilBERT). Names are
# matched as dotted suffixes of module paths, as peft does: `attention.output.dense` is the attention output
# projection only, `dense` is every dense layer (attention output, intermediate, output) of a BERT block.
PRESETS: dict[str, dict[str, list[str]]] = {
    "bert": {
        "attention_qv": ["query", "value"],
        "attention_all": ["query", "key", "value", "attention.output.dense"],
        "all_linear": ["query", "key", "value", "dense"],
    },
    "distilbert": {
        "attention_qv": ["q_lin", "v_lin"],
        "attention_all": ["q_lin", "k_lin", "v_lin", "out_lin"],
        "all_linear": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    },
}
FAMILY_MARKERS = {"bert": {"query", "key", "value"}, "distilbert": {"q_lin", "k_lin", "v_lin"}}


class AdapterPlacement(LayerChoice):
    """Where an adapter goes - modules by name or by role, and which encoder layers: lora and its descendants."""

    target_modules: list[str] | None = Field(
        None, min_length=1,
        description="Names (or dotted name suffixes, e.g. attention.output.dense) of the linear modules to adapt. "
                    "null = the target_preset, or [query, value] when no preset is given.")
    target_preset: Preset | None = Field(
        None, description="Modules to adapt by role instead of by name: attention_qv (query, value), attention_all "
                          "(query, key, value, attention output), all_linear (every linear layer of the blocks).")

    @model_validator(mode="after")
    def _one_way_to_target(self):
        if self.target_modules is not None and self.target_preset is not None:
            raise ValueError("give either target_modules or target_preset, not both")
        return self


class LoraParams(AdapterPlacement):
    learning_rate: float = Field(5e-4, gt=0, le=1.0, description="Peak AdamW learning rate.")
    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r).")
    use_dora: bool = Field(False, description="DoRA: also train a magnitude per output row (weight-decomposed LoRA).")
    init: Literal["default", "gaussian", "pissa", "olora", "orthogonal"] = Field(
        "default",
        description="Adapter initialisation: default (Kaiming A, zero B: starts as the base model), gaussian (A ~ "
                    "N(0, 1/r), zero B), pissa (principal singular vectors; the residual stays in the base weight), "
                    "olora (QR of the weight, likewise), orthogonal (orthogonal A and B, base untouched; even rank).")

    @model_validator(mode="after")
    def _consistent(self):
        if self.init == "orthogonal" and self.rank % 2:
            raise ValueError(f"init orthogonal needs an even rank (got rank={self.rank})")
        return self


def resolve_targets(method: str, model, target_modules: list[str] | None, preset: str | None) -> list[str]:
    """The module names to adapt on this model: the given names (each must exist) or the preset's names for
    the model's naming family. Raises TrialFailed when neither fits the model."""
    names = [n for n, _ in model.encoder.named_modules()]
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    if target_modules is None:
        if preset is None:
            target_modules = DEFAULT_TARGETS
        else:
            family = next((f for f, marks in FAMILY_MARKERS.items() if marks <= leaves), None)
            if family is None:
                raise TrialFailed(f"{method}.target_preset: {preset!r} is defined for BERT-like and DistilBERT-like "
                                  f"encoders, not {type(model.encoder).__name__}: give target_modules instead")
            target_modules = PRESETS[family][preset]
    missing = [m for m in target_modules if not any(n == m or n.endswith("." + m) for n in names)]
    if missing:
        raise TrialFailed(f"{method}.target_modules: {missing} not found in {type(model.encoder).__name__}")
    return list(target_modules)


def unfreeze_peft_head(peft_model) -> None:
    for p in peft_model.base_model.model.classifier.parameters():
        p.requires_grad_(True)  # the head is new: it must train densely


class LoraPrepared(Prepared):
    def export(self):
        return self.model.merge_and_unload()


class LoraMethod(Method):
    name = "lora"
    cost_rank = 30  # no weight gradients or optimizer state for the encoder
    summary = "low-rank adapters (peft; DoRA, rsLoRA, PiSSA/OLoRA init), merged at export"
    Params = LoraParams

    def apply(self, model, params: LoraParams, ctx):
        from peft import LoraConfig, get_peft_model

        layers = layers_of("lora", params, model)
        targets = resolve_targets("lora", model, params.target_modules, params.target_preset)
        init = True if params.init == "default" else params.init
        config = LoraConfig(
            r=params.rank,
            lora_alpha=params.alpha,
            lora_dropout=params.dropout,
            # peft's layers_to_transform only works with a list of names; a regex would ignore it.
            target_modules=targets,
            layers_to_transform=layers,
            use_rslora=params.use_rslora,
            use_dora=params.use_dora,
            init_lora_weights=init,
            bias="none",
        )
        peft_model = get_peft_model(model, config)
        unfreeze_peft_head(peft_model)
        extras = [x for x, on in (("DoRA", params.use_dora), ("rsLoRA", params.use_rslora),
                                  (f"init={params.init}", params.init != "default")) if on]
        return LoraPrepared(peft_model, describe=f"LoRA r={params.rank} on {targets}" + "".join(f", {x}" for x in extras))
