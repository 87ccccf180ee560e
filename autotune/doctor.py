"""Check, before anything runs, that each configured engine answers and accepts us: the Ray cluster (reachable,
token present, same Ray and Python version as this driver), the Optuna storage (connects, credentials,
schema current) and the MLflow tracking server (healthy, version 3, credentials). Seconds, not a 20-second
hang and a traceback. Embedded defaults (local Ray, SQLite files) need no network and pass at once.

Before the engines, what the job file names must be usable where it runs (exit 2, `FILE: yaml.path: ...`):
the output folder is a folder (or can become one), a model given as a local path exists, the tracking URI
has a scheme MLflow serves, and one trial's resources fit on this machine (local Ray) or on some node of
the cluster - a trial Ray cannot place waits forever without a word."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from autotune.config.loader import ResolvedJob
from autotune.errors import ConfigError, OptunaEngineError, RayEngineError, TrackingEngineError
from autotune.redact import redact

RAY_CONNECT_TIMEOUT_S = 12


@dataclass
class Check:
    engine: str
    target: str
    ok: bool
    seconds: float
    detail: str
    error_type: type | None = None
    problems: list[str] = field(default_factory=list)  # a failed "job" check: its ConfigError lines


def check_all(job: ResolvedJob, address: str | None) -> list[Check]:
    from autotune.api import tracking_uri
    from autotune.search.tuner import optuna_storage_url, ray_address

    checks = [check_job(job, address)]
    if not checks[0].ok:  # the job cannot run as written: no engine needs to be asked
        return checks
    ray_at = ray_address(job, address)
    nodes: list[dict] = []
    checks += [
        _timed("ray", lambda: check_ray(ray_at, nodes)),
        _timed("optuna", lambda: check_optuna(optuna_storage_url(job))),
        _timed("mlflow", lambda: check_mlflow(tracking_uri(job))),
    ]
    if ray_at and checks[1].ok and nodes:
        problems = resource_problems(job, nodes, f"the Ray cluster at {ray_at}", one_node=len(nodes) == 1)
        checks.append(Check("job", f"{job.job_path} on {ray_at}", not problems, 0.0,
                            "; ".join(problems) or "resources per trial fit a node", ConfigError, problems))
    return checks


def raise_first_failure(checks: list[Check]) -> None:
    for c in checks:
        if not c.ok:
            if c.problems:
                raise ConfigError(c.problems)
            raise c.error_type(f"{c.engine} ({c.target}): {c.detail}")


# --- the job's own inputs ---------------------------------------------------------------------------
def check_job(job: ResolvedJob, address: str | None) -> Check:
    from autotune.search.tuner import ray_address

    start = time.perf_counter()
    src = str(job.job_path)
    problems = (output_dir_problems(job, src) + storage_path_problems(job, src) + model_path_problems(job, src)
                + tracking_uri_problems(job, src))
    if not ray_address(job, address):
        problems += resource_problems(job, [local_resources()], "this machine (local Ray)", one_node=True)
    detail = "; ".join(problems) or "output_dir, model, tracking URI and resources per trial usable"
    return Check("job", src, not problems, time.perf_counter() - start, detail, ConfigError, problems)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def output_dir_problems(job: ResolvedJob, src: str) -> list[str]:
    """The output folder must be a directory, or creatable: no part of its path may be a file."""
    from autotune.config.errors import show

    out = job.output_dir
    for path in (out, *out.parents):
        try:
            mode = path.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):  # not there yet, or below a file: look further up
            continue
        except OSError as exc:
            return [f"{src}: output_dir: cannot use {path} ({exc.strerror or exc}) (got {show(str(out))})"]
        if stat.S_ISDIR(mode):
            return writable_problems(path, "output_dir", src, str(out))
        if path == out:
            return [f"{src}: output_dir: must be a directory (got a {_kind(mode)}: {show(str(out))})"]
        return [f"{src}: output_dir: {path} is a {_kind(mode)}, so no directory can be made below it (got {show(str(out))})"]
    return []


def writable_problems(folder: Path, key: str, src: str, got: str) -> list[str]:
    """A folder the job will write to must take a file: one is created, written and removed there (the job's
    folder, or the existing parent it will be made in) - a read-only mount or a missing permission stops the
    job here, before any compute, not at its first checkpoint."""
    from autotune.config.errors import show
    from autotune.disk import NO_SPACE, probe

    err = probe(folder)
    if err is None:
        return []
    if err.code in NO_SPACE:
        return [f"{src}: {key}: {NO_SPACE[err.code]} at {err.path}; free space first (got {show(got)})"]
    return [f"{src}: {key}: {err}; make it writable first (got {show(got)})"]


def storage_path_problems(job: ResolvedJob, src: str) -> list[str]:
    """ray.storage_path, when it is a local folder (not s3:// or another remote file system), must be writable."""
    where = job.config.ray.storage_path
    if not where or "://" in str(where):
        return []
    return writable_problems(Path(where).expanduser(), "ray.storage_path", src, str(where))


def _looks_like_path(ref: str) -> bool:
    """A hub id is NAME or ORG/NAME; anything else that names a place in the file system is a local path."""
    return (ref.startswith(("/", "./", "../", "~")) or ref in (".", "..") or "\\" in ref or ref.endswith("/")
            or ref.count("/") >= 2)


def model_path_problems(job: ResolvedJob, src: str) -> list[str]:
    from autotune.config.errors import show
    from autotune.config.job import PACKAGED_MODEL

    ref = job.config.model.name_or_path
    if ref == PACKAGED_MODEL:
        return []
    path = Path(ref)
    if not path.exists():
        if _looks_like_path(ref):  # transformers would take it for a hub id and fail with a hub error
            return [f"{src}: model.name_or_path: directory not found (got {show(ref)}, resolved to {path.resolve()})"]
        return []  # a hub id (no hub here: the model load says so)
    if not path.is_dir():
        return [f"{src}: model.name_or_path: must be a directory of a saved model (got a {_kind(path.stat().st_mode)}: {show(ref)})"]
    if not (path / "config.json").is_file():
        return [f"{src}: model.name_or_path: {path.resolve()} has no config.json, so it is not a saved transformers model (got {show(ref)})"]
    return []


# schemes MLflow 3 serves a tracking store for (mlflow.tracking._tracking_service.utils), plus plugins
TRACKING_SCHEMES = ("databricks", "databricks-uc", "http", "https", "mssql", "mysql", "postgresql", "sqlite", "uc")


def tracking_uri_problems(job: ResolvedJob, src: str) -> list[str]:
    from autotune.config.errors import show

    env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = env or job.config.tracking.uri
    if not uri:
        return []  # the embedded sqlite store
    where = "MLFLOW_TRACKING_URI (overrides tracking.uri)" if env else f"{src}: tracking.uri"
    scheme = urlparse(uri).scheme.lower() if "://" in uri or uri.startswith(("file:", "sqlite:")) else ""
    base = scheme.split("+", 1)[0]  # postgresql+psycopg://, mysql+pymysql://
    if base in ("", "file"):
        return [f"{where}: MLflow's file store (a path or file:) is not usable with MLflow 3; give sqlite:///PATH/mlflow.db "
                f"or an http(s) tracking server (got {show(redact(uri))})"]
    known = set(TRACKING_SCHEMES) | _tracking_plugins()
    if base not in known:
        return [f"{where}: scheme must be one of {', '.join(sorted(known))} (got {show(redact(uri))})"]
    return []


def _tracking_plugins() -> set[str]:
    from importlib.metadata import entry_points

    try:
        return {ep.name for ep in entry_points(group="mlflow.tracking_store")}
    except Exception:  # noqa: BLE001 - a broken plugin must not break the check
        return set()


# --- resources per trial ------------------------------------------------------------------------------
_NOUN = {"CPU": "CPUs", "GPU": "GPUs"}
_KEY = {"CPU": "cpu", "GPU": "gpu"}


def local_resources() -> dict[str, float]:
    """What local Ray will have: Ray's own resolution of this node's CPUs, GPUs (and other accelerators)."""
    try:
        from ray._private.resource_and_label_spec import ResourceAndLabelSpec

        return dict(ResourceAndLabelSpec().resolve(is_head=True, node_ip_address="127.0.0.1").to_resource_dict())
    except Exception:  # noqa: BLE001 - a moved private API: count CPUs ourselves, assume no GPU
        return {"CPU": float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)}


