"""One writer per job. `autotune submit` and `autotune resume` hold an exclusive lock on their output folder
for as long as they run - and, when the Optuna study lives in PostgreSQL, a lock on the study too - so a
second writer stops before it touches anything, with a message that names the holder.

- The folder lock is an OS file lock (`flock`) on OUTPUT_DIR/.lock. The kernel releases it when the holding
  process ends, however it ends (SIGKILL, OOM, a crash): a dead job never blocks the folder. The file
  itself only says who holds the lock (pid, host, command, start time); its content is never trusted as
  the lock. The descriptor is not inherited by child processes (Ray's GCS, raylet, workers), so Ray
  processes that outlive a killed driver do not keep the folder locked.
- The study lock is a session-level PostgreSQL advisory lock (`pg_try_advisory_lock`) on a hash of the
  study name, held on a connection of its own; the server releases it when that connection ends, which
  includes the death of the process. Its connection's application_name names the holder.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autotune.errors import AutotuneError, ConfigError, OptunaEngineError
from autotune.redact import redact

LOCK_FILE = ".lock"
HOLDER_WAIT_S = 2.0  # a lock taken a moment ago may not have its holder written yet


class JobBusy(AutotuneError):
    """Another AutoTune process is writing this job (its output folder, or its Optuna study)."""

    exit_code = 9

    def __init__(self, message: str, holder: str | None = None):
        super().__init__(message)
        self.holder = holder  # who holds it, in words (None: not known)


@dataclass
class Holder:
    command: str
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started: float = field(default_factory=time.time)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"pid {self.pid} on {self.host}, `{self.command}`, running since {since}"

    def app_name(self) -> str:
        """PostgreSQL keeps 63 bytes of application_name: pid and host first."""
        return f"autotune pid={self.pid} host={self.host} {self.command}".encode()[:63].decode(errors="ignore")


class FolderLock:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.fd: int | None = None

    def acquire(self, holder: Holder) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a symlink planted as .lock is refused, not followed; os.open is non-inheritable
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise ConfigError([f"output_dir: cannot create the job lock {self.path} ({exc.strerror or exc})"]) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise ConfigError([f"output_dir: cannot lock {self.path} ({exc.strerror or exc})"]) from None
            other = _read_holder(fd)
            os.close(fd)
            who = other.describe() if other else "holder not recorded yet"
            raise JobBusy(
                f"{self.folder} is in use by another AutoTune process ({who}); wait for it to finish or stop it "
                "(a process that dies releases the folder by itself)", holder=who) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None


def _read_holder(fd: int) -> Holder | None:
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        try:
            raw = os.pread(fd, 4096, 0)
            data = json.loads(raw) if raw else None
            if isinstance(data, dict):
                return Holder(command=str(data["command"])[:300], pid=int(data["pid"]), host=str(data["host"])[:100],
                              started=float(data["started"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def advisory_key(study_name: str) -> int:
    """A signed 64-bit key (what pg_try_advisory_lock takes) from the study name."""
    digest = hashlib.sha256(f"autotune-optuna-study:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class StudyLock:
    """pg_try_advisory_lock on the study, held on a dedicated AUTOCOMMIT connection until release()."""

    def __init__(self, url: str, study_name: str):
        self.url, self.study_name = url, study_name
        self.key = advisory_key(study_name)
        self.conn = None
        self.engine = None

    def acquire(self, holder: Holder) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        try:
            self.engine = create_engine(self.url, poolclass=NullPool,
                                        connect_args={"application_name": holder.app_name(), "connect_timeout": 5})
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
        except Exception as exc:  # noqa: BLE001 - a driver error, a refused connection
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
            raise OptunaEngineError(redact(f"optuna ({self.url}): cannot lock the study '{self.study_name}' ({first})")) from None
        if got:
            self.conn = conn
            return
        who = self._holder(conn, text)
        conn.close()
        self.engine.dispose()
        raise JobBusy(redact(
            f"the Optuna study '{self.study_name}' in {self.url} is in use by another AutoTune job ({who}); wait for "
            "it to finish, or give this job a study of its own (search.study_name)"), holder=redact(who))

    def _holder(self, conn, text) -> str:
        hi, lo = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
        try:
            row = conn.execute(text(
                "SELECT a.application_name, a.client_addr, a.backend_start, l.pid FROM pg_locks l "
                "LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1 "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
                {"hi": hi, "lo": lo}).first()
        except Exception:  # noqa: BLE001 - the name of the holder is a courtesy
            row = None
        if row is None:
            return "holder unknown"
        app, addr, since, pid = row
        where = f"from {addr}" if addr else "over a local socket"
        out = f"{app or 'a session'} {where}, server pid {pid}"
        if since is not None:
            from datetime import timezone

            out += f", connected since {since.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
        return out

    def release(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()  # ending the session releases its advisory locks
            finally:
                self.conn = None
                self.engine.dispose()


@contextmanager
def hold_job(output_dir: Path, command: str, storage_url: str | None = None, study_name: str | None = None):
    """The job's locks for the duration of the block: the folder first, then the study (Postgres only)."""
    holder = Holder(command=command)
    folder = FolderLock(output_dir)
    folder.acquire(holder)
    study = None
    try:
        if storage_url and storage_url.startswith("postgresql") and study_name:
            study = StudyLock(storage_url, study_name)
            study.acquire(holder)
        yield holder
    finally:
        if study is not None:
            study.release()
        folder.release()
