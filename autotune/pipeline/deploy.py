"""Deploy stage: export the best model into a verified artifact that is also an MLflow model, log it on the
parent run (a LoggedModel: the experiment's Models tab) and register a new version from it (alias
`challenger`; `champion` only when every gate passed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydantic import BaseModel

from autotune.pipeline.context import JobContext

SERVED_CHECK_TEXTS = 64  # test texts the MLflow model must label exactly as the validate stage did


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
    model_uri: str | None = None  # models:/<model_id>: the LoggedModel on the parent run
    served_predictions_match_validate: bool | None = None  # the pyfunc model, on raw test texts


def run(ctx: JobContext) -> DeployResult:
    import numpy as np

    from autotune.artifact import load_artifact_model, save_artifact, verify
    from autotune.errors import StageError
    from autotune.mlflow_model import save_mlflow_files
    from autotune.pipeline.validate import load_best
    from autotune.training.loop import evaluate
    from autotune.training.model import load_tokenizer, load_tokens

    cfg = ctx.job.config
    tune_res, val, pre = ctx.results["tune"], ctx.results["validate"], ctx.results["preprocess"]
    if ctx.best_model and ctx.best_model[0] == tune_res.best_checkpoint:
        model = ctx.best_model[1]  # validate scored it in this process
    else:  # resumed after validate: rebuild it from the checkpoint
        model = load_best(ctx, tune_res.best_checkpoint, tune_res.best_method, tune_res.best_knobs).export()
    out = ctx.out / "artifact"
    if out.exists():
        shutil.rmtree(out)
    test = load_tokens(pre.tokens_path)["test"]
    extra, int8_bytes, int8_acc = [], None, None
    if cfg.deploy.int8:
        extra, int8_bytes, int8_acc = _int8(ctx, model, test)
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.model_max_length = cfg.model.max_length  # truncate as training did (the base says e.g. 512)
    extra += save_mlflow_files(ctx.out / "mlflow-staging")  # MLmodel, code, environment: listed in the manifest
    manifest = save_artifact(model, tokenizer, out, model_card(ctx, int8_bytes, int8_acc), extra_files=extra)
    for staging in ("int8-staging", "mlflow-staging"):
        shutil.rmtree(ctx.out / staging, ignore_errors=True)

    # the shipped model must predict exactly what the validate stage measured: loaded as weights ... (on the
    # first CHECK_ROWS test rows: any export fault shows there, and the stage costs a fraction of a test pass)
    head = {k: v[:CHECK_ROWS] for k, v in test.items()}
    preds = evaluate(load_artifact_model(out), head, cfg.training.eval_batch_size).predictions
    expected = json.loads(Path(val.predictions_path).read_text())["predictions"]
    match = bool(np.array_equal(np.array(preds), np.array(expected[:CHECK_ROWS])))
    if not match:
        raise StageError("the exported artifact's test predictions differ from the validate stage's: not deploying")
    # ... and as the MLflow model, from raw text (its own tokenization, truncation and label names)
    served_match = _served_predictions_match(out, Path(pre.data_dir) / "test.jsonl", expected, pre.labels)
    if not served_match:
        raise StageError("the MLflow model's predictions on test texts differ from the validate stage's: not deploying")
    verify(out, load=False)  # after the loads: nothing was written into the artifact

    t, run_id = ctx.tracker, ctx.parent_run_id
    test_metrics = {"test.accuracy": val.test_accuracy, "test.macro_f1": val.test_macro_f1, "test.loss": val.test_loss}
    model_id = t.log_model_dir(
        run_id, str(out), cfg.name, params={"method": tune_res.best_method, **tune_res.best_knobs},
        tags={"autotune.job": cfg.name, "autotune.method": tune_res.best_method}, metrics=test_metrics,
    )
    # the weights are stored once: in the LoggedModel (what the registry serves). The run's `model/` folder holds
    # the rest of the artifact (model card, MANIFEST, MLmodel, config, tokenizer) for browsing, and the job
    # folder's copy shares the LoggedModel's files where the store is on this disk (hard links).
    for f in sorted(out.iterdir()):
        if f.is_file() and not f.name.endswith(".safetensors"):
            t.log_artifact(run_id, str(f), "model")
    shared = _share_files(out, t.logged_model_location(model_id))
    if shared:
        ctx.console.print(f"[dim]artifact: {shared / 1e6:.0f} MB shared with the MLflow store (hard links, stored once)[/]")
    size = sum(f["bytes"] for f in manifest["files"].values())
    weights = manifest["files"].get("model.safetensors", {}).get("sha256", "")
    float_bytes = manifest["files"]["model.safetensors"]["bytes"]
    t.log_metrics(run_id, {"artifact.bytes": size, "artifact.float_weights_bytes": float_bytes,
                           **({"artifact.int8_weights_bytes": int8_bytes, "test.int8_accuracy": int8_acc}
                              if int8_bytes else {})})
    name = version = None
    aliases: list[str] = []
    if cfg.deploy.register_model:  # last: the registry and the aliases move only once everything else is done
        name = cfg.tracking.registered_model or cfg.name
        validated = val.champion["version"] if val.champion else None
        version, aliases = _register(ctx, name, t.logged_model_location(model_id), val.passed, manifest, validated,
                                     extra_tags=version_tags(ctx), description=version_description(ctx, name),
                                     model_id=model_id)

    return DeployResult(artifact_dir=str(out), bytes=size, float_weights_bytes=float_bytes,
                        int8_weights_bytes=int8_bytes, int8_test_accuracy=int8_acc, sha256_weights=weights,
                        registered_model=name, version=version, aliases=aliases, predictions_match_validate=match,
                        model_uri=f"models:/{model_id}", served_predictions_match_validate=served_match)


def _share_files(out: Path, location: str) -> int:
    """Replace the artifact's weight files with hard links to their identical copies in the MLflow store when
    that store is a local folder on the same file system, read-only (0444); returns the bytes now stored once
    (0: none - a remote store, another file system)."""
    import filecmp
    import os
    from urllib.parse import unquote, urlparse

    parsed = urlparse(location)
    if parsed.scheme not in ("file", ""):
        return 0
    twin_dir = Path(unquote(parsed.path))
    saved = 0
    for f in out.glob("*.safetensors"):
        twin = twin_dir / f.name
        try:
            if twin.stat().st_dev != f.stat().st_dev or not filecmp.cmp(f, twin, shallow=False):
                continue
            tmp = f.with_name(f".{f.name}.link")
            tmp.unlink(missing_ok=True)
            os.chmod(twin, 0o444)  # one file, two names: read-only, so that a write meant for one cannot change both
            os.link(twin, tmp)
            os.replace(tmp, f)
            saved += f.stat().st_size
        except OSError:
            continue  # another file system, no hard links there: two copies, as before
    return saved


CHECK_ROWS = 256  # test rows the shipped model is checked on against the validate stage's predictions


def _served_predictions_match(artifact: Path, test_jsonl: Path, expected: list[int], labels: list[str]) -> bool:
    """Load the artifact as MLflow does and label the first test texts; compare with validate's labels."""
    import sys

    import mlflow
    import pandas as pd

    with test_jsonl.open(encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line, _ in zip(fh, range(SERVED_CHECK_TEXTS))]
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # MLflow imports the model's code file
    try:
        served = mlflow.pyfunc.load_model(str(artifact)).predict(pd.DataFrame({"text": texts}))
    finally:
        sys.dont_write_bytecode = saved
    return list(served["label"]) == [labels[i] for i in expected[: len(texts)]]


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


