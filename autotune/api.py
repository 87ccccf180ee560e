"""Python entry points: validate(), submit(), resume(), status(). The CLI is a thin shell over these."""

from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.config.loader import ResolvedJob, load_job
from autotune.errors import ConfigError, GateFailed
from autotune.pipeline.state import JobState, StateStore, write_json_atomic, write_text_atomic
from autotune.redact import redact


def validate(job_path: str | Path) -> ResolvedJob:
    """Check a job file without running anything (no torch/ray/mlflow import)."""
    return load_job(job_path)


def tracking_uri(job: ResolvedJob) -> str:
    """Precedence: MLFLOW_TRACKING_URI, then tracking.uri in the job file, then a sqlite store in OUTPUT_DIR."""
    from autotune.redact import usable

    uri = os.environ.get("MLFLOW_TRACKING_URI") or job.config.tracking.uri or f"sqlite:///{job.output_dir / 'mlflow.db'}"
    return usable(uri, "tracking.uri", "MLFLOW_TRACKING_URI")


@dataclass(frozen=True)
class JobFolder:
    """A job's output folder as it is NOW - where it was written, or a copy, a moved folder, an unpacked
    archive: everything is resolved from `path`, never from the output_dir recorded in job.yaml."""

    path: Path
    config: Any  # JobConfig as saved in job.yaml
    state: JobState
    store: StateStore
    written_at: Path  # output_dir when the job ran

    @property
    def embedded_tracking(self) -> bool:
        """The job logged to the folder's own sqlite store (no tracking server, no other store)."""
        return self.state.tracking_uri == f"sqlite:///{self.written_at / 'mlflow.db'}"


def job_folder(output_dir: str | Path) -> JobFolder:
    """Read a job folder without needing its data file, model or engines (status and ui of a copied or
    archived folder work on another machine)."""
    import yaml
    from pydantic import ValidationError

    from autotune.config.errors import format_pydantic
    from autotune.config.job import JobConfig
    from autotune.config.loader import read_text_file

    out = Path(output_dir).resolve()
    store = StateStore(out)
    state = store.job()
    if state is None or not (out / "job.yaml").is_file():
        raise ConfigError([f"{out}: not an AutoTune job directory (no state/job.json or job.yaml)"])
    src = out / "job.yaml"
    try:
        config = JobConfig.model_validate(yaml.safe_load(read_text_file(src)))
    except ValidationError as exc:
        raise ConfigError(format_pydantic(exc, str(src))) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{src}: not valid YAML ({str(exc).splitlines()[0]})"]) from None
    written_at = Path(config.output_dir) if config.output_dir else out
    return JobFolder(out, config, state, store, written_at)


def folder_tracking(folder: JobFolder):
    """(tracking URI, FolderStore or None) of a job folder. MLFLOW_TRACKING_URI and the job's tracking.uri
    win as at submit; a job that logged to its folder's own store opens that store IN THIS FOLDER, with
    artifact locations rewritten if the folder was moved (see tracking/local_store.py)."""
    from autotune.redact import usable
    from autotune.tracking.local_store import open_folder_store

    override = os.environ.get("MLFLOW_TRACKING_URI") or folder.config.tracking.uri
    if override:
        return usable(override, "tracking.uri", "MLFLOW_TRACKING_URI"), None
    if not folder.embedded_tracking:  # submitted with MLFLOW_TRACKING_URI set: the store is elsewhere
        return usable(folder.state.tracking_uri, "tracking.uri", "MLFLOW_TRACKING_URI"), None
    fs = open_folder_store(folder.path, folder.state.experiment)
    return fs.uri, fs


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
    with _disk_errors(job, job.output_dir, f"autotune submit {job_path}"), \
            _one_writer(job, f"autotune submit {job_path}"):  # before anything in the folder is touched
        store = StateStore(job.output_dir)
        if store.job() is not None:
            if not force:
                raise ConfigError([
                    f"{job_path}: output_dir: {job.output_dir} already holds a job; continue it with "
                    f"`autotune resume {job.output_dir}`, start over with --force, or set another output_dir"
                ])
            start_over(job.output_dir)
        job.output_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        write_text_atomic(job.output_dir / "job.yaml", redact(
            "# resolved by autotune submit: defaults filled in, search space inlined, passwords masked;\n"
            "# `autotune resume` reads this\n"
            + yaml.safe_dump(job.resolved_dict(), sort_keys=False)
        ))
        return _run(job, store, address, resume=False, console=console, started_at=started_at)


