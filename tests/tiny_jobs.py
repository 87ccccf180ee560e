"""A small real job for tests that need one running (a few seconds of search on the tiny model), and
what its state files say."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_job(tmp_path: Path, tiny_model_dir: Path, data: Path, name: str, body: str = "") -> Path:
    """Preprocess + a 3-trial head-only search (no validate/deploy): Ray, Optuna and MLflow all run."""
    import textwrap

    import yaml

    from tests.test_integration import job_yaml

    base = yaml.safe_load(textwrap.dedent("""
        stages: [preprocess, tune]
        search: {space: {methods: {head: {learning_rate: {low: 1.0e-3, high: 3.0e-2, log: true}}}}}
        budget: {num_trials: 3, max_concurrent_trials: 1}
        training: {epochs: 2, batch_size: 16, evals_per_epoch: 2, warmup_ratio: 0.0}
        scheduler: {kind: fifo}
    """))
    for key, value in (yaml.safe_load(textwrap.dedent(body)) or {}).items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return job_yaml(tmp_path, tiny_model_dir, data, yaml.safe_dump(base), name=name)


def stage_status(out: Path, name: str) -> str | None:
    try:
        return json.loads((out / "state" / f"{name}.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None
