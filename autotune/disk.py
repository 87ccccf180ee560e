"""A full disk and a folder that cannot be written, said once and plainly.

During a job the cause surfaces in many shapes: an OSError (ENOSPC, EDQUOT, EROFS, EACCES) from a state file,
SQLite's "database or disk is full" / "attempt to write a readonly database" inside MLflow's or Optuna's
store, a trial's RayTaskError when Ray Tune persists a checkpoint, a TuneError wrapping what a callback
raised - each chained to the next failure that the first one caused. `find()` walks the whole chain (causes,
contexts, Ray's `cause`, SQLAlchemy's `orig`, and the text Ray keeps when it drops the objects) and returns
one `DiskError`: what happened, where, while writing what, and what to do. `QuietLogs` keeps MLflow's and
Ray's loggers from printing their own tracebacks of the same failure.

Before anything runs, `probe()` creates, writes and removes a small file in the output folder (or the
nearest existing parent it will be made in): a read-only or unwritable folder stops the job before any
compute (doctor's job check, exit 2)."""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path

from autotune.errors import AutotuneError

NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
NOT_WRITABLE = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied"}

_SQLITE_FULL = "database or disk is full"
_SQLITE_READONLY = "attempt to write a readonly database"
# what survives as text only (Ray turns a callback's exception into TuneError(traceback text); a pickled
# trial error may not load): errno first, then the messages
_TEXT = [
    (re.compile(r"\[Errno 28\]|No space left on device|" + re.escape(_SQLITE_FULL), re.I), errno.ENOSPC),
    (re.compile(r"\[Errno 122\]|Disk quota exceeded", re.I), errno.EDQUOT),
    (re.compile(r"\[Errno 30\]|Read-only file system", re.I), errno.EROFS),
    (re.compile(re.escape(_SQLITE_READONLY), re.I), -errno.EROFS),  # read-only, or no permission: ask the kernel
]
_TEXT_PATH = re.compile(r"\[Errno (?:28|122|30|13|1)\] [^:\n]+: '(?P<path>/[^'\n]+)'")


class DiskError(AutotuneError):
    """The disk filled up, or a folder the job writes to became read-only / unwritable (exit 1). The job's
    state files are atomic, so the folder is resumable once there is space again (or it is writable)."""

    exit_code = 1

    def __init__(self, code: int, path: str | None = None, writing: str | None = None):
        self.unsure = code < 0  # SQLite's "readonly database": a read-only mount or a missing permission
        self.code, self.path, self.writing = abs(code), path, writing
        self.out: Path | None = None
        self.roots: list[Path] = []
        self.hint = ""
        super().__init__(self.describe())

    @property
    def no_space(self) -> bool:
        return self.code in NO_SPACE

    def place(self, out: Path, hint: str, roots: list[Path] = ()) -> "DiskError":
        """Say it relative to the folder the job writes that holds the path (the output folder, Ray's storage
        path), with what to do next."""
        self.out, self.hint = Path(out), hint
        self.roots = [Path(os.path.abspath(r)) for r in (*roots, out)]
        self.args = (self.describe(),)
        return self

    def describe(self) -> str:
        path = Path(os.path.abspath(self.path)) if self.path else None
        root = next((r for r in self.roots if path is not None and _under(path, r)), None)
        if path is None or root is not None:
            what = self.writing or (str(path.relative_to(root)) if path is not None and path != root else None)
        else:
            what = self.writing or str(path)
        if self.no_space:
            at = root or (self.out if path is None else path if path.is_dir() else _existing(path.parent))
            text = f"{NO_SPACE[self.code]} at {at or 'the output folder'}" + (f" (writing {what})" if what else "")
            fix = "free space"
        else:
            target = path if path is not None else self.out
            why = _why(target) if self.unsure else NOT_WRITABLE.get(self.code, os.strerror(self.code).lower())
            text = f"cannot write to {target or 'the output folder'} ({why})"
            if self.writing:
                text += f" (writing {self.writing})"
            fix = "make it writable"
        return f"{text}; {fix} and {self.hint}" if self.hint else text


