"""TPE that reads the study once per trial instead of once per suggestion.

With constant_liar, Optuna's TPE re-reads every trial from storage each time it samples (its per-trial cache
could miss parameters that other threads suggest meanwhile), and with group=True it samples once per knob group:
~7 full reads of the study per trial here, most of the ~150 ms per trial that SQLite adds at 1,000 trials
(bench/search_scale.py). AutoTune's searcher suggests one trial at a time, on Ray's driver thread, so between
`ask` (where Optuna drops its cache) and the last suggestion of that trial no other trial changes: the cached
read is the same data. tests/test_sampler.py checks that the suggestions are identical with and without it.
A module of its own (not a class inside a function): Ray pickles the searcher with its sampler.
"""

from __future__ import annotations

import optuna


class OneReadTPESampler(optuna.samplers.TPESampler):
    def _sample(self, study, trial, search_space):
        read = study._get_trials
        study._get_trials = lambda deepcopy=True, states=None, use_cache=False: read(deepcopy, states, True)
        try:
            return super()._sample(study, trial, search_space)
        finally:
            del study._get_trials  # the instance override goes; the class method is back
