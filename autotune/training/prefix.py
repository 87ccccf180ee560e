"""Frozen-prefix activations: a trial that trains only the upper encoder layers starts from cached outputs of
the last frozen layer instead of running the frozen bottom of the network at every step.

Which trials: the embeddings and encoder layers 0..j-1 hold no trainable tensor (nothing requires grad and no
adapter sits in them) for some j >= 1 - `full` with `unfreeze_last_k` / `layers`, LoRA and its relatives with
`layers` limited to upper layers. `frozen_depth(model)` finds j.

How: once per worker process, data set and j, the train and validation rows run through embeddings + layers
0..j-1 in eval mode (no dropout), with the upper layers made pass-through; each row's hidden states (its real
tokens only) are kept in memory, for this trial and the next ones of a reused Ray actor with the same j.
Training then feeds them back as `inputs_embeds` with the embeddings and the bottom j layers made
pass-through, so only layers j.. and the head run forward and backward. Parameter names, checkpoints and the
exported model are untouched (the pass-through is an instance-level `forward` override, removed afterwards).

Exactness: the frozen layers behave as in eval mode - the same outputs as the uncached model in eval mode, to
float rounding (padding positions are masked out of attention and pooling, so per-row trimming changes
nothing). Without the cache those layers would apply dropout during training; with it they do not: this is
the one difference, and the reason the cache is on only where the frozen prefix is exact in this sense.
Before training, `enable()` checks on one validation batch that the cached path gives the logits of the full
model in eval mode; on any mismatch or error it declines and the trial trains uncached.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

MAX_CACHE_BYTES = 2 * 1024**3  # per trial process: past this the trial trains uncached
_CACHE: dict[tuple[str, int], dict[str, list]] = {}  # (model + data key, depth) -> split -> rows; per process
_MAX_ENTRIES = 2  # a reused Ray actor serves the next trial with the same frozen bottom from memory


def _bert_parts(model):
    """(embeddings module, list of encoder layers) of a BERT-like encoder, or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
    enc = getattr(base, "encoder", None)
    emb = getattr(enc, "embeddings", None)
    layers = getattr(getattr(enc, "encoder", None), "layer", None)
    if emb is None or layers is None or len(layers) == 0:
        return None
    return emb, layers


def frozen_depth(model) -> int:
    """How many bottom encoder layers (with the embeddings) are entirely frozen: 0 when nothing can be cached."""
    parts = _bert_parts(model)
    if parts is None:
        return 0
    emb, layers = parts
    if any(p.requires_grad for p in emb.parameters()):
        return 0
    depth = 0
    for layer in layers:
        if any(p.requires_grad for p in layer.parameters()):
            break
        depth += 1
    return depth if depth < len(layers) else 0  # all frozen: the head-only feature cache is the better tool


def _passthrough_embeddings(input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, **_):
    return inputs_embeds


def _passthrough_layer(hidden_states, *args, **kwargs):
    return hidden_states


@contextmanager
def _overrides(modules_and_forwards):
    for module, fwd in modules_and_forwards:
        module.forward = fwd  # instance attribute: shadows the class's forward; names and weights unchanged
    try:
        yield
    finally:
        for module, _ in modules_and_forwards:
            del module.forward


class FrozenPrefix:
    """The cached hidden states of one trial's train and validation rows after its frozen bottom layers."""

    def __init__(self, model, depth: int):
        self.model, self.depth = model, depth
        self.emb, self.layers = _bert_parts(model)

    def skipping_bottom(self):
        """Inside: the model takes `inputs_embeds` = cached hidden states and runs layers depth.. only."""
        return _overrides([(self.emb, _passthrough_embeddings)]
                          + [(layer, _passthrough_layer) for layer in self.layers[: self.depth]])

    def encode(self, split: dict[str, Any], batch_size: int) -> list:
        """Hidden states after layer depth-1 for every row of `split`, each trimmed to its own tokens."""
        import torch

        from autotune.training.loop import batches

        device = next(self.model.parameters()).device
        mask = split["attention_mask"]
        lengths = [int(x) for x in mask.sum(1)]
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])  # similar lengths together: less padding
        rows: list = [None] * len(lengths)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), _overrides([(layer, _passthrough_layer) for layer in self.layers[self.depth:]]):
                for start in range(0, len(order), batch_size):
                    sel = order[start: start + batch_size]
                    batch = next(batches({k: split[k][sel] for k in ("input_ids", "attention_mask", "labels")},
                                         len(sel)))  # one batch, trimmed to its longest row
                    hidden = base.encoder(input_ids=batch["input_ids"].to(device),
                                          attention_mask=batch["attention_mask"].to(device)).last_hidden_state
                    for i, row in enumerate(sel):
                        rows[row] = hidden[i, : lengths[row]].detach().clone()
        finally:
            self.model.train(was_training)
        return rows


def cached_split(split: dict[str, Any], hidden_rows: list) -> dict[str, Any]:
    """A split whose batches carry `inputs_embeds` (training/loop.py batches) instead of token ids."""
    return {"hidden": hidden_rows, "attention_mask": split["attention_mask"], "labels": split["labels"]}


def estimate_bytes(data: dict[str, dict[str, Any]], hidden_size: int) -> int:
    tokens = sum(int(data[s]["attention_mask"].sum()) for s in ("train", "validation"))
    return tokens * hidden_size * 4


def enable(prepared, data: dict[str, dict[str, Any]], batch_size: int, key: str | None = None):
    """(data, FrozenPrefix) for a trial whose bottom layers are frozen, or (data, None) to train uncached:
    nothing frozen, not a BERT-like encoder, over MAX_CACHE_BYTES, or the cached path's logits differ from the
    full model's on a validation batch (eval mode). `key` names the base model and data (features.cache_key):
    with it the rows are kept for the next trial in this process with the same frozen depth (the frozen
    layers are the base model's own weights, whatever the method does above them)."""
    import torch

    model = prepared.model
    depth = frozen_depth(model)
    if depth == 0:
        return data, None
    hidden_size = int(getattr(getattr(model, "config", None), "hidden_size", 0) or 0)
    if not hidden_size or estimate_bytes(data, hidden_size) > MAX_CACHE_BYTES:
        return data, None
    try:
        prefix = FrozenPrefix(model, depth)
        val = data["validation"]
        probe = {k: v[:8] for k, v in val.items()}
        from autotune.training.loop import _to, batches

        device = next(model.parameters()).device
        model.eval()
        with torch.no_grad():
            want = model(**_to(next(batches(probe, 8)), device)).logits
            cached_probe = cached_split(probe, prefix.encode(probe, 8))
            with prefix.skipping_bottom():
                got = model(**_to(next(batches(cached_probe, 8)), device)).logits
        if not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
            return data, None
    except Exception:  # noqa: BLE001 - an encoder this does not understand trains the ordinary way
        return data, None
    rows = _CACHE.get((key, depth)) if key is not None else None
    if rows is None:
        rows = {name: prefix.encode(data[name], batch_size) for name in ("train", "validation")}
        if key is not None:
            while len(_CACHE) >= _MAX_ENTRIES:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[(key, depth)] = rows
    return {**data, **{name: cached_split(data[name], rows[name]) for name in ("train", "validation")}}, prefix