def _under(path: Path, root: Path) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
        return True
    except ValueError:
        return False


def _existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return path


def _why(path: Path | None) -> str:
    """SQLite says "readonly database" for a read-only mount and for a missing permission alike: ask the kernel."""
    try:
        if path is not None and not os.statvfs(_existing(path)).f_flag & os.ST_RDONLY:
            return "permission denied"
    except OSError:
        pass
    return "read-only file system"


# --- finding it in a chain of exceptions -------------------------------------------------------------
def _chain(exc: BaseException):
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "cause", None), getattr(e, "orig", None), e.__cause__, e.__context__]


def _sqlite_file(exc: BaseException) -> str | None:
    """The database file a SQLAlchemy error was raised on: the Connection in its traceback knows its URL."""
    tb = exc.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        url = getattr(getattr(obj, "engine", None), "url", None)
        if url is not None and str(getattr(url, "drivername", "")).startswith("sqlite") and url.database:
            return os.path.abspath(url.database)
        tb = tb.tb_next
    return None


def find(exc: BaseException, roots: list[Path] = ()) -> DiskError | None:
    """The disk problem behind `exc`, if there is one. Permission errors count only on paths under `roots`
    (the folders the job writes): a file it cannot read elsewhere is another problem."""
    sqlite_path = None
    texts = []
    for e in _chain(exc):
        if isinstance(e, DiskError):
            return e
        if isinstance(e, OSError) and e.errno in NO_SPACE | NOT_WRITABLE.keys():
            # two paths (a copy, a rename: shutil puts the source first): the destination is the one written
            path = next((p for p in (e.filename2, e.filename) if isinstance(p, str)), None)
            if e.errno in (errno.EACCES, errno.EPERM) and not (path and any(_under(Path(path), r) for r in roots)):
                continue
            return DiskError(e.errno, path)
        sqlite_path = sqlite_path or _sqlite_file(e)
        texts.append(str(e))
    for text in texts:
        for pattern, code in _TEXT:
            if pattern.search(text):
                m = _TEXT_PATH.search(text)
                return DiskError(code, m["path"] if m else sqlite_path)
    return None


def trial_error(trial, roots: list[Path] = ()) -> DiskError | None:
    """The disk problem that failed a Ray Tune trial (from its pickled error, else its error text), or None."""
    exc = None
    path = getattr(trial, "pickled_error_file", None)
    if path and os.path.isfile(path):
        try:
            import cloudpickle

            with open(path, "rb") as fh:
                exc = cloudpickle.load(fh)
        except Exception:  # noqa: BLE001 - fall back to the text
            exc = None
    found = find(exc, roots) if exc is not None else None
    if found is None and getattr(trial, "error_file", None) and os.path.isfile(trial.error_file):
        try:
            with open(trial.error_file, errors="replace") as fh:
                found = find(RuntimeError(fh.read()[-20000:]), roots)
        except OSError:
            found = None
    if found is not None and found.path is None and getattr(trial, "path", None):
        found.path = str(trial.path)  # Ray persists the trial's checkpoints into its folder
    return found


# --- before anything runs ----------------------------------------------------------------------------
def probe(folder: Path) -> DiskError | None:
    """Create, write and remove a small file in `folder` (or, when it does not exist yet, the nearest existing
    parent it will be created in). None if that works."""
    folder = Path(os.path.abspath(folder))
    where = _existing(folder)
    if not where.is_dir():
        return None  # a file in the way: the output_dir check says so
    name = where / f".autotune-write-test-{os.getpid()}"
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    except OSError as exc:
        if exc.errno in NO_SPACE or exc.errno in NOT_WRITABLE:
            return DiskError(exc.errno, str(where))
        return None
    try:
        os.write(fd, b"autotune\n")
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in NO_SPACE or exc.errno in NOT_WRITABLE:
            return DiskError(exc.errno, str(where))
    finally:
        os.close(fd)
        try:
            os.unlink(name)
        except OSError:
            pass
    return None


