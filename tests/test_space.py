"""The conditional space: `method` first, then only that method's knobs; every sample decodes to valid knobs."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autotune.config.loader import load_space_file
from autotune.config.space import compile_space
from autotune.methods import REGISTRY

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def space():
    path = REPO / "search_spaces" / "default.yaml"
    compiled, errs = compile_space(load_space_file(path), str(path))
    assert not errs
    return compiled


def test_fixed_trial_samples_only_the_chosen_methods_knobs(space):
    trial = optuna.trial.FixedTrial({"method": "lora", "lora.learning_rate": 1e-3, "lora.rank": 4, "lora.alpha": 16.0,
                                     "lora.target_modules": "query,key,value,dense", "lora.epochs": 1.5,
                                     "lora.batch_size": 32})
    constants = space.define_by_run(trial)
    assert constants == {"lora.dropout": 0.05}  # fixed knobs come back as constants, not suggestions
    config = {"method": "lora", **trial.params, **constants}
    assert set(trial.params) == {"method", "lora.learning_rate", "lora.rank", "lora.alpha", "lora.target_modules",
                                 "lora.epochs", "lora.batch_size"}
    method, knobs = space.decode(config)
    assert method == "lora"
    assert knobs == {"learning_rate": 1e-3, "rank": 4, "alpha": 16.0, "dropout": 0.05,
                     "target_modules": ["query", "key", "value", "dense"], "epochs": 1.5, "batch_size": 32}
    REGISTRY["lora"].Params(**knobs)


def test_many_random_samples_are_all_valid_and_conditional(space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(300):
        trial = study.ask()
        constants = space.define_by_run(trial) or {}
        config = {**trial.params, **constants}
        method, knobs = space.decode(config)
        seen.add(method)
        # no other method's knob was sampled
        assert all(k == "method" or k.startswith(method + ".") for k in config), config
        params = REGISTRY[method].Params(**knobs)
        for knob in space.methods[method]:
            if knob.kind in ("int", "float"):
                v = getattr(params, knob.name.split(".", 1)[1])
                assert knob.low <= v <= knob.high  # inclusive bounds
        study.tell(trial, 0.5)
    assert seen == set(space.methods)


def test_encode_point_round_trips(space):
    point = space.encode_point("lora", {"rank": 8, "target_modules": ["query", "value"], "dropout": 0.3})
    assert point == {"method": "lora", "lora.rank": 8, "lora.target_modules": "query,value"}
    method, knobs = space.decode({**point, "lora.learning_rate": 1e-3, "lora.alpha": 8.0})
    assert knobs["target_modules"] == ["query", "value"] and knobs["dropout"] == 0.05
