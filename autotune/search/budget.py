"""Planning a job against a wall-clock budget (`budget.wall_clock_s`, counted from the process start of
`autotune submit` to the registered model).

The search gets what is left once validate and deploy have their share. That share is estimated from what
the trials themselves measure - seconds to build a model and apply its method (`setup_seconds`) and seconds
per validation pass (`eval_seconds`) - because the stages after the search do exactly those things: they
rebuild the best model (and the best head-only model, and the exported and int8 copies) and evaluate them on
the test split. Before any trial has reported, conservative defaults stand in; and when a job with the same
model and test-split size ran on this machine before, what its stages after the search really took is the
estimate (`after_search_seconds.json` in the AutoTune cache), plus a margin.

A trial is not started when the time left cannot hold its first rung: the cheapest first rung seen so far
(time from trial start to its first report, per method) is the yardstick.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

# What the stages after the search cost beyond model builds and test passes: the tune stage's summary
# (trials table, study plots with fANOVA importances), validate's bootstrap and MLflow logging, deploy's
# artifact write + sha256 + MLflow registration. Measured on the 2-core reference machine with the demo job
# (3-layer MiniLM): 14-22 s; 25 s leaves room for a loaded machine.
FIXED_AFTER_SEARCH_S = 12.0
MODEL_BUILDS_AFTER_SEARCH = 3  # validate: best; deploy: the artifact, loaded twice (+1 for int8, +1 diagnostics)
TEST_PASSES_AFTER_SEARCH = 2  # validate: best; deploy: the shipped copy, part (+1 for int8, +1 diagnostics)
DEFAULT_SETUP_S = 3.0  # before any trial reported: model load + method apply (3-layer MiniLM here: ~1.5 s)
MEASURED_MARGIN = 1.15  # on top of what the stages after the search took last time (same model, here)
MEASURED_PAD_S = 2.0  # ... plus this: a few-second measurement (a tiny model) has no room in 15% for a noisy machine
DEFAULT_EVAL_S = 1.0  # one validation pass, before any trial reported (300 examples x 64 tokens: ~0.7 s)


# Interpreter start-up plus the imports before `autotune` (the console script imports it first): well under a
# second on the reference machine, a few seconds on a loaded one. A process that started longer before that
# was exec'd into by something that ran first - `bash -c 'pip install ... && autotune submit ...'` (bash execs
# its last command in place), a container entrypoint's `exec` - and its OS start time counts that work too.
STARTUP_ALLOWANCE_S = 5.0


def process_start_time() -> float:
    """When this process started (wall clock): the budget counts imports and Ray start-up too.

    The OS start time of the process, unless it lies more than STARTUP_ALLOWANCE_S before `autotune` was first
    imported - then the process is an exec'd shell and what ran before was not the job: the budget counts from
    the import (missing only the interpreter's own start-up, a fraction of a second)."""
    import autotune

    imported_at = float(autotune.IMPORTED_AT)
    try:
        import psutil

        created = float(psutil.Process(os.getpid()).create_time())
    except Exception:  # noqa: BLE001 - psutil comes with Ray; without it, the import is the best we know
        return imported_at
    return created if imported_at - created <= STARTUP_ALLOWANCE_S else imported_at


@dataclass
class SearchClock:
    """Deadlines of the search: the job's (wall_clock_s, minus what validate and deploy need) and the
    search's own (time_budget_s from the start of the tune stage), whichever comes first."""

    started_at: float = field(default_factory=time.time)  # when the job's clock started (process start)
    job_deadline: float | None = None  # absolute time the registered model is due
    search_deadline: float | None = None  # absolute time from budget.time_budget_s
    test_to_val: float = 1.0  # test split size / validation split size
    int8: bool = False
    diagnostics: bool = True  # validate's head baseline (a test pass) and forgetting measure (a base model build)
    setup_s: list[float] = field(default_factory=list)
    eval_s: list[float] = field(default_factory=list)
    first_rung_s: dict[str, float] = field(default_factory=dict)  # method -> fastest start-to-first-report
    measured_after_s: float | None = None  # what the stages after the search took last time (same model, here)
    expired_at: float | None = None  # when the search was first seen past its deadline

    def plan(self, ended_at: float) -> dict[str, float]:
        """The budget plan as it stood when the search ended, in seconds from the job's start: the search's
        deadline, when it was seen to pass, when the search really ended, and what validate and deploy were given."""
        d = self.deadline()
        out = {"search_deadline_s": d - self.started_at if d is not None else None,
               "deadline_seen_s": self.expired_at - self.started_at if self.expired_at is not None else None,
               "search_ended_s": ended_at - self.started_at, "reserved_after_search_s": self.reserve_s()}
        return {k: round(v, 1) for k, v in out.items() if v is not None}

    @property
    def budgeted(self) -> bool:
        return self.job_deadline is not None or self.search_deadline is not None

    def observe(self, method: str, result: dict, seconds_since_start: float) -> None:
        # a head on cached features, or a trial starting from cached frozen-layer outputs, says nothing of the
        # cost of a whole-model pass (what validate and deploy run)
        full_model = not result.get("cached_features") and not result.get("cached_prefix_layers")
        if "setup_seconds" in result and full_model:
            self.setup_s.append(float(result["setup_seconds"]))
        if "eval_seconds" in result and full_model:
            self.eval_s.append(float(result["eval_seconds"]))
        if int(result.get("rung", 0)) == 1:
            prev = self.first_rung_s.get(method)
            self.first_rung_s[method] = seconds_since_start if prev is None else min(prev, seconds_since_start)

    def reserve_s(self) -> float:
        """Seconds validate and deploy (and the tune stage's summary) need after the search ends."""
        # the fastest setup seen: a worker's first trial also pays its imports, which the driver has done
        setup = min(self.setup_s) if self.setup_s else DEFAULT_SETUP_S
        evals = _median(self.eval_s, DEFAULT_EVAL_S) * self.test_to_val
        builds = MODEL_BUILDS_AFTER_SEARCH + (1 if self.int8 else 0) + (1 if self.diagnostics else 0)
        passes = TEST_PASSES_AFTER_SEARCH + (1 if self.int8 else 0) + (1 if self.diagnostics else 0)
        if self.measured_after_s is not None:
            # measured beats estimated: the driver's stages run on every core once the trials are gone, so a
            # formula fed by single-threaded trials under load overshoots by 2x; the last real run does not
            return MEASURED_MARGIN * self.measured_after_s + MEASURED_PAD_S
        return FIXED_AFTER_SEARCH_S + builds * setup + passes * evals

    def deadline(self) -> float | None:
        """When the search must stop (absolute time), or None without a budget."""
        ends = [d for d in (self.search_deadline,) if d is not None]
        if self.job_deadline is not None:
            ends.append(self.job_deadline - self.reserve_s())
        return min(ends) if ends else None

    def left(self) -> float:
        d = self.deadline()
        return float("inf") if d is None else d - time.time()

    def expired(self) -> bool:
        if self.left() > 0:
            return False
        if self.expired_at is None:
            self.expired_at = time.time()
        return True

    def can_start_trial(self) -> bool:
        """False when the first rung of the slowest method seen so far would not fit in the time left. The
        method of the next trial is not known before it is sampled, and a trial that cannot reach a rung before
        the deadline only delays the end of the search: Ray stops it at its first report, past the deadline
        (measured: a full fine-tuning trial started 12 s before the end of a 150-s job ran the job 4-6 s over)."""
        if not self.budgeted:
            return True
        left = self.left()
        if left <= 0:
            return False
        if not self.first_rung_s:
            return True
        return max(self.first_rung_s.values()) <= left


def _median(values: list[float], default: float) -> float:
    if not values:
        return default
    s = sorted(values)
    return s[len(s) // 2]


def _history_path():
    from autotune.data.demo import cache_dir

    return cache_dir() / "after_search_seconds.json"


def history_key(model_cfg, n_test: int, int8: bool, champion: bool, diagnostics: bool = True) -> str:
    """What the stages after the search cost depends on: the model, the test split's size, the int8 copy,
    whether a registered champion is evaluated too and whether validate's diagnostics run."""
    import json

    key = [model_cfg.name_or_path, model_cfg.num_hidden_layers, model_cfg.max_length, round(n_test, -2), bool(int8),
           bool(champion)]
    return json.dumps(key if diagnostics else [*key, "no-diagnostics"])


def measured_after_search(key: str) -> float | None:
    """Seconds the stages after the search took in the last job with this key on this machine."""
    import json

    try:
        return float(json.loads(_history_path().read_text())[key]["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_after_search(key: str, seconds: float) -> None:
    """Remember how long validate + deploy (+ the search summary) took, for the next job's budget plan."""
    import json

    path = _history_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[key] = {"seconds": round(seconds, 1), "when": time.time()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the next plan its measurement
