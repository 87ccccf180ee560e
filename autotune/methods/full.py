"""`full`: fine-tune all weights, or only the last k encoder layers / an explicit list of layers.

The classifier always trains. When layers are restricted, embeddings stay frozen (the layers below the
first trained one get no useful gradient anyway, and freezing them saves their optimizer state).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from autotune.methods.base import (LayerChoice, Method, Prepared, encoder_layers, freeze_all, layers_of,
                                   unfreeze_head)


class FullParams(LayerChoice):
    learning_rate: float = Field(3e-5, gt=0, le=1.0, description="Peak AdamW learning rate.")
    unfreeze_last_k: int | None = Field(
        None, ge=1, description="Train only the last k encoder layers (and the head). null = all layers + embeddings."
    )

    @model_validator(mode="after")
    def _one_selector(self):
        if self.unfreeze_last_k is not None and self.layers is not None:
            raise ValueError("give either unfreeze_last_k or layers, not both")
        if self.unfreeze_last_k is not None and self.importance_top_k is not None:
            raise ValueError("give either unfreeze_last_k or importance_top_k, not both")
        return self


class FullMethod(Method):
    name = "full"
    cost_rank = 50  # every weight trains
    summary = "all weights, or the last k / listed encoder layers"
    Params = FullParams

    def apply(self, model, params: FullParams, ctx):
        if params.unfreeze_last_k is None and params.layers is None and params.importance_top_k is None:
            for p in model.parameters():
                p.requires_grad_(True)
            return Prepared(model, describe="all weights")
        layers = encoder_layers(model)
        n = len(layers)
        chosen = layers_of("full", params, model)
        if chosen is None:
            chosen = list(range(max(0, n - params.unfreeze_last_k), n))
        freeze_all(model)
        unfreeze_head(model)
        for i in chosen:
            for p in layers[i].parameters():
                p.requires_grad_(True)
        return Prepared(model, describe=f"layers {chosen} + head")
