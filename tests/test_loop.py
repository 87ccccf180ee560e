"""The explicit train loop learns, reports every rung, and fails loudly on a non-finite loss."""

from __future__ import annotations

import pytest
import torch

from autotune.config.job import ModelConfig, TrainingConfig
from autotune.errors import TrialFailed
from autotune.methods import REGISTRY, ApplyContext
from autotune.training.loop import evaluate, rung_steps, train
from autotune.training.model import build_model
from tests.conftest import synthetic_rows


@pytest.fixture()
def data(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = {}
    for split, (n, seed) in {"train": (160, 0), "validation": (64, 1)}.items():
        rows = synthetic_rows(n, seed)
        enc = tok([t for t, _ in rows], truncation=True, max_length=16, padding="max_length", return_tensors="np")
        out[split] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                      "labels": torch.tensor([int(l == "pos") for _, l in rows]).numpy()}
    return out


def test_rung_schedule():
    cfg = TrainingConfig(epochs=1.5, batch_size=10, evals_per_epoch=2)
    total, rungs = rung_steps(100, cfg)
    assert total == 15 and rungs == [5, 10, 15]


def test_train_loop_lowers_loss_and_reports_each_rung(tiny_model_dir, data):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name_or_path=str(tiny_model_dir)), ["neg", "pos"])
    prepared = REGISTRY["full"].apply(model, REGISTRY["full"].Params(), ApplyContext())
    before = evaluate(model, data["validation"], 64)
    reports = []
    cfg = TrainingConfig(epochs=4, batch_size=16, evals_per_epoch=1, warmup_ratio=0.0, length_bucketing=False)
    last = train(prepared, data, cfg, learning_rate=2e-3, seed=0, on_rung=lambda m, r: reports.append((r, dict(m))))
    assert [r for r, _ in reports] == [1, 2, 3, 4]
    assert last["val_loss"] < before.loss - 0.1
    assert last["val_accuracy"] > 0.8
    assert reports[-1][1]["trainable_params"] == prepared.trainable_params
    assert all(m["samples_per_s"] > 0 and m["total_rungs"] == 4 for _, m in reports)


def test_non_finite_loss_fails_the_trial(tiny_model_dir, data):
    model = build_model(ModelConfig(name_or_path=str(tiny_model_dir)), ["neg", "pos"])
    prepared = REGISTRY["head"].apply(model, REGISTRY["head"].Params(), ApplyContext())
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(TrialFailed, match=r"loss became nan at step 0 \(learning_rate=0.001\)"):
        train(prepared, data, TrainingConfig(), learning_rate=1e-3, seed=0, on_rung=lambda m, r: None)


def test_length_bucketing_keeps_every_row_once_and_cuts_padding():
    import numpy as np

    from autotune.training.loop import bucket_by_length

    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 64, size=1000)
    split = {"attention_mask": (np.arange(64)[None, :] < lengths[:, None]).astype(np.int64)}
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    bucketed = bucket_by_length(order, split, 16, torch.Generator().manual_seed(0))
    assert sorted(bucketed) == list(range(1000))  # every row, once
    again = bucket_by_length(order, split, 16, torch.Generator().manual_seed(0))
    assert bucketed == again  # the seed decides the order, nothing else

    def padded(o):  # tokens a batch pays for: its longest row x its size
        return sum(max(lengths[o[i:i + 16]]) * len(o[i:i + 16]) for i in range(0, len(o), 16))

    assert padded(bucketed) < 0.7 * padded(order)


def test_vectorised_macro_f1_bootstrap_matches_the_loop():
    import numpy as np

    from autotune.pipeline.validate import bootstrap_ci, bootstrap_macro_f1_ci
    from autotune.training.loop import macro_f1

    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 300)
    p = np.where(rng.random(300) < 0.7, y, rng.integers(0, 5, 300))
    slow = bootstrap_ci(y == p, 200, 0, stat=lambda ix: macro_f1(y[ix].tolist(), p[ix].tolist(), 5))
    assert bootstrap_macro_f1_ci(y, p, 5, 200, 0) == pytest.approx(slow, abs=1e-12)


@pytest.mark.parametrize("max_norm", [1e-3, 1e6, "at_norm"])
def test_clip_grad_norm_is_torchs_to_the_bit(max_norm):
    """The loop's clipping skips torch's multiply-by-1 pass when nothing is clipped; the gradients it leaves are
    exactly torch's clip_grad_norm_'s - clipped, not clipped, and at the boundary (the 1e-6 in torch's scale)."""
    from autotune.training.loop import clip_grad_norm

    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 32), (32,), (7, 5, 3)]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    if max_norm == "at_norm":
        max_norm = float(torch.nn.utils.get_total_norm(grads)) + 5e-7  # scale = max_norm / (norm + 1e-6) < 1
    ours, theirs = ([torch.nn.Parameter(torch.zeros(s)) for s in shapes] for _ in range(2))
    ours.append(torch.nn.Parameter(torch.zeros(3)))  # a parameter without a gradient (frozen this step)
    for a, b, g in zip(ours, theirs, grads):
        a.grad, b.grad = g.clone(), g.clone()
    clip_grad_norm(ours, max_norm)
    torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)
    assert ours[-1].grad is None
