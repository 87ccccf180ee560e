"""Driver-side Tune callbacks: MLflow child runs, the progress display, and the consecutive-failure guard.

They run in the driver process, so MLflow and the console have one writer each."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback
from ray.tune.stopper import Stopper

from autotune.config.space import CompiledSpace
from autotune.search.best import BEST_TAG, best_record
from autotune.search.callbacks_keys import NUMBER_KEY
from autotune.redact import redact
from autotune.tracking.mlflow_tracker import KNOBS_TAG, STATUS_TAG, TRIAL_ID_TAG, MlflowTracker

LOGGED_METRICS = (
    "val_accuracy", "val_macro_f1", "val_loss", "train_loss", "trainable_params", "optimizer_state_bytes",
    "epoch", "examples", "seconds", "samples_per_s",
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
                 console=None, total: int = 0, metric: str = "val_accuracy", mode: str = "max", clock=None):
        self.space = space
        self.clock = clock  # SearchClock: learns setup, eval and first-rung seconds from the reports
        self.rung_log = None  # path of a JSON-lines file: one line per evaluated rung (time since job start)
        self.orphan_runs: dict[int, str] = {}  # trial number -> MLflow run of a crashed driver's orphan trial
        self.tracker = tracker
        self.parent = parent_run_id
        self.console = console
        self.total = total
        self.metric, self.mode = metric, mode
        self.records: dict[str, TrialRecord] = {}
        self.consecutive_failures = 0
        self.start = time.time()

    def __getstate__(self):
        # Ray pickles the run config (with its callbacks) into the experiment state; the MLflow client and
        # the console are driver-local and re-attached by `autotune resume`.
        state = self.__dict__.copy()
        state["tracker"] = None
        state["console"] = None
        return state

    # --- Tune hooks ---------------------------------------------------------------------------
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

    def on_trial_complete(self, iteration, trials, trial, **info):
        rec = self.records.get(trial.trial_id)
        if rec is None:
            return
        rec.status = status_of(trial.last_result or {})
        rec.ended = time.time()
        self.consecutive_failures = 0
        self._close(rec, "FINISHED" if rec.status == "finished" else "KILLED")

    def on_trial_error(self, iteration, trials, trial, **info):
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
            self.tracker.set_tags(rec.run_id, {STATUS_TAG: rec.status})
            self.tracker.end(rec.run_id, mlflow_status)
        if self.console is not None:
            self._print(rec)

    @property
    def _sign(self) -> int:
        return 1 if self.mode == "max" else -1

    def best(self) -> TrialRecord | None:
        """THE best-trial rule: the best objective at any evaluated rung of any trial that did not fail
        (finished, pruned by ASHA, or stopped by the budget); on a tie, fewer trainable parameters."""
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
            if self.tracker is not None and rec.run_id:
                self.tracker.set_tags(rec.run_id, {"autotune.stop_reason": reason})
            self._close(rec, "KILLED")
            closed.append(rec)
        return closed

    def _print(self, rec: TrialRecord) -> None:
        done = sum(r.status != "running" for r in self.records.values())
        of = f"/{self.total}" if self.total else ""
        knobs = " ".join(f"{k}={_fmt(v)}" for k, v in rec.knobs.items())
        colour = {"finished": "green", "pruned": "yellow", "stopped": "yellow", "failed": "red"}.get(rec.status, "white")
        value = rec.metrics.get(self.metric)
        what = f"{self.metric}={value:.4f}" if value is not None else rec.error or ""
        best = self.best()
        best_txt = f" | best {best.best[self.metric]:.4f} (trial {best.number}, {best.method})" if best else ""
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


class FailureGuard(Stopper):
    """Stops the whole search after N consecutive failed trials (a broken setup, not bad luck), and when
    the budget's deadline has passed (`clock`)."""

    def __init__(self, book: TrialBook, limit: int, clock=None):
        self.book = book
        self.limit = limit
        self.clock = clock
        self.deadline_hit = False

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.clock is not None and self.clock.budgeted and self.clock.expired():
            self.deadline_hit = True
        return self.too_many_failures() or self.deadline_hit

    def too_many_failures(self) -> bool:
        return self.book.consecutive_failures >= self.limit