# --- other libraries' tracebacks of the same failure -------------------------------------------------
class QuietLogs(logging.Filter):
    """Drops log records whose exception (or message) is a full or unwritable disk: MLflow logs a traceback
    of each SQLite error before raising it, and the job says the cause once, at the end."""

    LOGGERS = ("mlflow.store.db.utils", "mlflow", "ray.tune", "ray.tune.execution.tune_controller",
               "ray.tune.execution.experiment_state", "ray.tune.search.optuna.optuna_search", "ray.train", "optuna")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and find(exc) is not None:
            return False
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        return not any(p.search(msg) for p, _ in _TEXT)

    @classmethod
    def install(cls) -> None:
        for name in cls.LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, cls) for f in logger.filters):
                logger.addFilter(cls())


def full_now(folder) -> DiskError | None:
    """Whether the disk of an existing local folder takes no file right now (asked when a trial fails: a trial
    that failed because the disk is full has no verdict to give, and the search must stop, not go on)."""
    folder = str(folder or "")
    if not folder or "://" in folder or not os.path.isdir(folder):
        return None
    return probe(Path(folder))


# --- what Ray Tune leaves behind ---------------------------------------------------------------------
RAY_STATE_GLOBS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")


def _intact(path: str) -> bool:
    """A JSON file that parses, a pickle whose opcodes run to STOP - checked without unpickling anything."""
    import json
    import pickletools

    try:
        with open(path, "rb") as fh:
            data = fh.read()
        if not data.startswith(b"\x80"):  # not a pickle (Ray's search_gen_state-*.json is one)
            json.loads(data)
            return True
        last = None
        for last, _, _ in pickletools.genops(data):
            pass
        return last is not None and last.name == "STOP"
    except Exception:  # noqa: BLE001 - cut short, unreadable
        return False


def _ray_staging_copies(name: str) -> list[str]:
    """Ray's driver keeps what it uploads to the storage path in its session folder first:
    <ray temp>/session_*/artifacts/<start>/<experiment>/driver_artifacts/<file>."""
    import glob
    import tempfile

    roots = {os.environ.get("RAY_TMPDIR") or "", tempfile.gettempdir(), "/tmp"}
    found = []
    for root in filter(None, roots):
        found += glob.glob(os.path.join(glob.escape(root), "ray", "session_*", "artifacts", "*", "*",
                                        "driver_artifacts", glob.escape(name)))
    return sorted(set(found), key=os.path.getmtime, reverse=True)


def repair_tune_state(exp_path: str) -> list[str]:
    """Ray Tune overwrites its experiment state files in place: a disk that filled up (or a kill) while Ray
    wrote one leaves it cut short, and Ray then starts the search over without a word. Before a resume,
    check the newest session's state files; put back the intact copy Ray's driver kept in its session
    folder, or stop with what to do. Returns the files repaired."""
    import glob
    import shutil

    from autotune.errors import StageError

    if not exp_path or "://" in exp_path or not os.path.isdir(exp_path):
        return []
    states = sorted(glob.glob(os.path.join(glob.escape(exp_path), "experiment_state-*.json")))
    if not states:
        return []
    stamp = os.path.basename(states[-1])[len("experiment_state-"):-len(".json")]
    repaired = []
    for pattern in RAY_STATE_GLOBS:
        path = os.path.join(exp_path, pattern.replace("*", stamp))
        if not os.path.exists(path) or _intact(path):
            continue
        copy = next((c for c in _ray_staging_copies(os.path.basename(path)) if _intact(c)), None)
        if copy is None:
            raise StageError(
                f"Ray Tune's search state {path} is cut short (it was being written when the disk filled up or the "
                f"job was killed) and Ray's own copy of it (in its session folder) is gone, so the search cannot go on "
                f"where it stopped; start over with `autotune submit JOB --force` (the finished trials stay in MLflow)")
        tmp = f"{path}.autotune-repair.tmp"
        shutil.copyfile(copy, tmp)
        os.replace(tmp, path)
        repaired.append(path)
    return repaired
