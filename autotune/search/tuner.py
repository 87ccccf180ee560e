"""Build and run the search: Ray Tune `Tuner` + Optuna's sampler through `OptunaSearch` (define-by-run
space, seeded sampler, persistent storage), method-stratified ASHA, resources per trial."""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from autotune.config.loader import ResolvedJob
from autotune.errors import StageError, TooManyFailures
from autotune.search.callbacks_keys import JOB_RUN_ATTR
from autotune.search.best import study_attrs


@dataclass
class SearchOutcome:
    records: list  # TrialRecord
    best: Any  # TrialRecord | None
    best_checkpoint: str | None
    checkpoints: dict[str, str]  # trial_id -> checkpoint dir
    study_name: str
    storage_url: str
    experiment_path: str
    ray_init_seconds: float


def optuna_storage_url(job: ResolvedJob) -> str:
    """Precedence: AUTOTUNE_OPTUNA_STORAGE, then storage.optuna_url in the job file, then OUTPUT_DIR/optuna.db."""
    from autotune.redact import usable

    url = os.environ.get("AUTOTUNE_OPTUNA_STORAGE") or job.config.storage.optuna_url
    return usable(url or f"sqlite:///{job.output_dir / 'optuna.db'}", "storage.optuna_url", "AUTOTUNE_OPTUNA_STORAGE")


def study_name(job: ResolvedJob) -> str:
    """The Optuna study of the job: search.study_name, else the job's name."""
    return job.config.search.study_name or job.config.name


def make_sampler(job: ResolvedJob):
    import optuna

    cfg, seed = job.config.sampler, job.config.seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if cfg.kind == "tpe":
            # group=True models each method's knobs separately (a conditional space); constant_liar keeps
            # concurrent trials from being handed the same point.
            from autotune.search.sampler import OneReadTPESampler

            return OneReadTPESampler(
                seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=cfg.n_startup_trials
            )
        if cfg.kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if cfg.kind == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
        if cfg.kind == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
        return optuna.samplers.QMCSampler(seed=seed)


def startup_points(job: ResolvedJob) -> list[dict[str, Any]]:
    """The first trials, as flat Optuna params: the user's initial points, then the space's portfolio
    (search.portfolio) in the order the space gives it, then one trial for each method not covered yet,
    cheapest method first - so a small budget sees every method once before TPE takes over."""
    from autotune.methods import REGISTRY

    space = job.space
    user = [(p.method, dict(p.knobs)) for p in job.config.search.initial_points]
    portfolio = list(space.portfolio) if job.config.search.portfolio else []
    covered = {m for m, _ in user + portfolio}
    spread = [(m, {}) for m in space.methods if m not in covered]
    ordered = user + portfolio + sorted(spread, key=lambda mk: REGISTRY[mk[0]].cost_rank)
    return [space.encode_point(m, k) for m, k in ordered]


def make_searcher(job: ResolvedJob, storage_url: str, study_name: str, job_run: str | None = None):
    import optuna

    from autotune.search.searcher import AutotuneOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the storage (and its URL, password included) stays in this driver: the searcher drops it from
    # everything Ray saves (tuner.pkl, searcher-state-*.pkl) and `autotune resume` attaches it again
    storage = optuna.storages.RDBStorage(storage_url)
    points = startup_points(job)
    objective = job.config.objective
    return AutotuneOptunaSearch(
        space=job.space.define_by_run,
        # a multi-objective job: Optuna's study has one direction per objective (its TPE is then MOTPE); ASHA
        # still prunes on the first, within each method
        metric=objective.metrics if objective.multi else objective.metric,
        mode=objective.modes if objective.multi else objective.mode,
        sampler=make_sampler(job),
        study_name=study_name,
        storage=storage,
        points_to_evaluate=points or None,
        job_run=job_run,
    )


def fidelity(job: ResolvedJob, n_train: int) -> tuple[int, int]:
    """(grace, max_t) for ASHA in training examples seen: rungs sit at the same numbers of examples in
    every trial (see training.loop.rung_steps), whatever its epochs and batch size knobs."""
    from autotune.training.loop import examples_after, rung_steps

    cfg = job.config
    max_epochs = job.space.max_value("epochs", cfg.training.epochs)
    longest = cfg.training.model_copy(update={"epochs": max_epochs})
    total, rungs = rung_steps(n_train, longest)
    max_t = examples_after(total, n_train, longest.batch_size)
    grace_rung = min(cfg.scheduler.grace_period, len(rungs))
    if cfg.training.evals_per_epoch is not None:
        grace = math.ceil(grace_rung * n_train / cfg.training.evals_per_epoch)
    else:
        grace = math.ceil(cfg.training.first_rung * n_train * cfg.training.rung_growth ** (grace_rung - 1))
    return max(1, min(grace, max_t)), max(1, max_t)


