"""ASHA with rungs compared within a method.

Early stopping across methods is not neutral: head-only trials are good after a few steps, LoRA and
sparse trials start slowly. A shared ASHA bracket cuts the slow starters at their first rung and the search
silently learns "LoRA is bad". Here each method gets its own bracket(s): a trial is compared only with
trials of the same method.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingMargin:
    """How far below ASHA's cut-off a score must lie before it stops a trial: `z` standard errors of a
    proportion measured on `n` validation examples, sqrt(p (1 - p) / n), at the cut-off p.

    A validation score is a sample: at n = 300 and p = 0.55 one standard error is 2.9 points (and one row
    0.33). On a hard set the first rungs sit near chance, and ranking trials there by a point or two ranks
    noise: Rotten Tomatoes' first-rung accuracy had a correlation of -0.46 to 0.02 with where a trial ended
    (docs/benchmarks.md). With the margin only a score worse beyond the split's sampling error is cut. Measured
    at 420 s (round 6): at z = 1 a third fewer trials, the same model on Rotten Tomatoes and a worse one on
    TREC-6 - so it is an option (`scheduler.noise_margin`), off by default."""

    n: int
    z: float = 1.0

    def __call__(self, cutoff: float) -> float:
        p = min(max(float(cutoff), 0.0), 1.0)
        return self.z * math.sqrt(p * (1.0 - p) / max(1, self.n))


def recording_asha(**kwargs):
    """Ray's ASHA, plus the cut-off that stopped each trial (see `recording`)."""
    from ray.tune.schedulers import AsyncHyperBandScheduler

    return recording(AsyncHyperBandScheduler)(**kwargs)


def recording(base):
    """An ASHA class that remembers, for every trial it stops, the rung and the cut-off value that stopped
    it (`cuts[trial_id]`: examples at the rung, cut-off in the metric's own units, the method compared
    within or None): each pruned trial's MLflow run says why it ended. With `margin` (a SamplingMargin, for
    a metric to maximise), the cut-off is ASHA's less the margin at it."""
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.schedulers.async_hyperband import _Bracket

    class MarginBracket(_Bracket):
        margin: SamplingMargin | None = None

        def cutoff(self, recorded):
            cut = super().cutoff(recorded)
            if cut is None or self.margin is None:
                return cut
            return cut - self.margin(cut)

    class Recording(base):
        per_method = False

        def __init__(self, margin: SamplingMargin | None = None, **kw):
            super().__init__(**kw)
            if margin is not None:  # only for accuracy / F1, maximised (the job loader refuses the rest)
                for bracket in self._brackets:
                    bracket.__class__ = MarginBracket  # the same state; only the cut-off moves
                    bracket.margin = margin
            self.cuts: dict[str, tuple[float, float, str | None]] = {}

        def on_trial_result(self, tune_controller, trial, result):
            cut = self._cutoff(trial, result)  # before the result is recorded, as ASHA itself computes it
            action = super().on_trial_result(tune_controller, trial, result)
            if action == TrialScheduler.STOP and cut is not None:
                self.cuts[trial.trial_id] = cut
            return action

        def _cutoff(self, trial, result):
            """ASHA's own rule (Ray 2.60 `_Bracket.on_result`): the highest milestone this result reaches and
            the trial has not been recorded at; its cut-off is the (1 - 1/rf) percentile of those recorded
            (less the sampling margin, if any)."""
            if self._time_attr not in result or self._metric not in result or result[self._time_attr] >= self._max_t:
                return None
            bracket = self._trial_info.get(trial.trial_id)
            if bracket is None:
                return None
            cur = result[self._time_attr]
            for milestone, recorded in bracket._rungs:  # descending milestones
                if cur >= milestone and trial.trial_id in recorded:
                    return None
                if cur < milestone:
                    continue
                cutoff = bracket.cutoff(recorded)
                if cutoff is None:
                    return None
                among = trial.config.get("method") if self.per_method else None
                return float(milestone), float(cutoff) * self._metric_op, among  # metric_op is +1 / -1
            return None

    Recording.__name__ = Recording.__qualname__ = f"Recording{base.__name__}"
    return Recording


def method_stratified_asha(**kwargs):
    from ray.tune.schedulers import AsyncHyperBandScheduler

    class MethodStratifiedASHA(recording(AsyncHyperBandScheduler)):
        per_method = True

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
