"""TPE that does each piece of per-trial work once per trial instead of once per suggestion or knob group.

With constant_liar, Optuna's TPE re-reads every trial from storage each time it samples (its per-trial cache
could miss parameters that other threads suggest meanwhile), and with group=True it samples once per knob group:
~7 full reads of the study per trial here, most of the ~150 ms per trial that SQLite adds at 1,000 trials
(bench/search_scale.py). AutoTune's searcher suggests one trial at a time, on Ray's driver thread, so between
`ask` (where Optuna drops its cache) and the last suggestion of that trial no other trial changes: the cached
read is the same data. For the same reason the split of the study into good and bad trials (the same for every
knob group of a trial) is computed once per trial, and the knob groups are updated with each finished trial once
(Optuna re-adds every finished trial's distributions at each trial: a no-op for one already added, as the groups
it leaves are already split along that trial's knobs). At 1,000 trials the three together are most of TPE's cost.
tests/test_sampler.py checks that the suggestions are identical to Optuna's own TPE.
A module of its own (not a class inside a function): Ray pickles the searcher with its sampler.
"""

from __future__ import annotations

import copy

import optuna
from optuna.samplers._tpe import sampler as _tpe
from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace
from optuna.trial import TrialState


class _GroupsAddedOnce(_GroupDecomposedSearchSpace):
    """Optuna's group decomposition, each finished trial added once (finished trials never change)."""

    def __init__(self, include_pruned: bool = False) -> None:
        super().__init__(include_pruned)
        self._added: set[int] = set()

    def calculate(self, study, use_cache: bool = False):
        if self._study_id is None:
            self._study_id = study._study_id
        elif self._study_id != study._study_id:
            raise ValueError("`_GroupDecomposedSearchSpace` cannot handle multiple studies.")
        states = (TrialState.COMPLETE, TrialState.PRUNED) if self._include_pruned else (TrialState.COMPLETE,)
        for trial in study._get_trials(deepcopy=False, states=states, use_cache=use_cache):
            if trial.number not in self._added:
                self._search_space.add_distributions(trial.distributions)
                self._added.add(trial.number)
        return copy.deepcopy(self._search_space)


class OneReadTPESampler(optuna.samplers.TPESampler):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self._group_decomposed_search_space is not None:
            self._group_decomposed_search_space = _GroupsAddedOnce(True)
        self._split_memo: tuple | None = None  # (key, (below, above)) for the trial being suggested

    def __getstate__(self):  # the memo holds the study's trials: not worth pickling with Ray's searcher
        state = self.__dict__.copy()
        state["_split_memo"] = None
        return state

    def before_trial(self, study, trial) -> None:
        self._split_memo = None
        super().before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._split_memo = None
        super().after_trial(study, trial, state, values)

    def _split(self, study, trial, trials, n_below):
        key = (study._study_id, trial.number, n_below, tuple((t.number, t.state) for t in trials))
        if self._split_memo is None or self._split_memo[0] != key:
            self._split_memo = (key, _tpe._split_trials(study, trials, n_below))
        return self._split_memo[1]

    def _sample(self, study, trial, search_space):
        read = study._get_trials
        study._get_trials = lambda deepcopy=True, states=None, use_cache=False: read(deepcopy, states, True)
        try:
            return self._sample_from(study, trial, search_space)
        finally:
            del study._get_trials  # the instance override goes; the class method is back

    def _sample_from(self, study, trial, search_space):
        # Optuna 5.0's TPESampler._sample, with the split of the trials memoised per trial (`self._split`).
        if self._constant_liar:
            states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]
        else:
            states = [TrialState.COMPLETE, TrialState.PRUNED]
        trials = study._get_trials(deepcopy=False, states=states, use_cache=not self._constant_liar)
        if self._constant_liar:
            trials = [t for t in trials if trial.number != t.number]
        if self._gamma is None:
            self._gamma = _tpe.default_gamma if len(study.directions) <= 1 else _tpe.default_gamma_multiobjective
        n = sum(t.state != TrialState.RUNNING for t in trials)  # running trials are ignored
        below_trials, above_trials = self._split(study, trial, trials, self._gamma(n))
        mpe_below = self._build_parzen_estimator(study, search_space, below_trials, handle_below=True)
        mpe_above = self._build_parzen_estimator(study, search_space, above_trials, handle_below=False)
        samples_below = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        acq_func_vals = self._compute_acquisition_func(samples_below, mpe_below, mpe_above)
        ret = optuna.samplers.TPESampler._compare(samples_below, acq_func_vals)
        for param_name, dist in search_space.items():
            ret[param_name] = dist.to_external_repr(ret[param_name])
        return ret
