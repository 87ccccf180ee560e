"""Multi-objective search: `objective.also_minimize` makes the Optuna study multi-objective (through Ray Tune),
the Pareto front is computed over every trial's best rung, printed, written and plotted, and deploy takes the
point `objective.pick` names. The rule's own tests, the job-file errors, and one real job."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from autotune.config.job import ObjectiveConfig
from autotune.search.best import dominates, pareto_front, pick_record


def rec(number: int, acc: float | None, params: int, status: str = "finished", **more):
    best = {} if acc is None else {"val_accuracy": acc, "val_loss": 1 - acc, "trainable_params": params, **more}
    return SimpleNamespace(number=number, status=status, best=best)


RECORDS = [
    rec(0, 0.90, 1_000_000),  # the best accuracy, the largest
    rec(1, 0.896, 20_000),    # within half a point, far smaller: the pick at within=0.005
    rec(2, 0.80, 500),        # the smallest: on the front, far below the best
    rec(3, 0.85, 30_000),     # dominated by 1 (worse and larger)
    rec(4, 0.99, 10, status="failed"),  # failed trials never count, whatever they reported
    rec(5, None, 0, status="stopped"),  # never reached a rung
]


def test_the_front_holds_exactly_the_undominated_trials_best_metric_first():
    objectives = [("val_accuracy", "max"), ("trainable_params", "min")]
    assert [r.number for r in pareto_front(RECORDS, objectives)] == [0, 1, 2]
    assert dominates(RECORDS[1].best, RECORDS[3].best, objectives)
    assert not dominates(RECORDS[0].best, RECORDS[1].best, objectives)
    assert not dominates(RECORDS[1].best, RECORDS[1].best, objectives)  # equal is not better
    # a minimised first objective
    assert [r.number for r in pareto_front(RECORDS, [("val_loss", "min"), ("trainable_params", "min")])] == [0, 1, 2]


@pytest.mark.parametrize("within, expected", [(0.005, 1), (0.0, 0), (0.09, 1), (0.1, 2)])
def test_the_pick_is_the_smallest_within_the_tolerance(within, expected):
    objective = ObjectiveConfig(also_minimize=["trainable_params"], pick={"within": within})
    assert pick_record(RECORDS, objective).number == expected
    front = {r.number for r in pareto_front(RECORDS, [("val_accuracy", "max"), ("trainable_params", "min")])}
    assert expected in front


def test_a_single_objective_job_keeps_the_best_metric():
    assert pick_record(RECORDS, ObjectiveConfig()).number == 0
    assert pick_record(RECORDS, ObjectiveConfig(metric="val_loss")).number == 0
    assert pick_record([RECORDS[4], RECORDS[5]], ObjectiveConfig(also_minimize=["trainable_params"])) is None


def test_ties_go_to_the_better_metric_then_the_earlier_trial():
    tied = [rec(0, 0.80, 100), rec(1, 0.81, 100), rec(2, 0.81, 100), rec(3, 0.82, 5_000)]
    objective = ObjectiveConfig(also_minimize=["trainable_params"], pick={"within": 0.05})
    assert pick_record(tied, objective).number == 1


def test_job_file_errors_name_the_path(tmp_path):
    from tests.test_config import problems, write

    src = write(tmp_path, """
        name: t
        objective: {also_minimize: [trainable_params, trainable_params]}
    """)
    assert problems(src) == [f"{src}: objective.also_minimize: must name each objective once "
                             f"(got ['trainable_params', 'trainable_params'])"]
    src = write(tmp_path, """
        name: t
        objective: {also_minimize: [latency]}
    """)
    assert problems(src) == [f"{src}: objective.also_minimize[0]: must be one of 'trainable_params', "
                             f"'optimizer_state_bytes' or 'seconds' (got 'latency')"]
    src = write(tmp_path, """
        name: t
        objective: {pick: {within: 0.01}}
    """)
    assert problems(src) == [f"{src}: objective.pick: applies to a multi-objective search only: set "
                             f"objective.also_minimize too, or drop pick (got also_minimize [])"]
    src = write(tmp_path, """
        name: t
        objective: {also_minimize: [trainable_params], pick: {smallest: seconds}}
        sampler: {kind: cmaes}
    """)
    assert problems(src) == [
        f"{src}: objective.pick.smallest: must be one of objective.also_minimize ['trainable_params'] (got 'seconds')",
        f"{src}: sampler.kind: must be tpe, random, gp or qmc for a multi-objective search (objective.also_minimize "
        f"['trainable_params']); Optuna's CMA-ES is single-objective (got 'cmaes')",
    ]


@pytest.mark.ray
def test_a_job_searches_two_objectives_and_deploys_the_pick(tiny_model_dir, synthetic_csv, tmp_path, capsys):
    import optuna
    from mlflow.tracking import MlflowClient

    from autotune import api
    from tests.tiny_jobs import tiny_job

    job = tiny_job(tmp_path, tiny_model_dir, synthetic_csv, "pareto", """
        search:
          space:
            methods:
              head: {learning_rate: 1.0e-2}
              lora: {learning_rate: 1.0e-2, rank: {choices: [1, 4]}}
              full: {learning_rate: 1.0e-3}
          initial_points: [{method: lora, knobs: {rank: 1}}, {method: lora, knobs: {rank: 4}}]
        objective: {metric: val_accuracy, also_minimize: [trainable_params], pick: {within: 0.5}}
        budget: {num_trials: 4, max_concurrent_trials: 1}
        training: {epochs: 1, batch_size: 16, evals_per_epoch: 1}
    """)
    summary = api.submit(job)
    out = Path(summary["output_dir"])
    with (out / "trials.csv").open() as fh:
        rows = {int(r["number"]): r for r in csv.DictReader(fh)}
    assert len(rows) == 4 and {r["status"] for r in rows.values()} == {"finished"}
    acc = {n: float(r["best_val_accuracy"]) for n, r in rows.items()}
    params = {n: int(float(r["trainable_params"])) for n, r in rows.items()}
    assert len(set(params.values())) == 4  # head < lora r1 < lora r4 < full: a real trade-off

    # the front and the pick, worked out here from the trials table
    front = {n for n in rows if not any(acc[m] >= acc[n] and params[m] <= params[n] and (acc[m], params[m])
                                        != (acc[n], params[n]) for m in rows)}
    near = [n for n in rows if acc[n] >= max(acc.values()) - 0.5 - 1e-12]
    pick = min(near, key=lambda n: (params[n], -acc[n], n))
    most_accurate = max(rows, key=lambda n: (acc[n], -params[n], -n))
    assert params[pick] < params[most_accurate]  # the rule traded accuracy for size: not the single-objective pick
    assert {p["trial"] for p in summary["pareto_front"]} == front
    assert {n for n, r in rows.items() if r["pareto"] == "1"} == front
    assert summary["best_trial"].startswith(f"trial {pick} ") and summary["trainable_params"] == params[pick]
    assert summary["objectives"] == {"val_accuracy": "max", "trainable_params": "min"}
    assert "smallest trainable_params" in summary["best_rule"]
    shown = capsys.readouterr().out
    assert "Pareto front" in shown and "deployed" in shown

    # Optuna: one direction per objective, each finished trial told both values
    study = optuna.load_study(study_name="pareto", storage=f"sqlite:///{out / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "trainable_params"]
    assert study.user_attrs["autotune.best_trial"] == pick
    for t in study.trials:
        assert t.values == pytest.approx([acc[t.number], params[t.number]])
    assert {t.number for t in study.best_trials} == front  # Optuna's own front agrees (one rung per trial)

    # MLflow: the rule's settings and the front on the job run, the plot beside them
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["objective.also_minimize"] == "['trainable_params']"
    assert run.data.params["objective.pick.within"] == "0.5"
    assert run.data.params["pareto.trade_off"] == "trainable_params"
    assert {int(n) for n in run.data.params["pareto.trials"].split(",")} == front
    assert run.data.metrics["pareto.size"] == len(front)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "search/plots")} >= {"search/plots/study.png"}
    state = json.loads((out / "state" / "tune.json").read_text())["outputs"]
    assert state["best_number"] == pick and sorted(state["pareto"]) == sorted(front)
