"""Contract tests over every registered method, on a tiny config-built model:
the method trains exactly the entries it claims, export folds it in without changing outputs, and a
checkpoint of the trainable state rebuilds the same model."""

from __future__ import annotations

import pytest
import torch

from autotune.config.job import ModelConfig
from autotune.methods import REGISTRY, ApplyContext
from autotune.training.loop import batches
from autotune.training.model import build_model, rebuild_trained

LABELS = ["neg", "pos"]

# (method, knobs, predicate on exported-model parameter names that may change)
CASES = [
    ("head", {}, lambda n: n.startswith("classifier.")),
    ("full", {}, lambda n: True),
    ("full", {"unfreeze_last_k": 1}, lambda n: n.startswith(("classifier.", "encoder.encoder.layer.1."))),
    ("full", {"layers": [0]}, lambda n: n.startswith(("classifier.", "encoder.encoder.layer.0."))),
    ("lora", {"rank": 2, "target_modules": ["query", "value"]},
     lambda n: n.startswith("classifier.") or (n.endswith(("query.weight", "value.weight")))),
    ("lora", {"rank": 2, "target_modules": ["query", "key", "value", "dense"], "layers": [1]},
     lambda n: n.startswith("classifier.") or (".layer.1." in n and n.endswith("weight") and "LayerNorm" not in n)),
    ("sparse", {"sparsity": 0.99, "selection": "magnitude"}, None),
    ("sparse", {"sparsity": 0.9, "selection": "gradient"}, None),
    ("sparse", {"sparsity": 0.999, "selection": "random"}, None),
]


def test_every_registered_method_has_a_case():
    assert {c[0] for c in CASES} == set(REGISTRY)


@pytest.fixture()
def setup(tiny_model_dir):
    from transformers import AutoTokenizer

    cfg = ModelConfig(name_or_path=str(tiny_model_dir), max_length=16)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [f"a good film number {i}" if i % 2 else f"a bad film number {i}" for i in range(16)]
    enc = tok(texts, truncation=True, max_length=16, padding="max_length", return_tensors="np")
    split = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
             "labels": torch.tensor([i % 2 for i in range(16)]).numpy()}
    return cfg, split


def _train_steps(prepared, split, steps=3):
    opt = torch.optim.AdamW(prepared.param_groups(weight_decay=0.1), lr=1e-2)
    prepared.model.train()
    for _, batch in zip(range(steps), batches(split, 8)):
        loss = prepared.model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


@pytest.mark.parametrize("method,knobs,may_change", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_method_trains_exactly_what_it_claims(setup, method, knobs, may_change):
    cfg, split = setup
    torch.manual_seed(0)
    base = build_model(cfg, LABELS)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    m = REGISTRY[method]
    params = m.Params(**knobs)
    calib = list(batches(split, 8))[:2]
    prepared = m.apply(base, params, ApplyContext(seed=0, calibration_batches=calib))
    claimed = prepared.trainable_params
    assert claimed == sum(p.numel() for _, p in prepared.trainable_named_parameters()) > 0
    opt = _train_steps(prepared, split)

    prepared.model.eval()
    batch = next(batches(split, 16))
    with torch.no_grad():
        live = prepared.model(**batch).logits
    state = prepared.trainable_state()
    exported = prepared.export()
    exported.eval()
    with torch.no_grad():
        assert torch.allclose(exported(**batch).logits, live, atol=1e-5), "export changed the outputs"
    after = exported.state_dict()
    assert set(after) == set(before), "export must give back the plain model layout"

    changed_entries = 0
    for name, old in before.items():
        diff = (after[name] != old)
        if may_change is not None and not may_change(name):
            assert not diff.any(), f"{method}: {name} moved but the method does not train it"
        changed_entries += int(diff.sum())
    assert changed_entries > 0
    if method == "sparse":
        head = sum(p.numel() for p in exported.classifier.parameters())
        k = claimed - head
        # only selected entries (+ the head) may move: frozen entries never do, weight decay included
        assert changed_entries <= claimed
        eligible = sum(p.numel() for n, p in exported.named_parameters() if ".layer." in n and p.ndim == 2)
        assert k == max(1, round((1 - params.sparsity) * eligible))
        # AdamW keeps two moments per trained entry: memory scales with k, not with the model
        state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.ndim > 0)
        assert state_bytes == 2 * 4 * claimed

    # a checkpoint of the trainable tensors rebuilds the same model
    torch.manual_seed(123)  # a different head init must not matter: the state overrides it
    rebuilt = rebuild_trained(cfg, LABELS, method, params.model_dump(), state).export()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(**batch).logits, live, atol=1e-5)


def test_bad_layer_index_fails_the_trial(setup):
    from autotune.errors import TrialFailed

    cfg, _ = setup
    m = REGISTRY["lora"]
    with pytest.raises(TrialFailed, match=r"lora.layers: layer\(s\) \[7\] do not exist \(the model has 2 layers: 0..1\)"):
        m.apply(build_model(cfg, LABELS), m.Params(layers=[7]), ApplyContext())
