"""`sparse`: train only a fraction (1 - sparsity) of the encoder's weight-matrix entries.

The selected entries are stored as (flat index, delta value) per tensor: the optimizer sees only the
deltas, so AdamW's state is 2 x 4 bytes per *selected* entry, not per model weight, and weight decay acts
on the deltas only (it pulls them back to the pretrained values) - a frozen entry can never move.
The weight seen in forward is `W0 + scatter(delta)` through `torch.nn.utils.parametrize`; export folds
the deltas in. The classifier head trains densely (it is new).

Eligible: every 2-D weight of the encoder's layers, or of `layers` / the probe's top `importance_top_k`
(embeddings are excluded). Selection scores each entry by |W| (magnitude), accumulated |grad| over a few
training batches (gradient, as SIFT), accumulated squared gradients over a few batches (fisher: the empirical
diagonal Fisher information over mini-batches, as FISH Mask), or a seeded random draw. The mask is chosen
once, before training (static). The budget of k = round((1 - sparsity) x eligible) entries is spent on the
top scores over all tensors together (global) or split between tensors in proportion to their sizes (per_tensor; largest remainders, so the
total is the same k): global lets the scores decide which matrices matter, per_tensor keeps every matrix
in play when score scales differ between tensors (magnitude does).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autotune.errors import TrialFailed
from autotune.methods.base import LayerChoice, Method, Prepared, encoder_layers, freeze_all, layers_of, unfreeze_head


class SparseParams(LayerChoice):
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="Peak AdamW learning rate for the deltas.")
    sparsity: float = Field(0.99, ge=0.0, le=0.99999, description="Fraction of eligible weights kept frozen.")
    selection: Literal["magnitude", "gradient", "fisher", "random"] = Field(
        "gradient", description="How entries are chosen: |W|, accumulated |grad| (SIFT), accumulated grad^2 "
                                "(empirical Fisher, FISH Mask) on a few training batches, or seeded random.")
    budget: Literal["global", "per_tensor"] = Field(
        "global", description="Top scores over all eligible tensors together, or each tensor's share in proportion to its size.")
    calibration_batches: int = Field(
        4, ge=1, le=256, description="Training batches whose gradients score the entries (gradient and fisher selection).")


def _delta_module():
    import torch
    from torch import nn

    class SparseDelta(nn.Module):
        """Parametrization W -> W + scatter(delta at idx)."""

        def __init__(self, idx: torch.Tensor):
            super().__init__()
            self.register_buffer("idx", idx, persistent=True)
            self.delta = nn.Parameter(torch.zeros(idx.numel()))

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            flat = weight.reshape(-1).index_add(0, self.idx, self.delta.to(weight.dtype))
            return flat.view_as(weight)

    return SparseDelta


class SparsePrepared(Prepared):
    def __init__(self, model, targets, describe):
        super().__init__(model, describe)
        self.targets = targets  # list of (module, name)

    def trainable_state(self):
        state = super().trainable_state()
        # indices are part of the trained state: without them the deltas mean nothing
        for name, buf in self.model.named_buffers():
            if name.endswith(".idx"):
                state[name] = buf.clone()
        return state

    def load_trainable_state(self, state):
        # indices were fixed at apply() time from the same state (ctx.restore_state); load the values
        super().load_trainable_state({k: v for k, v in state.items() if not k.endswith(".idx")})

    def export(self):
        from torch.nn.utils import parametrize

        for module, name in self.targets:
            if parametrize.is_parametrized(module, name):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        return self.model


class SparseMethod(Method):
    name = "sparse"
    cost_rank = 40  # dense gradients, sparse updates
    summary = "a tiny set of critical weights (indices + deltas), chosen by magnitude/gradient/fisher/random"
    Params = SparseParams

    def calibration_batches(self, params: SparseParams) -> int:
        return params.calibration_batches if params.selection in ("gradient", "fisher") else 0

    def apply(self, model, params: SparseParams, ctx):
        import torch
        from torch.nn.utils import parametrize

        targets = []
        chosen = layers_of("sparse", params, model)  # null: every layer is eligible
        for i, layer in enumerate(encoder_layers(model)):
            if chosen is not None and i not in chosen:
                continue
            for module in layer.modules():
                w = getattr(module, "weight", None)
                if isinstance(w, torch.nn.Parameter) and w.ndim == 2:
                    targets.append((module, "weight"))
        if ctx.restore_state is not None:
            return self._restore(model, targets, ctx.restore_state)
        if not targets:
            raise TrialFailed(f"sparse: {type(model.encoder).__name__} has no 2-D weights in its layers to select from")
        scores = self._scores(model, targets, params, ctx)
        sizes = [s.numel() for s in scores]
        total = sum(sizes)
        k = max(1, round((1.0 - params.sparsity) * total))
        chosen = select_global(scores, k) if params.budget == "global" else select_per_tensor(scores, k)
        freeze_all(model)
        unfreeze_head(model)
        SparseDelta = _delta_module()
        for (module, name), local in zip(targets, chosen):
            if local.numel():
                parametrize.register_parametrization(module, name, SparseDelta(local.sort().values))
        return SparsePrepared(model, targets, describe=f"{k} of {total} entries ({params.selection}, {params.budget})")

    @staticmethod
    def _restore(model, targets, state):
        """Re-create the parametrizations at the stored indices (no re-selection: exact rebuild)."""
        from torch.nn.utils import parametrize

        freeze_all(model)
        unfreeze_head(model)
        SparseDelta = _delta_module()
        suffix = ".parametrizations.weight.0.idx"
        k = 0
        for key, idx in state.items():
            if key.endswith(suffix):
                module = model.get_submodule(key[: -len(suffix)])
                parametrize.register_parametrization(module, "weight", SparseDelta(idx.clone()))
                k += idx.numel()
        return SparsePrepared(model, targets, describe=f"{k} entries (restored)")

    @staticmethod
    def _scores(model, targets, params, ctx):
        import torch

        weights = [getattr(m, n) for m, n in targets]
        if params.selection == "magnitude":
            return [w.detach().abs() for w in weights]
        if params.selection == "random":
            g = torch.Generator().manual_seed(ctx.seed)
            return [torch.rand(w.shape, generator=g) for w in weights]
        # gradient / fisher: accumulated |dL/dW| or (dL/dW)^2 over a few calibration batches, model in train
        # mode, no update. Fisher is the empirical diagonal Fisher of mini-batch gradients (FISH Mask uses
        # per-example gradients; mini-batches cost one backward pass per batch instead of per example).
        if not ctx.calibration_batches:
            raise TrialFailed(f"sparse.selection: {params.selection!r} needs calibration batches (none were given)")
        acc = [torch.zeros_like(w) for w in weights]
        was_training = model.training
        model.train()
        for batch in ctx.calibration_batches:
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            for a, w in zip(acc, weights):
                if w.grad is not None:
                    a += w.grad.square() if params.selection == "fisher" else w.grad.abs()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        return acc


def select_global(scores, k: int):
    """Per tensor, the flat indices of its entries among the k highest scores over all tensors."""
    import torch

    sizes = [s.numel() for s in scores]
    top = torch.topk(torch.cat([s.reshape(-1) for s in scores]), k, sorted=False).indices
    offsets = torch.tensor([0] + sizes).cumsum(0)
    return [top[(top >= offsets[t]) & (top < offsets[t + 1])] - offsets[t] for t in range(len(scores))]


def select_per_tensor(scores, k: int):
    """Per tensor, the flat indices of its own highest scores; tensor t gets k x size_t / total entries,
    rounded by largest remainder so that the shares add up to exactly k."""
    import torch

    sizes = [s.numel() for s in scores]
    total = sum(sizes)
    exact = [k * n / total for n in sizes]
    shares = [int(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda t: (exact[t] - shares[t], sizes[t]), reverse=True)
    for t in by_remainder[: k - sum(shares)]:
        shares[t] += 1
    return [torch.topk(s.reshape(-1), n, sorted=False).indices if n else torch.zeros(0, dtype=torch.long)
            for s, n in zip(scores, shares)]
