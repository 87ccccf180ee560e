"""Registry promotion: challenger always, champion only for the version the job validated against the
current champion (a champion that moved meanwhile blocks the promotion)."""

from __future__ import annotations

from types import SimpleNamespace

from autotune.pipeline.deploy import _register
from autotune.tracking.mlflow_tracker import MlflowTracker


def test_promotion_and_race(tmp_path):
    from rich.console import Console

    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "reg", (tmp_path / "art").as_uri())
    parent = tracker.start_parent("job", {})
    ctx = SimpleNamespace(
        tracker=tracker, parent_run_id=parent, console=Console(file=open(tmp_path / "log.txt", "w")),
        job=SimpleNamespace(config=SimpleNamespace(name="job")), results={"tune": SimpleNamespace(best_method="head")},
    )
    manifest = {"files": {}}
    src = (tmp_path / "art").as_uri()
    assert _register(ctx, "m", src, True, manifest, validated_champion=None) == ("1", ["challenger", "champion"])
    assert _register(ctx, "m", src, True, manifest, validated_champion="1") == ("2", ["challenger", "champion"])
    # v3 was validated against v1, but v2 became champion meanwhile: v3 must not take over
    assert _register(ctx, "m", src, True, manifest, validated_champion="1") == ("3", ["challenger"])
    client = tracker.client
    assert str(client.get_model_version_by_alias("m", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("m", "challenger").version) == "3"
    assert client.get_run(parent).data.tags["autotune.promotion"] == "skipped: champion moved to v2"


def test_a_deploy_rerun_after_a_kill_registers_nothing_twice(tmp_path):
    """Killed between registering and moving `champion`, the resumed deploy finds the version this job run
    registered for these weights, and moves the alias to it (once); run again, it is simply done."""
    from rich.console import Console

    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "reg", (tmp_path / "art").as_uri())
    parent = tracker.start_parent("job", {})
    ctx = SimpleNamespace(
        tracker=tracker, parent_run_id=parent, console=Console(file=open(tmp_path / "log.txt", "w")),
        job=SimpleNamespace(config=SimpleNamespace(name="job")), results={"tune": SimpleNamespace(best_method="head")},
    )
    manifest = {"files": {"model.safetensors": {"sha256": "ab" * 32, "bytes": 1}}}
    src = (tmp_path / "art").as_uri()
    tracker.register_version("m", src, parent, tags={"autotune.weights_sha256": "ab" * 32})  # the kill came here
    assert _register(ctx, "m", src, True, manifest, validated_champion=None) == ("1", ["challenger", "champion"])
    assert _register(ctx, "m", src, True, manifest, validated_champion=None) == ("1", ["challenger", "champion"])
    assert [str(v.version) for v in tracker.client.search_model_versions("name = 'm'")] == ["1"]