def _offer(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items()
             if not k.startswith(("node:", "accelerator_type:")) and k not in ("memory", "object_store_memory")}
    return ", ".join(f"{k} {v:g}" for k, v in sorted(shown.items())) or "nothing"


def resource_problems(job: ResolvedJob, nodes: list[dict], where: str, one_node: bool) -> list[str]:
    """One trial must fit on one node: each resource it asks for, and all of them together."""
    src = str(job.job_path)
    req = job.config.budget.resources_per_trial
    need = {"CPU": req.cpu, "GPU": req.gpu, **req.custom}
    need = {k: float(v) for k, v in need.items() if v > 0}
    node_word = where if one_node else f"any node of {where}"
    biggest = _offer(max(nodes, key=lambda n: float(n.get("CPU", 0)))) if nodes else "nothing"
    problems = []
    for name, amount in need.items():
        key = f"budget.resources_per_trial.{_KEY.get(name, 'custom.' + name)}"
        best = max((float(n.get(name, 0)) for n in nodes), default=0.0)
        if best >= amount:
            continue
        if best > 0:
            what = f"the {_NOUN[name]} of" if name in _NOUN else f"the amount of {name!r} on"
            problems.append(f"{src}: {key}: must be <= {best:g}, {what} {node_word} (got {amount:g})")
        elif name == "GPU":
            problems.append(f"{src}: {key}: must be 0: Ray finds no GPU on {node_word} (got {amount:g}; available: {biggest})")
        else:
            problems.append(f"{src}: {key}: {where} has no resource {name!r} (got {amount:g}; available: {biggest})")
    if not problems and need and not any(all(float(n.get(k, 0)) >= v for k, v in need.items()) for n in nodes):
        asked = ", ".join(f"{k} {v:g}" for k, v in need.items())
        problems.append(f"{src}: budget.resources_per_trial: no single node of {where} has all of {asked} (nodes offer: "
                        + "; ".join(_offer(n) for n in nodes[:8]) + ")")
    return problems


