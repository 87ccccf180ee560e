"""Kill the driver (SIGKILL) mid-search, resume, and check nothing finished was lost or duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_integration import job_yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def trial_states(storage: str) -> list[tuple[str, str, int]]:
    """(ray_trial_id, state, number of intermediate values) of every Optuna trial of the study."""
    import optuna

    try:
        study = optuna.load_study(study_name="killme", storage=storage)
    except Exception:  # noqa: BLE001 - the study may not exist yet
        return []
    return [(t.user_attrs.get("ray_trial_id"), t.state.name, len(t.intermediate_values)) for t in study.trials]


def finished_trials(storage: str) -> dict[str, str]:
    """ray_trial_id -> state of the trials Optuna holds as COMPLETE or PRUNED."""
    return {rid: st for rid, st, _ in trial_states(storage) if st in ("COMPLETE", "PRUNED")}


@pytest.mark.parametrize("when", ["mid_trial", "trial_start"])
def test_sigkill_then_resume(tiny_model_dir, synthetic_csv, tmp_path, when):
    """`mid_trial`: the kill lands after the third trial reported a rung (it continues from its checkpoint).
    `trial_start`: the kill lands as soon as Optuna handed out the third trial - usually before Tune saved it,
    leaving an Optuna trial (and maybe an MLflow run) no Ray trial knows: resume adopts it, one record."""
    from mlflow.tracking import MlflowClient

    job = job_yaml(tmp_path, tiny_model_dir, synthetic_csv, """
        search:
          space:
            methods:
              full: {learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}}
              head: {learning_rate: {low: 1.0e-3, high: 3.0e-2, log: true}}
        budget: {num_trials: 6, max_concurrent_trials: 1}
        training: {epochs: 3, batch_size: 16, evals_per_epoch: 2, warmup_ratio: 0.0}
        scheduler: {kind: fifo}
    """, name="killme")
    out = tmp_path / "out"
    storage = f"sqlite:///{out / 'optuna.db'}"
    driver = subprocess.Popen([sys.executable, "-m", "autotune.cli", "submit", str(job)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    # wait for the event the kill needs (not a sleep that hopes to land in the middle of a trial)
    need = 1 if when == "mid_trial" else 0
    deadline = time.time() + 240
    while time.time() < deadline:
        states = trial_states(storage)
        done = [s for s in states if s[1] in ("COMPLETE", "PRUNED")]
        running = [s for s in states if s[1] == "RUNNING" and s[2] >= need]
        if len(done) >= 2 and running:
            break
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        time.sleep(0.05 if when == "trial_start" else 0.3)
    else:
        pytest.fail(f"the search never reached the kill point ({when})")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(2)
    try:  # Ray helpers of the dead driver that outlive it (agents) are useless: clean them up
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    before = finished_trials(storage)  # what was finished at the moment of the kill

    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "resume", str(out)], capture_output=True, text=True,
                          timeout=300)
    resume_seconds = time.time() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"resume took {resume_seconds:.1f} s")

    after = finished_trials(storage)
    for trial_id, state in before.items():  # nothing finished was lost, none re-run into another state
        assert after.get(trial_id) == state
    import optuna

    study = optuna.load_study(study_name="killme", storage=storage)
    ray_ids = [t.user_attrs.get("ray_trial_id") for t in study.trials]
    assert len(ray_ids) == len(set(ray_ids)) == 6  # every trial exactly once: an orphan is adopted, not re-run
    assert not [t for t in study.trials if t.state.name == "RUNNING"]

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("killme")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent run, reused
    trial_tags = [c.data.tags["autotune.trial_id"] for c in children]
    assert len(trial_tags) == len(set(trial_tags)) == 6  # one child run per trial
    assert not [c for c in children if c.info.status == "RUNNING"]
    for c in children:  # no duplicated metric steps, even for the trial that was cut short
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_loss")]
        assert steps == sorted(set(steps)), (c.info.run_name, steps)
    assert (out / "artifact" / "MANIFEST.json").is_file()
