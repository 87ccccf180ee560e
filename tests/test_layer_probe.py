"""The layer-importance probe and `layers: {importance_top_k: ...}`: a ranking measured once per job, the knob
in spaces for full, LoRA and sparse, resolved into concrete layers inside each trial (so validate and deploy
rebuild the same model), and one real job through Ray, Optuna and MLflow."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from autotune.config.job import ModelConfig
from autotune.errors import TrialFailed
from autotune.methods import REGISTRY, ApplyContext
from autotune.methods.base import resolve_importance
from autotune.search.layer_probe import rank_layers, space_needs_ranking
from autotune.training.model import build_model
from tests.test_loop import data  # noqa: F401 - fixture: tokenized synthetic splits
from tests.test_prefix import four_layers  # noqa: F401 - fixture: a 4-layer tiny BERT


def test_probe_ranks_every_layer_once_and_repeats_for_a_seed(four_layers, data):  # noqa: F811
    probe = rank_layers(four_layers, ["neg", "pos"], data["train"], seed=0)
    assert sorted(probe["ranking"]) == [0, 1, 2, 3] and probe["batches"] == 4
    assert all(s > 0 for s in probe["scores"])
    assert [probe["scores"][i] for i in probe["ranking"]] == sorted(probe["scores"], reverse=True)
    again = rank_layers(four_layers, ["neg", "pos"], data["train"], seed=0)
    assert again["ranking"] == probe["ranking"] and again["scores"] == pytest.approx(probe["scores"], rel=1e-5)


@pytest.mark.parametrize("method", ["full", "lora", "sparse", "vera", "loha"])
def test_importance_top_k_resolves_into_layers(method):
    params = REGISTRY[method].Params(importance_top_k=2)
    resolved = resolve_importance(method, params, [3, 0, 2, 1])
    assert resolved.layers == [0, 3] and resolved.importance_top_k is None  # the top 2, sorted
    assert resolve_importance(method, REGISTRY[method].Params(layers=[1]), None).layers == [1]  # untouched
    with pytest.raises(TrialFailed, match="needs the layer-importance ranking"):
        resolve_importance(method, params, None)
    with pytest.raises(TrialFailed, match="5 is more layers than the model has"):
        resolve_importance(method, REGISTRY[method].Params(importance_top_k=5), [3, 0, 2, 1])
    with pytest.raises(ValueError, match="either layers or importance_top_k"):
        REGISTRY[method].Params(layers=[1], importance_top_k=1)


def test_unresolved_importance_is_refused_and_sparse_honours_layers(four_layers, data):  # noqa: F811
    model = build_model(four_layers, ["neg", "pos"])
    with pytest.raises(TrialFailed, match="was not resolved"):
        REGISTRY["full"].apply(model, REGISTRY["full"].Params(importance_top_k=1), ApplyContext())
    with pytest.raises(ValueError, match="either unfreeze_last_k or importance_top_k"):
        REGISTRY["full"].Params(unfreeze_last_k=1, importance_top_k=1)
    sparse = REGISTRY["sparse"]
    counts = {}
    for layers in (None, [2]):
        torch.manual_seed(0)
        prepared = sparse.apply(build_model(four_layers, ["neg", "pos"]),
                                sparse.Params(sparsity=0.9, selection="magnitude", layers=layers), ApplyContext())
        counts[str(layers)] = prepared.trainable_params - 66  # minus the head (32 x 2 + 2)
    assert counts["[2]"] * 4 == pytest.approx(counts["None"], rel=0.01)  # one layer of four: a quarter of the entries


def test_space_syntax_and_errors(tmp_path):
    from autotune.config.space import SearchSpace, compile_space

    space = SearchSpace(methods={"lora": {"layers": {"importance_top_k": {"low": 1, "high": 3}}},
                                 "full": {"layers": {"importance_top_k": 2}}, "head": {}})
    compiled, problems = compile_space(space, "s.yaml")
    assert problems == []
    knob = {k.name: k for k in compiled.methods["lora"]}["lora.importance_top_k"]
    assert (knob.kind, knob.low, knob.high) == ("int", 1, 3)
    assert compiled.decode({"method": "full"}) == ("full", {"importance_top_k": 2})
    assert space_needs_ranking(compiled)
    assert not space_needs_ranking(compile_space(SearchSpace(methods={"lora": {"layers": [1]}}), "s")[0])
    _, problems = compile_space(SearchSpace(methods={"lora": {"layers": {"importance_top_k": {"low": 0, "high": 2}}}}),
                                "s.yaml")
    assert problems == ["s.yaml: methods.lora.layers.importance_top_k.low: must be >= 1 (got 0)"]


@pytest.mark.ray
def test_a_job_ranks_layers_once_and_trials_train_the_top_k(tiny_model_dir, synthetic_csv, tmp_path):
    from mlflow.tracking import MlflowClient

    from autotune import api
    from tests.tiny_jobs import tiny_job

    job = tiny_job(tmp_path, tiny_model_dir, synthetic_csv, "probe", """
        search:
          space:
            methods:
              lora: {learning_rate: 1.0e-3, rank: 2, layers: {importance_top_k: {low: 1, high: 2}}}
          initial_points: [{method: lora, knobs: {importance_top_k: 1}}, {method: lora, knobs: {importance_top_k: 2}}]
        budget: {num_trials: 2, max_concurrent_trials: 1}
        training: {epochs: 1, batch_size: 16, evals_per_epoch: 1}
        stages: [preprocess, tune, validate, deploy]
        deploy: {register_model: false}
    """)
    summary = api.submit(job)
    out = Path(summary["output_dir"])
    probe = json.loads((out / "search" / "layer_importance.json").read_text())
    assert sorted(probe["ranking"]) == [0, 1]  # the tiny model has 2 layers
    with (out / "trials.csv").open() as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: int(r["number"]))
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert [r["knobs"].split()[0] for r in rows] == ["importance_top_k=1", "importance_top_k=2"]  # as searched
    # each trial says which layers its importance_top_k stood for (and recorded them in its checkpoint, which
    # validate and deploy rebuild from)
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("probe")
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{summary['mlflow_run_id']}'")
    trained = {r.data.params["lora.importance_top_k"]: (json.loads(r.data.tags["autotune.layers_trained"]),
                                                         r.data.metrics["trainable_params"]) for r in runs}
    assert trained["1"][0] == [probe["ranking"][0]] and trained["2"][0] == [0, 1]
    head = 2 * 32 + 2  # the top-1 trial adapted one layer of two: half the LoRA entries of the top-2 trial
    assert trained["2"][1] - head == 2 * (trained["1"][1] - head)
    # validate and deploy rebuilt the best trial from its checkpoint and shipped it
    assert json.loads((out / "state" / "deploy.json").read_text())["outputs"]["predictions_match_validate"] is True
    logged = {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "search")}
    plots = {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "search/plots")}
    assert "search/layer_importance.json" in logged and "search/plots/layer_importance.png" in plots
