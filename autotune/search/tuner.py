"""Build and run the search: Ray Tune `Tuner` + Optuna's sampler through `OptunaSearch` (define-by-run
space, seeded sampler, persistent storage), method-stratified ASHA, resources per trial."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.config.loader import ResolvedJob
from autotune.errors import StageError, TooManyFailures
from autotune.search.callbacks_keys import NUMBER_KEY

JOB_RUN_ATTR = "autotune_job_run"  # Optuna user attr: the MLflow parent run of the job that asked for the trial


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


def make_sampler(job: ResolvedJob):
    import optuna

    cfg, seed = job.config.sampler, job.config.seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if cfg.kind == "tpe":
            # group=True models each method's knobs separately (a conditional space); constant_liar keeps
            # concurrent trials from being handed the same point.
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=cfg.n_startup_trials
            )
        if cfg.kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if cfg.kind == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
        if cfg.kind == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
        return optuna.samplers.QMCSampler(seed=seed)


def make_searcher(job: ResolvedJob, storage_url: str, study_name: str, job_run: str | None = None):
    import optuna
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch  # must be imported explicitly in Ray 2.60

    class AutotuneOptunaSearch(OptunaSearch):
        """Records the Ray trial id on each Optuna trial, and tells Optuna PRUNED for trials the
        scheduler stopped early (stock OptunaSearch records them as COMPLETE)."""

        def suggest(self, trial_id):
            config = super().suggest(trial_id)
            if isinstance(config, dict) and trial_id in self._ot_trials:
                ot_trial = self._ot_trials[trial_id]
                ot_trial.set_user_attr("ray_trial_id", trial_id)
                ot_trial.set_user_attr(JOB_RUN_ATTR, job_run)  # which job asked: a shared study has many
                # the Optuna trial number names the trial everywhere (console, MLflow, trials.csv)
                config = {**config, NUMBER_KEY: ot_trial.number}
            return config

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return super().on_trial_complete(trial_id, result, error)
            if result and not error and result.get("rung", 0) < result.get("total_rungs", 0):
                try:
                    self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
                except Exception:  # noqa: BLE001 - the study refuses a second tell; keep going
                    pass
                self._completed_trials.add(trial_id)
                return
            return super().on_trial_complete(trial_id, result, error)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(storage_url)
    points = [job.space.encode_point(p.method, dict(p.knobs)) for p in job.config.search.initial_points]
    return AutotuneOptunaSearch(
        space=job.space.define_by_run,
        metric=job.config.objective.metric,
        mode=job.config.objective.mode,
        sampler=make_sampler(job),
        study_name=study_name,
        storage=storage,
        points_to_evaluate=points or None,
    )


def make_scheduler(job: ResolvedJob, total_rungs: int):
    cfg = job.config.scheduler
    if cfg.kind == "fifo":
        from ray.tune.schedulers import FIFOScheduler

        return FIFOScheduler()
    kwargs = dict(  # tiny splits can merge rungs: never ask ASHA for a grace longer than the trial
        time_attr="rung", max_t=total_rungs, grace_period=min(cfg.grace_period, total_rungs),
        reduction_factor=cfg.reduction_factor,
    )
    if cfg.per_method:
        from autotune.search.scheduler import method_stratified_asha

        return method_stratified_asha(**kwargs)
    from ray.tune.schedulers import AsyncHyperBandScheduler

    return AsyncHyperBandScheduler(**kwargs)


def ray_address(job: ResolvedJob, address: str | None) -> str | None:
    """Precedence: --address, then RAY_ADDRESS, then ray.address in the job file; none = local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or job.config.ray.address


def init_ray(job: ResolvedJob, address: str | None) -> None:
    import logging

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
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    else:
        ray.init(
            address="local",  # always a fresh local instance, never a cluster some `ray start` left recorded
            include_dashboard=job.config.ray.include_dashboard,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.ERROR,
        )


