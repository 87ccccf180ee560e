"""AutoTune's TPE reads the study once per trial (not once per suggestion), splits it and updates its knob groups
once per trial, and suggests exactly what Optuna's own TPE suggests: same seed, same space, same trials in flight
(and pruned ones, and two objectives), same points."""

from __future__ import annotations

import math
import pickle

import optuna
import pytest

from autotune.config.loader import load_job
from autotune.search.sampler import OneReadTPESampler


def run(sampler, storage: str, n: int = 40, objectives: int = 1) -> tuple[list[dict], int]:
    """n trials of the demo space, two in flight at a time (constant liar sees a running one), every third one
    pruned after two reports; returns the suggested params and how many times the storage was asked for every
    trial of the study."""
    space = load_job("pipelines/demo.yaml").space
    study = optuna.create_study(storage=storage, sampler=sampler, directions=["maximize", "minimize"][:objectives])
    reads = 0
    real = study._storage.get_all_trials

    def counting(*a, **k):
        nonlocal reads
        reads += 1
        return real(*a, **k)

    study._storage.get_all_trials = counting
    pending, points = [], []
    for _ in range(n):
        trial = study.ask()
        space.define_by_run(trial)
        points.append(dict(trial.params))
        pending.append(trial)
        if len(pending) == 2:
            done = pending.pop(0)
            lr = next(v for k, v in done.params.items() if k.endswith("learning_rate"))
            score = -abs(math.log10(lr) + 3.5)  # best near lr 3e-4, whatever the method
            if objectives == 1 and done.number % 3 == 2:
                done.report(score - 1.0, 1)
                done.report(score - 0.5, 2)
                study.tell(done, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(done, [score, len(done.params)] if objectives == 2 else score)
    return points, reads


@pytest.mark.parametrize("objectives", [1, 2])
def test_one_read_tpe_suggests_what_optuna_tpe_does_with_fewer_reads(tmp_path, objectives):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kw = dict(seed=3, multivariate=True, group=True, constant_liar=True, n_startup_trials=4)
    theirs, their_reads = run(optuna.samplers.TPESampler(**kw), f"sqlite:///{tmp_path / 'a.db'}", objectives=objectives)
    ours, our_reads = run(OneReadTPESampler(**kw), f"sqlite:///{tmp_path / 'b.db'}", objectives=objectives)
    assert ours == theirs
    methods = set(load_job("pipelines/demo.yaml").space.methods)
    assert {p["method"] for p in ours} == methods  # the whole conditional space was exercised
    assert our_reads < their_reads / 2, (our_reads, their_reads)


def test_the_sampler_pickles():  # Ray pickles the searcher, and the sampler with it
    sampler = pickle.loads(pickle.dumps(OneReadTPESampler(seed=1, multivariate=True, group=True, constant_liar=True)))
    assert isinstance(sampler, OneReadTPESampler)


def test_a_pickled_sampler_goes_on_suggesting_what_optuna_tpe_does(tmp_path):
    """Ray saves the searcher (with its sampler: the knob groups already added, not the per-trial memo) and
    restores it on resume: the restored sampler goes on exactly as Optuna's own would."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kw = dict(seed=5, multivariate=True, group=True, constant_liar=True, n_startup_trials=4)
    space = load_job("pipelines/demo.yaml").space
    points = {}
    for name, sampler in (("theirs", optuna.samplers.TPESampler(**kw)), ("ours", OneReadTPESampler(**kw))):
        study = optuna.create_study(storage=f"sqlite:///{tmp_path / name}.db", sampler=sampler, direction="maximize")
        got = []
        for i in range(24):
            if i == 12:  # saved and restored mid-search, a trial suggested but not told
                study.sampler = pickle.loads(pickle.dumps(study.sampler))
            trial = study.ask()
            space.define_by_run(trial)
            got.append(dict(trial.params))
            lr = next(v for k, v in trial.params.items() if k.endswith("learning_rate"))
            study.tell(trial, -abs(math.log10(lr) + 3.5))
        points[name] = got
    assert points["ours"] == points["theirs"]