def _timed(engine, fn) -> Check:
    start = time.perf_counter()
    target, ok, detail, err = fn()
    return Check(engine, redact(target), ok, time.perf_counter() - start, redact(detail), err)


# --- Ray -------------------------------------------------------------------------------------------
def check_ray(address: str | None, nodes: list | None = None):
    """`nodes`, when given, receives each alive node's resources (for the resources-per-trial check)."""
    if not address:
        return "local", True, "local Ray on 127.0.0.1, started by the job", None
    try:
        host_port = _ray_host_port(address)
    except ValueError as exc:
        return address, False, f"address must be auto, HOST:PORT or ray://HOST:PORT ({exc})", RayEngineError
    if host_port is None:
        return address, False, "address 'auto' but no running cluster is recorded on this machine (/tmp/ray/ray_current_cluster); give HOST:PORT", RayEngineError
    host, port = host_port
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as exc:
        return address, False, f"cannot reach {host}:{port} ({exc.strerror or exc}); is the head running and the port open?", RayEngineError
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and not os.environ.get("RAY_AUTH_TOKEN"):
        path = os.environ.get("RAY_AUTH_TOKEN_PATH")
        if not path or not os.path.isfile(path):
            return address, False, "RAY_AUTH_MODE=token but neither RAY_AUTH_TOKEN nor a readable RAY_AUTH_TOKEN_PATH is set", RayEngineError
    # a real connection, in a child process so a hang or a half-initialised Ray never stays in this one
    code = ("import logging, ray, sys\n"
            f"ray.init(address={address!r}, logging_level=logging.ERROR, log_to_driver=False)\n"
            "import json\n"
            "alive = [n for n in ray.nodes() if n['Alive']]\n"
            "print('nodes', len(alive))\n"
            "print(json.dumps([n['Resources'] for n in alive]))\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=RAY_CONNECT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return address, False, (f"no answer within {RAY_CONNECT_TIMEOUT_S} s although the port is open: most often a wrong or "
                                "missing Ray auth token (RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)"), RayEngineError
    err = proc.stderr
    if proc.returncode != 0:
        if "Version mismatch" in err or "version" in err.lower() and "mismatch" in err.lower():
            line = next((l for l in err.splitlines() if "mismatch" in l.lower()), "version mismatch")
            return address, False, f"Ray/Python versions differ between this driver and the cluster: {line.strip()[:300]}", RayEngineError
        if "auth" in err.lower() or "token" in err.lower() or "UNAUTHENTICATED" in err:
            return address, False, "the cluster rejected the auth token (check RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)", RayEngineError
        last = [l for l in err.splitlines() if l.strip()][-1:] or ["unknown error"]
        return address, False, f"cannot connect: {last[0][:300]}", RayEngineError
    lines = proc.stdout.strip().splitlines()
    if nodes is not None and len(lines) > 1:
        try:
            nodes.extend(json.loads(lines[-1]))
        except ValueError:
            pass
    return address, True, (lines[0] if lines else "nodes ?") + " alive", None


