"""Driver-side Tune callbacks: MLflow child runs, the progress display, and the consecutive-failure guard.

They run in the driver process, so MLflow and the console have one writer each."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback
from ray.tune.stopper import NoopStopper, Stopper

from autotune.config.space import CompiledSpace
from autotune.search.best import BEST_TAG, best_record, pick_record, shown
from autotune.search.callbacks_keys import NUMBER_KEY
from autotune.redact import redact
from autotune.tracking.mlflow_tracker import KNOBS_TAG, NOTE_TAG, STATUS_TAG, TRIAL_ID_TAG, MlflowTracker

LOGGED_METRICS = (
    "val_accuracy", "val_macro_f1", "val_loss", "train_loss", "trainable_params", "optimizer_state_bytes",
    "epoch", "examples", "seconds", "samples_per_s", "cached_prefix_layers",
)


def trial_number(config: dict[str, Any]) -> int:
    return int(config.get(NUMBER_KEY, -1))


@dataclass
class TrialRecord:
    trial_id: str
    number: int
    method: str
    knobs: dict[str, Any]
    status: str = "running"  # running | finished | pruned | stopped (budget / interrupt) | failed
    metrics: dict[str, float] = field(default_factory=dict)  # at the last rung reported
    best: dict[str, float] = field(default_factory=dict)  # at the best rung so far: every rung is a candidate
    error: str | None = None
    stop_reason: str | None = None  # stopped trials: "budget", "search stopped", "interrupted"
    run_id: str | None = None
    last_step: int = 0  # highest rung already logged to MLflow (a restored trial may replay some)
    node: str | None = None  # node id the trial last reported from
    node_ips: list[str] = field(default_factory=list)  # every node it ran on, in order (a retry adds one)
    started: float = field(default_factory=time.time)
    ended: float | None = None


def status_of(result: dict[str, Any]) -> str:
    """A trial that stopped before its last rung was pruned by the scheduler."""
    if result.get("rung", 0) < result.get("total_rungs", 1):
        return "pruned"
    return "finished"


def short_error(trial) -> str:
    """`ErrorType: message` of what the trainable raised (Ray wraps it in a RayTaskError)."""
    import cloudpickle

    for path in (trial.pickled_error_file, ):
        if path and os.path.isfile(path):
            try:
                with open(path, "rb") as fh:
                    exc = cloudpickle.load(fh)
                cause = getattr(exc, "cause", None) or exc
                return f"{type(cause).__name__}: {cause}"[:500]
            except Exception:  # noqa: BLE001 - fall back to the text trace
                pass
    text = ""
    if trial.error_file and os.path.isfile(trial.error_file):
        with open(trial.error_file) as fh:
            text = fh.read()
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    for line in reversed(lines):  # the cause is the last "SomethingError: message" line of the trace
        if ("Error" in line or "Failed" in line or "Exception" in line) and ":" in line:
            return line[:500]
    return (lines[-1] if lines else "trial failed")[:500]


class TrialBook(Callback):
    """The driver's record of every trial (status, last metrics) and its MLflow child run."""

    def __init__(self, space: CompiledSpace, tracker: MlflowTracker | None, parent_run_id: str | None,
                 console=None, total: int = 0, metric: str = "val_accuracy", mode: str = "max", clock=None,
                 objective=None):
        self.space = space
        self.clock = clock  # SearchClock: learns setup, eval and first-rung seconds from the reports
        self.rung_log = None  # path of a JSON-lines file: one line per evaluated rung (time since job start)
        self.orphan_runs: dict[int, str] = {}  # trial number -> MLflow run of a crashed driver's orphan trial
        self.tracker = tracker
        self.parent = parent_run_id
        self.console = console
        self.total = total
        self.metric, self.mode = metric, mode
        self.objective = objective  # ObjectiveConfig: a multi-objective job's pick rule (None: the best metric)
        self.records: dict[str, TrialRecord] = {}
        self.consecutive_failures = 0
        self.start = time.time()
        self.scheduler = None  # the ASHA scheduler: its `cuts` say why each pruned trial was stopped
        self._live = None  # rich Live progress display, on a terminal only
        self._live_drawn = 0.0

    def __getstate__(self):
        # Ray pickles the run config (with its callbacks) into the experiment state; the MLflow client,
        # the console, the live display and the scheduler are driver-local and re-attached by `autotune resume`.
        state = self.__dict__.copy()
        state["tracker"] = None
        state["console"] = None
        state["scheduler"] = None
        state["_live"] = None
        return state

    # --- Tune hooks ---------------------------------------------------------------------------
    def setup(self, **info):
        self._live_start()

    def on_step_end(self, iteration, trials, **info):
        if self._live is not None and time.time() - self._live_drawn >= 1.0:  # elapsed and budget tick
            self._live_refresh()

    def on_experiment_end(self, trials, **info):
        self.stop_live()

    def on_trial_start(self, iteration, trials, trial, **info):
        method, knobs = self.space.decode(trial.config)
        rec = self.records.get(trial.trial_id)
        if rec is None:
            rec = TrialRecord(trial.trial_id, trial_number(trial.config), method, knobs)
            self.records[trial.trial_id] = rec
        rec.status = "running"
        if self.console is not None:
            knob_txt = " ".join(f"{k}={_fmt(v)}" for k, v in knobs.items())
            self.console.print(f"[dim]      trial {rec.number:>3} {method:<6} started   {knob_txt}[/]", highlight=False)
        self._live_refresh()
        if self.tracker is None:
            return
        created = False
        if rec.run_id is None and rec.number in self.orphan_runs:  # the adopted orphan keeps its MLflow run
            rec.run_id = self.orphan_runs.pop(rec.number)
            self.tracker.set_tags(rec.run_id, {TRIAL_ID_TAG: trial.trial_id})
        if rec.run_id is None:
            rec.run_id, created = self.tracker.child_for_trial(
                self.parent, trial.trial_id, f"trial-{rec.number:03d}-{method}",
                {STATUS_TAG: "running", "autotune.method": method},
            )
        else:
            self.tracker.reopen(rec.run_id)
        if created:
            self.tracker.log_params(rec.run_id, {"trial_number": rec.number, "method": method,
                                                 **{f"{method}.{k}": v for k, v in knobs.items()}})
            # params are strings; the typed knobs go in a JSON tag so a resumed job reads them back exactly
            self.tracker.set_tags(rec.run_id, {KNOBS_TAG: json.dumps(knobs)})
        else:  # a trial restored after a crash or retried: do not log its replayed rungs twice
            history = self.tracker.metric_history(rec.run_id, "val_loss")
            rec.last_step = max((m.step for m in history), default=0)
        self.tracker.set_tags(rec.run_id, {STATUS_TAG: "running"})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rec = self.records.get(trial.trial_id)
        if rec is None:
            return
        rec.metrics = {k: result[k] for k in (*LOGGED_METRICS, "rung", "total_rungs") if k in result}
        step = int(result.get("rung", 0))
        if self.clock is not None:
            self.clock.observe(rec.method, result, time.time() - rec.started)
        improved = self.metric in result and (
            self.metric not in rec.best or self._sign * result[self.metric] > self._sign * rec.best[self.metric])
        if self.rung_log is not None and self.metric in result:
            t0 = self.clock.started_at if self.clock is not None else self.start
            line = {"t": round(time.time() - t0, 2), "trial": rec.number, "method": rec.method, "rung": step,
                    "examples": result.get("examples"), self.metric: result[self.metric]}
            with open(self.rung_log, "a") as fh:
                fh.write(json.dumps(line) + "\n")
        if improved:  # strictly better: on a tie the earlier (cheaper) rung stays the candidate
            rec.best = dict(rec.metrics)
            if self.tracker is not None and rec.run_id:
                self.tracker.set_tags(rec.run_id, {BEST_TAG: json.dumps(rec.best)})
        if self.tracker is not None and rec.run_id and step == 1 and result.get("layers_trained"):
            self.tracker.set_tags(rec.run_id, {"autotune.layers_trained": result["layers_trained"]})  # importance_top_k
        if self.tracker is not None and rec.run_id and result.get("node_id") and result["node_id"] != rec.node:
            rec.node = result["node_id"]  # where it ran (again after a retry on another node)
            rec.node_ips.append(str(result.get("node_ip")))
            self.tracker.set_tags(rec.run_id, {"autotune.node_id": rec.node, "autotune.node_ip": result.get("node_ip"),
                                               "autotune.nodes": ",".join(rec.node_ips)})
        if self.console is not None and self.metric in result:
            self.console.print(
                f"[dim]      trial {rec.number:>3} {rec.method:<6} rung {step}/{result.get('total_rungs', '?')} "
                f"{self.metric}={result[self.metric]:.4f} ({result.get('seconds', 0):.0f} s)[/]", highlight=False)
        if self.tracker is not None and rec.run_id and step > rec.last_step:
            self.tracker.log_metrics(rec.run_id, {k: result[k] for k in LOGGED_METRICS if k in result}, step=step)
            rec.last_step = step
        self._live_refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        rec = self.records.get(trial.trial_id)
        if rec is None:
            return
        rec.status = status_of(trial.last_result or {})
        rec.ended = time.time()
        self.consecutive_failures = 0
        self._close(rec, "FINISHED" if rec.status == "finished" else "KILLED")

    def on_trial_error(self, iteration, trials, trial, **info):
        from autotune.disk import full_now, trial_error

        path = getattr(trial, "path", None)
        full = trial_error(trial, [path] if path else []) or full_now(os.path.dirname(path or ""))
        if full is not None:  # the disk, not the trial: stop the search; the trial resumes from its checkpoint
            raise full
        rec = self.records.get(trial.trial_id)
        if rec is None:
            method, knobs = self.space.decode(trial.config)
            rec = self.records[trial.trial_id] = TrialRecord(trial.trial_id, trial_number(trial.config), method, knobs)
        rec.status = "failed"
        rec.error = redact(short_error(trial))
        rec.ended = time.time()
        self.consecutive_failures += 1
        if self.tracker is not None and rec.run_id:
            self.tracker.set_tags(rec.run_id, {"autotune.error": rec.error})
        self._close(rec, "FAILED")

    # --- helpers ------------------------------------------------------------------------------
    def _close(self, rec: TrialRecord, mlflow_status: str) -> None:
        if self.tracker is not None and rec.run_id:
            self.tracker.set_tags(rec.run_id, {STATUS_TAG: rec.status, NOTE_TAG: self.describe(rec)})
            self.tracker.end(rec.run_id, mlflow_status)
        if self.console is not None:
            self._print(rec)
        self._live_refresh()

    def optuna_attrs(self, trial_id: str) -> dict[str, Any]:
        """What the Optuna trial carries of this record: its best rung (the candidate AutoTune compares),
        trainable parameters, why it stopped and its MLflow run."""
        rec = self.records.get(trial_id)
        if rec is None:
            return {}
        attrs: dict[str, Any] = {"autotune.mlflow_run_id": rec.run_id}
        if self.metric in rec.best:
            b = rec.best
            attrs.update({"autotune.best_value": float(b[self.metric]), "autotune.best_rung": int(b.get("rung", 0)),
                          "autotune.best_examples": int(b.get("examples", 0)),
                          "autotune.trainable_params": int(b.get("trainable_params", 0))})
        if rec.stop_reason:
            attrs["autotune.stop_reason"] = rec.stop_reason
        return {k: v for k, v in attrs.items() if v is not None}

    # --- why a trial ended (its MLflow run's description) ---------------------------------------
    def describe(self, rec: TrialRecord) -> str:
        """One line saying why the trial ended, then its best rung: the run's description in MLflow."""
        m = rec.metrics
        rung, total = int(m.get("rung", 0)), int(m.get("total_rungs", 0))
        at = f"at rung {rung}/{total}" if rung else "before its first rung"
        if rec.status == "failed":
            first = f"failed: {rec.error or 'unknown error'}"
        elif rec.status == "finished":
            first = f"finished: {rung}/{total} rungs"
        elif rec.status == "pruned":
            first = f"pruned by ASHA {at}"
            cut = (getattr(self.scheduler, "cuts", None) or {}).get(rec.trial_id)
            if cut is not None and self.metric in m:
                milestone, cutoff, among = cut
                worse = "<" if self.mode == "max" else ">"
                group = f" among {among} trials" if among else ""
                first += (f" ({int(m.get('examples', milestone)):,} examples), {self.metric} {m[self.metric]:.4f} "
                          f"{worse} {cutoff:.4f}, the cut-off{group} at that rung")
        elif rec.status == "stopped":
            reason = rec.stop_reason or "search stopped"
            if reason == "budget":
                first = f"stopped by the budget {at}"
            elif reason.startswith("interrupted"):
                first = f"interrupted {at}; `autotune resume` continues it"
            else:
                first = f"stopped with the search {at}"
        else:
            first = f"{rec.status} {at}"
        b = rec.best
        if rec.status != "failed" and self.metric in b:
            examples = f" ({int(b['examples']):,} examples)" if "examples" in b else ""
            first += f"\n\nbest {self.metric} {b[self.metric]:.4f} at rung {int(b.get('rung', 0))}{examples}"
        return first

    # --- live progress display (a terminal only; plain lines otherwise) ---------------------------
    def progress_text(self) -> str:
        return " | ".join(self._progress_parts())

    def _progress_parts(self) -> list[str]:
        """[trial counts, best so far, elapsed and budget left]."""
        recs = list(self.records.values())
        counts = {s: sum(r.status == s for r in recs) for s in ("finished", "pruned", "stopped", "failed", "running")}
        done = len(recs) - counts["running"]
        of = f"/{self.total}" if self.total else ""
        parts = [f"trials {done}{of} done: {counts['finished']} finished, {counts['pruned']} pruned, "
                 f"{counts['stopped']} stopped, {counts['failed']} failed; {counts['running']} running"]
        best = self.best()
        parts.append(self._best_text(best) if best else "best: none yet")
        elapsed = f"{time.time() - self.start:.0f} s elapsed"
        if self.clock is not None and self.clock.budgeted:
            elapsed += f", ~{max(0.0, self.clock.left()):.0f} s of search budget left"
        parts.append(elapsed)
        return parts

    def _live_start(self) -> None:
        if self._live is not None or self.console is None or not self.console.is_terminal:
            return
        from rich.live import Live

        try:
            self._live = Live(self._progress_renderable(), console=self.console, auto_refresh=False, transient=True,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        except Exception:  # noqa: BLE001 - a progress display must never stop a search
            self._live = None

    def _progress_renderable(self):
        """Two short lines (each cut to the terminal's width, never wrapped: a wrapped line would not be
        redrawn in place)."""
        from rich.console import Group
        from rich.text import Text

        counts, *rest = self._progress_parts()
        return Group(*(Text(line, style="bold cyan", no_wrap=True, overflow="ellipsis")
                       for line in (counts, " | ".join(rest))))

    def _live_refresh(self) -> None:
        if self._live is None:
            self._live_start()
            if self._live is None:
                return
        try:
            self._live.update(self._progress_renderable(), refresh=True)
            self._live_drawn = time.time()
        except Exception:  # noqa: BLE001
            self.stop_live()

    def stop_live(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            try:
                live.stop()
            except Exception:  # noqa: BLE001
                pass

    def _best_text(self, best: TrialRecord, name_metric: bool = True) -> str:
        """'best val_accuracy 0.8125 (trial 3, lora)'; a multi-objective job's pick also shows its trade-off."""
        metric = f"{self.metric} " if name_metric else ""
        if self.objective is not None and self.objective.multi:
            by = self.objective.trade_off
            return (f"pick {metric}{best.best[self.metric]:.4f}, {by} {shown(by, best.best.get(by, 0))} "
                    f"(trial {best.number}, {best.method})")
        return f"best {metric}{best.best[self.metric]:.4f} (trial {best.number}, {best.method})"

    @property
    def _sign(self) -> int:
        return 1 if self.mode == "max" else -1

    def best(self) -> TrialRecord | None:
        """THE best-trial rule: the best objective at any evaluated rung of any trial that did not fail
        (finished, pruned by ASHA, or stopped by the budget); on a tie, fewer trainable parameters. A
        multi-objective job: the Pareto point its pick rule names (best.pick_record)."""
        if self.objective is not None:  # pick_record is best_record for a single objective
            return pick_record(self.records.values(), self.objective)
        return best_record(self.records.values(), self.metric, self.mode)

    def late_rung(self, rec: TrialRecord, metrics: dict[str, Any]) -> None:
        """A rung the trial evaluated and checkpointed as Tune stopped it, whose result never reached
        on_trial_result: recorded like any other (MLflow step, rung log, candidate)."""
        self.on_trial_result(0, [], _Reported(rec.trial_id), {**metrics, "method": rec.method})

    def close_unfinished(self, reason: str) -> list[TrialRecord]:
        """Trials Tune stopped without telling its callbacks (the budget ran out, the user interrupted):
        recorded as `stopped` with their last metrics, their MLflow run ended KILLED with the reason."""
        closed = []
        for rec in self.records.values():
            if rec.status != "running":
                continue
            rec.status, rec.ended = "stopped", time.time()
            rec.error = None
            rec.stop_reason = reason
            if self.tracker is not None and rec.run_id:
                self.tracker.set_tags(rec.run_id, {"autotune.stop_reason": reason})
            self._close(rec, "KILLED")
            closed.append(rec)
        self.stop_live()
        return closed

    def mark_interrupted(self) -> None:
        """Ctrl-C: the trials in flight are ended KILLED for now (with why), reopened by `autotune resume`."""
        self.stop_live()
        for rec in self.records.values():
            if rec.status == "running" and self.tracker is not None and rec.run_id:
                rec.stop_reason = "interrupted"
                rec.status = "stopped"
                note = self.describe(rec)
                rec.status, rec.stop_reason = "running", None  # resume continues it
                self.tracker.set_tags(rec.run_id, {"autotune.stop_reason": "interrupted; `autotune resume` continues it",
                                                   NOTE_TAG: note})
                self.tracker.end(rec.run_id, "KILLED")

    def _print(self, rec: TrialRecord) -> None:
        done = sum(r.status != "running" for r in self.records.values())
        of = f"/{self.total}" if self.total else ""
        knobs = " ".join(f"{k}={_fmt(v)}" for k, v in rec.knobs.items())
        colour = {"finished": "green", "pruned": "yellow", "stopped": "yellow", "failed": "red"}.get(rec.status, "white")
        value = rec.metrics.get(self.metric)
        what = f"{self.metric}={value:.4f}" if value is not None else rec.error or ""
        best = self.best()
        best_txt = f" | {self._best_text(best, False)}" if best else ""
        secs = (rec.ended or time.time()) - rec.started
        elapsed = time.time() - self.start
        self.console.print(
            f"[{done}{of}] trial {rec.number:>3} [bold]{rec.method:<6}[/] [{colour}]{rec.status:<8}[/] "
            f"{what} ({secs:.0f} s) {knobs}{best_txt}  [dim]{elapsed:.0f} s elapsed[/]",
            highlight=False,
        )


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        return "+".join(map(str, v))
    return str(v)


@dataclass
class _Reported:
    trial_id: str


_LIVE_GUARD: FailureGuard | None = None  # this driver's guard: what a saved one comes back as


def _live_guard() -> Stopper:
    """What a pickled FailureGuard loads as: the guard of the search running in this process, or a stopper
    that never stops where there is none (the state read by a tool, not by a search)."""
    return _LIVE_GUARD if _LIVE_GUARD is not None else NoopStopper()


class FailureGuard(Stopper):
    """Stops the whole search after N consecutive failed trials (a broken setup, not bad luck), and when
    the budget's deadline has passed (`clock`)."""

    def __init__(self, book: TrialBook, limit: int, clock=None):
        global _LIVE_GUARD
        self.book = book
        self.limit = limit
        self.clock = clock
        self.deadline_hit = False
        _LIVE_GUARD = self

    def __reduce__(self):
        # Ray saves the stopper in its experiment state, and `Tuner.restore` puts the saved one back in place
        # of the driver's own (TuneController.__setstate__ restores `_stopper`). A copy would bring back the
        # interrupted run's clock - its deadline long past, so a budgeted search resumed and stopped every
        # trial at once, in-flight trials lost - and a copy of its TrialBook, every record pickled again at
        # each save. Saved as a reference instead: loaded, it is the guard of the search now running.
        return (_live_guard, ())

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.clock is not None and self.clock.budgeted and self.clock.expired():
            self.deadline_hit = True
        return self.too_many_failures() or self.deadline_hit

    def too_many_failures(self) -> bool:
        return self.book.consecutive_failures >= self.limit
