"""ASHA with rungs compared within a method.

Early stopping across methods is not neutral: head-only trials are good after a few steps, LoRA and
sparse trials start slowly. A shared ASHA bracket cuts the slow starters at their first rung and the search
silently learns "LoRA is bad". Here each method gets its own bracket(s): a trial is compared only with
trials of the same method.
"""

from __future__ import annotations

import copy


def method_stratified_asha(**kwargs):
    from ray.tune.schedulers import AsyncHyperBandScheduler

    class MethodStratifiedASHA(AsyncHyperBandScheduler):
        def __init__(self, **kw):
            super().__init__(**kw)
            self._template = copy.deepcopy(self._brackets)
            self._by_method: dict[str, list] = {}

        def on_trial_add(self, tune_controller, trial):
            super().on_trial_add(tune_controller, trial)  # checks metric/mode, draws a bracket as ASHA does
            drawn = self._brackets.index(self._trial_info[trial.trial_id])
            method = trial.config.get("method", "")
            brackets = self._by_method.setdefault(method, copy.deepcopy(self._template))
            self._trial_info[trial.trial_id] = brackets[drawn]  # the same bracket, of this method's own set

        def debug_string(self) -> str:
            return "Method-stratified ASHA: " + ", ".join(
                f"{m}: {b[0].debug_str()}" for m, b in sorted(self._by_method.items())
            )

    return MethodStratifiedASHA(**kwargs)