def make_scheduler(job: ResolvedJob, n_train: int, n_val: int):
    cfg = job.config.scheduler
    if cfg.kind == "fifo":
        from ray.tune.schedulers import FIFOScheduler

        return FIFOScheduler()
    grace, max_t = fidelity(job, n_train)
    kwargs = dict(time_attr="examples", max_t=max_t, grace_period=grace, reduction_factor=cfg.reduction_factor,
                  brackets=cfg.brackets)
    if cfg.noise_margin > 0:  # the job loader allows one only for val_accuracy / val_macro_f1, maximised
        from autotune.search.scheduler import SamplingMargin

        kwargs["margin"] = SamplingMargin(n=n_val, z=cfg.noise_margin)
    if cfg.per_method:
        from autotune.search.scheduler import method_stratified_asha

        return method_stratified_asha(**kwargs)
    from autotune.search.scheduler import recording_asha

    return recording_asha(**kwargs)


def ray_address(job: ResolvedJob, address: str | None) -> str | None:
    """Precedence: --address, then RAY_ADDRESS, then ray.address in the job file; none = local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or job.config.ray.address


_EARLY: dict = {}  # Ray started in the background (start_ray_early): its events, and what it raised


def start_ray_early(job: ResolvedJob, address: str | None) -> None:
    """Start Ray in a background thread while the driver does its own set-up (MLflow runs, preprocess): Ray's
    start-up overlaps them instead of coming after them (0.5-1 s saved on 2 cores, where they share the CPU).
    `init_ray` waits for it. The thread lives until `release_early_ray`: Ray starts its processes with
    PR_SET_PDEATHSIG, which fires when the *thread* that started them ends - the GCS and raylet would die with it."""
    import threading

    if _EARLY:
        return
    ready, release = threading.Event(), threading.Event()

    def start():
        try:
            _init_ray(job, address)
        except BaseException as exc:  # noqa: BLE001 - raised again by the thread that needs Ray
            _EARLY["error"] = exc
        finally:
            ready.set()
        release.wait()

    _EARLY.update(ready=ready, release=release, error=None)
    threading.Thread(target=start, name="autotune-ray-start", daemon=True).start()


def join_early_ray(raise_error: bool = True) -> None:
    """Wait for a background start of Ray; raise what it raised. In the main thread, SIGTERM then ends the
    process with SystemExit, as `ray.init` sets it up when called there (it cannot from a thread)."""
    import signal
    import threading

    ready = _EARLY.get("ready")
    if ready is None or _EARLY.get("joined"):
        return
    ready.wait()
    _EARLY["joined"] = True
    error = _EARLY.get("error")
    if error is None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    if error is not None and raise_error:
        raise error


def release_early_ray() -> None:
    """After ray.shutdown: the thread that started Ray ends (a later job starts its own)."""
    release = _EARLY.get("release")
    _EARLY.clear()
    if release is not None:
        release.set()


def init_ray(job: ResolvedJob, address: str | None) -> None:
    join_early_ray()
    _init_ray(job, address)


def _init_ray(job: ResolvedJob, address: str | None) -> None:
    import logging
    import threading

    import ray

    # Tune logs each failed trial with Ray's full traceback; our callback reports the cause in one line
    # (console, MLflow tag, trials.csv) and the full trace stays in the trial's error.txt.
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return
    address = ray_address(job, address)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TBX loggers per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress lines replace Tune's tables
    # save the experiment state (trials, searcher, scheduler) often: it is what `autotune resume` restores
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    if threading.current_thread() is not threading.main_thread():  # its "SIGTERM handler is not set": see join_early_ray
        logging.getLogger("ray._private.worker").setLevel(logging.ERROR)
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    else:
        with _loopback_only():
            ray.init(
                address="local",  # always a fresh local instance, never a cluster some `ray start` left recorded
                include_dashboard=job.config.ray.include_dashboard,
                dashboard_host="127.0.0.1",
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                logging_level=logging.ERROR,
            )


@contextmanager
def _loopback_only():
    """Local Ray listens on 127.0.0.1 only. Ray 2.60 binds the GCS, raylet (node manager, object manager),
    core-worker (driver and workers) and runtime-env-agent servers to the node IP, but ray.init rewrites a
    loopback `_node_ip_address` to the machine's outward address (services.resolve_ip_for_localhost) - and
    with a non-loopback node IP the gRPC servers bind every interface. The rewrite is skipped when
    `ray_constants.ENABLE_RAY_CLUSTER` is false (what RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 sets, read once at
    import): set it for ray.init only, so a later connection to a real cluster is unaffected."""
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during the search: Tune saved its state; `autotune resume` continues the search."""


