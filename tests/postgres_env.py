"""A throwaway PostgreSQL 15 for tests that need a real one (password auth over TCP, loopback, free port),
started as tests/cluster_env.py does; tests skip cleanly where Debian's postgresql-15 or root is missing."""

from __future__ import annotations

import os

import pytest


def postgres_or_skip():
    """Yields a started cluster_env.Stack with only PostgreSQL running (databases optuna and mlflow)."""
    from tests.cluster_env import PG_BIN, make_stack

    if os.geteuid() != 0 or not (PG_BIN / "initdb").is_file():
        pytest.skip("needs root and Debian's postgresql-15 (apt-get install --no-upgrade postgresql-15)")
    stack = make_stack()
    try:
        stack._start_postgres()
        yield stack
    finally:
        stack.stop()