def _register(ctx: JobContext, name: str, source: str, gates_passed: bool, manifest,
              validated_champion: str | None, extra_tags: dict[str, str] | None = None,
              description: str | None = None, model_id: str | None = None) -> tuple[str, list[str]]:
    t = ctx.tracker
    sha = manifest["files"].get("model.safetensors", {}).get("sha256", "")
    # a deploy killed after registering and re-run on resume registers nothing twice: the version this job
    # registered for these very weights is the one
    again = sha and t.version_of_run(name, ctx.parent_run_id, {"autotune.weights_sha256": sha})
    version = again or t.register_version(
        name, source, ctx.parent_run_id, description=description, model_id=model_id,
        tags={"autotune.job": ctx.job.config.name, "autotune.method": ctx.results["tune"].best_method,
              "autotune.weights_sha256": sha, **(extra_tags or {})},
    )
    aliases = ["challenger"]
    t.set_alias(name, "challenger", version)
    if not gates_passed:
        return version, aliases
    # Promote only if the champion is still the one this job compared against: another job may have
    # promoted a better model meanwhile, and our comparison says nothing about that one.
    current = t.move_alias(name, "champion", version, expected=validated_champion)
    if current == version:  # moved by this very job before a kill: done
        current = None
    if current is not None:
        ctx.console.print(
            f"[yellow]champion of {name} moved from v{validated_champion} to v{current} during this job: "
            f"v{version} stays challenger (re-run validate against the new champion to promote)[/]"
        )
        t.set_tags(ctx.parent_run_id, {"autotune.promotion": f"skipped: champion moved to v{current}"})
        return version, aliases
    aliases.append("champion")
    t.set_tags(ctx.parent_run_id, {"autotune.promotion": f"v{version} is champion"})
    return version, aliases


