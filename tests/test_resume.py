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


def finished_trials(storage: str) -> dict[str, str]:
    """ray_trial_id -> state of the trials Optuna holds as COMPLETE or PRUNED."""
    import optuna

    try:
        study = optuna.load_study(study_name="killme", storage=storage)
    except Exception:  # noqa: BLE001 - the study may not exist yet
        return {}
    return {t.user_attrs.get("ray_trial_id"): t.state.name for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")}


def test_sigkill_then_resume(tiny_model_dir, synthetic_csv, tmp_path):
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
    deadline = time.time() + 240
    while time.time() < deadline and len(finished_trials(storage)) < 2:
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        time.sleep(0.5)
    before = finished_trials(storage)
    assert len(before) >= 2, "the search did not get going"
    time.sleep(1.5)  # land the kill in the middle of the next trial
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
    ray_ids = [t.user_attrs.get("ray_trial_id") for t in study.trials if not t.user_attrs.get("autotune.orphaned")]
    assert len(ray_ids) == len(set(ray_ids)) == 6  # every trial exactly once
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
