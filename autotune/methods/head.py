"""`head`: train the classifier only, on top of the frozen (mean-pooled) encoder. The cheap baseline
every search should contain."""

from __future__ import annotations

from pydantic import Field

from autotune.methods.base import Method, MethodParams, Prepared, freeze_all, unfreeze_head


class HeadParams(MethodParams):
    learning_rate: float = Field(3e-3, gt=0, le=1.0, description="Peak AdamW learning rate.")


class HeadMethod(Method):
    name = "head"
    cost_rank = 10  # on cached encoder features: a linear layer
    frozen_encoder = True
    summary = "classifier head only; encoder frozen"
    Params = HeadParams

    def apply(self, model, params, ctx):
        freeze_all(model)
        unfreeze_head(model)
        return Prepared(model, describe="head only")
