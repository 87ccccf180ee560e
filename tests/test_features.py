"""Cached frozen-encoder features for head-only trials: the same model, exactly, at a fraction of the cost."""

from __future__ import annotations

import pytest
import torch

from autotune.config.job import ModelConfig, TrainingConfig
from autotune.methods import REGISTRY, ApplyContext
from autotune.training import features as feats
from autotune.training.loop import evaluate, train
from autotune.training.model import build_model
from tests.test_loop import data  # noqa: F401 - fixture: tokenized synthetic splits


def test_head_on_cached_features_is_the_same_model(tiny_model_dir, data):  # noqa: F811
    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    torch.manual_seed(0)
    model = build_model(cfg, ["neg", "pos"])
    prepared = REGISTRY["head"].apply(model, REGISTRY["head"].Params(), ApplyContext())
    assert REGISTRY["head"].frozen_encoder and not REGISTRY["full"].frozen_encoder
    feats._CACHE.clear()
    splits, hit = feats.feature_splits(model, cfg, data, 64)
    train_feats = splits["train"]["features"]
    assert not hit and len(train_feats) == len(data["train"]["labels"]) and not train_feats.done.any()
    first = train_feats[[0, 5, 7]]  # rows are encoded when a batch first asks for them
    assert first.shape == (3, 32) and train_feats.done.sum() == 3
    assert (train_feats[[7]] == first[2:]).all()  # and read from the cache afterwards
    assert feats.feature_splits(model, cfg, data, 64)[1]  # second trial in this worker: a cache hit

    head = feats.head_on_features(model)
    from autotune.methods.base import Prepared

    on_feats = Prepared(head)
    # same trainable tensors, same names: the checkpoint rebuilds the full model
    assert sorted(on_feats.trainable_state()) == sorted(prepared.trainable_state()) == ["classifier.bias", "classifier.weight"]
    before = evaluate(head, splits["validation"], 64)
    reports = []
    train(on_feats, splits, TrainingConfig(epochs=3, batch_size=16, evals_per_epoch=1, warmup_ratio=0.0),
          learning_rate=5e-2, seed=0, on_rung=lambda m, r: reports.append(m))
    assert [round(m["examples"]) for m in reports] == [len(data["train"]["labels"]) * k for k in (1, 2, 3)]
    assert train_feats.done.all()
    # the head trained on features, put back on the full model, predicts exactly what it did on features
    full = evaluate(model, data["validation"], 64)
    cached = evaluate(head, splits["validation"], 64)
    assert full.predictions == cached.predictions
    assert full.loss == pytest.approx(cached.loss, rel=1e-4)
    assert cached.loss < before.loss - 0.02  # and it did learn (random tiny encoder: weak features)
