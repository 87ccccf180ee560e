"""Engine settings: precedence, pre-flight checks that fail in seconds with a distinct exit code, and
credentials masked everywhere AutoTune writes a URL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from autotune.config import load_job
from autotune.errors import ConfigError
from autotune.redact import redact, usable


@pytest.mark.parametrize("text,expected", [
    ("postgresql+psycopg://user:s3cret@db:5432/optuna", "postgresql+psycopg://user:***@db:5432/optuna"),
    ("http://alice:pw@mlflow:5000", "http://alice:***@mlflow:5000"),
    ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ("host=db password=hunter2 user=x", "host=db password=*** user=x"),
    ("https://mlflow?token=abc&x=1", "https://mlflow?token=***&x=1"),
])
def test_redact(text, expected):
    assert redact(text) == expected


def test_masked_url_read_back_says_where_the_secret_must_come_from():
    with pytest.raises(ConfigError, match="storage.optuna_url: the password in postgresql://u:\\*\\*\\*@h/db was masked"):
        usable("postgresql://u:***@h/db", "storage.optuna_url", "AUTOTUNE_OPTUNA_STORAGE")


def test_precedence_env_over_job(tmp_path, monkeypatch):
    from autotune.api import tracking_uri
    from autotune.search.tuner import optuna_storage_url, ray_address

    job = tmp_path / "j.yaml"
    job.write_text(textwrap.dedent("""
        name: j
        ray: {address: "10.0.0.1:6379"}
        storage: {optuna_url: "sqlite:////tmp/job.db"}
        tracking: {uri: "sqlite:////tmp/job-mlflow.db"}
    """))
    j = load_job(job)
    for var in ("RAY_ADDRESS", "AUTOTUNE_OPTUNA_STORAGE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    assert (ray_address(j, None), optuna_storage_url(j), tracking_uri(j)) == (
        "10.0.0.1:6379", "sqlite:////tmp/job.db", "sqlite:////tmp/job-mlflow.db")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    monkeypatch.setenv("AUTOTUNE_OPTUNA_STORAGE", "sqlite:////tmp/env.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/env-mlflow.db")
    assert (ray_address(j, None), optuna_storage_url(j), tracking_uri(j)) == (
        "10.0.0.2:6379", "sqlite:////tmp/env.db", "sqlite:////tmp/env-mlflow.db")
    assert ray_address(j, "10.0.0.3:6379") == "10.0.0.3:6379"  # --address wins


@pytest.mark.parametrize("setting,code,message", [
    ('ray: {address: "127.0.0.1:9"}', 6, "cannot reach 127.0.0.1:9"),
    ('storage: {optuna_url: "postgresql+psycopg://bob:canary-pw-123@127.0.0.1:9/optuna"}', 7, "cannot connect"),
    ('tracking: {uri: "http://127.0.0.1:9"}', 8, "cannot reach the tracking server"),
])
def test_unreachable_engine_fails_fast_with_its_exit_code(tmp_path, setting, code, message):
    job = tmp_path / "j.yaml"
    job.write_text(f"name: j\noutput_dir: {tmp_path / 'out'}\n{setting}\n")
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "submit", str(job)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "canary-pw-123" not in proc.stderr + proc.stdout
    assert time.time() - start < 20
    assert not (tmp_path / "out").exists()  # nothing was started or written
