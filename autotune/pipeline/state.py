"""Per-job and per-stage state records under OUTPUT_DIR/state/: what ran, with which inputs, what it made.

Written atomically (temp file + rename), so a job killed at any moment leaves either the old or the new
record, never half of one."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

StageStatus = Literal["pending", "running", "succeeded", "failed", "interrupted", "skipped"]
STAGES = ("preprocess", "tune", "validate", "deploy")


class StageState(BaseModel):
    stage: str
    status: StageStatus = "pending"
    inputs_hash: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class JobState(BaseModel):
    name: str
    job_fingerprint: str
    parent_run_id: str | None = None
    tracking_uri: str
    experiment: str
    created_at: float = Field(default_factory=time.time)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    """The old content or the new, never half of it - also when the disk fills up mid-write (the temp file is
    removed and the error raised: the record is as it was)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


class StateStore:
    def __init__(self, output_dir: Path):
        self.dir = output_dir / "state"

    def job(self) -> JobState | None:
        p = self.dir / "job.json"
        return JobState.model_validate_json(p.read_text()) if p.is_file() else None

    def save_job(self, state: JobState) -> None:
        write_json_atomic(self.dir / "job.json", state.model_dump())

    def stage(self, name: str) -> StageState:
        p = self.dir / f"{name}.json"
        return StageState.model_validate_json(p.read_text()) if p.is_file() else StageState(stage=name)

    def save_stage(self, state: StageState) -> None:
        write_json_atomic(self.dir / f"{state.stage}.json", state.model_dump())
