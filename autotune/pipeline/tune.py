"""Tune stage: run the search, then summarise it (trials table, best trial) on the parent run."""

from __future__ import annotations

import csv
import time
from typing import Any

from pydantic import BaseModel

from autotune.pipeline.context import JobContext
from autotune.redact import redact


class TrialRow(BaseModel):
    trial_id: str
    number: int
    method: str
    knobs: dict[str, Any]
    status: str  # finished | pruned | stopped | failed
    metrics: dict[str, float]  # at its last rung
    best: dict[str, float] = {}  # at its best rung (what the best-trial rule compares)
    error: str | None = None
    seconds: float | None = None
    run_id: str | None = None


class TuneResult(BaseModel):
    best_trial_id: str
    best_number: int
    best_method: str
    best_knobs: dict[str, Any]
    best_metrics: dict[str, float]
    best_checkpoint: str
    head_checkpoint: str | None  # best trial of the `head` method: the validate stage's baseline
    head_knobs: dict[str, Any] | None
    counts: dict[str, int]
    study_name: str
    storage_url: str
    experiment_path: str
    seconds: float
    ray_init_seconds: float = 0.0
    trials: list[TrialRow]
    pareto: list[int] = []  # multi-objective: trial numbers on the Pareto front, best metric first
    best_rule: str = ""  # how the best trial was chosen (best.pick_rule)


def run(ctx: JobContext) -> TuneResult:
    from autotune.training.model import load_tokens
    from autotune.search.tuner import run_search

    pre = ctx.results["preprocess"]
    tokens = load_tokens(pre.tokens_path)
    start = time.time()
    if ctx.job.config.budget.wall_clock_s and {"validate", "deploy"} & set(ctx.job.config.stages):
        from autotune.training.model import warm_model_imports

        warm_model_imports(ctx.job.config.model)  # before the plan: its seconds come out of the search, not after it
    clock = search_clock(ctx, tokens, start)
    if clock.budgeted:
        ctx.console.print(f"budget: the search may run {clock.left():.0f} s (validate and deploy get "
                          f"~{clock.reserve_s():.0f} s after it; re-estimated from the trials as they report)")
    from autotune.search.layer_probe import for_job

    ranking = for_job(ctx, tokens)  # only when the space asks for `importance_top_k`
    outcome = run_search(ctx.job, pre.labels, tokens, ctx.tracker, ctx.parent_run_id, ctx.console,
                         address=ctx.address, resume=ctx.resume, clock=clock, layer_ranking=ranking)
    ctx.search_ended_at = time.time()
    # what the next job's budget plan reserves for: what comes after the search's end - or after its deadline,
    # when the trials stopping for it ran past it (seconds the deadline did not hold are spent after it too)
    deadline = clock.deadline()
    ctx.after_search_from = ctx.search_ended_at if deadline is None else min(ctx.search_ended_at, deadline)
    if clock.budgeted:
        ctx.budget_plan = clock.plan(ctx.search_ended_at)
    seconds = time.time() - start
    rows = [
        TrialRow(trial_id=r.trial_id, number=r.number, method=r.method, knobs=r.knobs, status=r.status,
                 metrics={k: float(v) for k, v in r.metrics.items()},
                 best={k: float(v) for k, v in r.best.items()}, error=r.error,
                 seconds=(r.ended - r.started) if r.ended else None, run_id=r.run_id)
        for r in outcome.records
    ]
    counts = {s: sum(r.status == s for r in rows) for s in ("finished", "pruned", "stopped", "failed")}
    objective = ctx.job.config.objective
    metric, mode = objective.metric, objective.mode
    from autotune.search.best import best_record, pareto_front, pick_rule

    head = best_record([r for r in outcome.records if r.method == "head" and r.trial_id in outcome.checkpoints],
                       metric, mode)
    best = outcome.best
    if outcome.best_checkpoint is None:
        from autotune.errors import StageError

        raise StageError(f"the best trial {best.trial_id} left no checkpoint under {outcome.experiment_path}")
    result = TuneResult(
        best_trial_id=best.trial_id, best_number=best.number, best_method=best.method, best_knobs=best.knobs,
        best_metrics={k: float(v) for k, v in best.best.items()}, best_checkpoint=outcome.best_checkpoint,
        head_checkpoint=outcome.checkpoints.get(head.trial_id) if head else None,
        head_knobs=head.knobs if head else None, counts=counts, study_name=outcome.study_name,
        storage_url=redact(outcome.storage_url), experiment_path=outcome.experiment_path, seconds=seconds,
        ray_init_seconds=outcome.ray_init_seconds, trials=rows, best_rule=pick_rule(objective),
        pareto=[r.number for r in pareto_front(outcome.records, list(zip(objective.metrics, objective.modes)))]
        if objective.multi else [],
    )
    if objective.multi:
        print_pareto(ctx.console, result, objective)
    _log(ctx, result)
    # only the best trial (and the head-only baseline validate scores) can still win: the other checkpoints go
    freed = prune_checkpoints(result.experiment_path, {result.best_checkpoint, result.head_checkpoint})
    if freed:
        ctx.console.print(f"[dim]checkpoints of trials that can no longer win removed: {freed / 1e6:.0f} MB[/]")
    return result


