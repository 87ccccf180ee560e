"""The embedded MLflow store of a job folder (OUTPUT_DIR/mlflow.db + OUTPUT_DIR/mlartifacts), opened from
wherever the folder is now.

MLflow records artifact locations as absolute URIs (the experiment's artifact_location, each run's
artifact_uri, each logged model's location, each registered version's source), and reads artifacts from
exactly there. A job folder that was copied, moved or unpacked from an archive would therefore show the
ORIGINAL folder's artifacts, or none once the original is gone. `open_folder_store` finds where the store
was written (its experiment's artifact location) and, when that is not this folder, rewrites those
locations, and only those under the old folder, to this folder in one transaction - or, when the folder is
read-only, in a temporary copy of the database. Params and tags keep the paths the job ran with: they are
the record of that run.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from autotune.errors import ConfigError
from autotune.tracking.sqlite_read import connect_read

DB = "mlflow.db"
ARTIFACTS = "mlartifacts"

# (table, column) holding artifact URIs, as MLflow 3's SQL schema names them
URI_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


@dataclass(frozen=True)
class FolderStore:
    uri: str  # sqlite:///... of the store to open (the folder's own, or a rewritten copy of it)
    artifact_root: str  # file://.../mlartifacts of this folder
    moved_from: str | None = None  # the folder the store was written in, when it was not this one
    rows_rewritten: int = 0
    copy: Path | None = None  # set when the folder is read-only and a rewritten copy is used instead

    @property
    def note(self) -> str | None:
        if self.moved_from is None:
            return None
        where = (f"a rewritten copy of its MLflow store ({self.copy}; the folder is read-only)"
                 if self.copy else "its MLflow store now points at this folder")
        return (f"note: this job folder was written at {self.moved_from}; {where} "
                f"({self.rows_rewritten} artifact locations rewritten)")


def embedded_uri(folder: Path) -> str:
    return f"sqlite:///{folder / DB}"


def open_folder_store(folder: Path, experiment: str, need_artifacts: bool = True) -> FolderStore:
    """The job folder's embedded store, its artifact locations pointing into `folder`. Raises ConfigError
    when the store is missing (a folder copied without mlflow.db or mlartifacts/; `need_artifacts=False`:
    a job stopped before it logged any artifact has no mlartifacts/ yet)."""
    folder = Path(folder).resolve()
    db, art = folder / DB, folder / ARTIFACTS
    missing = [name for name, p in ((DB, db), (ARTIFACTS + "/", art)) if not p.exists() and (need_artifacts or p == db)]
    if missing:
        raise ConfigError([f"{folder}: the job's MLflow store is missing ({' and '.join(missing)} not found); "
                           f"copy or move the whole job folder, or set MLFLOW_TRACKING_URI to where the store is"])
    new_prefix = folder.as_uri() + "/"
    old_prefix = _written_at(db, experiment)
    plain = FolderStore(embedded_uri(folder), art.as_uri())
    if old_prefix is None or old_prefix == new_prefix or _same_store(old_prefix, db):
        return plain
    if _writable(folder, db):
        rows = _rewrite(db, old_prefix, new_prefix)
        return FolderStore(plain.uri, plain.artifact_root, _folder_of(old_prefix), rows)
    tmp = Path(tempfile.mkdtemp(prefix="autotune-store-"))
    shutil.copy2(db, tmp / DB)
    rows = _rewrite(tmp / DB, old_prefix, new_prefix)
    return FolderStore(embedded_uri(tmp), plain.artifact_root, _folder_of(old_prefix), rows, copy=tmp / DB)


def _written_at(db: Path, experiment: str) -> str | None:
    """`file:///OLD/` when the experiment's artifacts were written to OLD/mlartifacts, else None (artifacts
    elsewhere: an object store, another folder on purpose)."""
    try:
        con = connect_read(db, timeout=30)
        try:
            row = con.execute("SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)).fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise ConfigError([f"{db}: not a readable MLflow store ({exc})"]) from None
    if row is None:
        raise ConfigError([f"{db}: no MLflow experiment named '{experiment}' in this store"])
    location = (row[0] or "").rstrip("/")
    if not location.startswith("file:") or not location.endswith("/" + ARTIFACTS):
        return None
    return location[: -len(ARTIFACTS)]


def _folder_of(prefix: str) -> str:
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(prefix).path).rstrip("/")


def _same_store(old_prefix: str, db: Path) -> bool:
    """The old path reaches this very database (a symlink or a second mount of the same folder)."""
    try:
        return os.path.samefile(Path(_folder_of(old_prefix)) / DB, db)
    except OSError:
        return False


def _writable(folder: Path, db: Path) -> bool:
    return os.access(db, os.W_OK) and os.access(folder, os.W_OK | os.X_OK)  # SQLite writes a journal beside it


def _rewrite(db: Path, old_prefix: str, new_prefix: str) -> int:
    """Replace `old_prefix` by `new_prefix` at the start of every artifact URI, in one transaction."""
    con = sqlite3.connect(str(db), timeout=30, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        rows = 0
        for table, column in URI_COLUMNS:
            cols = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
            if column not in cols:
                continue  # an older schema without this table or column
            cur = con.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                (new_prefix, len(old_prefix) + 1, len(old_prefix), old_prefix))
            rows += cur.rowcount
        con.execute("COMMIT")
        return rows
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()
