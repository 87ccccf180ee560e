"""`vera`: VeRA via peft (Kopiczko et al. 2024, "VeRA: Vector-based Random Matrix Adaptation"): one pair of
frozen random low-rank matrices (A: rank x d_in, B: d_out x rank) shared by every adapted module, and per
module two trained scaling vectors, d (rank entries, on A's output) and b (d_out entries, on B's output):
the update of a module is diag(b) B diag(d) A. A module trains d_out + rank entries whatever its input size,
so the rank can be far larger than LoRA's (peft's default is 256). Export merges the update into the weights.

The shared matrices come from peft's fixed PRNG key (`projection_prng_key` 0), not from the trial's seed:
the same knobs give the same A and B, so a checkpoint of the two vectors per module rebuilds the model.
peft sizes A and B for the largest adapted module and slices them for smaller ones, so modules of different
shapes may be mixed (the all_linear preset); the default targets, query and value, have the same shape, as
in the paper. b starts at zero (the adapted model starts as the base model) and d at `d_initial`.
"""

from __future__ import annotations

from pydantic import Field

from autotune.methods.base import Method, layers_of
from autotune.methods.lora import AdapterPlacement, LoraPrepared, resolve_targets, unfreeze_peft_head


class VeraParams(AdapterPlacement):
    learning_rate: float = Field(1e-2, gt=0, le=1.0, description="Peak AdamW learning rate (the scaling vectors need a large one).")
    rank: int = Field(256, ge=1, le=4096, description="Rank of the shared random matrices (trains rank entries per module).")
    d_initial: float = Field(0.1, gt=0, le=1.0, description="Initial value of every entry of the d vectors (small values, <= 0.1, "
                                                              "are recommended).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")


class VeraMethod(Method):
    name = "vera"
    cost_rank = 31  # as LoRA: two thin products per module, no weight gradients
    summary = "VeRA: shared frozen random matrices, trained scaling vectors per module (peft), merged at export"
    Params = VeraParams

    def apply(self, model, params: VeraParams, ctx):
        from peft import VeraConfig, get_peft_model

        layers = layers_of("vera", params, model)
        targets = resolve_targets("vera", model, params.target_modules, params.target_preset)
        config = VeraConfig(
            r=params.rank, d_initial=params.d_initial, vera_dropout=params.dropout, target_modules=targets,
            layers_to_transform=layers, projection_prng_key=0, bias="none",
        )
        peft_model = get_peft_model(model, config)
        unfreeze_peft_head(peft_model)
        return LoraPrepared(peft_model, describe=f"VeRA r={params.rank} on {targets}" + (f" of layers {layers}" if layers else ""))
