"""The data file is deleted after the preprocess stage succeeded: `autotune resume` goes on from the cleaned
splits the stage left in OUTPUT_DIR/data, and says so; without usable splits it refuses, and says why."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.test_integration import job_yaml
from tests.tiny_jobs import stage_status, tiny_job


def _resume(out, timeout=400):
    return subprocess.run([sys.executable, "-m", "autotune.cli", "resume", str(out)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture()
def preprocessed(tiny_model_dir, synthetic_csv, tmp_path, cache_env):
    """A job whose only stage, preprocess, succeeded; its data file is a copy the test may delete."""
    from autotune import api

    data = tmp_path / "reviews.csv"
    shutil.copy(synthetic_csv, data)
    job = job_yaml(tmp_path, tiny_model_dir, data, "stages: [preprocess]", name="gone")
    api.submit(job)
    return tmp_path / "out", data


def test_resume_after_the_data_file_was_deleted_uses_the_cleaned_splits(preprocessed):
    out, data = preprocessed
    data.unlink()
    proc = _resume(out, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (f"data: {data} no longer exists; resuming from the cleaned splits in {out / 'data'} "
            "(train 192, validation 24, test 24), which the preprocess stage wrote\n") in proc.stdout
    assert "stage preprocess: already succeeded, skipped" in proc.stdout


def test_resume_refuses_when_the_cleaned_splits_are_gone_too(preprocessed):
    out, data = preprocessed
    data.unlink()
    (out / "data" / "tokens.npz").unlink()
    proc = _resume(out, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == (
        "error: 2 problem(s) found:\n"
        f"  {out / 'job.yaml'}: data.path: file not found (got '{data}', resolved to {data})\n"
        f"  {out}: cannot resume without the data file: the cleaned splits are incomplete (missing "
        f"{out / 'data' / 'tokens.npz'}); put the file back\n")


def test_submit_still_needs_the_data_file(preprocessed):
    """Only a resume may do without it: a new submission of the saved job is refused as before."""
    out, data = preprocessed
    data.unlink()
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "validate", str(out / "job.yaml")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and f"data.path: file not found (got '{data}', resolved to {data})" in proc.stderr


@pytest.mark.ray
def test_killed_after_preprocess_then_data_deleted_resume_searches_from_the_splits(tiny_model_dir, synthetic_csv,
                                                                                   tmp_path, cache_env):
    data = tmp_path / "reviews.csv"
    shutil.copy(synthetic_csv, data)
    job = tiny_job(tmp_path, tiny_model_dir, data, "gone-ray")
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-m", "autotune.cli", "submit", str(job)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 300
        while stage_status(out, "preprocess") != "succeeded":  # the event, not a sleep
            assert driver.poll() is None and time.time() < deadline, driver.stderr.read().decode()[-2000:]
            time.sleep(0.1)
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        driver.wait()
    data.unlink()
    proc = _resume(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"data: {data} no longer exists; resuming from the cleaned splits in {out / 'data'}" in proc.stdout
    assert stage_status(out, "tune") == "succeeded"
    import json

    assert sum(json.loads((out / "summary.json").read_text())["trials"].values()) == 3
