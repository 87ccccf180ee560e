"""Deploy stage: export the best model into a verified artifact, log it to the parent run and register a
new model version (alias `challenger`; `champion` only when every gate passed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydantic import BaseModel

from autotune.pipeline.context import JobContext


class DeployResult(BaseModel):
    artifact_dir: str
    bytes: int
    float_weights_bytes: int
    int8_weights_bytes: int | None = None
    int8_test_accuracy: float | None = None
    sha256_weights: str
    registered_model: str | None
    version: str | None
    aliases: list[str]
    predictions_match_validate: bool


def run(ctx: JobContext) -> DeployResult:
    import numpy as np

    from autotune.artifact import MANIFEST, load_artifact_model, save_artifact, verify
    from autotune.training.model import load_tokens
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
    test = load_tokens(pre.tokens_path)["test"]
    extra, int8_bytes, int8_acc = [], None, None
    if cfg.deploy.int8:
        extra, int8_bytes, int8_acc = _int8(ctx, model, test)
    manifest = save_artifact(model, load_tokenizer(cfg.model), out, model_card(ctx, int8_bytes, int8_acc),
                             extra_files=extra)
    shutil.rmtree(ctx.out / "int8-staging", ignore_errors=True)
    verify(out, load=False)

    # the shipped model must predict exactly what the validate stage measured
    shipped = load_artifact_model(out)
    preds = evaluate(shipped, test, cfg.training.eval_batch_size).predictions
    expected = json.loads(Path(val.predictions_path).read_text())["predictions"]
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
        validated = val.champion["version"] if val.champion else None
        version, aliases = _register(ctx, name, f"{t.artifact_uri(run_id)}/model", val.passed, manifest, validated)
    size = sum(f["bytes"] for f in manifest["files"].values())
    weights = manifest["files"].get("model.safetensors", {}).get("sha256", "")
    float_bytes = manifest["files"]["model.safetensors"]["bytes"]
    t.log_metrics(run_id, {"artifact.bytes": size, "artifact.float_weights_bytes": float_bytes,
                           **({"artifact.int8_weights_bytes": int8_bytes, "test.int8_accuracy": int8_acc}
                              if int8_bytes else {})})
    return DeployResult(artifact_dir=str(out), bytes=size, float_weights_bytes=float_bytes,
                        int8_weights_bytes=int8_bytes, int8_test_accuracy=int8_acc, sha256_weights=weights,
                        registered_model=name, version=version, aliases=aliases, predictions_match_validate=match)


def _int8(ctx: JobContext, model, test) -> tuple[list, int, float]:
    """Weight-only int8 copy: its size and its test accuracy (weights as they will be loaded)."""
    import copy

    from safetensors.torch import load_file

    from autotune.quantize import dequantize_state, save_int8
    from autotune.training.loop import evaluate

    path = save_int8(model, ctx.out / "int8-staging")
    qmodel = copy.deepcopy(model)
    qmodel.load_state_dict(dequantize_state(load_file(str(path))))
    acc = evaluate(qmodel, test, ctx.job.config.training.eval_batch_size).accuracy
    val = ctx.results["validate"]
    ctx.console.print(f"int8 weights {path.stat().st_size / 1e6:.1f} MB; test accuracy {acc:.4f} "
                      f"(float: {val.test_accuracy:.4f})")
    return [path], path.stat().st_size, acc


def _current_champion(client, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, "champion").version)
    except Exception:  # noqa: BLE001 - no champion yet
        return None


def _register(ctx: JobContext, name: str, source: str, gates_passed: bool, manifest,
              validated_champion: str | None) -> tuple[str, list[str]]:
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
    if not gates_passed:
        return str(mv.version), aliases
    # Promote only if the champion is still the one this job compared against: another job may have
    # promoted a better model meanwhile, and our comparison says nothing about that one.
    current = _current_champion(client, name)
    if current != validated_champion:
        ctx.console.print(
            f"[yellow]champion of {name} moved from v{validated_champion} to v{current} during this job: "
            f"v{mv.version} stays challenger (re-run validate against the new champion to promote)[/]"
        )
        ctx.tracker.set_tags(ctx.parent_run_id, {"autotune.promotion": f"skipped: champion moved to v{current}"})
        return str(mv.version), aliases
    client.set_registered_model_alias(name, "champion", mv.version)
    aliases.append("champion")
    ctx.tracker.set_tags(ctx.parent_run_id, {"autotune.promotion": f"v{mv.version} is champion"})
    return str(mv.version), aliases


def model_card(ctx: JobContext, int8_bytes: int | None = None, int8_acc: float | None = None) -> str:
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

{_int8_card(int8_bytes, int8_acc)}
## Search
{sum(tune_res.counts.values())} trials: {tune_res.counts}; Optuna study `{tune_res.study_name}` in `{tune_res.storage_url}`;
{tune_res.seconds:.0f} s.
"""


def _int8_card(int8_bytes, int8_acc) -> str:
    if not int8_bytes:
        return ""
    return (f"## int8 copy\n`model.int8.safetensors`: weight-only int8 (per-row scales), {int8_bytes / 1e6:.1f} MB, "
            f"test accuracy {int8_acc:.4f}. Load with `autotune.quantize.load_int8(PATH)`.\n")