# what a job writes in its folder, apart from the MLflow store (its runs stay: a new parent run joins them)
JOB_DIRS = ("state", "ray", "data", "artifact", "plots", "champion", "search", "mlflow-staging")
JOB_FILES = ("optuna.db", "trials.csv", "predictions_test.json", "job.yaml", "rungs.jsonl", "summary.json")


def start_over(out: Path) -> None:
    """`submit --force`: the earlier job's own records go - its rungs.jsonl was appended to, its summary.json
    would speak for a job that may now fail - before the new job writes its own."""
    for sub in JOB_DIRS:
        shutil.rmtree(out / sub, ignore_errors=True)
    for f in JOB_FILES:
        (out / f).unlink(missing_ok=True)


def resume(output_dir: str | Path, address: str | None = None, console=None,
           started_at: float | None = None) -> dict[str, Any]:
    """Continue an interrupted job. A budget (wall_clock_s) counts again from this call."""
    started_at = started_at or time.time()
    out = Path(output_dir).resolve()
    store = StateStore(out)
    if store.job() is None or not (out / "job.yaml").is_file():
        raise ConfigError([f"{out}: not an AutoTune job directory (no state/job.json or job.yaml)"])
    console = console or _console()
    job = _load_for_resume(out, store, console)
    _preflight(job, address)
    with _disk_errors(job, out, f"autotune resume {out}"), \
            _one_writer(job, f"autotune resume {out}", folder=out):  # the folder named, even if it was moved
        return _run(job, store, address, resume=True, console=console, started_at=started_at)


@contextmanager
def _disk_errors(job: ResolvedJob, out: Path, command: str):
    """A full disk, or a folder that turned read-only, mid-job: one line (DiskError, exit 1) with the path and
    what to do, never the tracebacks of every write that failed after it (nor MLflow's or Ray's logs of them).
    State files are written atomically, so the folder is resumable once there is space again."""
    from autotune.disk import QuietLogs, find
    from autotune.lock import JobBusy

    QuietLogs.install()
    try:
        yield
    except (ConfigError, GateFailed, JobBusy):
        raise
    except Exception as exc:
        roots = [Path(out)] + ([Path(job.config.ray.storage_path)] if job.config.ray.storage_path else [])
        found = find(exc, roots)
        if found is None:
            raise
        if StateStore(Path(out)).job() is not None and (Path(out) / "job.yaml").is_file():
            hint = f"continue with `autotune resume {out}`"
        else:
            hint = f"run `{command}` again"
        raise found.place(Path(out), hint, roots) from None


def _one_writer(job: ResolvedJob, command: str, folder: Path | None = None):
    """The job's locks (output folder; the study too when it lives in PostgreSQL): a second submit or resume
    of the same job exits with JobBusy (exit 9), naming the holder."""
    from autotune.lock import hold_job
    from autotune.search.tuner import optuna_storage_url, study_name

    return hold_job(folder or job.output_dir, command, optuna_storage_url(job), study_name(job))


