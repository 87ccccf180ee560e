"""AutoTune's TPE reads the study once per trial (not once per suggestion) and suggests exactly what Optuna's
own TPE suggests: same seed, same space, same trials in flight, same points."""

from __future__ import annotations

import math
import pickle

import optuna

from autotune.config.loader import load_job
from autotune.search.sampler import OneReadTPESampler


def run(sampler, storage: str, n: int = 40) -> tuple[list[dict], int]:
    """n trials of the demo space, two in flight at a time (constant liar sees a running one); returns the
    suggested params and how many times the storage was asked for every trial of the study."""
    space = load_job("pipelines/demo.yaml").space
    study = optuna.create_study(storage=storage, sampler=sampler, direction="maximize")
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
            study.tell(done, -abs(math.log10(lr) + 3.5))  # best near lr 3e-4, whatever the method
    return points, reads


def test_one_read_tpe_suggests_what_optuna_tpe_does_with_fewer_reads(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kw = dict(seed=3, multivariate=True, group=True, constant_liar=True, n_startup_trials=4)
    theirs, their_reads = run(optuna.samplers.TPESampler(**kw), f"sqlite:///{tmp_path / 'a.db'}")
    ours, our_reads = run(OneReadTPESampler(**kw), f"sqlite:///{tmp_path / 'b.db'}")
    assert ours == theirs
    methods = set(load_job("pipelines/demo.yaml").space.methods)
    assert {p["method"] for p in ours} == methods  # the whole conditional space was exercised
    assert our_reads < their_reads / 2, (our_reads, their_reads)


def test_the_sampler_pickles():  # Ray pickles the searcher, and the sampler with it
    sampler = pickle.loads(pickle.dumps(OneReadTPESampler(seed=1, multivariate=True, group=True, constant_liar=True)))
    assert isinstance(sampler, OneReadTPESampler)