def run_search(job: ResolvedJob, labels: list[str], tokenized: dict, tracker, parent_run_id: str | None,
               console=None, address: str | None = None, resume: bool = False, clock=None,
               layer_ranking: list[int] | None = None) -> SearchOutcome:
    import signal
    import time

    from ray import tune

    from autotune.search.budget import SearchClock
    from autotune.search.callbacks import FailureGuard, TrialBook
    from autotune.search.trainable import TrialSpec, run_trial

    cfg = job.config
    clock = clock or SearchClock()
    t0 = time.perf_counter()
    init_ray(job, address)
    ray_init_seconds = time.perf_counter() - t0
    n_train = len(tokenized["train"]["labels"])
    storage_url = optuna_storage_url(job)
    study = study_name(job)
    book = TrialBook(job.space, tracker, parent_run_id, console, cfg.budget.num_trials or 0,
                     cfg.objective.metric, cfg.objective.mode, clock=clock, objective=cfg.objective)
    book.rung_log = job.output_dir / "rungs.jsonl"
    guard = FailureGuard(book, cfg.budget.max_consecutive_failures, clock=clock)
    spec = TrialSpec(cfg.model, cfg.training, job.space, labels, cfg.seed,
                     cfg.budget.resources_per_trial.cpu, cfg.budget.resources_per_trial.gpu,
                     layer_ranking=layer_ranking)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec, data=tokenized),
        {"cpu": cfg.budget.resources_per_trial.cpu, "gpu": cfg.budget.resources_per_trial.gpu,
         **cfg.budget.resources_per_trial.custom},
    )
    storage_path = cfg.ray.storage_path or str(job.output_dir / "ray")
    retries = cfg.budget.max_retries
    if retries is None:
        retries = 1 if ray_address(job, address) else 0
    exp_path = os.path.join(storage_path, "tune")
    # per trial: the checkpoint of its best rung (every rung is a candidate) and its latest (to resume from)
    checkpointing = tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=cfg.objective.metric,
                                          checkpoint_score_order=cfg.objective.mode)
    run_config = tune.RunConfig(
        name="tune",
        storage_path=storage_path,
        verbose=0,
        callbacks=[book],
        stop=guard,
        checkpoint_config=checkpointing,
        failure_config=tune.FailureConfig(max_failures=retries),
    )
    orphans = []
    if resume:
        from autotune.disk import repair_tune_state

        repair_tune_state(exp_path)  # a disk that filled up while Ray wrote its state: Ray's intact copy, or stop
    if resume and tune.Tuner.can_restore(exp_path):
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
        # callbacks and stoppers are driver-local (MLflow client, console): attach this driver's own
        run_cfg = tuner._local_tuner.get_run_config()
        run_cfg.callbacks = [book]
        run_cfg.stop = guard
        searcher = tuner._local_tuner._tune_config.search_alg
        searcher.attach_storage(storage_url)  # tuner.pkl holds the searcher without its storage
        _seed_book_from_tracker(book, tracker, parent_run_id)
        orphans = _orphaned_optuna_trials(storage_url, study, exp_path, parent_run_id)
        searcher.driver["orphans"] = list(orphans)  # adopted by the next suggestions: one trial, one record
        book.orphan_runs = _orphan_runs(tracker, parent_run_id, orphans)
    else:
        searcher = make_searcher(job, storage_url, study, parent_run_id)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=make_scheduler(job, n_train, len(tokenized["validation"]["labels"])),
                metric=cfg.objective.metric,
                mode=cfg.objective.mode,
                num_samples=cfg.budget.trials,
                max_concurrent_trials=cfg.budget.max_concurrent_trials,
                reuse_actors=True,
            ),
            run_config=run_config,
        )
    searcher.driver["can_start"] = clock.can_start_trial
    searcher.driver["deadline"] = clock.deadline
    searcher.driver["trial_attrs"] = book.optuna_attrs  # each Optuna trial carries its best rung
    searcher.driver["disk_full"] = lambda: _disk_full(exp_path)  # a trial failed by a full disk is not told FAIL
    book.scheduler = tuner._local_tuner._tune_config.scheduler  # its cut-offs say why a pruned trial stopped
    searcher.describe_study(study_attrs(cfg.objective.metric, tracker, parent_run_id, cfg.objective))

    # Ray Tune catches the first Ctrl-C, saves the experiment state and returns from fit() as if the search
    # were over. Ray restores the handler it found once it fired: ours, so we can tell an interrupted search
    # from a finished one (and a second Ctrl-C raises at once).
    def _interrupted(signum, frame):
        raise SearchInterrupted()

    previous = signal.getsignal(signal.SIGINT)
    in_main = _in_main_thread()
    if in_main:
        signal.signal(signal.SIGINT, _interrupted)
    try:
        results = tuner.fit()
        interrupted = in_main and signal.getsignal(signal.SIGINT) is _interrupted
    finally:
        book.stop_live()
        if in_main:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        book.mark_interrupted()  # in flight: ended KILLED for now, reopened by `autotune resume`
        raise SearchInterrupted()

    del results  # Ray registers a checkpoint asynchronously: a trial stopped right after reporting may miss one
    checkpoints: dict[str, str] = {}  # trial_id -> checkpoint of its best rung, read from the trial folders
    for rec in book.records.values():
        kept = _checkpoints_on_disk(exp_path, rec.trial_id, cfg.objective.metric)
        seen = max(int(rec.metrics.get("rung", 0)), rec.last_step)
        for _, metrics in sorted(kept, key=lambda pm: pm[1].get("rung", 0)):
            if metrics.get("rung", 0) > seen:  # reported as Tune stopped the trial: log it like any other rung
                book.late_rung(rec, metrics)
        found = _pick_best(kept, cfg.objective.metric, cfg.objective.mode)
        if found is not None:
            checkpoints[rec.trial_id], metrics = found
            if rec.status != "failed":
                rec.best = metrics  # the same score; on a tie Tune may have kept a later rung than the first
    _fail_unadopted(storage_url, study, searcher.driver.get("orphans", []))
    reason = "budget" if guard.deadline_hit else "search stopped"
    for rec in book.close_unfinished(reason):
        _tell_stopped(searcher, rec)
    searcher.close_unstarted(set(book.records), reason)
    records = sorted(book.records.values(), key=lambda r: r.number)
    if guard.too_many_failures():
        last = [r for r in records if r.status == "failed"][-cfg.budget.max_consecutive_failures:]
        raise TooManyFailures(
            f"the search stopped after {len(last)} consecutive failed trials "
            f"(budget.max_consecutive_failures={cfg.budget.max_consecutive_failures}); last error: {last[-1].error if last else '?'}"
        )
    best = book.best()
    if best is not None:  # the study names AutoTune's pick (Optuna's own best_trial follows another rule)
        searcher.describe_study({"autotune.best_trial": best.number, "autotune.best_value": best.best[cfg.objective.metric],
                                 "autotune.best_rung": int(best.best.get("rung", 0))})
    if best is None:
        errors = "; ".join(sorted({r.error or "?" for r in records if r.status == "failed"}))[:800]
        if clock.budgeted and not errors:
            fastest = min(clock.first_rung_s.values(), default=None)
            need = f"the fastest first rung took {fastest:.0f} s" if fastest else "no trial reached its first rung"
            raise StageError(
                f"the time budget ended before any trial reached its first rung ({len(records)} trials started; "
                f"{need}; validate and deploy were given {clock.reserve_s():.0f} s). Raise budget.wall_clock_s "
                f"(or time_budget_s), lower training.first_rung, or use a smaller model (model.num_hidden_layers)")
        raise StageError(f"no trial produced a result ({len(records)} trials; errors: {errors or 'none recorded'})")
    return SearchOutcome(records, best, checkpoints.get(best.trial_id), checkpoints, study, storage_url, exp_path,
                         ray_init_seconds)


