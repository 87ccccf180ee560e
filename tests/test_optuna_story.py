"""The Optuna study tells the same story as MLflow: the searcher is fed results exactly as Ray Tune feeds it
(every result but the one a trial ends on goes to on_trial_result; that one goes to on_trial_complete), and
the study must hold each rung at step = rung, the value of the rung MLflow shows last, the objective's
name, AutoTune's best-trial rule and each trial's best rung. Real Optuna storage and Ray's OptunaSearch;
no Ray instance is started."""

from __future__ import annotations

import optuna
import pytest

from autotune.config.space import SearchSpace, compile_space
from autotune.search.best import BEST_RULE, best_record, study_attrs
from autotune.search.callbacks import TrialBook
from autotune.search.searcher import AutotuneOptunaSearch

SPACE, _ = compile_space(SearchSpace.model_validate({"methods": {
    "head": {"learning_rate": {"low": 1.0e-3, "high": 1.0e-1, "log": True}}}}), "<test>")


class Trial:
    def __init__(self, tid, config):
        self.trial_id, self.config, self.last_result = tid, config, {}


def result(r: int, total: int, acc: float, params: int = 66) -> dict:
    # Ray adds training_iteration (its count of reports); rungs are what MLflow steps by
    return {"rung": r, "total_rungs": total, "val_accuracy": acc, "trainable_params": params,
            "examples": 100 * 2 ** (r - 1), "training_iteration": r}


@pytest.fixture()
def study_run(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = AutotuneOptunaSearch(space=SPACE.define_by_run, metric="val_accuracy", mode="max",
                                    sampler=optuna.samplers.RandomSampler(seed=0), study_name="story",
                                    storage=storage, job_run="parent-run")
    book = TrialBook(SPACE, None, None, None, metric="val_accuracy", mode="max")
    searcher.driver["trial_attrs"] = book.optuna_attrs
    searcher.describe_study(study_attrs("val_accuracy", None, "parent-run"))
    trials = {}
    for tid in ("a", "b", "c", "d"):
        trials[tid] = Trial(tid, searcher.suggest(tid))
        book.on_trial_start(0, [], trials[tid])

    def run(tid, accs, total, params=66):
        """Every result but the last through on_trial_result, the last through on_trial_complete."""
        t = trials[tid]
        for r, acc in enumerate(accs, 1):
            res = result(r, total, acc, params)
            book.on_trial_result(0, [], t, res)
            t.last_result = res
            if r < len(accs):
                searcher.on_trial_result(tid, res)
        searcher.on_trial_complete(tid, result=t.last_result)
        book.on_trial_complete(0, [], t)

    run("a", (0.60, 0.70, 0.80, 0.75), 4)  # finished; its best rung (0.80) is not its last
    run("b", (0.50, 0.85), 4)  # pruned at rung 2 on 0.85: the best value anywhere
    run("c", (0.60, 0.70, 0.78, 0.79), 4)  # finished on its best rung
    run("d", (0.55, 0.79, 0.79, 0.79), 4, params=10)  # finished, ties c at its best with fewer params
    study = optuna.load_study(study_name="story", storage=storage)
    return study, book, searcher


def test_values_rung_by_rung(study_run):
    study, book, _ = study_run
    t = {tr.user_attrs["ray_trial_id"]: tr for tr in study.trials}
    assert t["a"].intermediate_values == {1: 0.60, 2: 0.70, 3: 0.80, 4: 0.75}  # the final rung included
    assert (t["a"].state.name, t["a"].value) == ("COMPLETE", 0.75)
    assert t["b"].intermediate_values == {1: 0.50, 2: 0.85}
    assert (t["b"].state.name, t["b"].value) == ("PRUNED", 0.85)  # the rung it was cut at, as MLflow shows last
    assert (t["c"].state.name, t["c"].value) == ("COMPLETE", 0.79)


def test_names_rule_and_best_rung_attrs(study_run):
    study, book, _ = study_run
    assert study.metric_names == ["val_accuracy"]
    assert study.user_attrs == {"autotune.objective": "val_accuracy", "autotune.best_rule": BEST_RULE}
    t = {tr.user_attrs["ray_trial_id"]: tr for tr in study.trials}
    assert {k: v for k, v in t["a"].user_attrs.items() if k.startswith("autotune.best")} == {
        "autotune.best_value": 0.80, "autotune.best_rung": 3, "autotune.best_examples": 400}
    assert t["d"].user_attrs["autotune.trainable_params"] == 10
    assert t["b"].user_attrs["autotune.best_value"] == 0.85


def test_where_optuna_and_autotune_agree_and_where_they_cannot(study_run):
    """Optuna's best_trial: the best FINAL value among COMPLETE trials, the first on a tie. AutoTune's: the
    best value at ANY rung of any trial that did not fail, the fewer trainable parameters on a tie."""
    study, book, _ = study_run
    number = {tr.user_attrs["ray_trial_id"]: tr.number for tr in study.trials}
    ours = book.best()
    assert (ours.trial_id, ours.best["val_accuracy"]) == ("b", 0.85)  # a pruned trial: Optuna cannot pick it
    assert study.best_trial.number == number["c"]  # c and d tie at 0.79; Optuna takes the first
    # restricted to what Optuna can see (COMPLETE trials, their final rung), our rule picks d: fewer params
    finished = [r for r in book.records.values() if r.status == "finished"]
    final_only = [type(r)(r.trial_id, r.number, r.method, r.knobs, status=r.status, best=r.metrics) for r in finished]
    assert best_record(final_only, "val_accuracy", "max").trial_id == "d"
    # ...and without the tie the two agree
    del_d = [r for r in final_only if r.trial_id != "d"]
    assert number[best_record(del_d, "val_accuracy", "max").trial_id] == study.best_trial.number


def test_a_trial_suggested_but_never_started_is_not_left_running(study_run):
    study, book, searcher = study_run
    searcher.suggest("e")  # asked for just before the budget ran out; Tune never started it
    searcher.close_unstarted(set(book.records), "budget")
    t = {tr.user_attrs["ray_trial_id"]: tr for tr in optuna.load_study(study_name="story", storage=study._storage).trials}
    assert (t["e"].state.name, t["e"].user_attrs["autotune.stop_reason"]) == ("FAIL", "never started: budget")
    assert [t[k].state.name for k in "abcd"] == ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"]  # left as they were
