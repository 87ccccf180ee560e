"""`loha`: LoHa via peft (the LyCORIS adapter after FedPara, Hyeon-Woo et al. 2022): the update of a d_out x
d_in weight is the Hadamard (element-wise) product of two rank-r products, (W1a W1b) * (W2a W2b) x alpha / r.
Same entries as a LoRA of rank 2r (2r (d_in + d_out) per module), but the product's rank can reach r^2.
W2b starts at zero, so the adapted model starts as the base model. Export merges the update into the weights.

peft's LyCORIS adapters have no dropout on the input: `rank_dropout` drops rows of the update during
training, `module_dropout` skips a module's whole update during training. `LycorisParams` is shared with
`lokr`.
"""

from __future__ import annotations

from pydantic import Field

from autotune.methods.base import Method, layers_of
from autotune.methods.lora import AdapterPlacement, LoraPrepared, resolve_targets, unfreeze_peft_head


class LycorisParams(AdapterPlacement):
    learning_rate: float = Field(5e-3, gt=0, le=1.0, description="Peak AdamW learning rate (about 10x LoRA's: from its "
                                                                  "initialisation the update grows more slowly per step).")
    rank: int = Field(8, ge=1, le=1024, description="Rank r of the low-rank factors.")
    alpha: float = Field(8.0, gt=0, description="Scaling numerator (the update is scaled by alpha / r).")
    rank_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Training only: probability of dropping each output row of the update.")
    module_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Training only: probability of skipping a module's update for a step.")


def lycoris_common(method: str, model, params: LycorisParams) -> dict:
    """The LoHaConfig / LoKrConfig arguments both methods share (targets checked, layers checked)."""
    return dict(
        r=params.rank, alpha=params.alpha, rank_dropout=params.rank_dropout, module_dropout=params.module_dropout,
        # a list of names, as for lora: peft's layers_to_transform is ignored with a regex
        target_modules=resolve_targets(method, model, params.target_modules, params.target_preset),
        layers_to_transform=layers_of(method, params, model),
    )


class LoHaParams(LycorisParams):
    pass


class LoHaMethod(Method):
    name = "loha"
    cost_rank = 33  # rebuilds each adapted weight's dense update every step (an extra full-size product)
    summary = "LoHa: Hadamard product of two low-rank products (peft), merged at export"
    Params = LoHaParams

    def apply(self, model, params: LoHaParams, ctx):
        from peft import LoHaConfig, get_peft_model

        kw = lycoris_common("loha", model, params)
        peft_model = get_peft_model(model, LoHaConfig(**kw))
        unfreeze_peft_head(peft_model)
        layers = kw["layers_to_transform"]
        return LoraPrepared(peft_model, describe=f"LoHa r={params.rank} on {kw['target_modules']}"
                                                 + (f" of layers {layers}" if layers else ""))
