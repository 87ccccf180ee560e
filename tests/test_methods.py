"""Contract tests over every registered method, on a tiny config-built model (hidden 32, intermediate 64,
2 layers, 2 labels): the method trains exactly the entries it claims (an exact count worked out by hand
below), only those tensors move, export folds it in without changing outputs, and a checkpoint of the
trainable state rebuilds the same model. Then targeted tests per method."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch

from autotune.config.job import ModelConfig
from autotune.methods import ALL_BATCHES, REGISTRY, ApplyContext, register
from autotune.training.loop import batches
from autotune.training.model import build_model, rebuild_trained

LABELS = ["neg", "pos"]
HEAD = 2 * 32 + 2  # classifier: 2 x hidden + 2
ELIGIBLE = 2 * (4 * 32 * 32 + 2 * 32 * 64)  # sparse: the 2-D weights of both blocks
STEPS = 3


def _sparse_k(sparsity):
    return max(1, round((1 - sparsity) * ELIGIBLE))


def _qlora_available() -> bool:
    from autotune.methods.qlora import missing_for_qlora

    return not missing_for_qlora()


def _ends(*suffixes):
    return lambda n: n.startswith("classifier.") or n.endswith(suffixes)


# (method, knobs, exact trainable entries, predicate on exported-model parameter names that may change)
# LoRA on a d_in x d_out linear trains r x (d_in + d_out); blocks have q, k, v, attention-output (32 -> 32),
# intermediate (32 -> 64) and output (64 -> 32) linears.
CASES = [
    ("head", {}, HEAD, lambda n: n.startswith("classifier.")),
    ("full", {}, None, lambda n: True),  # None: every parameter of the model
    ("full", {"unfreeze_last_k": 1}, "layer.1.", lambda n: n.startswith(("classifier.", "encoder.encoder.layer.1."))),
    ("full", {"layers": [0]}, "layer.0.", lambda n: n.startswith(("classifier.", "encoder.encoder.layer.0."))),
    ("lora", {"rank": 2, "target_modules": ["query", "value"]}, 2 * 2 * 2 * 64 + HEAD,
     _ends("query.weight", "value.weight")),
    ("lora", {"rank": 2, "target_modules": ["query", "key", "value", "dense"], "layers": [1]},
     4 * 2 * 64 + 2 * 2 * 96 + HEAD,
     lambda n: n.startswith("classifier.") or (".layer.1." in n and n.endswith("weight") and "LayerNorm" not in n)),
    ("lora", {"rank": 2, "target_preset": "attention_all", "use_dora": True, "init": "pissa"},
     2 * (4 * 2 * 64 + 4 * 32) + HEAD,  # + a DoRA magnitude per output row
     _ends("query.weight", "key.weight", "value.weight", "attention.output.dense.weight")),
    ("lora", {"rank": 2, "target_preset": "all_linear", "init": "olora"}, 2 * (4 * 2 * 64 + 2 * 2 * 96) + HEAD,
     lambda n: n.startswith("classifier.") or (".layer." in n and n.endswith("weight") and "LayerNorm" not in n)),
    ("lora", {"rank": 4, "init": "gaussian", "use_rslora": True}, 2 * 2 * 4 * 64 + HEAD, _ends("query.weight", "value.weight")),
    ("lora", {"rank": 2, "init": "orthogonal"}, 2 * 2 * 2 * 64 + HEAD, _ends("query.weight", "value.weight")),
    ("sparse", {"sparsity": 0.99, "selection": "magnitude"}, _sparse_k(0.99) + HEAD, None),
    ("sparse", {"sparsity": 0.9, "selection": "gradient"}, _sparse_k(0.9) + HEAD, None),
    ("sparse", {"sparsity": 0.999, "selection": "random"}, _sparse_k(0.999) + HEAD, None),
    ("sparse", {"sparsity": 0.99, "selection": "fisher", "budget": "per_tensor", "calibration_batches": 2},
     _sparse_k(0.99) + HEAD, None),
    ("sparse", {"sparsity": 0.99999, "selection": "magnitude", "budget": "per_tensor"}, 1 + HEAD, None),
    ("bitfit", {}, 32 + 2 * (4 * 32 + 32 + 64 + 32 + 32) + HEAD,  # embeddings LayerNorm + per block
     lambda n: n.startswith("classifier.") or n.endswith(".bias")),
    ("bitfit", {"biases": "query_ffn"}, 2 * (32 + 64) + HEAD, _ends("query.bias", "intermediate.dense.bias")),
    ("ln_tuning", {}, 5 * 2 * 32 + HEAD, lambda n: n.startswith("classifier.") or "LayerNorm" in n),
    ("ia3", {}, 2 * (32 + 32 + 32 + 64) + HEAD,  # key, value outputs; attention-output and output inputs
     _ends("key.weight", "key.bias", "value.weight", "value.bias", "output.dense.weight")),
    ("ia3", {"feedforward": False, "layers": [0]}, 32 + 32 + HEAD,
     lambda n: n.startswith("classifier.") or (".layer.0." in n and n.endswith(("key.weight", "key.bias", "value.weight", "value.bias")))),
    ("adalora", {"init_r": 4, "target_r": 2, "deltaT": 1}, 2 * 2 * (4 * 64 + 4) + HEAD, _ends("query.weight", "value.weight")),
    # VeRA trains d_out + r per module (vectors b and d); the shared random A, B are frozen buffers
    ("vera", {}, 2 * 2 * (32 + 256) + HEAD, _ends("query.weight", "value.weight")),  # r 256 > hidden 32 is fine
    ("vera", {"rank": 4, "target_preset": "all_linear", "layers": [1], "dropout": 0.1},
     4 * (32 + 4) + (64 + 4) + (32 + 4) + HEAD,  # mixed shapes: peft slices one A (4 x 64), B (64 x 4)
     lambda n: n.startswith("classifier.") or (".layer.1." in n and n.endswith("weight") and "LayerNorm" not in n)),
    # LoHa trains two rank-r pairs per module: 2 r (d_in + d_out)
    ("loha", {"rank": 2}, 2 * 2 * 2 * 2 * 64 + HEAD, _ends("query.weight", "value.weight")),
    ("loha", {"rank": 2, "target_preset": "all_linear", "layers": [0], "rank_dropout": 0.1, "module_dropout": 0.1},
     4 * 2 * 2 * 64 + 2 * 2 * 2 * 96 + HEAD,
     lambda n: n.startswith("classifier.") or (".layer.0." in n and n.endswith("weight") and "LayerNorm" not in n)),
    # LoKr: 32 = 4 x 8, 64 = 8 x 8 (factors near the square root); W1 (a x c) full, W2 (b x d) full when
    # r >= max(b, d) / 2, else b r + r d. q/v (32 -> 32): W1 4 x 4, W2 8 x 8.
    ("lokr", {}, 2 * 2 * (16 + 64) + HEAD, _ends("query.weight", "value.weight")),  # r 8 >= 4: W2 full
    ("lokr", {"rank": 2}, 2 * 2 * (16 + 2 * 8 * 2) + HEAD, _ends("query.weight", "value.weight")),
    # decompose_both, r 1: every factor is a rank-1 product (a x c -> a + c). q, k, v, attention output
    # (W1 4 x 4, W2 8 x 8): 8 + 16 each; intermediate (W1 8 x 4, W2 8 x 8), output (W1 4 x 8, W2 8 x 8): 12 + 16 each
    ("lokr", {"rank": 1, "decompose_both": True, "target_preset": "all_linear"}, 2 * (4 * (8 + 16) + 2 * (12 + 16)) + HEAD,
     lambda n: n.startswith("classifier.") or (".layer." in n and n.endswith("weight") and "LayerNorm" not in n)),
    # decompose_factor 2: 32 = 2 x 16, W1 2 x 2, W2 16 x 16 (r 8 >= 16 / 2: full)
    ("lokr", {"decompose_factor": 2, "layers": [1]}, 2 * (4 + 256) + HEAD,
     lambda n: n.startswith("classifier.") or (".layer.1." in n and n.endswith(("query.weight", "value.weight")))),
    ("zero_shot", {}, 0, lambda n: n.startswith("classifier.")),
    ("zero_shot", {"metric": "euclidean"}, 0, lambda n: n.startswith("classifier.")),
    pytest.param("qlora", {"rank": 2}, 2 * 2 * 2 * 64 + HEAD, None,
                 marks=pytest.mark.skipif(not _qlora_available(), reason="qlora needs a CUDA GPU and bitsandbytes")),
]


def _case_method(case):
    return case.values[0] if hasattr(case, "values") else case[0]


def test_every_registered_method_has_a_case():
    assert {_case_method(c) for c in CASES} == set(REGISTRY)


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


def _apply(method, knobs, cfg, split, total_steps=STEPS):
    torch.manual_seed(0)
    base = build_model(cfg, LABELS)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    m = REGISTRY[method]
    params = m.Params(**knobs)
    calib = list(itertools.islice(batches(split, 8), m.calibration_batches(params)))
    prepared = m.apply(base, params, ApplyContext(seed=0, calibration_batches=calib, total_steps=total_steps))
    return m, params, prepared, before


def _train_steps(prepared, split, steps=STEPS):
    """As the loop does: AdamW with the method's groups, the after-step hook after every step."""
    opt = torch.optim.AdamW(prepared.param_groups(weight_decay=0.1), lr=1e-2)
    prepared.model.train()
    for step, batch in zip(range(steps), itertools.cycle(list(batches(split, 8)))):
        loss = prepared.model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        prepared.after_optimizer_step(step)
    return opt