def _disk_full(exp_path: str):
    from autotune.disk import full_now

    return full_now(exp_path)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _checkpoints_on_disk(exp_path: str, trial_id: str, metric: str) -> list[tuple[str, dict]]:
    """(path, metrics) of each checkpoint Tune kept for a trial: every report writes one, with its rung's
    metrics in trial.json; Tune keeps the best-scored one and the latest."""
    import glob

    out = []
    for record_path in glob.glob(os.path.join(glob.escape(exp_path), f"*_{trial_id}_*", "checkpoint_*", "trial.json")):
        folder = os.path.dirname(record_path)
        try:
            with open(record_path) as fh:
                metrics = json.load(fh)["metrics"]
        except (OSError, ValueError, KeyError):
            continue  # a checkpoint cut short by a kill: not a candidate
        if metric in metrics and os.path.isfile(os.path.join(folder, "trainable.safetensors")):
            out.append((folder, metrics))
    return out


def _pick_best(kept: list[tuple[str, dict]], metric: str, mode: str):
    """The best kept checkpoint by the objective (the earlier rung on a tie), or None."""
    sign = 1 if mode == "max" else -1
    if not kept:
        return None
    return max(kept, key=lambda pm: (sign * pm[1][metric], -pm[1].get("rung", 0)))


def _tell_stopped(searcher, rec) -> None:
    """Tell Optuna that a trial the budget stopped ended early (PRUNED, with its last reported value)."""
    if searcher is None:
        return
    try:
        searcher.on_trial_complete(rec.trial_id, result=dict(rec.metrics) or None, error=not rec.metrics, stopped=True)
    except Exception:  # noqa: BLE001 - the study record is best effort here; MLflow and state carry the truth
        pass