def _ray_host_port(address: str) -> tuple[str, int] | None:
    if address == "auto":
        try:
            with open("/tmp/ray/ray_current_cluster") as fh:
                address = fh.read().strip()
        except OSError:
            return None
    if "://" in address:
        parsed = urlparse(address)
        return parsed.hostname or "127.0.0.1", parsed.port or 10001
    host, sep, port = address.rpartition(":")
    if not sep:  # "headnode": Ray's default GCS port
        return address, 6379
    if not port.isdigit():
        raise ValueError(f"port must be a number (got {port!r})")
    return (host or "127.0.0.1"), int(port)


# --- Optuna ----------------------------------------------------------------------------------------
def check_optuna(url: str):
    if url.startswith("sqlite:"):
        return url, True, "embedded SQLite file", None
    try:
        import optuna
        from sqlalchemy.exc import OperationalError
    except ImportError as exc:  # pragma: no cover
        return url, False, f"cannot import optuna: {exc}", OptunaEngineError
    kwargs = {"connect_args": {"connect_timeout": 5}} if url.startswith("postgresql") else {}
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_compatibility_check=False)
        current, head = storage.get_current_version(), storage.get_head_version()
    except OperationalError as exc:
        msg = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
        if "password" in msg.lower() or "authentication" in msg.lower():
            return url, False, f"credentials rejected ({msg[:200]}); check PGPASSWORD / ~/.pgpass", OptunaEngineError
        return url, False, f"cannot connect ({msg[:200]})", OptunaEngineError
    except RuntimeError as exc:
        return url, False, f"{str(exc)[:300]} (run `optuna storage upgrade --storage URL`)", OptunaEngineError
    except Exception as exc:  # noqa: BLE001 - a driver error, a bad URL...
        return url, False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}", OptunaEngineError
    if current != head:
        return url, False, f"schema {current} is not the current {head}: run `optuna storage upgrade --storage URL`", OptunaEngineError
    return url, True, f"schema {current}", None


# --- MLflow ----------------------------------------------------------------------------------------
def check_mlflow(uri: str):
    if not uri.startswith(("http://", "https://")):
        return uri, True, "local store", None
    import requests

    auth = None
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    base = uri.rstrip("/")
    try:
        health = requests.get(f"{base}/health", timeout=5)
        version = requests.get(f"{base}/version", timeout=5, auth=auth)
        probe = requests.get(f"{base}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=5, auth=auth)
    except requests.RequestException as exc:
        return uri, False, f"cannot reach the tracking server ({type(exc).__name__})", TrackingEngineError
    if probe.status_code in (401, 403):
        who = "no credentials given" if auth is None else f"credentials of user {auth[0]!r} rejected"
        return uri, False, f"{who} (HTTP {probe.status_code}); set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD", TrackingEngineError
    if health.status_code != 200 or probe.status_code != 200:
        return uri, False, f"server not healthy (health HTTP {health.status_code}, API HTTP {probe.status_code})", TrackingEngineError
    server = version.text.strip() if version.status_code == 200 else "?"
    if server != "?" and not server.startswith("3."):
        return uri, False, f"server runs MLflow {server}; AutoTune needs a 3.x server", TrackingEngineError
    return uri, True, f"MLflow server {server}", None
