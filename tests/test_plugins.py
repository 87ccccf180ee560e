"""Third-party methods: an installed package offers a Method through the `autotune.methods` entry-point group,
AutoTune registers it (a broken or name-stealing plugin is left out with a warning) and searches it for real."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = '''
from pydantic import Field

from autotune.methods.base import Method, MethodParams, Prepared, freeze_all, unfreeze_head


class BiasHeadParams(MethodParams):
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="Peak AdamW learning rate.")


class BiasHead(Method):
    name = "plugin_bias_head"
    summary = "the head and every encoder bias (a test plugin)"
    cost_rank = 10
    Params = BiasHeadParams

    def apply(self, model, params, ctx):
        freeze_all(model)
        unfreeze_head(model)
        for name, p in model.encoder.named_parameters():
            if name.endswith(".bias"):
                p.requires_grad_(True)
        return Prepared(model, describe="biases + head")


class StealsFull(BiasHead):
    name = "full"
'''


def install(site: Path, entry_points: str) -> dict:
    """A package as pip would leave it: the module and its dist-info (METADATA, entry_points.txt) on a path."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "tiny_autotune_plugin.py").write_text(PLUGIN)
    info = site / "tiny_autotune_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-autotune-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def test_plugins_register_and_bad_ones_are_named(tmp_path):
    env = install(tmp_path, """
        [autotune.methods]
        plugin_bias_head = tiny_autotune_plugin:BiasHead
        full = tiny_autotune_plugin:StealsFull
        missing = tiny_autotune_plugin:NoSuchThing
    """)
    code = ("from autotune.methods import PLUGINS, REGISTRY; "
            "print(PLUGINS, type(REGISTRY['full']).__name__, REGISTRY['plugin_bias_head'].summary)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['plugin_bias_head'] FullMethod the head and every encoder bias (a test plugin)"
    assert "method plugin 'full' from tiny-autotune-plugin not loaded: method name 'full' is taken by FullMethod" \
        in proc.stderr
    assert "method plugin 'missing' from tiny-autotune-plugin not loaded" in proc.stderr


@pytest.mark.ray
def test_a_plugin_method_is_searched(tmp_path, tiny_model_dir, synthetic_csv):
    from tests.tiny_jobs import tiny_job

    env = install(tmp_path / "site", """
        [autotune.methods]
        plugin_bias_head = tiny_autotune_plugin:BiasHead
    """)
    job = tiny_job(tmp_path, tiny_model_dir, synthetic_csv, "plugin", """
        search: {space: {methods: {plugin_bias_head: {learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}}}}}
        budget: {num_trials: 2, max_concurrent_trials: 1}
    """)
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "submit", str(job)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = (tmp_path / "out" / "trials.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(",plugin_bias_head,finished," in r for r in rows), rows
