"""The one place that talks to MLflow.

Layout: experiment = job's experiment; one parent run per job (reused on resume, found by the run id in
the job's state); one child run per trial with tag `mlflow.parentRunId`, found again by the
`autotune.trial_id` tag so a resumed or retried trial continues its run instead of duplicating it.
Writes are batched (params: 100 per call, values truncated to MLflow's limits) and all happen on the
driver, so a SQLite store has a single writer. The Model Registry is reached through here too: registering
versions, reading the version an alias points at, compare-and-move of aliases (promotion, rollback).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from autotune.redact import redact

MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LEN = 6000
MAX_TAG_LEN = 8000

TRIAL_ID_TAG = "autotune.trial_id"
STATUS_TAG = "autotune.trial_status"  # finished | pruned | stopped | failed | running
KNOBS_TAG = "autotune.knobs"  # the trial's knob values as JSON (params are strings)
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI (markdown)
SOURCE_NAME = "autotune"


def source_tags() -> dict[str, str]:
    """Who and what wrote a run (the UI's "User" and "Source" columns): mlflow.user, mlflow.source.*."""
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a container with an unnamed uid)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return {"mlflow.user": user, "mlflow.source.name": SOURCE_NAME, "mlflow.source.type": "LOCAL"}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite database (OUTPUT_DIR/mlartifacts for a job's
    own store; the job's for a retuning cycle); a server decides for itself (None)."""
    from pathlib import Path

    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


class MlflowTracker:
    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None = None,
                 create: bool = True):
        """`create=False`: the experiment must exist (reading a job's store never creates one)."""
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter on the console
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our console has its own lines
        # a broken tracking server should fail the job in seconds, not after minutes of exponential backoff
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None and not create:
            from autotune.errors import ConfigError

            raise ConfigError([f"{redact(tracking_uri)}: no MLflow experiment named '{experiment}'"])
        if exp is None:
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
        else:
            self.experiment_id = exp.experiment_id

    # --- runs ------------------------------------------------------------------------------------
    def start_parent(self, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={**source_tags(), **tags, "autotune.role": "job"})
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        """A run continues (a resumed job or trial, a retried trial): RUNNING again, without the reason it stopped
        last time."""
        self.client.update_run(run_id, status="RUNNING")
        if "autotune.stop_reason" in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, "autotune.stop_reason")

    def child_for_trial(self, parent_id: str, trial_id: str, run_name: str, tags: dict[str, str]) -> tuple[str, bool]:
        """The child run of a trial: the existing one if the trial ran before, else a new one."""
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{parent_id}'",
            max_results=1,
        )
        if found:
            self.reopen(found[0].info.run_id)
            return found[0].info.run_id, False
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={**source_tags(), **tags, "mlflow.parentRunId": parent_id, TRIAL_ID_TAG: trial_id,
                  "autotune.role": "trial"},
        )
        return run.info.run_id, True

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    # --- data ------------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Params as strings; a None (an unset knob) is not logged at all rather than as "None"."""
        from mlflow.entities import Param

        items = [Param(k, redact(str(v))[:MAX_PARAM_LEN]) for k, v in flatten(params).items() if v is not None]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i : i + MAX_PARAMS_PER_BATCH], synchronous=True)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, redact(str(v))[:MAX_TAG_LEN]) for k, v in tags.items() if v is not None]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, tags=items[i : i + MAX_PARAMS_PER_BATCH], synchronous=True)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + MAX_METRICS_PER_BATCH], synchronous=True)

    def set_note(self, run_id: str, text: str) -> None:
        """The run's description (shown on its page and in the runs table's Description column)."""
        self.set_tags(run_id, {NOTE_TAG: text})

    def log_dataset_inputs(self, run_id: str, datasets: list[tuple[str, Any, str, str]], targets: str | None = None) -> None:
        """Dataset inputs of a run, each (name, pandas DataFrame, the file it was saved to, context such as
        training / validation / testing): the UI lists them with their schema and profile."""
        import warnings

        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for name, df, source, context in datasets:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "source can be interpreted in multiple ways"
                ds = mlflow.data.from_pandas(df, source=str(source), name=name, targets=targets)
                entity = ds._to_mlflow_entity()  # schema inference warns about integer columns
            inputs.append(DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)]))
        self.client.log_inputs(run_id, datasets=inputs)

    def log_dict(self, run_id: str, data: Any, path: str) -> None:
        import json

        self.client.log_text(run_id, redact(json.dumps(data, indent=2, default=str)), path)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, local_path, artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, local_dir, artifact_path)

    def artifact_uri(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.artifact_uri

    def metric_history(self, run_id: str, key: str):
        return self.client.get_metric_history(run_id, key)

    # --- logged models and the registry ----------------------------------------------------------
    def log_model_dir(self, run_id: str, local_dir: str, name: str, params: dict[str, Any] | None = None,
                      tags: dict[str, Any] | None = None, metrics: dict[str, float] | None = None) -> str:
        """Log a ready MLflow model directory (MLmodel at its root) as a LoggedModel of `run_id` (the
        experiment's Models tab, the run's "Logged models"); `metrics` are linked to it. Returns its id."""
        from contextlib import suppress

        from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric

        model = self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=run_id,
            params={k: redact(str(v))[:MAX_PARAM_LEN] for k, v in flatten(params or {}).items() if v is not None},
            tags={k: redact(str(v))[:MAX_TAG_LEN] for k, v in (tags or {}).items() if v is not None},
        )
        try:
            self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
            self.client.log_model_artifacts(model.model_id, local_dir)
            if metrics:
                now = int(time.time() * 1000)
                self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0, model_id=model.model_id)
                                                       for k, v in metrics.items()], synchronous=True)
        except BaseException:
            with suppress(Exception):  # keep the original error
                self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return model.model_id

    def logged_model_location(self, model_id: str) -> str:
        """Where a LoggedModel's files are (file://..., mlflow-artifacts:/..., s3://...)."""
        return self.client.get_logged_model(model_id).artifact_location

    def register_version(self, name: str, source: str, run_id: str, tags: dict[str, Any] | None = None,
                         description: str | None = None, model_id: str | None = None) -> str:
        """A new version of registered model `name` (created if missing) from `source`; with `model_id`
        the LoggedModel lists the version too. Returns the version.

        Give the LoggedModel's location as `source`, not `models:/<model_id>`: MLflow 3.17 resolves such a
        source through the process-wide tracking URI, not this client's (the SQL registry store on create,
        ModelsArtifactRepository on download), so a job whose store comes from its job file could neither
        register it nor download it again (the validate stage downloads the champion's source)."""
        import json

        from mlflow.exceptions import MlflowException
        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

        try:
            self.client.create_registered_model(name, description="Fine-tuned by AutoTune")
        except MlflowException:
            pass  # already registered
        tags = {k: redact(str(v))[:MAX_TAG_LEN] for k, v in (tags or {}).items()}
        mv = self.client.create_model_version(name, source, run_id=run_id, tags=tags, description=description,
                                              model_id=model_id)
        if model_id is not None:  # what mlflow.register_model records on the LoggedModel
            listed = self.client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS)
            versions = (json.loads(listed) if listed else []) + [{"name": name, "version": mv.version}]
            self.client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})
        return str(mv.version)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version `alias` points at, or None (no such model or alias)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def version_by_alias(self, name: str, alias: str) -> ModelVersionInfo | None:
        """The version `alias` points at, with its source, tags and creation time; None without one.
        Any other registry error is raised (a store that cannot be read is not "no champion")."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return ModelVersionInfo.of(mv)

    def model_version(self, name: str, version: str) -> ModelVersionInfo | None:
        from mlflow.exceptions import MlflowException

        try:
            return ModelVersionInfo.of(self.client.get_model_version(name, str(version)))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def move_alias(self, name: str, alias: str, to: str, expected: str | None) -> str | None:
        """Compare-and-move: point `alias` at version `to` only if it still points at `expected` (None: at
        nothing). Returns None when moved, else the version it points at now (someone else moved it). MLflow
        has no atomic compare-and-set; callers serialise movers of one model (the retune lock does)."""
        current = self.alias_version(name, alias)
        if current != expected:
            return current or "none"
        self.set_alias(name, alias, to)
        return None

    def version_of_run(self, name: str, run_id: str, tags: dict[str, str]) -> str | None:
        """The version of `name` registered from run `run_id` whose tags include `tags`, if any."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        except MlflowException:
            return None
        for mv in sorted(found, key=lambda v: int(v.version)):
            if all((mv.tags or {}).get(k) == v for k, v in tags.items()):
                return str(mv.version)
        return None

    def set_version_tags(self, name: str, version: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(name, str(version), k, redact(str(v))[:MAX_TAG_LEN])

    def download_version(self, info: ModelVersionInfo, dst: str) -> str:
        """The files of a model version, downloaded under `dst` (through this store, not the process-wide one)."""
        import mlflow

        return mlflow.artifacts.download_artifacts(artifact_uri=info.source, tracking_uri=self.uri, dst_path=dst)

    def child_runs(self, parent_run_id: str, trial_id: str | None = None, max_results: int | None = None) -> list:
        """The child runs of a job's parent run (one trial's, with `trial_id`)."""
        where = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
        if trial_id is not None:
            where = f"tags.`{TRIAL_ID_TAG}` = '{trial_id}' and {where}"
        kwargs = {"max_results": max_results} if max_results else {}
        return self.client.search_runs([self.experiment_id], filter_string=where, **kwargs)

    def run_status(self, run_id: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.status
        except MlflowException:
            return None


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    source: str
    run_id: str | None
    created: float  # seconds since the epoch
    tags: dict[str, str]

    @classmethod
    def of(cls, mv) -> ModelVersionInfo:
        return cls(name=mv.name, version=str(mv.version), source=mv.source, run_id=mv.run_id,
                   created=(mv.creation_timestamp or 0) / 1000.0, tags=dict(mv.tags or {}))
