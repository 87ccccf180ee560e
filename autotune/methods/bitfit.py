"""`bitfit`: train the encoder's bias terms only (Ben Zaken et al. 2022, BitFit), plus the classifier.

Every `bias` of the encoder trains - attention, feed-forward and LayerNorm biases - or, with
`biases: query_ffn`, only the query and first feed-forward (intermediate) biases, the paper's smaller
variant. The model keeps its plain layout, so export is the training model itself. About 0.1% of a
BERT-like encoder's parameters.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autotune.methods.base import Method, MethodParams, Prepared, train_only

# BERT-like and DistilBERT-like names of the query projection and the first feed-forward layer
QUERY_FFN = ("query.bias", "intermediate.dense.bias", "q_lin.bias", "lin1.bias")


class BitFitParams(MethodParams):
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="Peak AdamW learning rate (biases take a large one).")
    biases: Literal["all", "query_ffn"] = Field(
        "all", description="all: every bias of the encoder (attention, feed-forward, LayerNorm); query_ffn: only "
                           "the query and intermediate feed-forward biases.")


class BitFitMethod(Method):
    name = "bitfit"
    cost_rank = 25  # full backward through the encoder, but no weight gradients are kept
    summary = "bias terms of the encoder only (+ head)"
    Params = BitFitParams

    def apply(self, model, params: BitFitParams, ctx):
        n = train_only(model, (p for name, p in model.encoder.named_parameters()
                               if name.endswith(".bias") and (params.biases == "all" or name.endswith(QUERY_FFN))))
        return Prepared(model, describe=f"{n} bias entries ({params.biases}) + head")
