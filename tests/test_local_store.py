"""A job folder's embedded MLflow store travels with the folder: copied, moved or unpacked from a tar, it is
opened where it now is, its artifacts (run artifacts, logged models, registered versions) download from there
with the original gone, and a folder without its store is refused with a clear error. Real MLflow, no Ray."""

from __future__ import annotations

import shutil
import sqlite3
import tarfile
from pathlib import Path

import pytest

from autotune.errors import ConfigError
from autotune.tracking.local_store import open_folder_store
from autotune.tracking.mlflow_tracker import MlflowTracker


def make_store(out: Path) -> dict:
    """What a job leaves in OUTPUT_DIR: mlflow.db + mlartifacts/ with a parent run's artifact, a child run,
    a logged model and a registered version of it."""
    out.mkdir(parents=True)
    (out / "job.yaml").write_text("name: job\n")
    tracker = MlflowTracker(f"sqlite:///{out / 'mlflow.db'}", "job", (out / "mlartifacts").as_uri())
    parent = tracker.start_parent("job", {})
    tracker.log_artifact(parent, str(out / "job.yaml"), "job")
    child, _ = tracker.child_for_trial(parent, "t0", "trial-000-head", {})
    tracker.log_dict(child, {"rung": 1}, "rung.json")
    model_dir = out / "model-src"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    model_id = tracker.log_model_dir(parent, str(model_dir), "model")
    version = tracker.register_version("job-model", tracker.logged_model_location(model_id), parent, model_id=model_id)
    return {"parent": parent, "child": child, "model_id": model_id, "version": version}


def locations(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT artifact_location FROM experiments WHERE name = 'job' UNION ALL "
                           "SELECT artifact_uri FROM runs UNION ALL SELECT artifact_location FROM logged_models "
                           "UNION ALL SELECT source FROM model_versions UNION ALL SELECT storage_location FROM model_versions")
        return [r[0] for r in rows]
    finally:
        con.close()


def download_all(folder: Path, ids: dict, tmp: Path) -> None:
    """Every kind of artifact comes back from `folder` (its store opened as `autotune status/ui` open it)."""
    from mlflow.tracking import MlflowClient

    store = open_folder_store(folder, "job")
    client = MlflowClient(store.uri, registry_uri=store.uri)
    dst = tmp / f"dl-{folder.name}"
    dst.mkdir()
    got = Path(client.download_artifacts(ids["parent"], "job/job.yaml", str(dst)))
    assert got.read_text() == "name: job\n"
    assert Path(client.download_artifacts(ids["child"], "rung.json", str(dst))).read_text().strip().startswith("{")
    assert client.get_logged_model(ids["model_id"]).artifact_location.startswith(folder.as_uri() + "/mlartifacts/")
    assert client.get_model_version_download_uri("job-model", ids["version"]).startswith(folder.as_uri() + "/mlartifacts/")
    assert {p.name for p in Path(client.get_model_version_download_uri("job-model", ids["version"])[7:]).iterdir()} == {"MLmodel"}


def test_copy_move_and_tar_round_trips(tmp_path):
    orig = tmp_path / "orig"
    ids = make_store(orig)
    n = len(locations(orig / "mlflow.db"))
    assert n == 6 and all(loc.startswith(orig.as_uri() + "/mlartifacts") for loc in locations(orig / "mlflow.db"))

    # opened where it was written: nothing to do
    assert open_folder_store(orig, "job").moved_from is None

    # a copy: its own store is rewritten to point at the copy, the original is left alone
    copy = tmp_path / "copy"
    shutil.copytree(orig, copy, symlinks=True)
    store = open_folder_store(copy, "job")
    assert (store.moved_from, store.rows_rewritten, store.copy) == (str(orig), n, None)
    assert store.note == (f"note: this job folder was written at {orig}; its MLflow store now points at this folder "
                          f"({n} artifact locations rewritten)")
    assert all(loc.startswith(copy.as_uri() + "/mlartifacts") for loc in locations(copy / "mlflow.db"))
    assert all(loc.startswith(orig.as_uri() + "/mlartifacts") for loc in locations(orig / "mlflow.db"))
    assert open_folder_store(copy, "job").moved_from is None  # once is enough
    shutil.rmtree(orig)
    download_all(copy, ids, tmp_path)

    # moved (renamed): the old path is gone
    moved = tmp_path / "moved"
    shutil.move(copy, moved)
    assert open_folder_store(moved, "job").moved_from == str(copy)
    download_all(moved, ids, tmp_path)

    # archived and unpacked elsewhere, the folder it came from deleted
    archive = tmp_path / "job.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(moved, arcname="job")
    shutil.rmtree(moved)
    unpacked = tmp_path / "elsewhere"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    assert open_folder_store(unpacked / "job", "job").moved_from == str(moved)
    download_all(unpacked / "job", ids, tmp_path)


def test_missing_store_is_refused(tmp_path):
    out = tmp_path / "out"
    make_store(out)
    (out / "mlflow.db").unlink()
    with pytest.raises(ConfigError) as err:
        open_folder_store(out, "job")
    assert err.value.problems == [
        f"{out}: the job's MLflow store is missing (mlflow.db not found); copy or move the whole job folder, "
        f"or set MLFLOW_TRACKING_URI to where the store is"]
    shutil.rmtree(out / "mlartifacts")
    with pytest.raises(ConfigError, match=r"\(mlflow.db and mlartifacts/ not found\)"):
        open_folder_store(out, "job")


def test_artifacts_kept_elsewhere_on_purpose_are_not_touched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mlartifacts").mkdir()
    tracker = MlflowTracker(f"sqlite:///{out / 'mlflow.db'}", "job", (tmp_path / "shared-artifacts").as_uri())
    tracker.start_parent("job", {})
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert open_folder_store(copy, "job").moved_from is None
    assert locations(copy / "mlflow.db")[0] == (tmp_path / "shared-artifacts").as_uri()
    with pytest.raises(ConfigError) as err:
        open_folder_store(copy, "other")
    assert err.value.problems == [f"{copy / 'mlflow.db'}: no MLflow experiment named 'other' in this store"]


def test_store_left_mid_write_by_a_killed_job_opens(tmp_path):
    """kill -9 during an MLflow write leaves a hot journal beside mlflow.db; a `mode=ro` connection cannot roll
    it back and SQLite refuses to read at all ("attempt to write a readonly database" - what made `autotune
    resume` refuse the folder now and then). The folder's store opens, the write that was cut short is rolled
    back, and the child-run reader of `autotune status` reads it too."""
    import signal
    import subprocess
    import sys

    from autotune.tracking.sqlite_read import child_runs

    out = tmp_path / "out"
    ids = make_store(out)
    db = out / "mlflow.db"
    writer = ("import os, signal, sqlite3\n"
              f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
              "c.execute('PRAGMA cache_size=1')\n"  # spill pages to the file: the journal must be hot
              "c.execute('BEGIN')\n"
              "for i in range(5000): c.execute('INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)', "
              f"(f'k{{i}}', 'x' * 200, {ids['child']!r}))\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", writer]).returncode == -signal.SIGKILL
    assert (out / "mlflow.db-journal").exists()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):  # what a plain read-only reader meets
        sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True).execute("SELECT count(*) FROM runs").fetchall()

    runs = child_runs(db, "job", ids["parent"])
    assert [r.run_id for r in runs] == [ids["child"]] and "k0" not in runs[0].tags  # rolled back
    assert not (out / "mlflow.db-journal").exists()
    assert open_folder_store(out, "job").uri.endswith("mlflow.db")
