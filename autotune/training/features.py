"""Cached frozen-encoder features: a method that trains only the classifier (`head`) sees the same pooled
encoder output for an example in every step of every trial, so it is computed once per worker process and
per data set (frozen encoder in eval mode: exact, no dropout inside the encoder) and the head trains on it.

A head trial then costs at most one pass of the encoder over the data, spread over its first epoch (rows
are encoded the first time a batch asks for them), and nothing in later epochs or later trials of the same
worker - instead of a forward pass per step. The classifier keeps its name (`classifier.weight`,
`classifier.bias`), so the trial's checkpoint rebuilds the full model exactly as before.
"""

from __future__ import annotations

import hashlib
from typing import Any

_CACHE: dict[str, dict[str, dict[str, Any]]] = {}  # key -> split -> {"features", "labels"}; per process
_MAX_ENTRIES = 2


def cache_key(model_cfg, data: dict[str, dict[str, Any]]) -> str:
    h = hashlib.sha256(model_cfg.model_dump_json().encode())
    for split in ("train", "validation"):
        h.update(data[split]["input_ids"].tobytes())
        h.update(data[split]["attention_mask"].tobytes())
    return h.hexdigest()


def pooled_features(model, split: dict[str, Any], batch_size: int):
    """(n, hidden) float32 array of the model's pooled encoder output, in eval mode, without gradients."""
    import numpy as np
    import torch

    from autotune.training.loop import batches

    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for batch in batches(split, batch_size):
            mask = batch["attention_mask"].to(device)
            hidden = model.encoder(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state
            out.append(model.pool(hidden, mask).float().cpu().numpy())
    return np.concatenate(out, axis=0)


class LazyFeatures:
    """Pooled encoder features of one split, computed on first use, row by row as batches ask for them.

    The first rung of a head trial needs only its first batches and one validation pass, not a pass of
    the encoder over the whole training split; later epochs and later trials in the same worker read the
    cache. Indexing with a list of rows returns a float32 array, as a numpy array would."""

    def __init__(self, model, split: dict[str, Any], batch_size: int):
        import numpy as np

        self.model, self.split, self.batch_size = model, split, batch_size
        n = len(split["labels"])
        self.values: Any = None  # (n, hidden) float32, allocated on first use
        self.done = np.zeros(n, dtype=bool)

    def __len__(self) -> int:
        return len(self.done)

    def __getitem__(self, rows):
        import numpy as np

        rows = np.asarray(rows)
        missing = rows[~self.done[rows]]
        if len(missing):
            missing = np.unique(missing)
            for start in range(0, len(missing), self.batch_size):
                sel = missing[start : start + self.batch_size]
                part = pooled_features(self.model, {k: v[sel] for k, v in self.split.items()}, self.batch_size)
                if self.values is None:
                    self.values = np.zeros((len(self.done), part.shape[1]), dtype=np.float32)
                self.values[sel] = part
                self.done[sel] = True
        return self.values[rows]


def feature_splits(model, model_cfg, data: dict[str, dict[str, Any]], batch_size: int) -> tuple[dict, bool]:
    """Train/validation splits as pooled features, computed lazily and cached in this process.
    Returns (splits, cache_hit)."""
    key = cache_key(model_cfg, data)
    if key in _CACHE:
        return _CACHE[key], True
    splits = {s: {"features": LazyFeatures(model, data[s], batch_size), "labels": data[s]["labels"]}
              for s in ("train", "validation")}
    while len(_CACHE) >= _MAX_ENTRIES:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = splits
    return splits, False


def head_on_features(model):
    """A module that is the model's classifier (and its dropout) applied to pooled features."""
    import torch
    from torch import nn
    from transformers.modeling_outputs import SequenceClassifierOutput

    class HeadOnFeatures(nn.Module):
        def __init__(self, classifier: nn.Linear, dropout: nn.Module, config):
            super().__init__()
            self.classifier = classifier  # the model's own module: trained in place, same parameter names
            self.dropout = dropout
            self.config = config

        def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None, **_):
            logits = self.classifier(self.dropout(features))
            loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return SequenceClassifierOutput(loss=loss, logits=logits)

    return HeadOnFeatures(model.classifier, model.dropout, model.config)