def _seed_book_from_tracker(book, tracker, parent_run_id) -> None:
    """On resume, earlier trials' outcomes come back from their MLflow child runs."""
    if tracker is None or parent_run_id is None:
        return
    from autotune.search.best import BEST_TAG
    from autotune.search.callbacks import TrialRecord
    from autotune.tracking.mlflow_tracker import KNOBS_TAG, STATUS_TAG, TRIAL_ID_TAG

    runs = tracker.child_runs(parent_run_id)
    for run in runs:
        trial_id = run.data.tags.get(TRIAL_ID_TAG)
        status = run.data.tags.get(STATUS_TAG, "running")
        if not trial_id or status == "running":
            continue
        method = run.data.params.get("method", "?")
        knobs = json.loads(run.data.tags.get(KNOBS_TAG, "{}"))
        number = int(run.data.params.get("trial_number", -1))
        rec = TrialRecord(trial_id, number, method, knobs, status=status, run_id=run.info.run_id,
                          metrics=dict(run.data.metrics), error=run.data.tags.get("autotune.error"),
                          best=json.loads(run.data.tags.get(BEST_TAG, "{}")))
        rec.last_step = max((m.step for m in tracker.metric_history(run.info.run_id, "val_loss")), default=0)
        book.records[trial_id] = rec


def _orphaned_optuna_trials(storage_url: str, study_name: str, exp_path: str, job_run: str | None) -> list:
    """A driver killed between asking Optuna for a trial and saving Tune's experiment state leaves an Optuna
    trial RUNNING that no Ray trial will ever finish: an orphan. Only this job's trials (user attr
    JOB_RUN_ATTR) count, and none when Tune's searcher state cannot be read (then we cannot tell an orphan
    from a trial about to resume). Reads Ray's own searcher state, a pickle: the output folder is trusted."""
    import glob
    import pickle

    import optuna
    from optuna.trial import TrialState

    known: set[str] = set()
    for path in glob.glob(os.path.join(exp_path, "searcher-state-*.pkl")):
        try:
            with open(path, "rb") as fh:
                known |= set(pickle.load(fh).get("_ot_trials", {}))
        except Exception:  # noqa: BLE001 - an unreadable searcher state means: trust nothing
            pass
    if not known:
        return []
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    # Ours: tagged with this job, or not tagged at all - asked for in the instant before the tags were set
    # (the folder lock and, on PostgreSQL, the study lock keep any other job from asking meanwhile).
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get(JOB_RUN_ATTR, job_run) == job_run and t.user_attrs.get("ray_trial_id") not in known]


def _orphan_runs(tracker, parent_run_id, orphans) -> dict[int, str]:
    """Optuna trial number -> the MLflow child run an orphan had opened (the adopting trial continues it).
    An orphan killed between Optuna's ask and its Ray trial id being stored never opened a run: it has none
    (asking MLflow for "this job's child runs" without the trial id would hand it another trial's run)."""
    if tracker is None or parent_run_id is None or not orphans:
        return {}
    out = {}
    for t in orphans:
        ray_id = t.user_attrs.get("ray_trial_id")
        if not ray_id:
            continue
        runs = tracker.child_runs(parent_run_id, trial_id=ray_id, max_results=1)
        if runs and runs[0].data.params.get("trial_number", str(t.number)) == str(t.number):
            out[t.number] = runs[0].info.run_id
    return out


def _fail_unadopted(storage_url: str, study_name: str, orphans: list) -> None:
    """Orphans no new trial adopted (the search had nothing left to run) are marked FAIL, so the study
    holds no trial RUNNING forever."""
    if not orphans:
        return
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name, storage=storage_url)
    for t in orphans:
        study._storage.set_trial_user_attr(t._trial_id, "autotune.orphaned", True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
