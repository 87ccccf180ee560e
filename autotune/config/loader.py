"""Load a job file: YAML -> pydantic models -> compiled search space, every problem reported at once,
as `FILE: yaml.path: what must hold (got X)`, before anything heavy is imported or started."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from autotune.config.errors import format_pydantic, show
from autotune.config.job import JobConfig
from autotune.config.space import CompiledSpace, SearchSpace, compile_space
from autotune.data.prepare import format_of
from autotune.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ResolvedJob:
    """A validated job: the typed config plus everything derived from where it was loaded."""

    config: JobConfig
    space: CompiledSpace
    space_raw: SearchSpace
    space_source: str  # file the space came from, or "<inline>"
    job_path: Path
    output_dir: Path
    data_path: Path | None

    def resolved_dict(self) -> dict[str, Any]:
        """The job with defaults filled in and the space inlined (what is logged to MLflow)."""
        data = self.config.model_dump(mode="json", by_alias=True)
        data["search"]["space"] = self.space_raw.model_dump(mode="json", exclude_none=True)
        data["output_dir"] = str(self.output_dir)
        if self.data_path is not None:
            data["data"]["path"] = str(self.data_path)
        return data

    def fingerprint(self) -> str:
        """Hash of the resolved job with passwords masked: the job saved to OUTPUT_DIR/job.yaml (masked)
        and the job as submitted hash the same, so `autotune resume` recognises finished stages."""
        from autotune.redact import redact

        blob = redact(json.dumps(self.resolved_dict(), sort_keys=True)).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def read_yaml(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: must be UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError([f"{path}: not valid YAML at {where}: {getattr(exc, 'problem', exc)}"]) from None


def _find_space_file(ref: str, job_dir: Path) -> Path | None:
    for base in (job_dir, Path.cwd(), REPO_ROOT):
        for cand in (base / ref, base / "search_spaces" / ref, base / "search_spaces" / f"{ref}.yaml"):
            if cand.is_file():
                return cand.resolve()
    return None


def load_space_file(path: Path) -> SearchSpace:
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: must be a mapping with a 'methods' key (got {show(raw)})"])
    try:
        return SearchSpace.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_pydantic(exc, str(path), model=SearchSpace)) from None


def load_job(path: str | Path) -> ResolvedJob:
    """Parse and check a job file. Raises ConfigError listing every problem."""
    job_path = Path(path)
    raw = read_yaml(job_path)
    src = str(job_path)
    if not isinstance(raw, dict):
        raise ConfigError([f"{src}: must be a mapping of job settings (got {show(raw)})"])
    try:
        config = JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_pydantic(exc, src, model=JobConfig)) from None

    problems: list[str] = []
    job_dir = job_path.resolve().parent
    # --- the search space: a file reference or inline -----------------------------------------------
    if isinstance(config.search.space, str):
        space_file = _find_space_file(config.search.space, job_dir)
        if space_file is None:
            raise ConfigError([f"{src}: search.space: file not found (got {show(config.search.space)}; looked beside the job file, in . and in search_spaces/)"])
        space_raw = load_space_file(space_file)
        space, errs = compile_space(space_raw, str(space_file))
        space_source = str(space_file)
    else:
        space_raw = config.search.space
        space, errs = compile_space(space_raw, src, prefix="search.space")
        space_source = "<inline>"
    problems += errs
    # --- initial points must lie in the space ------------------------------------------------------
    if space is not None:
        from autotune.methods import REGISTRY

        for i, point in enumerate(config.search.initial_points):
            where = f"{src}: search.initial_points[{i}]"
            if point.method not in space.methods:
                problems.append(f"{where}.method: must be a method of the search space ({', '.join(space.methods)}) (got {show(point.method)})")
                continue
            try:
                REGISTRY[point.method].Params(**point.knobs)
            except ValidationError as exc:
                problems += format_pydantic(exc, src, prefix=("search", "initial_points", i, "knobs"))
                continue
            problems += _point_in_space(space, point, f"{where}.knobs")
    # --- data file must exist ------------------------------------------------------------------------
    data_path = None
    if config.data.path is not None:
        data_path = (job_dir / config.data.path).resolve()
        if not data_path.is_file():
            problems.append(f"{src}: data.path: file not found (got {show(config.data.path)}, resolved to {data_path})")
        else:
            fmt = config.data.format if config.data.format != "auto" else format_of(data_path)
            if fmt is None:
                problems.append(f"{src}: data.path: extension must be .csv, .jsonl, .json or .parquet, or set data.format (got {show(data_path.name)})")
    # --- resources must fit the scheduler's promise ----------------------------------------------------
    if config.scheduler.kind == "asha" and config.scheduler.grace_period > _rungs(config):
        problems.append(
            f"{src}: scheduler.grace_period: must be <= the number of rungs, training.epochs x training.evals_per_epoch = {_rungs(config)} (got {config.scheduler.grace_period})"
        )
    if problems:
        raise ConfigError(problems)
    output_dir = Path(config.output_dir) if config.output_dir else Path("runs") / config.name
    if not output_dir.is_absolute():
        output_dir = (job_dir / output_dir) if config.output_dir else (Path.cwd() / output_dir)
    return ResolvedJob(config, space, space_raw, space_source, job_path.resolve(), output_dir.resolve(), data_path)


def _point_in_space(space: CompiledSpace, point, where: str) -> list[str]:
    """An enqueued point must be a point of the space: searched knobs only, inside their ranges/choices."""
    knobs = {k.name.split(".", 1)[1]: k for k in space.methods[point.method]}
    searched = [n for n, k in knobs.items() if k.kind != "fixed"]
    out = []
    for name, value in point.knobs.items():
        knob = knobs.get(name)
        if knob is None or knob.kind == "fixed":
            out.append(f"{where}.{name}: must be a knob the space searches for {point.method} "
                       f"({', '.join(searched) or 'none'}) (got {show(value)})")
        elif knob.kind == "categorical":
            encoded = ",".join(map(str, value)) if knob.list_valued and isinstance(value, list) else value
            if encoded not in knob.choices:
                out.append(f"{where}.{name}: must be one of the space's choices {list(knob.choices)} (got {show(value)})")
        elif not (isinstance(value, (int, float)) and knob.low <= value <= knob.high):
            out.append(f"{where}.{name}: must lie in the space's range [{knob.low}, {knob.high}] (got {show(value)})")
    return out


def _rungs(config: JobConfig) -> int:
    import math

    return max(1, math.ceil(config.training.epochs * config.training.evals_per_epoch))