@pytest.mark.parametrize("method,knobs,expected,may_change", CASES,
                         ids=[f"{_case_method(c)}-{i}" for i, c in enumerate(CASES)])
def test_method_trains_exactly_what_it_claims(setup, method, knobs, expected, may_change):
    cfg, split = setup
    m, params, prepared, before = _apply(method, knobs, cfg, split)
    claimed = prepared.trainable_params
    if expected is None or isinstance(expected, str):  # whole model / one block + head, counted on the plain model
        expected = sum(v.numel() for k, v in before.items()
                       if expected is None or k.startswith("classifier.") or expected in k)
    assert claimed == sum(p.numel() for _, p in prepared.trainable_named_parameters()) == expected
    opt = _train_steps(prepared, split) if m.trains else None
    if not m.trains:
        assert claimed == 0 and not any(p.requires_grad for p in prepared.model.parameters())

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
    assert type(exported).__name__ == "AutotuneForSequenceClassification"

    changed_entries = 0
    for name, old in before.items():
        diff = (after[name] != old)
        if may_change is not None and not may_change(name):
            assert not diff.any(), f"{method}: {name} moved but the method does not train it"
        changed_entries += int(diff.sum())
    assert changed_entries > 0
    if method == "sparse":
        # only selected entries (+ the head) may move: frozen entries never do, weight decay included
        assert changed_entries <= claimed
        # AdamW keeps two moments per trained entry: memory scales with k, not with the model
        state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.ndim > 0)
        assert state_bytes == 2 * 4 * claimed

    # a checkpoint of the trainable tensors rebuilds the same model (no calibration data, no schedule plan)
    torch.manual_seed(123)  # a different head init must not matter: the state overrides it
    rebuilt = rebuild_trained(cfg, LABELS, method, params.model_dump(), state).export()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(**batch).logits, live, atol=1e-5)


