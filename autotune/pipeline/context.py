"""What every stage receives: the job, the tracker, the parent run, the console, earlier stages' results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autotune.config.loader import ResolvedJob
from autotune.pipeline.state import StateStore


@dataclass
class JobContext:
    job: ResolvedJob
    tracker: Any  # MlflowTracker
    parent_run_id: str
    console: Any  # rich Console
    store: StateStore
    address: str | None = None
    resume: bool = False
    started_at: float = 0.0  # wall-clock start of this process (budget.wall_clock_s counts from here)
    search_ended_at: float | None = None  # set by the tune stage
    after_search_from: float | None = None  # the search's end, or its deadline if it ended past it: the stages
    # after it are timed from here for the next job's plan
    history_key: str | None = None
    budget_plan: dict[str, float] | None = None  # set by the tune stage of a budgeted job: the plan and how it went
    best_model: tuple[str, Any] | None = None  # (checkpoint, exported model) as validate scored it, for deploy
    results: dict[str, Any] = field(default_factory=dict)  # stage name -> typed result model

    @property
    def out(self):
        return self.job.output_dir