def _load_for_resume(out: Path, store: StateStore, console) -> ResolvedJob:
    """The saved job. A data file deleted (or moved) after the preprocess stage succeeded does not stop a
    resume: the cleaned splits in OUTPUT_DIR/data are what every later stage reads."""
    try:
        return load_job(out / "job.yaml")
    except ConfigError as exc:
        if not exc.problems or not all(": data.path: file not found" in p for p in exc.problems):
            raise
        problems = exc.problems
    job = load_job(out / "job.yaml", data_missing_ok=True)
    pre = store.stage("preprocess")
    data_dir = out / "data"
    needed = [data_dir / f"{split}.jsonl" for split in ("train", "validation", "test")]
    needed.append(Path(pre.outputs.get("tokens_path") or data_dir / "tokens.npz"))
    missing = [str(p) for p in needed if not p.is_file()]
    if pre.status != "succeeded" or pre.inputs_hash != job.fingerprint():
        why = "the preprocess stage has not succeeded, so there are no cleaned splits to resume from"
    elif missing:
        why = f"the cleaned splits are incomplete (missing {', '.join(missing)})"
    else:
        sizes = ", ".join(f"{k} {v}" for k, v in pre.outputs.get("sizes", {}).items())
        console.print(f"data: {job.data_path} no longer exists; resuming from the cleaned splits in {data_dir} "
                      f"({sizes}), which the preprocess stage wrote")
        return job
    raise ConfigError(problems + [f"{out}: cannot resume without the data file: {why}; put the file back"])


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

    console = console or _console()
    uri = tracking_uri(job)
    experiment = job.config.tracking.experiment or job.config.name
    if resume and store.dir.parent.resolve() != job.output_dir:
        raise ConfigError([f"{store.dir.parent.resolve()}: this job folder was written at {job.output_dir}; "
                           f"`autotune resume` continues a job only in the folder it ran in (status and ui work on "
                           f"copies): move it back to {job.output_dir}"])
    if resume and uri == f"sqlite:///{job.output_dir / 'mlflow.db'}":  # its own store: locations point here
        from autotune.tracking.local_store import open_folder_store

        note = open_folder_store(job.output_dir, experiment, need_artifacts=False).note
        if note:
            console.print(note)
    if "tune" in job.config.stages and not (resume and store.stage("tune").status == "succeeded"):
        import ray  # noqa: F401 - imported here: the thread below only starts it (no two threads importing at once)

        from autotune.search.tuner import start_ray_early

        start_ray_early(job, address)  # its start-up overlaps the MLflow set-up and preprocess
    try:
        tracker, parent = _open_job_run(job, store, uri, experiment, resume, console)
    except BaseException:
        _shutdown_ray()  # not left starting (or started) behind a failed MLflow set-up
        raise
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
        failing = sys.exc_info()[0] is not None
        try:
            tracker.end(parent, status)
        except Exception:  # noqa: BLE001 - ending the run failed too (a full disk?): the first error is the news
            if not failing:
                raise
        finally:
            _shutdown_ray()
    deploy = ctx.results.get("deploy")
    if deploy is not None and ctx.results.get("tune") is not None:  # the artifact holds the winner now
        from autotune.pipeline.tune import prune_checkpoints

        freed = prune_checkpoints(ctx.results["tune"].experiment_path, set())
        if freed:
            console.print(f"[dim]trial checkpoints removed (the artifact holds the model): {freed / 1e6:.0f} MB[/]")
    summary = _summary(ctx, time.time() - start, uri)
    write_json_atomic(job.output_dir / "summary.json", summary)
    if ctx.after_search_from is not None and ctx.history_key and "deploy" in job.config.stages:
        from autotune.search.budget import record_after_search

        record_after_search(ctx.history_key, time.time() - ctx.after_search_from)
    _print_summary(console, summary)
    return summary


def _open_job_run(job: ResolvedJob, store: StateStore, uri: str, experiment: str, resume: bool, console):
    """The job's MLflow parent run: reopened on resume, else started with the job's params and files."""
    from autotune.tracking.mlflow_tracker import MlflowTracker, artifact_location, flatten

    tracker = MlflowTracker(uri, experiment, artifact_location(uri))
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
    return tracker, parent


def _shutdown_ray() -> None:
    import sys

    if "ray" in sys.modules:
        import ray

        from autotune.search.tuner import join_early_ray, release_early_ray

        join_early_ray(raise_error=False)  # a start still under way (a stage failed before the search) ends first
        if ray.is_initialized():
            ray.shutdown()
        release_early_ray()


