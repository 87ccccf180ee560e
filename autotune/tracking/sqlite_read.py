"""Read a job's trial runs straight out of an MLflow SQLite store, read-only, without importing mlflow.

`autotune status` answers in well under a second this way: `import mlflow` plus building its SQLAlchemy store
take 2-4 s on a 2-core machine, to read a few dozen rows. Only the tables of MLflow's tracking schema that have
been stable since MLflow 1.x are read (experiments, runs, tags, params); anything unexpected raises
`StoreShapeError` and the caller falls back to MLflow's own client. The database is opened with
`mode=ro`, so reading never creates, migrates or locks a store for writing - except to roll back the hot journal
a writer killed mid-transaction left (kill -9 of a job): a read-only connection cannot, and SQLite then refuses
to read at all ("attempt to write a readonly database"), so `connect_read` retries read-write when it may.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path


class StoreShapeError(RuntimeError):
    """The file is not an MLflow SQLite store this reader understands."""


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    run_name: str
    status: str  # MLflow's run status: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` tracking URI, None for any other kind of store."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path("/" + path.lstrip("/")) if uri.startswith("sqlite:////") else Path(path)


def connect_read(db: Path, timeout: float) -> sqlite3.Connection:
    """A connection for reading `db`: `mode=ro`, or `mode=rw` (never creating the file) when a hot journal
    needs rolling back and the file and its folder are writable - the recovery SQLite's own next writer would
    do. Raises sqlite3.Error like `sqlite3.connect`."""
    db = db.resolve()
    con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=timeout)
    try:
        con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # reading the schema meets the journal
        return con
    except sqlite3.OperationalError as exc:
        con.close()
        hot = Path(str(db) + "-journal").exists()
        if not (hot and "readonly" in str(exc) and os.access(db, os.W_OK) and os.access(db.parent, os.W_OK | os.X_OK)):
            raise
    return sqlite3.connect(f"{db.as_uri()}?mode=rw", uri=True, timeout=timeout)


def child_runs(db: Path, experiment: str, parent_run_id: str) -> list[RunRecord]:
    """The active child runs of `parent_run_id` in `experiment` (what MlflowClient.search_runs returns for
    `tags.mlflow.parentRunId = ...`), each with all its tags and params."""
    if not db.is_file():
        raise StoreShapeError(f"{db}: no such database")
    try:
        con = connect_read(db, timeout=5)
    except sqlite3.Error as exc:
        raise StoreShapeError(f"{db}: {exc}") from exc
    try:
        exp = con.execute("SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'",
                          (experiment,)).fetchone()
        if exp is None:
            raise StoreShapeError(f"{db}: no active experiment {experiment!r}")
        rows = con.execute(
            "SELECT r.run_uuid, r.name, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active' AND t.key = 'mlflow.parentRunId' "
            "AND t.value = ? ORDER BY r.start_time DESC", (exp[0], parent_run_id)).fetchall()
        records = []
        for run_id, name, status in rows:
            tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall())
            params = dict(con.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall())
            records.append(RunRecord(run_id, name or tags.get("mlflow.runName", ""), status, tags, params))
        return records
    except sqlite3.Error as exc:  # missing table or column: not a store of the shape this reader knows
        raise StoreShapeError(f"{db}: {exc}") from exc
    finally:
        con.close()
