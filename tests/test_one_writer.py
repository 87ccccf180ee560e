"""One writer per job folder: two `autotune submit` of the same job (together, and one while the other is
searching, both with --force) - one runs, the others exit 9 naming the holder and touch nothing; a holder
killed with SIGKILL releases the folder; the PostgreSQL advisory lock on a shared study (real Postgres)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autotune.lock import FolderLock, Holder, JobBusy
from tests.tiny_jobs import stage_status, tiny_job

BUSY = re.compile(r"error: (?P<folder>\S+) is in use by another AutoTune process \(pid (?P<pid>\d+) on (?P<host>\S+), "
                  r"`autotune submit (?P<job>\S+)`, running since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); wait for it to "
                  r"finish or stop it \(a process that dies releases the folder by itself\)\n")

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from autotune.lock import FolderLock, Holder
    FolderLock(Path(sys.argv[1])).acquire(Holder(command="autotune submit job.yaml"))
    print("held", flush=True)
    time.sleep(600)
""")


def _holder_process(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_with_the_holder_and_a_killed_holder_releases(tmp_path):
    import socket

    folder = tmp_path / "out"
    holder = _holder_process(folder)
    try:
        with pytest.raises(JobBusy) as exc:
            FolderLock(folder).acquire(Holder(command="autotune resume out"))
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(json.loads((folder / ".lock").read_text())["started"]))
        assert str(exc.value) == (
            f"{folder} is in use by another AutoTune process (pid {holder.pid} on {socket.gethostname()}, "
            f"`autotune submit job.yaml`, running since {when}); wait for it to finish or stop it "
            "(a process that dies releases the folder by itself)")
        assert exc.value.exit_code == 9
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # a crash: no finally, no atexit in the holder
        holder.wait()
    lock = FolderLock(folder)
    lock.acquire(Holder(command="autotune resume out"))  # the kernel released the dead holder's lock
    assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_lock_file_that_is_a_symlink_is_refused(tmp_path):
    from autotune.errors import ConfigError

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"output_dir: cannot create the job lock .*/out/\.lock"):
        FolderLock(folder).acquire(Holder(command="x"))
    assert not (tmp_path / "elsewhere").exists()


# --- real jobs -------------------------------------------------------------------------------------------
def _submit(job: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autotune.cli", "submit", str(job), "--force"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.ray
def test_two_submits_of_one_job_one_runs_the_others_refuse(tiny_model_dir, synthetic_csv, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    job = tiny_job(tmp_path, tiny_model_dir, synthetic_csv, "writers")
    out = tmp_path / "out"
    together = [_submit(job), _submit(job)]  # started together
    procs = list(together)
    try:
        deadline = time.time() + 300
        while stage_status(out, "tune") != "running":  # the winner is searching: now a third one, with --force
            assert time.time() < deadline, "the job never reached its tune stage"
            assert all(p.poll() in (None, 9) for p in together), [p.communicate() for p in together]
            time.sleep(0.2)
        # hold the winner where it is while the third one starts (imports take seconds; the tiny search may
        # not): the third must meet a job that is searching, whatever the machine's speed
        holder = json.loads((out / ".lock").read_text())["pid"]
        os.killpg(holder, signal.SIGSTOP)
        try:
            assert stage_status(out, "tune") == "running"
            third = _submit(job)
            procs.append(third)
            third_result = (third.wait(timeout=120), *third.communicate())
        finally:
            os.killpg(holder, signal.SIGCONT)
        results = [(p.wait(timeout=400), *p.communicate()) for p in procs[:2]] + [third_result]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    codes = [r[0] for r in results]
    assert sorted(codes) == [0, 9, 9], [r[2][-2000:] for r in results]
    winner = procs[codes.index(0)]
    for (code, stdout, stderr) in results:
        if code != 9:
            continue
        m = BUSY.fullmatch(stderr)
        assert m, stderr
        assert (m["folder"], int(m["pid"]), m["job"]) == (str(out), winner.pid, str(job))
        assert stdout == "" and "Traceback" not in stderr
    # the winner's job is whole: its own study, one parent run, every trial once
    study = optuna.load_study(study_name="writers", storage=f"sqlite:///{out / 'optuna.db'}")
    assert len(study.trials) == 3 and {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert len({t.user_attrs["autotune_job_run"] for t in study.trials}) == 1
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("writers").experiment_id])
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1
    assert json.loads((out / "summary.json").read_text())["trials"] == {"finished": 3, "pruned": 0, "stopped": 0, "failed": 0}
    assert (out / ".lock").read_text() == ""  # released, holder cleared


@pytest.mark.ray
def test_a_killed_job_leaves_its_folder_free(tiny_model_dir, synthetic_csv, tmp_path):
    """SIGKILL to the driver only, while its Ray processes (raylet, workers) still run: the lock goes with
    the driver (no child inherited it), and the next resume is not refused."""
    import psutil

    job = tiny_job(tmp_path, tiny_model_dir, synthetic_csv, "crash")
    out = tmp_path / "out"
    driver = _submit(job)
    children = []
    try:
        deadline = time.time() + 300
        while stage_status(out, "tune") != "running" or not (out / "ray").exists():
            assert time.time() < deadline and driver.poll() is None, driver.communicate()
            time.sleep(0.2)
        children = psutil.Process(driver.pid).children(recursive=True)
        assert children, "Ray should be running under the driver"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        lock = FolderLock(out)
        lock.acquire(Holder(command="test"))
        lock.release()
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for c in children:  # Ray processes of the dead driver, in its group or not
            try:
                c.kill()
            except psutil.Error:
                pass


# --- PostgreSQL advisory lock on the study ----------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres():
    from tests.postgres_env import postgres_or_skip

    yield from postgres_or_skip()


STUDY_HOLD = textwrap.dedent("""
    import sys, time
    from autotune.lock import Holder, StudyLock
    StudyLock(sys.argv[1], "shared").acquire(Holder(command="autotune submit a.yaml"))
    print("held", flush=True)
    time.sleep(600)
""")


def test_study_in_postgres_has_one_writer(postgres):
    from autotune.lock import StudyLock

    secret = postgres.secrets["pg"]
    url = f"postgresql+psycopg://postgres:{secret}@127.0.0.1:{postgres.pg_port}/optuna"
    holder = subprocess.Popen([sys.executable, "-c", STUDY_HOLD, url], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(JobBusy) as exc:
            StudyLock(url, "shared").acquire(Holder(command="autotune submit b.yaml"))
        msg = str(exc.value)
        assert re.fullmatch(
            rf"the Optuna study 'shared' in postgresql\+psycopg://postgres:\*\*\*@127\.0\.0\.1:{postgres.pg_port}/optuna "
            rf"is in use by another AutoTune job \(autotune pid={holder.pid} host=\S+ autotune submit a\.yaml from "
            r"127\.0\.0\.1, server pid \d+, connected since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); wait for it to "
            r"finish, or give this job a study of its own \(search\.study_name\)", msg), msg
        assert secret not in msg
        other = StudyLock(url, "another-study")  # another study is another lock
        other.acquire(Holder(command="x"))
        other.release()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the connection drops with the process
        holder.wait()
    deadline = time.time() + 10
    while True:
        lock = StudyLock(url, "shared")
        try:
            lock.acquire(Holder(command="autotune submit b.yaml"))
            break
        except JobBusy:
            assert time.time() < deadline, "the server kept the dead holder's lock"
            time.sleep(0.2)
    lock.release()