def _summary(ctx, seconds: float, uri: str) -> dict[str, Any]:
    from autotune.search.best import pick_rule

    t, v, d = ctx.results.get("tune"), ctx.results.get("validate"), ctx.results.get("deploy")
    metric = ctx.job.config.objective.metric
    s: dict[str, Any] = {"job": ctx.job.config.name, "seconds": round(seconds, 1), "output_dir": str(ctx.out),
                         "wall_clock_seconds": round(time.time() - ctx.started_at, 1),
                         "wall_clock_budget_s": ctx.job.config.budget.wall_clock_s,
                         "tracking_uri": redact(uri), "mlflow_run_id": ctx.parent_run_id}
    if ctx.budget_plan is not None:  # where a budgeted job's seconds went (the next plan learns from after_search_s)
        s["budget_plan"] = {**ctx.budget_plan, "after_search_s": round(time.time() - ctx.search_ended_at, 1)}
    if t is not None:
        s.update({
            "best_trial": f"trial {t.best_number} (Ray {t.best_trial_id})", "method": t.best_method,
            "knobs": t.best_knobs, "trainable_params": t.best_metrics.get("trainable_params"),
            "objective": metric, "objective_value": t.best_metrics.get(metric), "trials": t.counts,
            "best_rung": t.best_metrics.get("rung"), "best_examples": t.best_metrics.get("examples"),
            "best_rule": t.best_rule or pick_rule(ctx.job.config.objective),  # a tune record from before best_rule
        })
        objective = ctx.job.config.objective
        if objective.multi:  # the front, best metric first: what the pick rule chose from
            rows = {r.number: r for r in t.trials}
            s["objectives"] = dict(zip(objective.metrics, objective.modes))
            s["pareto_front"] = [{"trial": n, "method": rows[n].method,
                                  **{m: rows[n].best.get(m) for m in objective.metrics}} for n in t.pareto]
    if v is not None:
        s.update({"test_accuracy": v.test_accuracy, "test_accuracy_ci": v.test_accuracy_ci,
                  "test_macro_f1": v.test_macro_f1, "majority_baseline": v.majority_accuracy,
                  "head_baseline": v.head_accuracy, "head_baseline_skipped": not ctx.job.config.diagnostics})
    if d is not None:
        s.update({"artifact": d.artifact_dir,
                  "registered": f"{d.registered_model} v{d.version} ({', '.join(d.aliases)})" if d.version else None,
                  "int8_test_accuracy": d.int8_test_accuracy})
    return s


def _print_summary(console, s: dict[str, Any]) -> None:
    from rich.table import Table

    from autotune.search.best import shown

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
        if s.get("pareto_front"):
            metric, *trade_offs = s["objectives"]
            rows.append(("Pareto front", "\n".join(
                f"trial {p['trial']} {p['method']}: {metric} {p[metric]:.4f}, "
                + ", ".join(f"{m} {shown(m, p[m])}" for m in trade_offs)
                for p in s["pareto_front"])))
    if "test_accuracy" in s:
        lo, hi = s["test_accuracy_ci"]
        head = ("skipped (validate.diagnostics)" if s.get("head_baseline_skipped") else "n/a"
                if s["head_baseline"] is None else f"{s['head_baseline']:.4f}")
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
    """Stages, trial counts and best so far, read from state files and the MLflow store (no Ray). The
    folder may have been copied, moved or unpacked: its own store is read (and refused if missing)."""
    folder = job_folder(output_dir)
    out, state = folder.path, folder.state
    from autotune.pipeline.state import STAGES

    stages = {name: folder.store.stage(name) for name in STAGES}
    info: dict[str, Any] = {"job": state.name, "output_dir": str(out), "parent_run_id": state.parent_run_id,
                            "stages": {k: v.status for k, v in stages.items()}, "trials": {}, "best": None}
    uri, local = folder_tracking(folder)  # a missing embedded store is an error, not an empty answer
    info["tracking_uri"] = redact(uri)
    if local is not None and local.note:
        info["note"] = local.note
    try:
        import json
        from types import SimpleNamespace

        from autotune.search.best import BEST_TAG, pick_record
        from autotune.tracking.mlflow_tracker import STATUS_TAG

        metric = folder.config.objective.metric
        counts: dict[str, int] = {}
        trials = []
        for name, tags, params in _trial_runs(uri, state.experiment, state.parent_run_id):
            st = tags.get(STATUS_TAG, "running")
            counts[st] = counts.get(st, 0) + 1
            trials.append(SimpleNamespace(
                number=int(params.get("trial_number", -1)), status=st, name=name,
                method=params.get("method"), best=json.loads(tags.get(BEST_TAG, "{}"))))
        info["trials"] = counts
        b = pick_record(trials, folder.config.objective)  # a multi-objective job: the Pareto point deploy takes
        info["best"] = {"value": b.best[metric], "trial": b.name, "method": b.method, "metric": metric} if b else None
    except Exception as exc:  # noqa: BLE001 - status must work even when the store is unreachable
        info["tracking_error"] = redact(str(exc))[:300]
    return info


