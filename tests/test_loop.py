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
    cfg = TrainingConfig(epochs=4, batch_size=16, evals_per_epoch=1, warmup_ratio=0.0)
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
