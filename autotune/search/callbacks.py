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
from autotune.search.callbacks_keys import NUMBER_KEY
from autotune.redact import redact
from autotune.tracking.mlflow_tracker import KNOBS_TAG, STATUS_TAG, MlflowTracker

LOGGED_METRICS = (
    "val_accuracy", "val_macro_f1", "val_loss", "train_loss", "trainable_params", "optimizer_state_bytes",
    "epoch", "seconds", "samples_per_s",
)


def trial_number(config: dict[str, Any]) -> int:
    return int(config.get(NUMBER_KEY, -1))


@dataclass
class TrialRecord:
    trial_id: str
    number: int
    method: str
    knobs: dict[str, Any]
    status: str = "running"  # running | finished | pruned | failed
    metrics: dict[str, float] = field(default_factory=dict)
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
                 console=None, total: int = 0, metric: str = "val_accuracy", mode: str = "max"):
        self.space = space
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

    def best(self) -> TrialRecord | None:
        done = [r for r in self.records.values() if r.status in ("finished", "pruned") and self.metric in r.metrics]
        if not done:
            return None
        sign = 1 if self.mode == "max" else -1
        # full-length trials first, then the objective, then - on a tie - fewer trainable parameters
        return max(done, key=lambda r: (r.status == "finished", sign * r.metrics[self.metric],
                                        -r.metrics.get("trainable_params", 0)))

    def _print(self, rec: TrialRecord) -> None:
        done = sum(r.status != "running" for r in self.records.values())
        knobs = " ".join(f"{k}={_fmt(v)}" for k, v in rec.knobs.items())
        colour = {"finished": "green", "pruned": "yellow", "failed": "red"}[rec.status]
        value = rec.metrics.get(self.metric)
        what = f"{self.metric}={value:.4f}" if value is not None else rec.error or ""
        best = self.best()
        best_txt = f" | best {best.metrics[self.metric]:.4f} (trial {best.number}, {best.method})" if best else ""
        secs = (rec.ended or time.time()) - rec.started
        elapsed = time.time() - self.start
        self.console.print(
            f"[{done}/{self.total}] trial {rec.number:>3} [bold]{rec.method:<6}[/] [{colour}]{rec.status:<8}[/] "
            f"{what} ({secs:.0f} s) {knobs}{best_txt}  [dim]{elapsed:.0f} s elapsed[/]",
            highlight=False,
        )


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        return "+".join(map(str, v))
    return str(v)


class FailureGuard(Stopper):
    """Stops the whole search after N consecutive failed trials (a broken setup, not bad luck)."""

    def __init__(self, book: TrialBook, limit: int):
        self.book = book
        self.limit = limit

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.book.consecutive_failures >= self.limit
