"""No secret at rest: a job whose Optuna study lives in PostgreSQL, with the password in the storage URL
(AUTOTUNE_OPTUNA_STORAGE), is killed mid-search and resumed; not one file it wrote - the output folder
(Ray's tuner.pkl and searcher-state-*.pkl included) and Ray's session folders of both drivers - holds the
password. The resume works from Ray's storage-free state (the storage comes back from the environment)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny_jobs import tiny_job

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def postgres():
    from tests.postgres_env import postgres_or_skip

    yield from postgres_or_skip()


def _files(root: Path):
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


def _session_dirs(pid: int) -> list[Path]:
    """Ray names a local session folder after the driver that started it: session_<date>_<time>_<pid>."""
    return [Path(p) for p in glob.glob(f"/tmp/ray/session_*_{pid}")]


def test_no_password_in_any_file_the_job_writes(postgres, tiny_model_dir, synthetic_csv, tmp_path):
    import optuna

    canary = postgres.secrets["pg"]
    url = f"postgresql+psycopg://postgres:{canary}@127.0.0.1:{postgres.pg_port}/optuna"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AUTOTUNE_", "RAY_ADDRESS", "MLFLOW_"))}
    env["AUTOTUNE_OPTUNA_STORAGE"] = url
    job = tiny_job(tmp_path, tiny_model_dir, synthetic_csv, "canary", """
        budget: {num_trials: 4, max_concurrent_trials: 1}
        training: {epochs: 12}
    """)
    out = tmp_path / "out"
    outputs: dict[str, str] = {}

    # 1. submit, killed in the middle of a trial (not while Optuna hands one out) once a trial finished and
    #    Ray saved its searcher state
    driver = subprocess.Popen([sys.executable, "-m", "autotune.cli", "submit", str(job)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        deadline = time.time() + 300
        while True:
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.time() < deadline, "no trial finished"
            try:
                study = optuna.load_study(study_name="canary", storage=url)
                done = [t for t in study.trials if t.state.is_finished()]
                mid = [t for t in study.trials if t.state.name == "RUNNING" and len(t.intermediate_values) >= 2]
            except Exception:  # noqa: BLE001 - not created yet
                done, mid = [], []
            if done and mid and glob.glob(str(out / "ray" / "tune" / "searcher-state-*.pkl")):
                break
            time.sleep(0.3)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        complete_at_kill = sum(t.state.name == "COMPLETE" for t in optuna.load_study(study_name="canary", storage=url).trials)
    finally:
        try:  # the Ray processes of the dead driver too (they hold its output pipes)
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    outputs["submit stdout"], outputs["submit stderr"] = driver.communicate(timeout=60)
    sessions = _session_dirs(driver.pid)
    assert sessions, "the submit's Ray session folder"

    # 2. resume: Ray reads back tuner.pkl and searcher-state-*.pkl; the storage comes from the environment
    resume = subprocess.Popen([sys.executable, "-m", "autotune.cli", "resume", str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        outputs["resume stdout"], outputs["resume stderr"] = resume.communicate(timeout=400)
    finally:
        if resume.poll() is None:
            os.killpg(resume.pid, signal.SIGKILL)
    assert resume.returncode == 0, outputs["resume stderr"][-3000:]
    study = optuna.load_study(study_name="canary", storage=url)  # the restored searcher went on writing to it
    assert sum(t.state.name == "COMPLETE" for t in study.trials) > complete_at_kill
    assert sum(json.loads((out / "summary.json").read_text())["trials"].values()) == 4
    sessions += _session_dirs(resume.pid)

    # 3. the canary is nowhere at rest
    scanned = {k: v.encode() for k, v in outputs.items()}
    for root in [out, *sessions]:
        for path in _files(root):
            scanned[str(path)] = path.read_bytes()
    pickles = [p for p in scanned if p.endswith((".pkl", "tuner.pkl"))]
    assert any(p.endswith("tuner.pkl") for p in pickles) and any("searcher-state-" in p for p in pickles), pickles
    leaks = [where for where, blob in scanned.items() if canary.encode() in blob]
    assert leaks == [], f"the password is stored in {leaks[:10]}"
    assert len(scanned) > 50  # the scan really covered the folders

