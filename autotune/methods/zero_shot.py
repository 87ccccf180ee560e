"""`zero_shot`: no gradient steps at all - a nearest-class-centroid classifier on the frozen encoder's pooled
embeddings of the whole training split. Every search that lists it shows whether fine-tuning pays off at
all; on tiny data it may win outright.

Nearest centroid is a linear rule, so it is written into the model's own linear head and the exported
model is the plain AutotuneForSequenceClassification:
- euclidean: argmin_c |x - mu_c|^2 = argmax_c (x . mu_c - |mu_c|^2 / 2): w_c = mu_c, b_c = -|mu_c|^2 / 2.
- cosine: argmax_c cos(x, m_c) = argmax_c x . m_c / |m_c| (|x| is the same for every class), with m_c the
  mean of the L2-normalised embeddings of class c: w_c = m_c / |m_c|, b_c = 0. The predicted class is exact;
  the logits are |x| cos(x, m_c), so softmax probabilities (and the loss) carry the embedding's norm.
A class with no training example gets a zero row and a bias of -1e4 (never predicted).

k-NN is not offered: its decision is not linear in the embedding, so it could not be exported as the
stock head.

The method needs the whole training split at apply time (`calibration_batches` returns ALL_BATCHES) and
`trains = False`: the trial evaluates once and reports one rung. `trainable_params` is 0 (no optimizer step
updates anything); the fitted head (num_labels x (hidden + 1) entries) is what its checkpoint holds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from autotune.errors import TrialFailed
from autotune.methods.base import ALL_BATCHES, Method, Prepared, freeze_all


class ZeroShotParams(BaseModel):
    """No learning rate, epochs or batch size: nothing trains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Literal["cosine", "euclidean"] = Field(
        "cosine", description="Nearest centroid by cosine similarity (of normalised embeddings) or Euclidean distance.")


class ZeroShotPrepared(Prepared):
    def trainable_named_parameters(self):
        return []  # fitted, not trained: no optimizer step touches anything

    def trainable_state(self):
        return {f"classifier.{n}": p.detach().clone() for n, p in self.model.classifier.named_parameters()}

    def load_trainable_state(self, state):
        keys = {f"classifier.{n}" for n, _ in self.model.classifier.named_parameters()}
        if set(state) != keys:
            raise ValueError(f"checkpoint does not match the method: expected {sorted(keys)}, got {sorted(state)[:5]}")
        import torch

        with torch.no_grad():
            for n, p in self.model.classifier.named_parameters():
                p.copy_(state[f"classifier.{n}"])


class ZeroShotMethod(Method):
    name = "zero_shot"
    cost_rank = 5  # one forward pass over the training split, no training
    trains = False
    summary = "no training: nearest class centroid on frozen mean-pooled embeddings"
    Params = ZeroShotParams

    def calibration_batches(self, params) -> int:
        return ALL_BATCHES

    def apply(self, model, params: ZeroShotParams, ctx):
        freeze_all(model)
        prepared = ZeroShotPrepared(model, describe=f"nearest centroid ({params.metric}), 0 gradient steps")
        if ctx.restore_state is not None:
            return prepared  # the caller loads the fitted head
        if not ctx.calibration_batches:
            raise TrialFailed("zero_shot: needs the training split as calibration batches (none were given)")
        weight, bias = centroid_head(model, ctx.calibration_batches, model.classifier.out_features, params.metric)
        import torch

        with torch.no_grad():
            model.classifier.weight.copy_(weight)
            model.classifier.bias.copy_(bias)
        return prepared


def centroid_head(model, batches, num_labels: int, metric: str):
    """(weight, bias) of the linear head that predicts the nearest class centroid of the pooled embeddings."""
    import torch

    was_training = model.training
    model.eval()  # no dropout: the embeddings the evaluation will see
    device = next(model.parameters()).device
    hidden = model.classifier.in_features
    sums = torch.zeros(num_labels, hidden, dtype=torch.float64, device=device)
    counts = torch.zeros(num_labels, dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in batches:
            mask = batch["attention_mask"].to(device)
            out = model.encoder(input_ids=batch["input_ids"].to(device), attention_mask=mask)
            x = model.pool(out.last_hidden_state, mask).double()
            if metric == "cosine":
                x = torch.nn.functional.normalize(x, dim=-1)
            labels = batch["labels"].to(device)
            sums.index_add_(0, labels, x)
            counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
    model.train(was_training)
    present = counts > 0
    mu = sums / counts.clamp(min=1).unsqueeze(1)
    if metric == "cosine":
        weight = torch.nn.functional.normalize(mu, dim=-1)
        bias = torch.zeros(num_labels, dtype=torch.float64, device=device)
    else:
        weight = mu
        bias = -0.5 * mu.square().sum(1)
    bias = torch.where(present, bias, torch.full_like(bias, -1e4))
    weight = weight * present.unsqueeze(1)
    dtype = model.classifier.weight.dtype
    return weight.to(dtype), bias.to(dtype)
