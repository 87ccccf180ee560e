"""A full disk and a read-only output folder: one line naming the cause and the path, exit 1 (2 when found
before anything starts), no traceback - not from AutoTune, not from MLflow's or Ray's loggers - and a folder
that `autotune resume` finishes once there is space again.

The real tests mount what they need (root): a small tmpfs as the output folder, filled with a ballast file at
a chosen moment of a running job, and read-only bind mounts. They skip where mounting is not permitted and
unmount in teardown."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from autotune.disk import DiskError, QuietLogs, find, probe, repair_tune_state
from tests.tiny_jobs import stage_status, tiny_job


# --- mounts ------------------------------------------------------------------------------------------------
def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {proc.stderr.strip()[:200]}")


def _umount(path: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)  # a process of the job may still hold a file for a moment
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


@contextmanager
def read_only(path: Path):
    """A read-only bind mount of `path` over itself: as root, chmod 0555 would not stop a write."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(path), str(path))
    try:
        proc = subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot remount a bind mount read-only here: {proc.stderr.strip()[:200]}")
        yield path
    finally:
        _umount(path)


def fill(folder: Path) -> Path:
    """Write a ballast file until the file system says ENOSPC, in smaller and smaller pieces: nothing is left."""
    ballast = folder / "ballast"
    with open(ballast, "wb", buffering=0) as fh:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            chunk = b"\0" * size
            while True:
                try:
                    fh.write(chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    return ballast


# --- finding the cause in what surfaces --------------------------------------------------------------------
def test_an_oserror_names_the_file_relative_to_the_output_folder(tmp_path):
    out = tmp_path / "out"
    exc = OSError(errno.ENOSPC, "No space left on device", str(out / "state" / "tune.json"))
    assert str(find(exc).place(out, f"continue with `autotune resume {out}`")) == (
        f"no space left on device at {out} (writing state/tune.json); free space and continue with "
        f"`autotune resume {out}`")
    quota = OSError(errno.EDQUOT, "Disk quota exceeded", str(out / "optuna.db"))
    assert str(find(quota).place(out, "x")).startswith(f"disk quota exceeded at {out} (writing optuna.db)")


def test_a_copy_names_the_destination_not_the_source(tmp_path):
    out = tmp_path / "out"
    exc = OSError(errno.ENOSPC, "No space left on device")
    exc.filename, exc.filename2 = "/usr/lib/python3/somewhere/source.py", str(out / "artifact" / "source.py")
    assert "(writing artifact/source.py)" in str(find(exc).place(out, "x"))


def test_read_only_and_permission(tmp_path):
    out = tmp_path / "out"
    ro = OSError(errno.EROFS, "Read-only file system", str(out / "state" / "tune.json"))
    assert str(find(ro).place(out, f"continue with `autotune resume {out}`")) == (
        f"cannot write to {out / 'state' / 'tune.json'} (read-only file system); make it writable and continue with "
        f"`autotune resume {out}`")
    denied = OSError(errno.EACCES, "Permission denied", str(out / "mlflow.db"))
    assert "(permission denied)" in str(find(denied, [out]).place(out, "x"))
    # a file the job cannot read elsewhere is not "cannot write to the output folder"
    assert find(OSError(errno.EACCES, "Permission denied", "/etc/shadow"), [out]) is None
    assert find(ValueError("no disk involved")) is None


def test_sqlite_full_inside_mlflow_names_the_database(tmp_path):
    """What MLflow raises on a full disk: MlflowException from SQLAlchemy's OperationalError from sqlite3's."""
    import sqlalchemy
    from mlflow.exceptions import MlflowException

    db = tmp_path / "out" / "mlflow.db"
    db.parent.mkdir()
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")

    def failing(conn, cursor, statement, parameters, context, executemany):
        raise sqlite3.OperationalError("database or disk is full")

    sqlalchemy.event.listen(engine, "before_cursor_execute", failing)
    try:
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("CREATE TABLE t (x INTEGER)"))
        except sqlalchemy.exc.OperationalError as e:
            raise MlflowException(message=e) from e
    except MlflowException as exc:
        found = find(exc)
    assert found is not None and found.no_space
    assert str(found.place(db.parent, "x")) == f"no space left on device at {db.parent} (writing mlflow.db); free space and x"


