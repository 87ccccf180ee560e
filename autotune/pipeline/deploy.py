"""Deploy stage: export the best model into a verified artifact, log it to the parent run and register a
new model version (alias `challenger`; `champion` only when every gate passed)."""

from __future__ import annotations

import json
import shutil

from pydantic import BaseModel

from autotune.pipeline.context import JobContext


class DeployResult(BaseModel):
    artifact_dir: str
    bytes: int
    sha256_weights: str
    registered_model: str | None
    version: str | None
    aliases: list[str]
    predictions_match_validate: bool


def run(ctx: JobContext) -> DeployResult:
    import numpy as np

    from autotune.artifact import MANIFEST, load_artifact_model, save_artifact, verify
    from autotune.pipeline.preprocess import load_tokens
    from autotune.pipeline.validate import load_best
    from autotune.training.loop import evaluate
    from autotune.training.model import load_tokenizer

    cfg = ctx.job.config
    tune_res, val, pre = ctx.results["tune"], ctx.results["validate"], ctx.results["preprocess"]
    prepared = load_best(ctx, tune_res.best_checkpoint, tune_res.best_method, tune_res.best_knobs)
    model = prepared.export()
    out = ctx.out / "artifact"
    if out.exists():
        shutil.rmtree(out)
    manifest = save_artifact(model, load_tokenizer(cfg.model), out, model_card(ctx))
    verify(out, load=False)

    # the shipped model must predict exactly what the validate stage measured
    test = load_tokens(pre.tokens_path)["test"]
    shipped = load_artifact_model(out)
    preds = evaluate(shipped, test, cfg.training.eval_batch_size).predictions
    expected = json.loads(open(val.predictions_path).read())["predictions"]
    match = bool(np.array_equal(np.array(preds), np.array(expected)))
    if not match:
        from autotune.errors import StageError

        raise StageError("the exported artifact's test predictions differ from the validate stage's: not deploying")

    t, run_id = ctx.tracker, ctx.parent_run_id
    t.log_artifacts(run_id, str(out), "model")
    name = version = None
    aliases: list[str] = []
    if cfg.deploy.register_model:
        name = cfg.tracking.registered_model or cfg.name
        version, aliases = _register(ctx, name, f"{t.artifact_uri(run_id)}/model", val.passed, manifest)
    size = sum(f["bytes"] for f in manifest["files"].values())
    weights = manifest["files"].get("model.safetensors", {}).get("sha256", "")
    t.log_metrics(run_id, {"artifact.bytes": size})
    return DeployResult(artifact_dir=str(out), bytes=size, sha256_weights=weights, registered_model=name,
                        version=version, aliases=aliases, predictions_match_validate=match)


def _register(ctx: JobContext, name: str, source: str, gates_passed: bool, manifest) -> tuple[str, list[str]]:
    from mlflow.exceptions import MlflowException

    client = ctx.tracker.client
    try:
        client.create_registered_model(name, description="Fine-tuned by AutoTune")
    except MlflowException:
        pass  # already registered
    mv = client.create_model_version(
        name, source, run_id=ctx.parent_run_id,
        tags={"autotune.job": ctx.job.config.name, "autotune.method": ctx.results["tune"].best_method,
              "autotune.weights_sha256": manifest["files"].get("model.safetensors", {}).get("sha256", "")},
    )
    aliases = ["challenger"]
    client.set_registered_model_alias(name, "challenger", mv.version)
    if gates_passed:
        # move champion only to the version validated here; re-read to make sure nobody raced us
        client.set_registered_model_alias(name, "champion", mv.version)
        if client.get_model_version_by_alias(name, "champion").version == mv.version:
            aliases.append("champion")
    return str(mv.version), aliases


def model_card(ctx: JobContext) -> str:
    cfg = ctx.job.config
    tune_res, val, pre = ctx.results["tune"], ctx.results["validate"], ctx.results["preprocess"]
    m = tune_res.best_metrics
    knobs = "\n".join(f"| `{k}` | `{v}` |" for k, v in tune_res.best_knobs.items())
    lo, hi = val.test_accuracy_ci
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [autotune, {tune_res.best_method}]
---
# {cfg.name}

Fine-tuned by AutoTune from `{cfg.model.name_or_path}` ({cfg.model.pooling} pooling, max_length {cfg.model.max_length}).

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(PATH, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(PATH)
```
`trust_remote_code` loads `modeling_autotune.py` from this directory: an encoder + {cfg.model.pooling} pooling +
linear head. Weights are safetensors; `autotune verify PATH` checks every file against MANIFEST.json.

## Method
**{tune_res.best_method}** (trial {tune_res.best_trial_id}), trainable parameters: {int(m.get('trainable_params', 0)):,}

| knob | value |
|---|---|
{knobs}

## Data
{pre.source}; fingerprint `{pre.fingerprint}`; labels {pre.labels}; sizes {pre.sizes}.

## Metrics (test split, n={val.n_test}, 95% bootstrap intervals)
| metric | value |
|---|---|
| accuracy | {val.test_accuracy:.4f} [{lo:.4f}, {hi:.4f}] |
| macro-F1 | {val.test_macro_f1:.4f} [{val.test_macro_f1_ci[0]:.4f}, {val.test_macro_f1_ci[1]:.4f}] |
| majority-class baseline | {val.majority_accuracy:.4f} |
| head-only baseline | {'n/a' if val.head_accuracy is None else f'{val.head_accuracy:.4f}'} |
| validation {cfg.objective.metric} (search) | {m.get(cfg.objective.metric, float('nan')):.4f} |
| forgetting (cosine drift on general text) | {'n/a' if val.forgetting_cosine_drift is None else f'{val.forgetting_cosine_drift:.4f}'} |

## Search
{sum(tune_res.counts.values())} trials: {tune_res.counts}; Optuna study `{tune_res.study_name}` in `{tune_res.storage_url}`;
{tune_res.seconds:.0f} s.
"""
