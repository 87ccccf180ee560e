"""`ln_tuning`: train the LayerNorm scales and shifts of the encoder only (Zhao et al. 2023, "Tuning
LayerNorm in Attention"; peft's LN_TUNING), plus the classifier.

Done directly rather than through peft's LNTuningConfig: peft trains a copy of each LayerNorm and swaps it
back at merge, which gives the same model; setting `requires_grad` on the modules themselves keeps the
plain layout, parameter names and checkpoint keys, so export is the training model itself. Every
LayerNorm of the encoder trains (embeddings and each block's two), about 0.03% of a BERT-like encoder.
"""

from __future__ import annotations

from pydantic import Field

from autotune.methods.base import Method, MethodParams, Prepared, train_only


class LnTuningParams(MethodParams):
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="Peak AdamW learning rate.")


class LnTuningMethod(Method):
    name = "ln_tuning"
    cost_rank = 25  # full backward through the encoder, but no weight gradients are kept
    summary = "LayerNorm parameters of the encoder only (+ head)"
    Params = LnTuningParams

    def apply(self, model, params: LnTuningParams, ctx):
        from torch import nn

        n = train_only(model, (p for module in model.encoder.modules() if isinstance(module, nn.LayerNorm)
                               for p in module.parameters()))
        return Prepared(model, describe=f"{n} LayerNorm entries + head")