def test_text_only_errors_from_ray(tmp_path):
    """Ray hands a callback's exception on as TuneError(traceback text), a trial's as a RayTaskError whose
    `cause` is the OSError; pyarrow's message carries no file name."""
    class FakeRayTaskError(Exception):
        def __init__(self, cause):
            super().__init__("ray::ImplicitFunc.train() failed")
            self.cause = cause

    trial = FakeRayTaskError(OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device"))
    assert find(trial).no_space
    text = RuntimeError("Traceback (most recent call last):\n ...\nOSError: [Errno 28] No space left on device: "
                        "'/data/out/state/tune.json'\n")
    found = find(text)
    assert found.no_space and found.path == "/data/out/state/tune.json"
    readonly = find(RuntimeError("(sqlite3.OperationalError) attempt to write a readonly database"))
    assert readonly is not None and not readonly.no_space


def test_a_trials_own_failure_is_no_disk_problem_but_a_failed_checkpoint_write_is(tmp_path):
    """What the driver asks when a trial fails: its pickled error (what Ray wrote), then the disk itself."""
    import cloudpickle

    from autotune.disk import full_now, trial_error

    class Trial:
        def __init__(self, exc):
            self.path = str(tmp_path / "ray" / "tune" / "run_trial_1")
            self.pickled_error_file = str(tmp_path / f"error-{id(exc)}.pkl")
            self.error_file = None
            with open(self.pickled_error_file, "wb") as fh:
                cloudpickle.dump(exc, fh)

    os.makedirs(tmp_path / "ray" / "tune" / "run_trial_1")
    assert trial_error(Trial(ValueError("loss is NaN"))) is None
    assert full_now(tmp_path / "ray" / "tune") is None
    full = trial_error(Trial(OSError(errno.ENOSPC, "Error writing bytes to file")))
    assert full is not None and full.path == str(tmp_path / "ray" / "tune" / "run_trial_1")
    assert str(full.place(tmp_path, "x")) == "no space left on device at {} (writing ray/tune/run_trial_1); free space and x".format(tmp_path)


def test_quiet_logs_drop_mlflows_traceback_of_a_full_disk(capsys):
    QuietLogs.install()
    logger = logging.getLogger("mlflow.store.db.utils")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError:
            logger.exception("SQLAlchemy database error. The following exception is caught.")
        logger.error("an unrelated error is still shown")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "disk is full" not in err
    assert "an unrelated error is still shown" in err


# --- state files -------------------------------------------------------------------------------------------
def test_a_state_file_is_whole_or_as_it_was_when_the_disk_fills(tmp_path):
    from autotune.pipeline.state import write_json_atomic

    with tmpfs(tmp_path / "small", "1m") as small:
        record = small / "state" / "tune.json"
        write_json_atomic(record, {"status": "running"})
        fill(small)
        with pytest.raises(OSError) as exc:
            write_json_atomic(record, {"status": "failed", "error": "x" * 100_000})
        assert exc.value.errno == errno.ENOSPC
        assert json.loads(record.read_text()) == {"status": "running"}
        assert sorted(p.name for p in record.parent.iterdir()) == ["tune.json"]  # no temp file left behind


def test_probe_finds_a_read_only_folder_and_a_full_disk(tmp_path):
    with read_only(tmp_path / "ro") as ro:
        err = probe(ro / "out" / "deeper")  # not there yet: the nearest existing parent is what it is made in
        assert err is not None and err.code == errno.EROFS and err.path == str(ro)
    with tmpfs(tmp_path / "full", "1m") as full:
        assert probe(full) is None
        fill(full)
        err = probe(full)
        assert err is not None and err.no_space
    assert sorted(os.listdir(tmp_path)) == ["full", "ro"]  # the probe leaves nothing behind


def test_an_output_folder_without_write_permission_is_a_job_problem(tmp_path, monkeypatch):
    """As root a chmod does not stop a write: the kernel's EACCES is simulated, the message is the real one."""
    import autotune.disk
    from autotune import api

    job = tmp_path / "job.yaml"
    job.write_text(f"name: perm\noutput_dir: {tmp_path / 'out'}\n")
    real_open = os.open

    def denied(path, flags, *args):
        if ".autotune-write-test-" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(autotune.disk.os, "open", denied)
    checks = api.doctor(job)
    assert checks[0].problems == [
        f"{job}: output_dir: cannot write to {tmp_path} (permission denied); make it writable first "
        f"(got '{tmp_path / 'out'}')"]


def test_a_cut_short_tune_state_is_put_back_from_rays_copy_or_refused(tmp_path, monkeypatch):
    from autotune.errors import StageError

    stamp = "2001-01-01_00-00-00"  # no Ray session of this machine has it
    exp = tmp_path / "out" / "ray" / "tune"
    exp.mkdir(parents=True)
    whole = json.dumps({"trial_data": [["{}", "{}"]], "runner_data": {}})
    (exp / f"experiment_state-{stamp}.json").write_text(whole[:10])  # cut short by the full disk
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))
    with pytest.raises(StageError, match=r"search state .*experiment_state-2001-01-01_00-00-00\.json is cut short"):
        repair_tune_state(str(exp))
    staging = tmp_path / "raytmp" / "ray" / "session_x" / "artifacts" / stamp / "tune" / "driver_artifacts"
    staging.mkdir(parents=True)
    (staging / f"experiment_state-{stamp}.json").write_text(whole)
    assert repair_tune_state(str(exp)) == [str(exp / f"experiment_state-{stamp}.json")]
    assert (exp / f"experiment_state-{stamp}.json").read_text() == whole
    assert repair_tune_state(str(exp)) == []  # intact: nothing to do