def run_search(job: ResolvedJob, labels: list[str], tokenized: dict, tracker, parent_run_id: str | None,
               console=None, address: str | None = None, resume: bool = False) -> SearchOutcome:
    from ray import tune

    from autotune.search.callbacks import FailureGuard, TrialBook
    from autotune.search.trainable import TrialSpec, run_trial
    from autotune.training.loop import rung_steps

    import time

    cfg = job.config
    t0 = time.perf_counter()
    init_ray(job, address)
    ray_init_seconds = time.perf_counter() - t0
    _, rungs = rung_steps(len(tokenized["train"]["labels"]), cfg.training)
    total_rungs = len(rungs)
    storage_url = optuna_storage_url(job)
    study_name = cfg.search.study_name or cfg.name
    book = TrialBook(job.space, tracker, parent_run_id, console, cfg.budget.num_trials,
                     cfg.objective.metric, cfg.objective.mode)
    guard = FailureGuard(book, cfg.budget.max_consecutive_failures)
    spec = TrialSpec(cfg.model, cfg.training, job.space, labels, cfg.seed,
                     cfg.budget.resources_per_trial.cpu, cfg.budget.resources_per_trial.gpu)
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
    run_config = tune.RunConfig(
        name="tune",
        storage_path=storage_path,
        verbose=0,
        callbacks=[book],
        stop=guard,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=retries),
    )
    if resume and tune.Tuner.can_restore(exp_path):
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
        # callbacks and stoppers are driver-local (MLflow client, console): attach this driver's own
        run_cfg = tuner._local_tuner.get_run_config()
        run_cfg.callbacks = [book]
        run_cfg.stop = guard
        _seed_book_from_tracker(book, tracker, parent_run_id)
        _fail_orphaned_optuna_trials(storage_url, study_name, exp_path, parent_run_id)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(job, storage_url, study_name, parent_run_id),
                scheduler=make_scheduler(job, total_rungs),
                metric=cfg.objective.metric,
                mode=cfg.objective.mode,
                num_samples=cfg.budget.num_trials,
                max_concurrent_trials=cfg.budget.max_concurrent_trials,
                time_budget_s=cfg.budget.time_budget_s,
                reuse_actors=True,
            ),
            run_config=run_config,
        )
    results = tuner.fit()

    checkpoints: dict[str, str] = {}
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        if result.checkpoint is not None:
            checkpoints[trial_id] = result.checkpoint.path
    records = sorted(book.records.values(), key=lambda r: r.number)
    if guard.stop_all():
        last = [r for r in records if r.status == "failed"][-cfg.budget.max_consecutive_failures:]
        raise TooManyFailures(
            f"the search stopped after {len(last)} consecutive failed trials "
            f"(budget.max_consecutive_failures={cfg.budget.max_consecutive_failures}); last error: {last[-1].error if last else '?'}"
        )
    best = book.best()
    if best is None:
        errors = "; ".join(sorted({r.error or "?" for r in records if r.status == "failed"}))[:800]
        raise StageError(f"no trial produced a result ({len(records)} trials; errors: {errors or 'none recorded'})")
    return SearchOutcome(records, best, checkpoints.get(best.trial_id), checkpoints, study_name, storage_url, exp_path,
                         ray_init_seconds)


def _seed_book_from_tracker(book, tracker, parent_run_id) -> None:
    """On resume, earlier trials' outcomes come back from their MLflow child runs."""
    if tracker is None or parent_run_id is None:
        return
    from autotune.search.callbacks import TrialRecord
    from autotune.tracking.mlflow_tracker import KNOBS_TAG, STATUS_TAG, TRIAL_ID_TAG

    runs = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    for run in runs:
        trial_id = run.data.tags.get(TRIAL_ID_TAG)
        status = run.data.tags.get(STATUS_TAG, "running")
        if not trial_id or status == "running":
            continue
        method = run.data.params.get("method", "?")
        knobs = json.loads(run.data.tags.get(KNOBS_TAG, "{}"))
        number = int(run.data.params.get("trial_number", -1))
        rec = TrialRecord(trial_id, number, method, knobs, status=status, run_id=run.info.run_id,
                          metrics=dict(run.data.metrics), error=run.data.tags.get("autotune.error"))
        book.records[trial_id] = rec


def _fail_orphaned_optuna_trials(storage_url: str, study_name: str, exp_path: str, job_run: str | None) -> None:
    """A driver killed between asking Optuna for a trial and saving Tune's experiment state leaves an Optuna
    trial RUNNING that no Ray trial will ever finish. Mark those FAIL so the study stays truthful.
    Only this job's trials (user attr JOB_RUN_ATTR) are touched, and nothing when Tune's searcher state
    cannot be read (then we cannot tell an orphan from a trial about to resume)."""
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
        return
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(JOB_RUN_ATTR) == job_run and t.user_attrs.get("ray_trial_id") not in known:
            study._storage.set_trial_user_attr(t._trial_id, "autotune.orphaned", True)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
