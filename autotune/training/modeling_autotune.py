"""The model AutoTune trains and ships: any transformers encoder + pooling + a linear classifier.

Why not `AutoModelForSequenceClassification`? Sentence-embedding encoders such as all-MiniLM were trained
with mean pooling; the stock head reads the [CLS] pooler instead and, trained alone, tops out far below
what the same frozen encoder gives with mean pooling. A head-only baseline that is unfair to the encoder
makes every comparison against it meaningless, so pooling is a setting (`mean` by default).

This file is self-contained (torch + transformers + safetensors only): the deploy stage copies it into the
artifact so that a plain transformers user can load it with
`AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)`, and the weight-only int8
copy (deploy.int8) with `type(model).from_int8(path)` on the class that call returns.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class AutotuneForSequenceClassification(PreTrainedModel):
    config_class = PretrainedConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True

    def __init__(self, config):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # unused: we pool ourselves; keeping it would claim dead params
        self.pooling = getattr(config, "autotune_pooling", "mean")
        dropout = getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @classmethod
    def from_int8(cls, path, int8_file: str = "model.int8.safetensors"):
        """The model with its weights read from the artifact's weight-only int8 file (each large 2-D weight as
        int8 with one float32 scale per row, dequantized to float32 here): config from `path`, no float weights
        read. With stock transformers: `m = AutoModelForSequenceClassification.from_pretrained(path,
        trust_remote_code=True); m8 = type(m).from_int8(path)` - or the class from this file directly."""
        import os

        from safetensors.torch import load_file
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        model = cls(config)
        model.load_state_dict(dequantize_state(load_file(os.path.join(str(path), int8_file))))
        return model.eval()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear) and module is getattr(self, "classifier", None):
            nn.init.normal_(module.weight, std=getattr(self.config, "initializer_range", 0.02))
            nn.init.zeros_(module.bias)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.pooling == "cls" or attention_mask is None:
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, inputs_embeds=None,
                **kwargs):
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        if inputs_embeds is not None:
            extra["inputs_embeds"] = inputs_embeds
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra)
        pooled = self.dropout(self.pool(out.last_hidden_state, attention_mask))
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def dequantize_state(tensors: dict) -> dict:
    """`name.int8` (int8) + `name.scale` (float32 per row) -> float32 `name`; other tensors as they are."""
    state = {}
    for name, t in tensors.items():
        if name.endswith(".int8"):
            base = name[: -len(".int8")]
            state[base] = t.float() * tensors[f"{base}.scale"][:, None]
        elif not name.endswith(".scale"):
            state[name] = t
    return state
