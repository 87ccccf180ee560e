"""Budgets and interrupts through the real engines (Ray Tune + Optuna + MLflow, tiny model):
- a whole-job wall-clock budget ends with a registered model, inside the budget, and no record left RUNNING;
- Ctrl-C during the search stops the pipeline there (exit 130, nothing validated or deployed), and
  `autotune resume` continues the search to the end;
- a budgeted search interrupted and resumed after its deadline gets a budget of its own and continues the
  trials that were in flight.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_integration import job_yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _runs(out: Path, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def _study(out: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")


def test_wall_clock_budget_gives_a_model_in_time_and_closes_every_record(tiny_model_dir, synthetic_csv, tmp_path,
                                                                         cache_env):
    budget = 120
    job = job_yaml(tmp_path, tiny_model_dir, synthetic_csv, f"""
        search:
          space:
            methods:
              head: {{learning_rate: {{low: 1.0e-3, high: 3.0e-2, log: true}}}}
              full: {{learning_rate: {{low: 1.0e-4, high: 3.0e-3, log: true}}, epochs: {{low: 2, high: 6}}}}
        budget: {{wall_clock_s: {budget}, max_concurrent_trials: 2}}
        training: {{epochs: 4, batch_size: 8, first_rung: 0.25, evals_per_epoch: null}}
        objective: {{metric: val_accuracy}}
    """, name="budgeted")
    out = tmp_path / "out"
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "submit", str(job)], capture_output=True, text=True,
                          timeout=budget + 120)
    took = time.time() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    print(f"wall clock {summary['wall_clock_seconds']} s of {budget} s (outside view {took:.1f} s); trials {summary['trials']}; "
          f"plan {summary.get('budget_plan')}")
    assert summary["wall_clock_seconds"] <= budget * 1.05, summary  # the plan held, start-up included
    assert summary["registered"] and summary["test_accuracy"] is not None
    plan = summary["budget_plan"]  # where the seconds went, for the user (and for this assertion's message)
    assert {"search_deadline_s", "search_ended_s", "reserved_after_search_s", "after_search_s"} <= set(plan), plan
    # what the next job reserves: the seconds after the deadline - or after the search, if it ended first
    recorded = next(iter(json.loads((cache_env / "after_search_seconds.json").read_text()).values()))["seconds"]
    lag = max(0.0, plan["search_ended_s"] - plan["search_deadline_s"])
    assert recorded == pytest.approx(plan["after_search_s"] + lag, abs=0.5), (recorded, plan)
    assert sum(summary["trials"].values()) >= 1

    client, parents, children = _runs(out, "budgeted")
    assert parents[0].info.status == "FINISHED"
    assert not [c for c in children if c.info.status == "RUNNING"]
    optuna_state = {t.number: t.state.name for t in _study(out, "budgeted").trials}
    for c in children:  # a trial the budget cut is marked as such, with the metrics it had reached
        if c.data.tags.get("autotune.trial_status") == "stopped":
            assert c.info.status == "KILLED" and c.data.tags["autotune.stop_reason"] == "budget"
            assert c.data.tags["mlflow.note.content"].startswith("stopped by the budget ")
            # PRUNED in Optuna too - also when the rung it reached was its re-planned last one
            assert optuna_state[int(c.info.run_name.split("-")[1])] == "PRUNED", c.info.run_name
    assert "RUNNING" not in optuna_state.values()
    trials_csv = (out / "trials.csv").read_text()
    assert ",running," not in trials_csv
    # the best trial is the best evaluated rung of any trial, and validate used that very checkpoint
    rungs = [json.loads(l) for l in (out / "rungs.jsonl").read_text().splitlines()]
    assert summary["objective_value"] == max(r["val_accuracy"] for r in rungs)


def _optuna_states(out: Path, name: str) -> dict[int, tuple[str, int]]:
    try:
        study = _study(out, name)
    except Exception:  # noqa: BLE001 - not created yet
        return {}
    return {t.number: (t.state.name, len(t.intermediate_values)) for t in study.trials}


def _submit_then_ctrl_c(job: Path, out: Path, name: str, ready) -> str:
    """Submit `job`, wait for the event the test needs (`ready(states)` of the Optuna trials: number ->
    (state, rungs reported)), then Ctrl-C the whole process group as a terminal does; its stderr."""
    driver = subprocess.Popen([sys.executable, "-m", "autotune.cli", "submit", str(job)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        if ready(_optuna_states(out, name)):
            break
        assert driver.poll() is None, driver.stderr.read()[-2000:]
        time.sleep(0.1)
    else:
        pytest.fail(f"the search never reached the point to interrupt it ({name})")
    os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole process group
    try:
        _, err = driver.communicate(timeout=90)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, err[-3000:]
    return err


def test_ctrl_c_stops_the_pipeline_and_resume_continues_the_search(tiny_model_dir, synthetic_csv, tmp_path):
    job = job_yaml(tmp_path, tiny_model_dir, synthetic_csv, """
        search:
          space:
            methods:
              full: {learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}}
        budget: {num_trials: 4, max_concurrent_trials: 1}
        training: {epochs: 6, batch_size: 8, evals_per_epoch: 2, warmup_ratio: 0.0}
        scheduler: {kind: fifo}
    """, name="ctrlc")
    out = tmp_path / "out"

    def one_done_one_mid_training(states):
        return ([n for n, (s, _) in states.items() if s == "COMPLETE"]
                and [n for n, (s, k) in states.items() if s == "RUNNING" and k >= 1])

    err = _submit_then_ctrl_c(job, out, "ctrlc", one_done_one_mid_training)
    assert "interrupted" in err and "Traceback" not in err
    states = {s: json.loads((out / "state" / f"{s}.json").read_text())["status"]
              for s in ("tune", "validate", "deploy") if (out / "state" / f"{s}.json").is_file()}
    assert states == {"tune": "interrupted"}, states  # nothing downstream ran
    assert not (out / "artifact").exists()
    client, parents, children = _runs(out, "ctrlc")
    assert parents[0].info.status == "KILLED"
    assert not client.search_registered_models()  # nothing registered, nothing promoted
    assert not [c for c in children if c.info.status == "RUNNING"]
    killed = [c for c in children if c.info.status == "KILLED"]  # the trial in flight says why it stopped
    assert killed and all(c.data.tags["mlflow.note.content"].split("\n")[0].endswith("; `autotune resume` continues it")
                          and c.data.tags["mlflow.note.content"].startswith("interrupted ") for c in killed)

    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "resume", str(out)], capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = _study(out, "ctrlc")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 4  # the search went on to the end
    client, parents, children = _runs(out, "ctrlc")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    for c in children:  # the interrupted trial continued in the same run, no step logged twice
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_loss")]
        assert steps == sorted(set(steps)) and len(steps) == 12, (c.info.run_name, steps)
    assert (out / "artifact" / "MANIFEST.json").is_file()


def test_budgeted_search_interrupted_then_resumed_continues_its_trials(tiny_model_dir, synthetic_csv, tmp_path):
    """Ctrl-C in a wall-clock-budgeted search, `autotune resume` after the first run's deadline has passed: the
    resumed search gets its own budget and continues the trials that were in flight. (Ray restores the stopper
    it saved in place of the driver's own: it used to bring back the first run's expired clock, which stopped
    every trial at once - the in-flight trials ended FAIL in Optuna, KILLED in MLflow and were missing from
    trials.csv and the summary's counts.)"""
    budget = 55  # start-up and validate + deploy's reserve take ~30 s of it
    job = job_yaml(tmp_path, tiny_model_dir, synthetic_csv, f"""
        search:
          space:
            methods:
              full: {{learning_rate: {{low: 1.0e-4, high: 3.0e-3, log: true}}}}
        budget: {{wall_clock_s: {budget}, max_concurrent_trials: 1}}
        training: {{epochs: 16, batch_size: 4, evals_per_epoch: 1, warmup_ratio: 0.0}}
        scheduler: {{kind: fifo}}
    """, name="budgetresume")
    out = tmp_path / "out"
    started = time.time()
    # a trial in the middle of training (the first one: the first run's search window is short)
    _submit_then_ctrl_c(job, out, "budgetresume",
                        lambda states: [n for n, (s, k) in states.items() if s == "RUNNING" and k >= 2])
    in_flight = {n: k for n, (s, k) in _optuna_states(out, "budgetresume").items() if s == "RUNNING"}
    assert in_flight
    time.sleep(max(0.0, started + budget + 1 - time.time()))  # the first run's deadline is over

    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "resume", str(out)], capture_output=True, text=True,
                          timeout=budget + 120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = _study(out, "budgetresume")
    states = {t.number: (t.state.name, len(t.intermediate_values)) for t in study.trials}
    assert not [n for n, (s, _) in states.items() if s in ("RUNNING", "FAIL")], states
    assert any(states[n][1] > k for n, k in in_flight.items()), (in_flight, states)  # continued, not dropped
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["trials"].values()) == len(study.trials), (summary["trials"], states)
    assert summary["budget_plan"]["search_ended_s"] > 5, summary["budget_plan"]  # it searched, on its own clock
    rows = (out / "trials.csv").read_text().splitlines()[1:]
    assert len(rows) == len(study.trials) and not [r for r in rows if ",running," in r or ",failed," in r]
    client, parents, children = _runs(out, "budgetresume")
    assert parents[0].info.status == "FINISHED" and len(children) == len(study.trials)
    assert not [c for c in children if c.info.status == "RUNNING"]
    for c in children:  # a continued trial does not keep the reason it stopped last time
        assert not (c.info.status == "FINISHED" and "autotune.stop_reason" in c.data.tags), c.data.tags
