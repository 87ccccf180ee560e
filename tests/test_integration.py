"""A real search through Ray Tune + Optuna + MLflow on a tiny model: parent/child runs, the persisted
study, finished/pruned/failed statuses, a verified artifact, and the consecutive-failure stop."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray


def job_yaml(tmp_path: Path, model_dir: Path, data: Path, body: str, name: str = "itest") -> Path:
    """A job file: common settings for the tiny model, with `body` merged over them (section by section:
    the loader refuses duplicate keys, so the body cannot simply be appended)."""
    import yaml

    base = yaml.safe_load(textwrap.dedent(f"""
        name: {name}
        output_dir: {tmp_path / 'out'}
        seed: 0
        model: {{name_or_path: {model_dir}, max_length: 16}}
        data: {{path: {data}, text_column: review, label_column: sentiment}}
        training: {{epochs: 2, batch_size: 16, evals_per_epoch: 2, warmup_ratio: 0.0}}
        objective: {{metric: val_loss}}
        budget: {{max_concurrent_trials: 1, resources_per_trial: {{cpu: 1}}}}
        scheduler: {{kind: asha, grace_period: 1, reduction_factor: 2}}
    """))
    for key, value in (yaml.safe_load(textwrap.dedent(body)) or {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(base, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def finished_job(tiny_model_dir, synthetic_csv, tmp_path_factory):
    from autotune import api

    tmp = tmp_path_factory.mktemp("itest")
    job = job_yaml(tmp, tiny_model_dir, synthetic_csv, """
        search:
          space:
            methods:
              full: {learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}, unfreeze_last_k: {choices: [null, 1]}}
              lora:
                learning_rate: 1.0e-3
                rank: {low: 2, high: 4}
                layers: {choices: [[0], [7]]}
          initial_points:
            - {method: lora, knobs: {rank: 2, layers: [7]}}    # fails: the tiny model has 2 layers
            - {method: full, knobs: {learning_rate: 3.0e-3, unfreeze_last_k: null}}   # learns
            - {method: full, knobs: {learning_rate: 1.0e-4, unfreeze_last_k: 1}}  # top layer, 1/30 the rate: pruned
        budget: {num_trials: 4, max_concurrent_trials: 1, max_consecutive_failures: 3}
        deploy: {int8: true}
    """)
    summary = api.submit(job)
    return job, summary


def test_summary_and_outputs(finished_job):
    job, summary = finished_job
    out = Path(summary["output_dir"])
    assert summary["trials"]["failed"] == 1 and summary["trials"]["pruned"] >= 1
    assert summary["method"] in ("full", "lora")
    for name in ("summary.json", "trials.csv", "job.yaml", "optuna.db", "mlflow.db", "artifact/MANIFEST.json"):
        assert (out / name).is_file(), name
    states = {s: json.loads((out / "state" / f"{s}.json").read_text())["status"] for s in ("preprocess", "tune", "validate", "deploy")}
    assert set(states.values()) == {"succeeded"}


def test_mlflow_parent_child_hierarchy(finished_job):
    from mlflow.tracking import MlflowClient

    job, summary = finished_job
    out = Path(summary["output_dir"])
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("itest")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_id == summary["mlflow_run_id"]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    by_status = {}
    for c in children:
        by_status.setdefault(c.data.tags["autotune.trial_status"], []).append(c)
    assert len(by_status["failed"]) == 1 and len(by_status.get("pruned", [])) >= 1
    failed = by_status["failed"][0]
    assert failed.info.status == "FAILED"
    assert "layer(s) [7] do not exist" in failed.data.tags["autotune.error"]
    assert failed.data.params["lora.layers"] == "[7]"
    assert all(c.info.status == "KILLED" for c in by_status["pruned"])
    # the top-layer-only trial started from cached outputs of the frozen bottom layer (training/prefix.py)
    top_only = [c for c in children if c.data.params.get("full.unfreeze_last_k") == "1"]
    assert top_only and all(c.data.metrics["cached_prefix_layers"] == 1 for c in top_only)
    assert all(c.data.metrics.get("cached_prefix_layers", 0) == 0 for c in children if c not in top_only)
    finished = by_status["finished"]
    assert finished and all(c.info.status == "FINISHED" for c in finished)
    history = client.get_metric_history(finished[0].info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]  # one value per rung, stepped
    assert "trainable_params" in finished[0].data.metrics
    # the parent carries the job, the space, the best trial, test metrics and the model
    assert parent.data.params["best.method"] == summary["method"]
    assert "test.accuracy" in parent.data.metrics and "baseline.majority_accuracy" in parent.data.metrics
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"job", "model", "search", "data"} <= arts
    job_arts = {a.path for a in client.list_artifacts(parent.info.run_id, "job")}
    assert job_arts == {"job/job.yaml", "job/search_space.json"}
    mv = client.get_model_version_by_alias("itest", "champion")
    assert mv.run_id == parent.info.run_id


def test_optuna_study_persisted_with_states(finished_job):
    import optuna

    job, summary = finished_job
    out = Path(summary["output_dir"])
    study = optuna.load_study(study_name="itest", storage=f"sqlite:///{out / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert len(states) == 4
    assert states.count("FAIL") == 1 and states.count("PRUNED") >= 1 and states.count("COMPLETE") >= 1
    assert all("ray_trial_id" in t.user_attrs for t in study.trials)
    assert study.trials[0].params["method"] == "lora"  # enqueued initial points ran first


def test_artifact_loads_with_plain_transformers_and_verifies(finished_job, tmp_path):
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from autotune.artifact import ArtifactError, verify

    job, summary = finished_job
    art = Path(summary["artifact"])
    files = {p.name for p in art.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    verify(art)
    model = AutoModelForSequenceClassification.from_pretrained(art, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(art)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    with torch.no_grad():
        logits = model(**tok(["a great film", "an awful film"], return_tensors="pt", padding=True)).logits
    assert logits.shape == (2, 2)
    # a flipped byte is detected
    bad = tmp_path / "bad"
    shutil.copytree(art, bad)
    blob = bytearray((bad / "model.safetensors").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (bad / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="model.safetensors: sha256 does not match the manifest"):
        verify(bad, load=False)
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "verify", str(bad), "--no-load"], capture_output=True, text=True)
    assert proc.returncode == 5 and "Traceback" not in proc.stderr


def test_consecutive_failures_stop_the_search(tiny_model_dir, synthetic_csv, tmp_path):
    job = job_yaml(tmp_path, tiny_model_dir, synthetic_csv, """
        search:
          space:
            methods:
              lora: {layers: [9], rank: {low: 2, high: 8}}
        budget: {num_trials: 6, max_concurrent_trials: 1, max_consecutive_failures: 2}
    """, name="allfail")
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "submit", str(job)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "the search stopped after 2 consecutive failed trials (budget.max_consecutive_failures=2)" in proc.stderr
    assert "lora.layers: layer(s) [9] do not exist" in proc.stderr


def test_status_command(finished_job):
    job, summary = finished_job
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "status", summary["output_dir"], "--json"],
                          capture_output=True, text=True, check=True)
    info = json.loads(proc.stdout)
    assert info["stages"] == {"preprocess": "succeeded", "tune": "succeeded", "validate": "succeeded", "deploy": "succeeded"}
    assert info["trials"]["failed"] == 1 and sum(info["trials"].values()) == 4
    assert info["best"]["metric"] == "val_loss"


def test_deployed_predictions_equal_validate(finished_job):
    job, summary = finished_job
    deploy = json.loads((Path(summary["output_dir"]) / "state" / "deploy.json").read_text())
    assert deploy["outputs"]["predictions_match_validate"] is True
    # the int8 copy is listed in the manifest, smaller, and loads with an accuracy recorded
    from autotune.quantize import load_int8

    out = deploy["outputs"]
    assert out["int8_weights_bytes"] < out["float_weights_bytes"]
    assert 0.0 <= out["int8_test_accuracy"] <= 1.0
    manifest = json.loads((Path(summary["artifact"]) / "MANIFEST.json").read_text())
    assert "model.int8.safetensors" in manifest["files"]
    ours = load_int8(Path(summary["artifact"]))
    card = (Path(summary["artifact"]) / "README.md").read_text()
    assert "accuracy" in card and summary["method"] in card
    assert "type(m).from_int8(PATH)" in card  # the card says how to load the int8 copy with stock tools
    # ... and it does: transformers + the artifact's own modeling file, AutoTune not importable
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["autotune"] = None  # the artifact must load without AutoTune
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        path = {str(summary["artifact"])!r}
        m8 = type(AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)).from_int8(path)
        enc = AutoTokenizer.from_pretrained(path)(["good film", "a dull plot"], return_tensors="pt", padding=True)
        with torch.no_grad():
            print(json.dumps(m8(**enc).logits.tolist()))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(summary["artifact"]).parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import torch
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(summary["artifact"])(["good film", "a dull plot"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = ours(**enc).logits
    assert torch.allclose(torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1])), want, atol=1e-6)


def test_champion_comparison_and_failed_gate(finished_job, tiny_model_dir, synthetic_csv, tmp_path):
    """A second job on the same registry compares itself with the champion; a failed gate exits 3,
    skips deploy, leaves the champion alone and records why on the parent run."""
    from mlflow.tracking import MlflowClient

    job, summary = finished_job
    store = f"sqlite:///{Path(summary['output_dir']) / 'mlflow.db'}"
    job2 = job_yaml(tmp_path, tiny_model_dir, synthetic_csv, f"""
        search:
          space:
            methods:
              head: {{learning_rate: 1.0e-2}}
        budget: {{num_trials: 1, max_concurrent_trials: 1}}
        tracking: {{uri: "{store}", registered_model: itest}}
        validate: {{min_improvement: 0.5}}
    """, name="challenger")
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "submit", str(job2)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "validation gate failed, deploy skipped: improvement over champion v1" in proc.stderr
    assert "must be >= 0.5" in proc.stderr and "Traceback" not in proc.stderr
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("challenger")
    parent = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags][0]
    assert parent.data.tags["autotune.gates"] == "failed"
    assert "must be >= 0.5" in parent.data.tags["autotune.gate_failure"]
    assert "champion.diff" in parent.data.metrics and "champion.accuracy" in parent.data.metrics
    assert str(client.get_model_version_by_alias("itest", "champion").version) == "1"
    deploy = json.loads((tmp_path / "out" / "state" / "deploy.json").read_text())
    assert deploy["status"] == "skipped"
