"""The registered champion is a real MLflow model: `mlflow.pyfunc.load_model("models:/NAME@champion")`
labels texts, `mlflow models serve` answers them over HTTP on 127.0.0.1, nothing in it is pickled, and
the plain-transformers load of the same folder still works."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TEXTS = ["a great and wonderful film", "an awful, boring film", "the plot was superb", "the actors were poor"]
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib")


@pytest.fixture(scope="module")
def served_job(tiny_model_dir, synthetic_csv, tmp_path_factory):
    from autotune import api

    tmp = tmp_path_factory.mktemp("serve")
    job = tmp / "served.yaml"
    job.write_text(textwrap.dedent(f"""
        name: served
        output_dir: {tmp / 'out'}
        seed: 0
        model: {{name_or_path: {tiny_model_dir}, max_length: 16}}
        data: {{path: {synthetic_csv}, text_column: review, label_column: sentiment}}
        training: {{epochs: 2, batch_size: 16, evals_per_epoch: 2, warmup_ratio: 0.0}}
        objective: {{metric: val_loss}}
        search: {{space: {{methods: {{full: {{learning_rate: 3.0e-3}}}}}}}}
        budget: {{num_trials: 1, max_concurrent_trials: 1, resources_per_trial: {{cpu: 1}}}}
        scheduler: {{kind: fifo}}
    """))
    summary = api.submit(job)
    return summary, f"sqlite:///{Path(summary['output_dir']) / 'mlflow.db'}"


@pytest.fixture()
def store_env(served_job, monkeypatch):
    """The job's store as the process-wide MLflow store, as a user would set it."""
    import mlflow

    summary, store = served_job
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert mlflow.get_tracking_uri() == store
    return summary, store


