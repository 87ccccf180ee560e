"""Check, before anything runs, that each configured engine answers and accepts us: the Ray cluster (reachable,
token present, same Ray and Python version as this driver), the Optuna storage (connects, credentials,
schema current) and the MLflow tracking server (healthy, version 3, credentials). Seconds, not a 20-second
hang and a traceback. Embedded defaults (local Ray, SQLite files) need no network and pass at once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlparse

from autotune.config.loader import ResolvedJob
from autotune.errors import OptunaEngineError, RayEngineError, TrackingEngineError
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


def check_all(job: ResolvedJob, address: str | None) -> list[Check]:
    from autotune.api import tracking_uri
    from autotune.search.tuner import optuna_storage_url, ray_address

    return [
        _timed("ray", lambda: check_ray(ray_address(job, address))),
        _timed("optuna", lambda: check_optuna(optuna_storage_url(job))),
        _timed("mlflow", lambda: check_mlflow(tracking_uri(job))),
    ]


def raise_first_failure(checks: list[Check]) -> None:
    for c in checks:
        if not c.ok:
            raise c.error_type(f"{c.engine} ({c.target}): {c.detail}")


def _timed(engine, fn) -> Check:
    start = time.perf_counter()
    target, ok, detail, err = fn()
    return Check(engine, redact(target), ok, time.perf_counter() - start, redact(detail), err)


# --- Ray -------------------------------------------------------------------------------------------
def check_ray(address: str | None):
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
            "print('nodes', len([n for n in ray.nodes() if n['Alive']]))\n")
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
    return address, True, proc.stdout.strip() + " alive", None


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