# --- the CLI ---------------------------------------------------------------------------------------------
def _cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _timed_cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = _cli(*args, timeout=120)
    return proc, time.monotonic() - start


def _read_only_refusal(job_file, folder, got) -> str:
    return ("error: 1 problem(s) found:\n"
            f"  {job_file}: output_dir: cannot write to {folder} (read-only file system); make it writable first "
            f"(got '{got}')\n")


def test_read_only_output_folder_is_refused_before_anything_runs(tiny_model_dir, synthetic_csv, tmp_path, cache_env):
    with read_only(tmp_path / "ro") as ro:
        job = tiny_job(tmp_path, tiny_model_dir, synthetic_csv, "rojob", f"output_dir: {ro / 'out'}")
        proc, seconds = _timed_cli("submit", str(job))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr == _read_only_refusal(job, ro, ro / "out")
    assert proc.stdout == ""
    assert seconds < 20, seconds  # the pre-flight: no Ray, no MLflow run, no preprocessing
    assert not (ro / "out").exists()


def test_resume_of_a_folder_that_became_read_only_is_refused_before_anything_runs(tiny_model_dir, synthetic_csv,
                                                                                  tmp_path, cache_env):
    from autotune import api
    from tests.test_integration import job_yaml

    job = job_yaml(tmp_path, tiny_model_dir, synthetic_csv, "stages: [preprocess]", name="ro-resume")
    api.submit(job)
    out = tmp_path / "out"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with read_only(out):
        proc, seconds = _timed_cli("resume", str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr == _read_only_refusal(out / "job.yaml", out, out)
    assert seconds < 20, seconds
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


# --- a full disk during a real job ----------------------------------------------------------------------------
ONE_LINE = ("error: no space left on device at {at} (writing {what}); free space and continue with "
            "`autotune resume {out}`\n")


def _submit(job: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autotune.cli", "submit", str(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _fill_when(proc: subprocess.Popen, ready, folder: Path, what: str) -> tuple[int, str, str]:
    """Wait until `ready()`, fill `folder`, and let the job run into it."""
    try:
        deadline = time.time() + 300
        while not ready():
            assert proc.poll() is None, f"the job ended before {what}: {proc.communicate()}"
            assert time.time() < deadline, f"the job never reached {what}"
            time.sleep(0.05)
        fill(folder)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, stdout, stderr


def _checkpointed(exp: Path):
    return lambda: any(exp.glob("*/checkpoint_*/trial.json"))


def _assert_whole(out: Path, study: str, n: int = 3):
    """The resumed job holds every trial once, finished, in Optuna and in MLflow; no FAIL, nothing RUNNING."""
    import optuna
    from mlflow.tracking import MlflowClient

    assert stage_status(out, "tune") == "succeeded"
    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{out / 'optuna.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * n
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.status for r in children) == ["FINISHED"] * n
    assert len({r.data.tags["autotune.trial_id"] for r in children}) == n


@pytest.mark.ray
def test_disk_full_as_the_search_starts_one_line_then_resume_finishes(tiny_model_dir, synthetic_csv, tmp_path,
                                                                       cache_env):
    """Preprocess fits; the rest of the tmpfs is filled the moment the tune stage is recorded running, so the
    search's first write - the Optuna study in optuna.db - fails."""
    with tmpfs(tmp_path / "disk", "24m") as disk:
        out = disk / "out"
        job = tiny_job(tmp_path, tiny_model_dir, synthetic_csv, "full-start", f"output_dir: {out}")
        code, stdout, stderr = _fill_when(_submit(job), lambda: stage_status(out, "tune") == "running", disk,
                                          "its tune stage")
        assert code == 1, stderr[-3000:]
        assert stderr == ONE_LINE.format(at=out, what="optuna.db", out=out)
        assert "Traceback" not in stdout
        assert stage_status(out, "preprocess") == "succeeded" and stage_status(out, "tune") in ("running", "failed")
        assert not list((out / "state").glob(".*.tmp"))
        (disk / "ballast").unlink()
        proc = _cli("resume", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        _assert_whole(out, "full-start")


@pytest.mark.ray
def test_disk_full_mid_search_one_line_then_resume_finishes(tiny_model_dir, synthetic_csv, tmp_path, cache_env):
    """Filled as the first trial's first checkpoint lands: the next checkpoint, rung metric or state write
    fails (which one first is up to the race) - before this change, 15 tracebacks and exit 8."""
    with tmpfs(tmp_path / "disk", "24m") as disk:
        out = disk / "out"
        job = tiny_job(tmp_path, tiny_model_dir, synthetic_csv, "full-mid", f"output_dir: {out}")
        code, stdout, stderr = _fill_when(_submit(job), _checkpointed(out / "ray" / "tune"), disk, "a checkpoint")
        assert code == 1, stderr[-3000:]
        line = re.fullmatch(r"error: no space left on device at (?P<at>\S+)(?: \(writing (?P<what>[^\n]+)\))?; free "
                            r"space and continue with `autotune resume (?P<out>\S+)`\n", stderr)
        assert line, stderr[-3000:]
        assert (line["at"], line["out"]) == (str(out), str(out))
        assert "Traceback" not in stdout
        (disk / "ballast").unlink()
        proc = _cli("resume", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        _assert_whole(out, "full-mid")


@pytest.mark.ray
def test_ray_storage_full_the_trial_is_not_failed_and_resume_finishes(tiny_model_dir, synthetic_csv, tmp_path,
                                                                      cache_env):
    """Only Ray's storage path is on the small disk: the trial whose checkpoint cannot be written is no failed
    trial - Optuna keeps it RUNNING, MLflow too - and resume continues it (after putting back Ray's experiment
    state, which Ray overwrites in place and may have left cut short)."""
    import optuna

    with tmpfs(tmp_path / "disk", "4m") as disk:
        out = tmp_path / "out"
        job = tiny_job(tmp_path, tiny_model_dir, synthetic_csv, "full-ray", f"ray: {{storage_path: {disk / 'ray'}}}")
        code, stdout, stderr = _fill_when(_submit(job), _checkpointed(disk / "ray" / "tune"), disk, "a checkpoint")
        assert code == 1, stderr[-3000:]
        line = re.fullmatch(r"error: no space left on device at (?P<at>\S+)(?: \(writing (?P<what>[^\n]+)\))?; free "
                            r"space and continue with `autotune resume (?P<out>\S+)`\n", stderr)
        assert line and line["at"] == str(disk / "ray") and line["out"] == str(out), stderr[-3000:]
        assert "Traceback" not in stdout
        states = {t.state.name for t in optuna.load_study(study_name="full-ray",
                                                          storage=f"sqlite:///{out / 'optuna.db'}").trials}
        assert "FAIL" not in states
        (disk / "ballast").unlink()
        proc = _cli("resume", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        _assert_whole(out, "full-ray")