def test_champion_loads_with_pyfunc_and_labels_texts(store_env, tmp_path):
    import mlflow
    import pandas as pd
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    summary, store = store_env
    model = mlflow.pyfunc.load_model("models:/served@champion")
    sig = model.metadata.signature
    assert sig.inputs.to_dict() == [{"type": "string", "name": "text", "required": True}]
    assert [c.name for c in sig.outputs.inputs] == ["label", "score", "probabilities"]
    out = model.predict(pd.DataFrame({"text": TEXTS}))
    assert list(out.columns) == ["label", "score", "probabilities"] and len(out) == len(TEXTS)
    assert set(out["label"]) <= {"neg", "pos"}
    for _, row in out.iterrows():
        assert set(row["probabilities"]) == {"neg", "pos"}
        assert row["score"] == pytest.approx(max(row["probabilities"].values()))
        assert row["probabilities"][row["label"]] == row["score"]
    # the same folder through plain transformers gives the same labels
    art = Path(summary["artifact"])
    hf = AutoModelForSequenceClassification.from_pretrained(art, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(art)
    assert tok.model_max_length == 16  # the job's model.max_length, not the base tokenizer's 512
    with torch.no_grad():
        enc = tok(TEXTS, truncation=True, padding=True, return_tensors="pt")
        logits = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    assert [hf.config.id2label[int(i)] for i in logits.argmax(-1)] == list(out["label"])


def test_registered_version_is_the_logged_model(store_env, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    summary, store = store_env
    client = MlflowClient(store)
    mv = client.get_model_version_by_alias("served", "champion")
    assert set(mv.aliases) == {"champion", "challenger"} and mv.run_id == summary["mlflow_run_id"]
    deploy = json.loads((Path(summary["output_dir"]) / "state" / "deploy.json").read_text())["outputs"]
    assert deploy["served_predictions_match_validate"] is True
    model_id = deploy["model_uri"].removeprefix("models:/")
    assert mv.source == client.get_logged_model(model_id).artifact_location
    assert mlflow.pyfunc.load_model(deploy["model_uri"]).metadata.signature == mlflow.pyfunc.load_model(
        "models:/served@champion").metadata.signature
    # the experiment's Models tab lists it, READY, linked to the parent run and to this version
    exp = client.get_experiment_by_name("served")
    logged = client.search_logged_models([exp.experiment_id])
    assert [m.model_id for m in logged] == [model_id]
    lm = logged[0]
    assert lm.status.to_proto() == lm.status.READY.to_proto() and lm.source_run_id == summary["mlflow_run_id"]
    assert json.loads(lm.tags["mlflow.modelVersions"]) == [{"name": "served", "version": mv.version}]
    assert lm.params["method"] == "full"
    parent = client.get_run(summary["mlflow_run_id"])
    assert [o.model_id for o in parent.outputs.model_outputs] == [model_id]
    # test metrics on the version (tags) and on the logged model; a description
    acc = parent.data.metrics["test.accuracy"]
    assert float(mv.tags["test.accuracy"]) == pytest.approx(acc, abs=1e-4)
    assert {"test.macro_f1", "test.n", "autotune.gates", "autotune.weights_sha256"} <= set(mv.tags)
    assert {m.key: m.value for m in lm.metrics}["test.accuracy"] == pytest.approx(acc)
    assert "Test accuracy" in mv.description and "full" in mv.description
    # nothing pickled: weights are safetensors, the python model is code (no python_model.pkl)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / "mv")))
    names = sorted(p.name for p in local.rglob("*") if p.is_file())
    assert "model.safetensors" in names and "MLmodel" in names and "mlflow_model.py" in names
    assert not [n for n in names if n.endswith(PICKLE_SUFFIXES)], names
    pyfunc = mlflow.models.Model.load(str(local / "MLmodel")).flavors["python_function"]
    assert pyfunc["model_code_path"] == "mlflow_model.py" and "python_model" not in pyfunc
    reqs = (local / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in reqs} >= {"mlflow", "torch", "transformers", "safetensors"}
    assert all("==" in r and "+" not in r for r in reqs), reqs
    # the downloaded version is still a verified AutoTune artifact (its MLflow files are in the manifest),
    # once the note MLflow adds to every models:/ download (registered model name and version) is set aside
    from autotune.artifact import verify

    (local / "registered_model_meta").unlink(missing_ok=True)
    verify(local, load=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status


def test_mlflow_models_serve_answers_over_http(store_env, tmp_path):
    summary, store = store_env
    port = _free_port()
    log = (tmp_path / "serve.log").open("w+")
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/served@champion", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        deadline = start + 180
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                if _get(f"http://127.0.0.1:{port}/ping") == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"no /ping answer within 180 s:\n{log.read()[-3000:]}")
            time.sleep(0.5)
        ready = time.monotonic() - start
        body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        t0 = time.monotonic()
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        request_s = time.monotonic() - t0
        preds = answer["predictions"]
        assert [p["label"] for p in preds] == _pyfunc_labels(TEXTS)
        assert all(set(p["probabilities"]) == {"neg", "pos"} for p in preds)
        # records orientation too, and a bad request is a 400, not a crash
        body = json.dumps({"dataframe_records": [{"text": TEXTS[0]}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert json.loads(r.read())["predictions"][0]["label"] == preds[0]["label"]
        bad = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=b'{"dataframe_split": {"columns": ["x"], "data": [[1]]}}',
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=60)
        assert err.value.code == 400
        print(f"\nmlflow models serve: /ping after {ready:.1f} s, {len(TEXTS)} texts in {request_s * 1000:.0f} ms")
    finally:
        _stop(proc)
        log.close()
    assert proc.poll() is not None


def _pyfunc_labels(texts: list[str]) -> list[str]:
    import mlflow
    import pandas as pd

    return list(mlflow.pyfunc.load_model("models:/served@champion").predict(pd.DataFrame({"text": texts}))["label"])


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow -> uvicorn -> worker), SIGKILL what is left after 15 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived their parent
    except ProcessLookupError:
        pass
    proc.wait(timeout=5)