def print_pareto(console, result: TuneResult, objective) -> None:
    """The Pareto front as a table: one row per trial on it, the deployed pick marked."""
    from rich.table import Table

    from autotune.search.best import shown

    table = Table(title=f"Pareto front: {len(result.pareto)} of {len(result.trials)} trials "
                        f"({', '.join(f'{n} {m}' for n, m in zip(objective.metrics, objective.modes))})")
    for col in ("trial", "method", *objective.metrics, "rung", "pick"):
        table.add_column(col, justify="right" if col not in ("method", "pick") else "left")
    by_number = {r.number: r for r in result.trials}
    for n in result.pareto:
        r = by_number[n]
        table.add_row(str(n), r.method, *(shown(m, r.best[m]) for m in objective.metrics), str(int(r.best.get("rung", 0))),
                      "deployed" if n == result.best_number else "")
    console.print(table)
    console.print(f"[dim]pick rule: {result.best_rule}[/]")


def prune_checkpoints(experiment_path: str, keep: set[str | None]) -> int:
    """Delete the trials' checkpoint folders under a local Tune experiment, except those in `keep`; bytes freed.
    Tune's own records (experiment state, results, trial.json of each trial) stay."""
    import glob
    import os
    import shutil

    keep_real = {os.path.realpath(k) for k in keep if k}
    freed = 0
    for folder in glob.glob(os.path.join(glob.escape(experiment_path), "*", "checkpoint_*")):
        if os.path.realpath(folder) in keep_real or not os.path.isdir(folder) or os.path.islink(folder):
            continue
        for root, _, files in os.walk(folder):
            freed += sum(os.path.getsize(os.path.join(root, f)) for f in files
                         if not os.path.islink(os.path.join(root, f)))
        shutil.rmtree(folder, ignore_errors=True)
    return freed


def search_clock(ctx: JobContext, tokens: dict, tune_start: float):
    """The search's deadlines: budget.wall_clock_s counted from the process start (minus what validate and
    deploy need), budget.time_budget_s from the start of this stage."""
    from autotune.search.budget import SearchClock, history_key, measured_after_search

    budget = ctx.job.config.budget
    n_val = max(1, len(tokens["validation"]["labels"]))
    started = ctx.started_at or tune_start
    ctx.history_key = history_key(ctx.job.config.model, len(tokens["test"]["labels"]), ctx.job.config.deploy.int8,
                                  _has_champion(ctx), ctx.job.config.diagnostics)
    return SearchClock(
        measured_after_s=measured_after_search(ctx.history_key),
        started_at=started,
        job_deadline=started + budget.wall_clock_s if budget.wall_clock_s else None,
        search_deadline=tune_start + budget.time_budget_s if budget.time_budget_s else None,
        test_to_val=len(tokens["test"]["labels"]) / n_val,
        int8=ctx.job.config.deploy.int8,
        diagnostics=ctx.job.config.diagnostics,
    )


def _has_champion(ctx: JobContext) -> bool:
    """Whether validate will also evaluate a registered champion (it costs a download and a test pass)."""
    if "validate" not in ctx.job.config.stages:
        return False
    name = ctx.job.config.tracking.registered_model or ctx.job.config.name
    try:
        return ctx.tracker.version_by_alias(name, "champion") is not None
    except Exception:  # noqa: BLE001 - no model, no alias, or the registry is unreadable: validate will say
        return False


def _log(ctx: JobContext, result: TuneResult) -> None:
    t, run = ctx.tracker, ctx.parent_run_id
    path = ctx.out / "trials.csv"
    write_trials_csv(result.trials, path, set(result.pareto))
    t.log_artifact(run, str(path), "search")
    t.log_params(run, {"best.method": result.best_method, "best.trial_id": result.best_trial_id,
                       **{f"best.{result.best_method}.{k}": v for k, v in result.best_knobs.items()},
                       "optuna.study_name": result.study_name, "optuna.storage": result.storage_url})
    objective = ctx.job.config.objective
    if objective.multi:  # the objective.* settings are params already (the job's config): what they led to
        t.log_params(run, {"pareto.trade_off": objective.trade_off, "pareto.trials": ",".join(map(str, result.pareto))})
        t.log_metrics(run, {"pareto.size": len(result.pareto)})
    t.log_metrics(run, {**{f"best.{k}": v for k, v in result.best_metrics.items()},
                        **{f"trials.{k}": v for k, v in result.counts.items()}, "tune.seconds": result.seconds})
    try:
        from autotune.pipeline.plots import study_plots

        for p in study_plots(ctx, result):
            t.log_artifact(run, str(p), "search/plots")
    except Exception as exc:  # noqa: BLE001 - plots are a convenience, never a failure
        ctx.console.print(f"[yellow]note: study plots skipped ({exc})[/]")


def write_trials_csv(rows: list[TrialRow], path, pareto: set[int] = frozenset()) -> None:
    """One row per trial; `pareto` is 1 for the trials on a multi-objective job's Pareto front."""
    cols = ["number", "trial_id", "method", "status", "val_accuracy", "val_macro_f1", "val_loss", "trainable_params",
            "optimizer_state_bytes", "rung", "best_rung", "best_val_accuracy", "seconds", "knobs", "error", "pareto"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            m = r.metrics
            w.writerow([r.number, r.trial_id, r.method, r.status, m.get("val_accuracy"), m.get("val_macro_f1"),
                        m.get("val_loss"), m.get("trainable_params"), m.get("optimizer_state_bytes"), m.get("rung"),
                        r.best.get("rung"), r.best.get("val_accuracy"),
                        f"{r.seconds:.1f}" if r.seconds else "", " ".join(f"{k}={v}" for k, v in r.knobs.items()),
                        r.error or "", int(r.number in pareto)])