def version_tags(ctx: JobContext) -> dict[str, str]:
    """The test metrics on the model version, where the registry lists and filters them."""
    val = ctx.results["validate"]
    tags = {"test.accuracy": val.test_accuracy, "test.accuracy_ci_low": val.test_accuracy_ci[0],
            "test.accuracy_ci_high": val.test_accuracy_ci[1], "test.macro_f1": val.test_macro_f1,
            "test.loss": val.test_loss, "test.n": val.n_test, "baseline.majority_accuracy": val.majority_accuracy}
    if val.head_accuracy is not None:
        tags["baseline.head_accuracy"] = val.head_accuracy
    if val.champion:
        tags["champion.version"] = val.champion["version"]
        tags["champion.diff"] = val.champion["diff"]
    tags["autotune.gates"] = "passed" if val.passed else "failed"
    tune_res = ctx.results["tune"]  # what a warm-started retuning cycle enqueues first
    tags["autotune.config"] = json.dumps({"method": tune_res.best_method, "knobs": tune_res.best_knobs})
    return {k: v if isinstance(v, str) else f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in tags.items()}


def version_description(ctx: JobContext, name: str) -> str:
    cfg = ctx.job.config
    tune_res, val = ctx.results["tune"], ctx.results["validate"]
    lo, hi = val.test_accuracy_ci
    knobs = ", ".join(f"{k}={v}" for k, v in tune_res.best_knobs.items())
    champion = (f" Against champion v{val.champion['version']}: {val.champion['diff']:+.4f} accuracy."
                if val.champion else "")
    return (f"AutoTune job `{cfg.name}`: **{tune_res.best_method}** fine-tuning of `{base_model_name(cfg.model.name_or_path)}` "
            f"(trial {tune_res.best_number}; {knobs}). Test accuracy {val.test_accuracy:.4f} "
            f"(95% CI {lo:.4f}-{hi:.4f}, n={val.n_test}), macro-F1 {val.test_macro_f1:.4f}; majority-class "
            f"baseline {val.majority_accuracy:.4f}.{champion} Gates {'passed' if val.passed else 'failed'}.\n\n"
            "Input: a string column `text`; output: `label`, `score`, `probabilities`. "
            f"`mlflow models serve -m models:/{name}@champion --env-manager local` serves the champion.")


def base_model_name(name_or_path: str) -> str:
    """A hub id or packaged name as given; a local directory by its name (no absolute paths in records)."""
    return Path(name_or_path).name if Path(name_or_path).is_dir() else name_or_path


