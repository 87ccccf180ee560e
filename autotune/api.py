"""Python entry points: validate(), submit(), resume(), status(). The CLI is a thin shell over these."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from autotune.config.loader import ResolvedJob, load_job
from autotune.errors import AutotuneError, ConfigError, GateFailed
from autotune.pipeline.state import JobState, StateStore, write_json_atomic
from autotune.redact import redact


def validate(job_path: str | Path) -> ResolvedJob:
    """Check a job file without running anything (no torch/ray/mlflow import)."""
    return load_job(job_path)


def tracking_uri(job: ResolvedJob) -> str:
    """Precedence: MLFLOW_TRACKING_URI, then tracking.uri in the job file, then a sqlite store in OUTPUT_DIR."""
    from autotune.redact import usable

    uri = os.environ.get("MLFLOW_TRACKING_URI") or job.config.tracking.uri or f"sqlite:///{job.output_dir / 'mlflow.db'}"
    return usable(uri, "tracking.uri", "MLFLOW_TRACKING_URI")


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)  # one line per event, also in CI logs


def doctor(job_path: str | Path, address: str | None = None):
    """Check every configured engine; returns the list of checks (nothing is started or written)."""
    from autotune.doctor import check_all

    return check_all(load_job(job_path), address)


def _preflight(job: ResolvedJob, address: str | None) -> None:
    from autotune.doctor import check_all, raise_first_failure

    raise_first_failure(check_all(job, address))


def submit(job_path: str | Path, address: str | None = None, force: bool = False, console=None,
           started_at: float | None = None) -> dict[str, Any]:
    """Run the job. `started_at`: when the job's clock started (budget.wall_clock_s counts from it); the CLI
    passes its process start, a library call defaults to now."""
    started_at = started_at or time.time()
    job = load_job(job_path)
    _preflight(job, address)
    store = StateStore(job.output_dir)
    if store.job() is not None:
        if not force:
            raise ConfigError([
                f"{job_path}: output_dir: {job.output_dir} already holds a job; continue it with "
                f"`autotune resume {job.output_dir}`, start over with --force, or set another output_dir"
            ])
        for sub in ("state", "ray", "data", "artifact", "plots", "champion"):
            shutil.rmtree(job.output_dir / sub, ignore_errors=True)
        for f in ("optuna.db", "trials.csv", "predictions_test.json", "job.yaml"):
            (job.output_dir / f).unlink(missing_ok=True)
    job.output_dir.mkdir(parents=True, exist_ok=True)
    import yaml

    (job.output_dir / "job.yaml").write_text(redact(
        "# resolved by autotune submit: defaults filled in, search space inlined, passwords masked;\n"
        "# `autotune resume` reads this\n"
        + yaml.safe_dump(job.resolved_dict(), sort_keys=False)
    ))
    return _run(job, store, address, resume=False, console=console, started_at=started_at)


def resume(output_dir: str | Path, address: str | None = None, console=None,
           started_at: float | None = None) -> dict[str, Any]:
    """Continue an interrupted job. A budget (wall_clock_s) counts again from this call."""
    started_at = started_at or time.time()
    out = Path(output_dir).resolve()
    store = StateStore(out)
    if store.job() is None or not (out / "job.yaml").is_file():
        raise ConfigError([f"{out}: not an AutoTune job directory (no state/job.json or job.yaml)"])
    job = load_job(out / "job.yaml")
    _preflight(job, address)
    return _run(job, store, address, resume=True, console=console, started_at=started_at)


def _run(job: ResolvedJob, store: StateStore, address: str | None, resume: bool, console,
         started_at: float) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    try:
        return _run_tracked(job, store, address, resume, console, started_at)
    except MlflowException as exc:  # outside a stage: opening runs, logging the job; inside one: StageError
        from autotune.errors import TrackingEngineError

        first = str(exc).strip().splitlines()[0][:400]
        raise TrackingEngineError(redact(f"MLflow at {tracking_uri(job)} failed: {first}")) from None


def _run_tracked(job: ResolvedJob, store: StateStore, address: str | None, resume: bool, console,
                 started_at: float) -> dict[str, Any]:
    from autotune.pipeline.context import JobContext
    from autotune.pipeline.runner import run_stages
    from autotune.tracking.mlflow_tracker import MlflowTracker, flatten

    console = console or _console()
    uri = tracking_uri(job)
    experiment = job.config.tracking.experiment or job.config.name
    artifact_location = None
    if uri.startswith("sqlite:"):
        artifact_location = (job.output_dir / "mlartifacts").as_uri()
    tracker = MlflowTracker(uri, experiment, artifact_location)
    state = store.job()
    if resume and state and state.parent_run_id:
        parent = state.parent_run_id
        tracker.reopen(parent)
        console.print(f"resuming job [bold]{job.config.name}[/] in {job.output_dir} (MLflow run {parent})")
    else:
        parent = tracker.start_parent(job.config.name, {"autotune.job": job.config.name,
                                                        "autotune.output_dir": str(job.output_dir)})
        state = JobState(name=job.config.name, job_fingerprint=job.fingerprint(), parent_run_id=parent,
                         tracking_uri=redact(uri), experiment=experiment)
        store.save_job(state)
        tracker.log_params(parent, {k: v for k, v in flatten(job.resolved_dict()).items() if not k.startswith("search.space")})
        tracker.log_artifact(parent, str(job.output_dir / "job.yaml"), "job")
        tracker.log_dict(parent, job.space_raw.model_dump(mode="json", exclude_none=True), "job/search_space.json")
        console.print(f"job [bold]{job.config.name}[/] -> {job.output_dir} (MLflow run {parent})")
    ctx = JobContext(job=job, tracker=tracker, parent_run_id=parent, console=console, store=store,
                     address=address, resume=resume, started_at=started_at)
    start = time.time()
    status = "FAILED"
    try:
        run_stages(ctx)
        status = "FINISHED"
    except GateFailed:
        status = "FINISHED"
        raise
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(parent, status)
        _shutdown_ray()
    summary = _summary(ctx, time.time() - start, uri)
    write_json_atomic(job.output_dir / "summary.json", summary)
    _print_summary(console, summary)
    return summary


def _shutdown_ray() -> None:
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def _summary(ctx, seconds: float, uri: str) -> dict[str, Any]:
    t, v, d = ctx.results.get("tune"), ctx.results.get("validate"), ctx.results.get("deploy")
    metric = ctx.job.config.objective.metric
    s: dict[str, Any] = {"job": ctx.job.config.name, "seconds": round(seconds, 1), "output_dir": str(ctx.out),
                         "wall_clock_seconds": round(time.time() - ctx.started_at, 1),
                         "wall_clock_budget_s": ctx.job.config.budget.wall_clock_s,
                         "tracking_uri": redact(uri), "mlflow_run_id": ctx.parent_run_id}
    if t is not None:
        s.update({
            "best_trial": f"trial {t.best_number} (Ray {t.best_trial_id})", "method": t.best_method,
            "knobs": t.best_knobs, "trainable_params": t.best_metrics.get("trainable_params"),
            "objective": metric, "objective_value": t.best_metrics.get(metric), "trials": t.counts,
            "best_rung": t.best_metrics.get("rung"), "best_examples": t.best_metrics.get("examples"),
            "best_rule": "best validation objective at any evaluated rung of any trial that did not fail "
                         "(finished, pruned or stopped by the budget); ties go to fewer trainable parameters",
        })
    if v is not None:
        s.update({"test_accuracy": v.test_accuracy, "test_accuracy_ci": v.test_accuracy_ci,
                  "test_macro_f1": v.test_macro_f1, "majority_baseline": v.majority_accuracy,
                  "head_baseline": v.head_accuracy})
    if d is not None:
        s.update({"artifact": d.artifact_dir,
                  "registered": f"{d.registered_model} v{d.version} ({', '.join(d.aliases)})" if d.version else None,
                  "int8_test_accuracy": d.int8_test_accuracy})
    return s


def _print_summary(console, s: dict[str, Any]) -> None:
    from rich.table import Table

    budget = f" (budget {s['wall_clock_budget_s']:.0f} s)" if s.get("wall_clock_budget_s") else ""
    table = Table(title=f"AutoTune job '{s['job']}' finished in {s['wall_clock_seconds']:.0f} s{budget}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = []
    if "method" in s:
        knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["knobs"].items())
        rows += [
            ("best trial", f"{s['best_trial']}: {s['method']} ({knobs}), at rung {int(s['best_rung'] or 0)} "
                           f"({int(s['best_examples'] or 0):,} training examples seen)"),
            ("trainable params", f"{int(s['trainable_params'] or 0):,}"),
            (s["objective"].replace("_", " "), f"{s['objective_value']:.4f}"),
            ("trials", ", ".join(f"{k} {v}" for k, v in s["trials"].items())),
        ]
    if "test_accuracy" in s:
        lo, hi = s["test_accuracy_ci"]
        head = "n/a" if s["head_baseline"] is None else f"{s['head_baseline']:.4f}"
        rows += [
            ("test accuracy", f"{s['test_accuracy']:.4f} (95% CI {lo:.4f}-{hi:.4f}), macro-F1 {s['test_macro_f1']:.4f}"),
            ("baselines", f"majority class {s['majority_baseline']:.4f}, head-only {head}"),
        ]
    if "artifact" in s:
        int8 = "" if s.get("int8_test_accuracy") is None else f"  (int8 copy: test accuracy {s['int8_test_accuracy']:.4f})"
        rows += [("artifact", f"{s['artifact']}{int8}"), ("registered", str(s["registered"]))]
    rows += [("MLflow", f"{s['tracking_uri']}  (run {s['mlflow_run_id']})"), ("browse", f"autotune ui {s['output_dir']}")]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def status(output_dir: str | Path) -> dict[str, Any]:
    """Stages, trial counts and best so far, read from state files and the MLflow store (no Ray)."""
    out = Path(output_dir).resolve()
    store = StateStore(out)
    state = store.job()
    if state is None:
        raise ConfigError([f"{out}: not an AutoTune job directory (no state/job.json)"])
    from autotune.pipeline.state import STAGES

    stages = {name: store.stage(name) for name in STAGES}
    info: dict[str, Any] = {"job": state.name, "output_dir": str(out), "parent_run_id": state.parent_run_id,
                            "stages": {k: v.status for k, v in stages.items()}, "trials": {}, "best": None}
    job = load_job(out / "job.yaml")
    try:
        import json
        from types import SimpleNamespace

        from autotune.search.best import BEST_TAG, best_record
        from autotune.tracking.mlflow_tracker import STATUS_TAG, MlflowTracker

        tracker = MlflowTracker(tracking_uri(job), state.experiment)
        runs = tracker.client.search_runs([tracker.experiment_id],
                                          filter_string=f"tags.`mlflow.parentRunId` = '{state.parent_run_id}'")
        metric, mode = job.config.objective.metric, job.config.objective.mode
        counts: dict[str, int] = {}
        trials = []
        for r in runs:
            st = r.data.tags.get(STATUS_TAG, "running")
            counts[st] = counts.get(st, 0) + 1
            trials.append(SimpleNamespace(
                number=int(r.data.params.get("trial_number", -1)), status=st, name=r.info.run_name,
                method=r.data.params.get("method"), best=json.loads(r.data.tags.get(BEST_TAG, "{}"))))
        info["trials"] = counts
        b = best_record(trials, metric, mode)
        best = (b.best[metric], b.name, b.method) if b else None
        info["best"] = {"value": best[0], "trial": best[1], "method": best[2], "metric": metric} if best else None
    except Exception as exc:  # noqa: BLE001 - status must work even when the store is unreachable
        info["tracking_error"] = redact(str(exc))[:300]
    return info
