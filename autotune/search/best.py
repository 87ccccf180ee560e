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


def candidates(records: Iterable[Candidate], metric: str) -> list:
    """Records that can win: not failed, with `metric` at their best rung."""
    return [r for r in records if r.status != "failed" and metric in r.best]


def dominates(a: dict[str, Any], b: dict[str, Any], objectives: list[tuple[str, str]]) -> bool:
    """a is at least as good as b in every objective and better in one ((name, 'max'|'min') pairs)."""
    signs = [(name, 1 if mode == "max" else -1) for name, mode in objectives]
    if any(name not in a or name not in b for name, _ in signs):
        return False
    return (all(s * a[n] >= s * b[n] for n, s in signs) and any(s * a[n] > s * b[n] for n, s in signs))


def pareto_front(records: Iterable[Candidate], objectives: list[tuple[str, str]]) -> list:
    """The records no other record dominates, each at its best rung (best by the first objective), best first by
    the first objective. Records missing an objective are not candidates."""
    names = [n for n, _ in objectives]
    pool = [r for r in candidates(records, names[0]) if all(n in r.best for n in names)]
    front = [r for r in pool if not any(dominates(o.best, r.best, objectives) for o in pool if o is not r)]
    sign = 1 if objectives[0][1] == "max" else -1
    return sorted(front, key=lambda r: (-sign * r.best[names[0]], r.number))


def pick_record(records: Iterable[Candidate], objective) -> Any:
    """THE deploy choice for an ObjectiveConfig: `best_record` for a single objective; for a multi-objective
    search, among the records within `pick.within` of the best `metric`, the smallest `pick.smallest` (default
    the first of also_minimize), ties to the better metric, then the earlier trial. The pick is on the Pareto front
    of the metric and that trade-off."""
    records = list(records)
    top = best_record(records, objective.metric, objective.mode)
    if top is None or not objective.multi:
        return top
    metric, by, sign = objective.metric, objective.trade_off, 1 if objective.mode == "max" else -1
    near = [r for r in candidates(records, metric)
            if by in r.best and sign * (top.best[metric] - r.best[metric]) <= objective.pick.within + 1e-12]
    if not near:
        return top
    return min(near, key=lambda r: (r.best[by], -sign * r.best[metric], r.number))


def shown(name: str, value: float) -> str:
    """A metric as the tables print it: validation metrics to 4 places, seconds to 0.1, counts as integers."""
    if name.startswith("val_"):
        return f"{value:.4f}"
    return f"{value:.1f}" if name == "seconds" else f"{int(value):,}"


def pick_rule(objective) -> str:
    """The deploy rule in words (summary, README, study attrs)."""
    if not objective.multi:
        return BEST_RULE
    return (f"multi-objective ({', '.join(f'{n} {m}' for n, m in zip(objective.metrics, objective.modes))}): among "
            f"trials whose {objective.metric} at their best rung is within {objective.pick.within:g} of the best, the "
            f"smallest {objective.trade_off}; ties go to the better {objective.metric}, then the earlier trial")


BEST_RULE = ("the best validation objective at ANY evaluated rung of any trial that did not fail (finished, pruned "
             "by ASHA or stopped by the budget); ties go to fewer trainable parameters, then the earlier trial. "
             "Optuna's own best_trial is the best FINAL value among COMPLETE trials: autotune.best_trial names "
             "AutoTune's pick")


def study_attrs(metric: str, tracker, parent_run_id: str | None, objective=None) -> dict[str, Any]:
    """Optuna study user attrs: the objective(s), the rule deploy picks by, and the MLflow job run the trials log to."""
    from autotune.redact import redact

    attrs: dict[str, Any] = {"autotune.objective": metric, "autotune.best_rule": BEST_RULE}
    if objective is not None and objective.multi:
        attrs.update({"autotune.objectives": objective.metrics, "autotune.best_rule": pick_rule(objective)})
    if tracker is not None:
        attrs.update({"autotune.mlflow_tracking_uri": redact(tracker.uri),
                      "autotune.mlflow_experiment_id": tracker.experiment_id,
                      "autotune.mlflow_parent_run_id": parent_run_id})
    return attrs
