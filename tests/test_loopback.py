"""Nothing listens beyond the machine by default: a socket census of a real local job (`autotune submit`
in a process of its own) - every TCP listener of the driver and of the Ray processes under it (GCS, raylet,
runtime-env agent, the trial workers) is on the loopback interface, none on 0.0.0.0 / :: or an outward
address."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.tiny_jobs import tiny_job

pytestmark = pytest.mark.ray


def _listeners(root_pid: int) -> set[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of each TCP socket in LISTEN under root_pid, root included."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return set()
    out = set()
    for p in procs:
        try:
            name = p.name()
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.add((p.pid, name, c.laddr.ip, c.laddr.port))
        except psutil.Error:
            continue  # a worker that ended between the listing and the look
    return out


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def test_local_job_listens_on_loopback_only(tiny_model_dir, synthetic_csv, tmp_path):
    job = tiny_job(tmp_path, tiny_model_dir, synthetic_csv, "census")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    proc = subprocess.Popen([sys.executable, "-m", "autotune.cli", "submit", str(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    seen: set[tuple[int, str, str, int]] = set()
    try:
        deadline = time.time() + 400
        while proc.poll() is None and time.time() < deadline:
            seen |= _listeners(proc.pid)
            time.sleep(0.3)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    names = {name for _, name, _, _ in seen}
    # the census saw the whole local cluster: GCS, raylet, the driver and at least one trial worker
    assert {"gcs_server", "raylet"} <= names, names
    assert any(pid == proc.pid for pid, *_ in seen), "the driver's core-worker server"
    assert any(n.startswith("ray::") and n != "ray::RuntimeEnvAgent" for n in names), names
    wide = sorted((name, ip, port) for _, name, ip, port in seen if not _loopback(ip))
    assert wide == [], f"listening beyond loopback: {wide}"
    print(f"census: {len(seen)} listeners, all on loopback: " + ", ".join(sorted({f'{n}@{ip}' for _, n, ip, _ in seen})))