def test_bad_layer_index_fails_the_trial(setup):
    from autotune.errors import TrialFailed

    cfg, _ = setup
    for name in ("lora", "adalora", "ia3", "full", "vera", "loha", "lokr"):
        m = REGISTRY[name]
        with pytest.raises(TrialFailed, match=rf"{name}.layers: layer\(s\) \[7\] do not exist \(the model has 2 layers: 0..1\)"):
            m.apply(build_model(cfg, LABELS), m.Params(layers=[7]), ApplyContext(total_steps=10))


def test_knob_combinations_are_refused():
    from pydantic import ValidationError

    cases = [
        ("lora", {"target_modules": ["query"], "target_preset": "all_linear"}, "give either target_modules or target_preset, not both"),
        ("lora", {"init": "orthogonal", "rank": 3}, "init orthogonal needs an even rank (got rank=3)"),
        ("adalora", {"init_r": 4, "target_r": 8}, "target_r <= init_r must hold (got target_r=8, init_r=4)"),
        ("adalora", {"tinit": 0.5, "tfinal": 0.5}, "tinit + tfinal < 1 must hold"),
        ("qlora", {"use_dora": True}, "qlora does not offer use_dora"),
        ("zero_shot", {"learning_rate": 1e-3}, "Extra inputs are not permitted"),
        ("sparse", {"sparsity": 0.999999}, "less than or equal to 0.99999"),
        ("vera", {"target_modules": ["query"], "target_preset": "all_linear"}, "give either target_modules or target_preset, not both"),
        ("loha", {"target_modules": ["query"], "target_preset": "all_linear"}, "give either target_modules or target_preset, not both"),
        ("lokr", {"decompose_factor": 0}, "decompose_factor must be -1 (near the square root) or >= 1 (got 0)"),
        ("vera", {"alpha": 8.0}, "Extra inputs are not permitted"),  # VeRA has no alpha: the vectors scale
    ]
    for method, knobs, text in cases:
        with pytest.raises(ValidationError, match=text.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
            REGISTRY[method].Params(**knobs)


def test_calibration_hook_says_what_each_method_needs():
    sparse = REGISTRY["sparse"]
    assert sparse.calibration_batches(sparse.Params(selection="gradient")) == 4
    assert sparse.calibration_batches(sparse.Params(selection="fisher", calibration_batches=9)) == 9
    assert sparse.calibration_batches(sparse.Params(selection="magnitude")) == 0
    assert REGISTRY["zero_shot"].calibration_batches(REGISTRY["zero_shot"].Params()) == ALL_BATCHES
    assert all(REGISTRY[n].calibration_batches(REGISTRY[n].Params()) == 0
               for n in ("head", "lora", "adalora", "bitfit", "vera", "loha", "lokr"))


def test_register_refuses_a_taken_name():
    from autotune.methods.lora import LoraMethod

    class Other(LoraMethod):
        pass

    with pytest.raises(ValueError, match="method name 'lora' is taken by LoraMethod"):
        register(Other())
    assert type(REGISTRY["lora"]) is LoraMethod


def test_adalora_ranks_shrink_to_the_target_budget(setup):
    cfg, split = setup
    _, params, prepared, _ = _apply("adalora", {"init_r": 4, "target_r": 2, "deltaT": 1, "tinit": 0.0, "tfinal": 0.2},
                                    cfg, split, total_steps=10)
    start = prepared.final_ranks()
    assert list(start) == ["0.attention.self.query", "0.attention.self.value",
                           "1.attention.self.query", "1.attention.self.value"]
    assert set(start.values()) == {4}
    _train_steps(prepared, split, steps=10)  # final allocation at step 10 - 2 = 8, then the mask holds
    ranks = prepared.final_ranks()
    assert sum(ranks.values()) == 2 * len(ranks)  # the target budget: average rank target_r
    assert min(ranks.values()) < 4 and all(0 <= r <= 4 for r in ranks.values())
    # the masked triplets are exactly zero in what the checkpoint holds
    state = prepared.trainable_state()
    zeros = {k.split("layer.", 1)[1].rsplit(".lora_E", 1)[0]: int((v == 0).sum()) for k, v in state.items() if "lora_E" in k}
    assert zeros == {k: 4 - r for k, r in ranks.items()}


def test_adalora_regulariser_is_in_the_training_loss_only(setup):
    cfg, split = setup
    _, _, prepared, _ = _apply("adalora", {"init_r": 4, "target_r": 2, "orth_reg_weight": 5.0}, cfg, split, total_steps=10)
    batch = next(batches(split, 16))
    plain = prepared.model.model  # the wrapped model: no regulariser
    with torch.no_grad():
        plain.eval()
        base_loss = float(plain(**batch).loss)
        prepared.model.eval()
        assert float(prepared.model(**batch).loss) == pytest.approx(base_loss)
        prepared.model.train()
        torch.manual_seed(0)
        reg = float(prepared.model(**batch).loss)
        plain.train()
        torch.manual_seed(0)
        assert reg > float(plain(**batch).loss) + 1e-3


@pytest.mark.parametrize("method", ["lora", "vera", "loha", "lokr"])
def test_the_adapter_alone_learns_at_its_default_learning_rate(setup, method):
    """The toy task with the head fixed (scaled up, so its loss is high and only the encoder can lower it):
    the adapter, starting as the base model, lowers the training loss at the method's default learning rate."""
    cfg, split = setup
    _, params, prepared, _ = _apply(method, {}, cfg, split)
    head = prepared.model.base_model.model.classifier
    with torch.no_grad():
        head.weight.mul_(30)
    head.requires_grad_(False)
    assert prepared.trainable_named_parameters() and all("classifier" not in n for n, _ in prepared.trainable_named_parameters())
    batch = next(batches(split, 16))
    prepared.model.eval()
    with torch.no_grad():
        before = float(prepared.model(**batch).loss)
    opt = torch.optim.AdamW(prepared.param_groups(weight_decay=0.0), lr=params.learning_rate)
    prepared.model.train()
    for _, b in zip(range(30), itertools.cycle(list(batches(split, 8)))):
        loss = prepared.model(**b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    prepared.model.eval()
    with torch.no_grad():
        after = float(prepared.model(**batch).loss)
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("budget", ["global", "per_tensor"])
def test_fisher_selection_picks_the_largest_squared_gradients(setup, budget):
    from autotune.methods.base import encoder_layers
    from autotune.methods.sparse import select_global, select_per_tensor

    cfg, split = setup
    calib = list(itertools.islice(batches(split, 8), 2))
    # the reference: the sum over the calibration batches of (dL/dW)^2, on the same model, same dropout masks
    torch.manual_seed(0)
    model = build_model(cfg, LABELS)
    model.train()
    names = [n for layer in encoder_layers(model) for n, mod in model.named_modules()
             if any(mod is x for x in layer.modules()) and isinstance(getattr(mod, "weight", None), torch.nn.Parameter)
             and mod.weight.ndim == 2]
    weights = [model.get_submodule(n).weight for n in names]
    fisher = [torch.zeros_like(w) for w in weights]
    torch.manual_seed(1)
    for b in calib:
        model.zero_grad()
        model(**b).loss.backward()
        for f, w in zip(fisher, weights):
            f += w.grad.square()
    k = _sparse_k(0.99)

    torch.manual_seed(0)
    base = build_model(cfg, LABELS)
    m = REGISTRY["sparse"]
    params = m.Params(sparsity=0.99, selection="fisher", budget=budget, calibration_batches=2)
    torch.manual_seed(1)
    prepared = m.apply(base, params, ApplyContext(seed=0, calibration_batches=calib))
    got = []
    for n in names:  # the entries the method trains, per tensor (none where the budget left a tensor out)
        mod = prepared.model.get_submodule(n)
        got.append(mod.parametrizations.weight[0].idx if hasattr(mod, "parametrizations") else torch.zeros(0, dtype=torch.long))
    assert sum(g.numel() for g in got) == k
    want = select_global(fisher, k) if budget == "global" else select_per_tensor(fisher, k)
    assert [sorted(w.tolist()) for w in want] == [sorted(g.tolist()) for g in got]
    if budget == "per_tensor":  # each tensor's share is proportional to its size
        sizes = [w.numel() for w in weights]
        assert all(abs(g.numel() - k * s / sum(sizes)) < 1 for g, s in zip(got, sizes))
    else:  # every selected score is at least every unselected one, over all tensors together
        flat = torch.cat([f.reshape(-1) for f in fisher])
        chosen = torch.zeros_like(flat, dtype=torch.bool)
        offset = 0
        for f, g in zip(fisher, got):
            chosen[offset + g] = True
            offset += f.numel()
        assert flat[chosen].min() >= flat[~chosen].max()


def test_zero_shot_beats_chance_without_a_step(tmp_path):
    """Real MiniLM embeddings (1 layer), the synthetic sentiment data: nearest centroid of the training split,
    no optimizer step, evaluated as a trial is (one rung)."""
    from tests.conftest import synthetic_rows
    from autotune.config.job import TrainingConfig
    from autotune.training.loop import evaluate_only
    from autotune.training.model import load_tokenizer

    cfg = ModelConfig(num_hidden_layers=1, max_length=24)
    tok = load_tokenizer(cfg)
    rows = synthetic_rows(160, seed=3)

    def split(part):
        enc = tok([t for t, _ in part], truncation=True, max_length=24, padding="max_length", return_tensors="np")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([int(l == "pos") for _, l in part]).numpy()}

    data = {"train": split(rows[:100]), "validation": split(rows[100:])}
    torch.manual_seed(0)
    model = build_model(cfg, LABELS)
    m = REGISTRY["zero_shot"]
    params = m.Params()
    training = TrainingConfig(batch_size=16)
    calib = list(itertools.islice(batches(data["train"], 16), m.calibration_batches(params)))
    assert sum(len(b["labels"]) for b in calib) == 100  # the whole training split
    prepared = m.apply(model, params, ApplyContext(calibration_batches=calib))
    reported = []
    metrics = evaluate_only(prepared, data, training, lambda mt, rung: reported.append((rung, mt)))
    assert [r for r, _ in reported] == [1]
    assert metrics["step"] == 0 and metrics["trainable_params"] == 0 and metrics["total_rungs"] == 1
    assert metrics["val_accuracy"] >= 0.75, metrics  # chance is 0.5


def test_qlora_is_refused_at_validate_on_a_machine_without_a_gpu(tmp_path):
    from autotune.config.space import SearchSpace, compile_space
    from autotune.methods.qlora import missing_for_qlora

    found = missing_for_qlora()
    if not found:
        pytest.skip("this machine can run qlora")
    space = SearchSpace(methods={"head": {}, "qlora": {"rank": {"low": 2, "high": 8}}})
    compiled, problems = compile_space(space, "job.yaml", prefix="search.space")
    assert compiled is None
    assert problems == [
        "job.yaml: search.space.methods.qlora: needs a CUDA GPU and bitsandbytes (4-bit kernels) on this machine; "
        f"remove qlora from the space or validate on a GPU machine (got {', '.join(found)})"]
    assert any(f.startswith("no CUDA device (torch ") for f in found) or "bitsandbytes not installed" in found

    job = tmp_path / "job.yaml"
    job.write_text("name: q\nsearch:\n  space:\n    methods:\n      head: {}\n      qlora: {rank: 4}\n")
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "validate", str(job)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{job}: search.space.methods.qlora: needs a CUDA GPU and bitsandbytes" in proc.stdout + proc.stderr


@pytest.mark.parametrize("method,knobs", [
    ("zero_shot", {}),
    ("adalora", {"init_r": 4, "target_r": 2, "deltaT": 1}),
    ("sparse", {"selection": "fisher", "calibration_batches": 2}),
    ("ia3", {"learning_rate": 1e-2}),
    ("vera", {"rank": 16}),
    ("loha", {"rank": 2}),
    ("lokr", {"rank": 2}),
])
def test_a_trial_runs_the_method_through_the_trainable(setup, monkeypatch, method, knobs):
    """run_trial with Ray's reporting stubbed (no Ray started): the calibration hook, the planned steps, the
    no-training path and the final ranks reach the trial's reports."""
    import json

    import ray
    from ray import tune

    from autotune.config.job import TrainingConfig
    from autotune.config.space import SearchSpace, compile_space
    from autotune.search.trainable import TrialSpec, run_trial

    cfg, split = setup
    reports = []
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append(metrics))
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Ctx", (), {"get_node_id": lambda self: "n"})())
    space, errs = compile_space(SearchSpace(methods={method: knobs}), "<test>")
    assert errs == []
    training = TrainingConfig(epochs=2, batch_size=8, evals_per_epoch=1)
    spec = TrialSpec(model=cfg, training=training, space=space, labels=LABELS, seed=0, cpus=1)
    run_trial(space.encode_point(method, {}) | {"method": method}, spec, {"train": split, "validation": split})
    if method == "zero_shot":
        assert len(reports) == 1 and reports[0]["step"] == 0 and reports[0]["trainable_params"] == 0
        assert reports[0]["val_accuracy"] >= 0.5
        return
    assert [r["step"] for r in reports] == [2, 4]  # 16 examples, batch 8, 2 epochs: 4 planned steps
    if method == "adalora":
        assert "final_ranks" not in reports[0]
        ranks = json.loads(reports[-1]["final_ranks"])
        assert len(ranks) == 4 and sum(ranks.values()) == 2 * 4  # the schedule ran over the trial's 4 steps
