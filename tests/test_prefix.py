"""Frozen-prefix activations (training/prefix.py): trials that train only upper layers start from cached
outputs of the frozen bottom - and train exactly the model they would have trained without the cache."""

from __future__ import annotations

import pytest
import torch

from autotune.config.job import ModelConfig, TrainingConfig
from autotune.methods import REGISTRY, ApplyContext
from autotune.training import prefix as pfx
from autotune.training.loop import evaluate, train
from autotune.training.model import build_model
from tests.test_loop import data  # noqa: F401 - fixture: tokenized synthetic splits


@pytest.fixture(scope="module")
def four_layers(tiny_model_dir, tmp_path_factory):
    """The tiny BERT with 4 layers and no dropout, so cached and uncached training can be compared exactly."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert-4")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.save_pretrained(out)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(out)
    return ModelConfig(name_or_path=str(out))


def prepared_for(cfg, method: str, **knobs):
    torch.manual_seed(0)
    model = build_model(cfg, ["neg", "pos"])
    m = REGISTRY[method]
    return m.apply(model, m.Params(**knobs), ApplyContext(seed=0, total_steps=20))


@pytest.mark.parametrize("method, knobs, depth", [
    ("full", {"unfreeze_last_k": 1}, 3),
    ("full", {"layers": [1, 3]}, 1),
    ("full", {}, 0),  # embeddings train: nothing to cache
    ("lora", {"layers": [2, 3]}, 2),
    ("lora", {}, 0),
    ("head", {}, 0),  # everything frozen: the pooled-feature cache serves it instead
    ("sparse", {"sparsity": 0.99, "selection": "magnitude"}, 0),
])
def test_frozen_depth(four_layers, method, knobs, depth):
    assert pfx.frozen_depth(prepared_for(four_layers, method, **knobs).model) == depth


@pytest.mark.parametrize("method, knobs", [("full", {"unfreeze_last_k": 2}), ("lora", {"layers": [3]})])
def test_cached_prefix_trains_the_same_model(four_layers, data, method, knobs):  # noqa: F811
    cfg = TrainingConfig(epochs=2, batch_size=16, evals_per_epoch=2, warmup_ratio=0.1)
    runs = {}
    for cached in (False, True):
        prepared = prepared_for(four_layers, method, **knobs)
        reports = []
        split = data
        prefix = None
        if cached:
            split, prefix = pfx.enable(prepared, data, 64)
            assert prefix is not None and prefix.depth == (2 if method == "full" else 3)
            assert "hidden" in split["train"] and len(split["train"]["hidden"]) == len(data["train"]["labels"])
            layer_cls = type(pfx._bert_parts(prepared.model)[1][0])
            calls, real = [], layer_cls.forward

            def counting(self, *a, **k):
                calls.append(self.layer_idx if hasattr(self, "layer_idx") else id(self))
                return real(self, *a, **k)

            with prefix.skipping_bottom(), pytest.MonkeyPatch.context() as mp:
                mp.setattr(layer_cls, "forward", counting)
                train(prepared, split, cfg, learning_rate=1e-3, seed=0, on_rung=lambda m, r: reports.append(m))
            layers = pfx._bert_parts(prepared.model)[1]
            ran = {i for i, layer in enumerate(layers) for c in calls if c == getattr(layer, "layer_idx", id(layer))}
            assert ran == set(range(prefix.depth, len(layers)))  # the frozen bottom never ran while training
            # afterwards the model is whole again: same modules, no override left behind
            assert all("forward" not in vars(m) for m in prepared.model.modules())
        else:
            train(prepared, split, cfg, learning_rate=1e-3, seed=0, on_rung=lambda m, r: reports.append(m))
        runs[cached] = (prepared.trainable_state(), reports, evaluate(prepared.model, data["validation"], 64))
    (s0, r0, e0), (s1, r1, e1) = runs[False], runs[True]
    assert sorted(s0) == sorted(s1)  # the same names: checkpoints and export do not know about the cache
    for name in s0:
        assert torch.allclose(s0[name], s1[name], atol=1e-5), name
    assert [m["val_accuracy"] for m in r0] == [m["val_accuracy"] for m in r1]
    assert [m["val_loss"] for m in r0] == pytest.approx([m["val_loss"] for m in r1], rel=1e-4)
    assert e0.predictions == e1.predictions  # the trained model, run whole and uncached, agrees
    assert r0[-1]["train_loss"] < r0[0]["train_loss"] + 0.5  # it trained (not a frozen no-op)
    assert any(not torch.equal(v, prepared_for(four_layers, method, **knobs).trainable_state()[k])
               for k, v in s1.items())


def test_enable_declines_what_it_cannot_do_exactly(four_layers, data, monkeypatch):  # noqa: F811
    full_all = prepared_for(four_layers, "full")
    assert pfx.enable(full_all, data, 64) == (data, None)  # nothing frozen
    monkeypatch.setattr(pfx, "MAX_CACHE_BYTES", 10)
    assert pfx.enable(prepared_for(four_layers, "full", unfreeze_last_k=1), data, 64)[1] is None  # too big


def test_rows_are_kept_for_the_next_trial_with_the_same_frozen_depth(four_layers, data):  # noqa: F811
    pfx._CACHE.clear()
    first, _ = pfx.enable(prepared_for(four_layers, "full", unfreeze_last_k=1), data, 64, key="k")
    again, _ = pfx.enable(prepared_for(four_layers, "lora", layers=[3]), data, 64, key="k")  # same bottom 3 layers
    other, _ = pfx.enable(prepared_for(four_layers, "full", unfreeze_last_k=2), data, 64, key="k")
    assert again["train"]["hidden"] is first["train"]["hidden"]
    assert other["train"]["hidden"] is not first["train"]["hidden"] and len(pfx._CACHE) == 2
    assert pfx.enable(prepared_for(four_layers, "full", unfreeze_last_k=1), data, 64)[0]["train"]["hidden"] \
        is not first["train"]["hidden"]  # no key: nothing shared
