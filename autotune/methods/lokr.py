"""`lokr`: LoKr via peft (the LyCORIS adapter; Edalati et al. 2022, KronA; Yeh et al. 2024, LyCORIS): the update
of a d_out x d_in weight is a Kronecker product W1 (x) W2 x alpha / r. peft splits each dimension into two
factors, d_out = a x b and d_in = c x d (a <= b, c <= d, near the square root with `decompose_factor` -1, else
a = c = decompose_factor where it divides), so W1 is a x c and W2 is b x d. W2 is a rank-r product (b r + r d
entries) when r < max(b, d) / 2, else a full matrix (r then plays no part beyond the scale); W1 is full
unless `decompose_both` and r < max(a, c) / 2. W1 starts at zero: the adapted model starts as the base
model. Export merges the update into the weights. Knobs otherwise as `loha` (rank_dropout, module_dropout).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from autotune.methods.base import Method
from autotune.methods.loha import LycorisParams, lycoris_common
from autotune.methods.lora import LoraPrepared, unfreeze_peft_head


class LoKrParams(LycorisParams):
    decompose_factor: int = Field(
        -1, ge=-1, le=4096, description="Size of the small Kronecker factor per dimension (-1: factors near the "
                                        "square root of each dimension).")
    decompose_both: bool = Field(False, description="Also make the small factor W1 a rank-r product (when r < half its larger side).")

    @field_validator("decompose_factor")
    @classmethod
    def _not_zero(cls, v):
        if v == 0:
            raise ValueError("decompose_factor must be -1 (near the square root) or >= 1 (got 0)")
        return v


class LoKrMethod(Method):
    name = "lokr"
    cost_rank = 33  # rebuilds each adapted weight's dense update every step (a Kronecker product)
    summary = "LoKr: Kronecker product of a small and a low-rank factor (peft), merged at export"
    Params = LoKrParams

    def apply(self, model, params: LoKrParams, ctx):
        from peft import LoKrConfig, get_peft_model

        kw = lycoris_common("lokr", model, params)
        config = LoKrConfig(**kw, decompose_factor=params.decompose_factor, decompose_both=params.decompose_both)
        peft_model = get_peft_model(model, config)
        unfreeze_peft_head(peft_model)
        layers = kw["layers_to_transform"]
        return LoraPrepared(peft_model, describe=f"LoKr r={params.rank} on {kw['target_modules']}"
                                                 + (f" of layers {layers}" if layers else ""))
