"""THE best-trial rule, in one place (the search, `autotune status` and the summary all use it).

The best trial is the one with the best validation objective at ANY evaluated rung, among trials that did
not fail - finished, pruned by ASHA, or stopped by the budget: every evaluated checkpoint is a candidate,
and the kept checkpoint of that rung is what validate and deploy use. On a tie, fewer trainable parameters
win, then the earlier trial.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

BEST_TAG = "autotune.best_rung"  # MLflow tag: JSON of the metrics at the trial's best rung


class Candidate(Protocol):
    number: int
    status: str
    best: dict[str, Any]


def best_record(records: Iterable[Candidate], metric: str, mode: str):
    """Best record by its best rung's `metric`; None when no trial reached a rung."""
    sign = 1 if mode == "max" else -1
    done = [r for r in records if r.status != "failed" and metric in r.best]
    if not done:
        return None
    return max(done, key=lambda r: (sign * r.best[metric], -r.best.get("trainable_params", 0), -r.number))


BEST_RULE = ("the best validation objective at ANY evaluated rung of any trial that did not fail (finished, pruned "
             "by ASHA or stopped by the budget); ties go to fewer trainable parameters, then the earlier trial. "
             "Optuna's own best_trial is the best FINAL value among COMPLETE trials: autotune.best_trial names "
             "AutoTune's pick")


def study_attrs(metric: str, tracker, parent_run_id: str | None) -> dict[str, Any]:
    """Optuna study user attrs: the objective, the rule above, and the MLflow job run the trials log to."""
    from autotune.redact import redact

    attrs: dict[str, Any] = {"autotune.objective": metric, "autotune.best_rule": BEST_RULE}
    if tracker is not None:
        attrs.update({"autotune.mlflow_tracking_uri": redact(tracker.uri),
                      "autotune.mlflow_experiment_id": tracker.experiment_id,
                      "autotune.mlflow_parent_run_id": parent_run_id})
    return attrs