def _trial_runs(uri: str, experiment: str, parent_run_id: str) -> list[tuple[str, dict, dict]]:
    """(run name, tags, params) of a job's trial runs. A SQLite store is read directly, read-only, without
    importing mlflow (seconds saved: see tracking/sqlite_read.py); any other store, or a SQLite file of a
    shape that reader does not know, through MLflow's client."""
    from autotune.tracking.sqlite_read import StoreShapeError, child_runs, sqlite_path

    db = sqlite_path(uri)
    if db is not None:
        try:
            return [(r.run_name, r.tags, r.params) for r in child_runs(db, experiment, parent_run_id)]
        except StoreShapeError:
            pass
    from autotune.tracking.mlflow_tracker import MlflowTracker

    runs = MlflowTracker(uri, experiment, create=False).child_runs(parent_run_id)
    return [(r.info.run_name, r.data.tags, r.data.params) for r in runs]


@dataclass(frozen=True)
class UiTarget:
    tracking_uri: str
    artifact_root: str | None  # file://OUTPUT_DIR/mlartifacts for an embedded store
    experiment_id: str | None  # the job's experiment (None: no job has run yet)
    note: str | None = None  # the folder was moved: its store was rewritten to point at it


def runs_view_url(base: str, experiment_id: str | None) -> str:
    """MLflow 3 opens an experiment in its GenAI (traces) view; this is the classic runs table."""
    base = base.rstrip("/")
    if experiment_id is None:
        return base + "/"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_target(target: str | Path) -> UiTarget:
    """What `autotune ui` opens: a job folder (as it is now, moved or not) or a job YAML's output folder."""
    target = Path(target)
    if target.is_dir():
        folder = job_folder(target)
    else:
        job = load_job(target)
        if StateStore(job.output_dir).job() is None:  # nothing ran yet: the store as the job file names it
            return UiTarget(tracking_uri(job), (job.output_dir / "mlartifacts").as_uri(), None)
        folder = job_folder(job.output_dir)
    uri, local = folder_tracking(folder)
    from autotune.tracking.mlflow_tracker import MlflowTracker

    experiment_id = MlflowTracker(uri, folder.state.experiment, create=False).experiment_id
    return UiTarget(uri, local.artifact_root if local else None, experiment_id, local.note if local else None)


def serve_ui(ui: UiTarget, host: str, port: int, on_ready, timeout_s: float = 300.0) -> int:
    """Run `mlflow server` on the job's store for one local user (one worker, no job consumers), call
    `on_ready(url)` once /health answers, and wait until it exits, Ctrl-C, SIGTERM or SIGHUP (each stops the
    server, which runs in its own session, before returning). Returns its exit status (0 when stopped)."""
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import urllib.request

    from autotune.errors import TrackingEngineError

    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ui.tracking_uri.startswith(("http://", "https://")):  # a tracking server already serves its own UI
        on_ready(runs_view_url(redact(ui.tracking_uri), ui.experiment_id), None)
        return 0
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise ConfigError([f"--port: {host}:{port} is already in use (choose another with --port)"]) from None
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", ui.tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    if ui.artifact_root:
        cmd += ["--default-artifact-root", ui.artifact_root]
    # MLflow 3.17 starts job consumers (huey) by default (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true): not
    # needed to browse one job's runs, and with 4 workers that is 16 processes and ~2.4 GB.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = tempfile.NamedTemporaryFile("w+", prefix="autotune-ui-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop() -> int:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def terminated(signum, frame):  # `kill`, systemd, a closed terminal: stop the server as Ctrl-C does
        raise KeyboardInterrupt

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # under nohup a closed terminal must not stop the UI
            previous[sig] = signal.signal(sig, terminated)
        except ValueError:  # not the main thread: the caller owns signal handling
            pass
    health = f"http://{'[' + local + ']' if ':' in local else local}:{port}"
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                tail = "\n".join(log.read().strip().splitlines()[-15:])
                raise TrackingEngineError(redact(f"mlflow server exited ({proc.returncode}) before it answered:\n{tail}"))
            try:
                with urllib.request.urlopen(health + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TrackingEngineError(f"mlflow server did not answer {health}/health within {timeout_s:.0f} s "
                                          f"(log: {log.name})")
            time.sleep(0.5)
        on_ready(runs_view_url(health, ui.experiment_id), log.name)
        proc.wait()
        return proc.returncode
    except KeyboardInterrupt:
        stop()
        return 0
    finally:
        stop()
        log.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