def model_card(ctx: JobContext, int8_bytes: int | None = None, int8_acc: float | None = None) -> str:
    """README.md of the artifact. The YAML front matter (Hugging Face's model-card metadata) ends after a
    blank line, so that Markdown renderers without front-matter support (MLflow's artifact view) draw a
    rule there instead of turning the last key into a heading. No absolute local paths."""
    cfg = ctx.job.config
    tune_res, val, pre = ctx.results["tune"], ctx.results["validate"], ctx.results["preprocess"]
    m = tune_res.best_metrics
    knobs = "\n".join(f"| `{k}` | `{v}` |" for k, v in tune_res.best_knobs.items())
    lo, hi = val.test_accuracy_ci
    name = cfg.tracking.registered_model or cfg.name
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [autotune, {tune_res.best_method}]

---
# {cfg.name}

Fine-tuned by AutoTune from `{base_model_name(cfg.model.name_or_path)}` ({cfg.model.pooling} pooling, inputs truncated
to {cfg.model.max_length} tokens as in training; the tokenizer here says so too).{_layers_note(cfg.model)}

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(PATH, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(PATH)
```
`trust_remote_code` loads `modeling_autotune.py` from this directory: an encoder + {cfg.model.pooling} pooling +
linear head. Weights are safetensors; `autotune verify PATH` checks every file against MANIFEST.json.

This directory is also an MLflow model (`MLmodel`; nothing pickled: the pyfunc is `mlflow_model.py`). Input: a
string column `text`; output: `label`, `score`, `probabilities`.

```python
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model("models:/{name}@champion")   # or PATH
model.predict(pd.DataFrame({{"text": ["..."]}}))
```
`mlflow models serve -m models:/{name}@champion --env-manager local --host 127.0.0.1 --port 5001` serves it
(POST `{{"dataframe_records": [{{"text": "..."}}]}}` to `/invocations`).

## Method
**{tune_res.best_method}** (trial {tune_res.best_number} of the Optuna study), trainable parameters: {int(m.get('trainable_params', 0)):,}

| knob | value |
|---|---|
{knobs}

## Data
{_data_source(pre.source)}; fingerprint `{pre.fingerprint}`; labels {pre.labels}; sizes {pre.sizes}.

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
{sum(tune_res.counts.values())} trials: {tune_res.counts}; Optuna study `{tune_res.study_name}` in
{_study_location(tune_res.storage_url, ctx.out)}; {tune_res.seconds:.0f} s.
"""


def _layers_note(model_cfg) -> str:
    """Say so when `model.num_hidden_layers` dropped the base model's upper encoder layers."""
    if model_cfg.num_hidden_layers is None:
        return ""
    from transformers import AutoConfig

    from autotune.training.model import resolve_model_path

    total = AutoConfig.from_pretrained(resolve_model_path(model_cfg.name_or_path)).num_hidden_layers
    if model_cfg.num_hidden_layers >= total:
        return ""
    return (f"\nOnly the first {model_cfg.num_hidden_layers} of the base model's {total} encoder layers are kept "
            f"(`model.num_hidden_layers: {model_cfg.num_hidden_layers}`); the others were dropped before fine-tuning.")


def _data_source(source: str) -> str:
    """A data file by its name; a description (the demo data) as it is."""
    path = Path(source)
    return f"`{path.name}`" if path.is_absolute() else source


def _study_location(url: str, out: Path) -> str:
    from autotune.redact import redact

    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        inside = path.is_relative_to(out)
        return f"`{path.relative_to(out) if inside else path.name}`{' in the job folder' if inside else ''} (SQLite)"
    return f"`{redact(url)}`"


def _int8_card(int8_bytes, int8_acc) -> str:
    if not int8_bytes:
        return ""
    return (f"## int8 copy\n`model.int8.safetensors`: weight-only int8 (per-row scales), {int8_bytes / 1e6:.1f} MB, "
            f"test accuracy {int8_acc:.4f}. Load it with stock transformers (no autotune needed): "
            f"`m = AutoModelForSequenceClassification.from_pretrained(PATH, trust_remote_code=True); "
            f"m8 = type(m).from_int8(PATH)` (dequantized to float32).\n")
