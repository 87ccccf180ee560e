"""Load a job file: YAML -> pydantic models -> compiled search space, every problem reported at once,
as `FILE: yaml.path: what must hold (got X)`, before anything heavy is imported or started.

A job file is untrusted input: it is read only if it is a regular file of at most MAX_FILE_BYTES (a FIFO,
a device or a directory is refused before it is opened, so nothing blocks or reads without end). YAML
aliases are refused (an alias bomb expands exponentially), as are more than MAX_NODES keys and values,
nesting deeper than MAX_DEPTH, duplicate keys, non-finite numbers (.inf, .nan) anywhere in the file,
true/false where a number is expected, and sizes beyond LIMITS. Messages echo at most a few hundred
characters of any value and at most MAX_PROBLEMS lines (see config/errors.py)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from autotune.config.errors import cap_problems, format_pydantic, join_path, show
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


MAX_FILE_BYTES = 1 << 20  # a job or search-space file; the shipped ones are about 1 KiB
MAX_DEPTH = 32  # YAML nesting; the deepest shipped setting is 7 levels down
MAX_NODES = 20_000  # keys and values in one file; a job with an inline space and initial points has a few hundred
MAX_INT_DIGITS = 64
SPACE_SUFFIXES = (".yaml", ".yml", ".json")

# Sizes no job needs, refused before anything starts: setting -> (lowest, highest), inclusive. The models
# in job.py say what is *valid*; these say what is *sane* (`num_trials: 10**30` would never end,
# `epochs: 1e-9` trains on no example, a seed must fit Optuna's and numpy's 32-bit seeds).
LIMITS: dict[str, tuple[float | None, float | None]] = {
    "seed": (0, 2**32 - 1),
    "data.split.seed": (0, 2**32 - 1),
    "budget.num_trials": (1, 100_000),
    "budget.max_concurrent_trials": (1, 10_000),
    "budget.max_consecutive_failures": (1, 100_000),
    "budget.max_retries": (0, 100),
    "budget.time_budget_s": (None, 366 * 24 * 3600.0),
    "budget.wall_clock_s": (None, 366 * 24 * 3600.0),
    "training.epochs": (1e-3, 1000),
    "training.batch_size": (1, 65_536),
    "training.eval_batch_size": (1, 65_536),
    "training.evals_per_epoch": (1, 1000),
    "sampler.n_startup_trials": (0, 100_000),
    "validate.bootstrap_samples": (100, 100_000),
}


def _size(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n / 1024:g} KiB"


class _Refused(Exception):
    """A YAML construct AutoTune does not read (an alias, too deep a nesting): stops the parse."""


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def read_text_file(path: Path, what: str = "job", limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes. Its type is checked with os.stat before it
    is opened (opening a FIFO blocks; /dev/zero never ends) and again on the open descriptor."""
    def refuse(mode: int) -> ConfigError:
        if stat.S_ISDIR(mode):
            return ConfigError([f"{path}: is a directory, not a {what} file"])
        return ConfigError([f"{path}: must be a regular file (got a {_file_kind(mode)})"])

    def too_large(size: int) -> ConfigError:
        return ConfigError([f"{path}: file too large ({size:,} bytes; a {what} file may hold at most {_size(limit)})"])

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise refuse(st.st_mode)
        if st.st_size > limit:
            raise too_large(st.st_size)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):  # swapped between stat and open
                raise refuse(st.st_mode)
            raw = fh.read(limit + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError([f"{path}: file not found"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: cannot be read (permission denied)"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.strerror or type(exc).__name__})"]) from None
    if len(raw) > limit:
        raise too_large(len(raw))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}: must be UTF-8 text ({exc.reason} at line {line}, byte {exc.start})"]) from None


@functools.lru_cache(maxsize=1)
def _loader_class():
    """A YAML SafeLoader (libyaml's parser where available: a 1 MiB file parses in about a second, not 7)
    whose composer refuses aliases and deep nesting and notes duplicate keys and unusable numbers, each
    with its YAML path."""
    import yaml
    from yaml.composer import Composer
    from yaml.constructor import SafeConstructor
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode
    from yaml.resolver import Resolver

    try:
        from yaml.cyaml import CParser

        parsers: tuple = (CParser,)
    except ImportError:  # PyYAML built without libyaml
        from yaml.parser import Parser
        from yaml.reader import Reader
        from yaml.scanner import Scanner

        parsers = (Reader, Scanner, Parser)

    INT, FLOAT, STR, TIMESTAMP = (f"tag:yaml.org,2002:{t}" for t in ("int", "float", "str", "timestamp"))

    class JobYamlLoader(Composer, *parsers, SafeConstructor, Resolver):
        def __init__(self, stream):
            for base in parsers:
                base.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self.path: list = []
            self.nodes = 0
            self.issues: list[tuple[tuple, str]] = []  # (YAML path, what must hold)

        def compose_node(self, parent, index):
            event = self.peek_event()
            if parent is None or index is None:  # the document, or a mapping's key: the path so far
                here = self.path
            else:  # an item of a list (index: its position) or a mapping's value (index: its key node)
                here = self.path + [index if isinstance(parent, SequenceNode) else
                                    index.value if isinstance(index, ScalarNode) else "?"]
            if isinstance(event, yaml.AliasEvent):
                raise _Refused(f"{join_path(here)}: YAML aliases are not allowed (*{str(event.anchor)[:50]} at "
                               f"{_where(event.start_mark)}): write the value out in full")
            self.nodes += 1
            if self.nodes > MAX_NODES:
                raise _Refused(f"more than {MAX_NODES:,} keys and values (at {_where(event.start_mark)}): not a job file")
            if len(here) > MAX_DEPTH:
                raise _Refused(f"{join_path(here[:MAX_DEPTH])}: nested deeper than {MAX_DEPTH} levels "
                               f"(at {_where(event.start_mark)})")
            saved, self.path = self.path, here
            try:
                node = super().compose_node(parent, index)
            finally:
                self.path = saved
            if isinstance(node, ScalarNode):
                self._check_scalar(node, here)
            elif isinstance(node, MappingNode):
                self._check_keys(node, here)
            return node

        def _check_scalar(self, node, here) -> None:
            if node.tag == INT and len(node.value) > MAX_INT_DIGITS:
                self.issues.append((tuple(here), f"must be an integer of at most {MAX_INT_DIGITS} digits (got {len(node.value)} characters)"))
                node.tag = STR
            elif node.tag == FLOAT:
                try:
                    value = self.construct_yaml_float(node)
                except ValueError:
                    value = float("nan")
                if not math.isfinite(value):
                    self.issues.append((tuple(here), f"must be a finite number (got {node.value[:50]})"))
            elif node.tag == TIMESTAMP:
                try:
                    self.construct_yaml_timestamp(node)
                except (ValueError, OverflowError) as exc:
                    self.issues.append((tuple(here), f"not a valid date or time ({exc}; quote it to mean text) (got {show(node.value)})"))
                    node.tag = STR

        def _check_keys(self, node, here) -> None:
            first: dict = {}
            for key, _ in node.value:
                if not isinstance(key, ScalarNode):
                    continue
                ident, line = (key.tag, key.value), key.start_mark.line + 1
                if ident in first:
                    self.issues.append((tuple(here) + (key.value,),
                                        f"duplicate key (given again at line {line}; first at line {first[ident]}): give each key once"))
                else:
                    first[ident] = line

    return JobYamlLoader


def _where(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "an unknown position"


def read_yaml(path: Path, issues: list[str] | None = None, what: str = "job") -> Any:
    """Parse a job or space file. Problems that stop the parse raise ConfigError; problems with a value
    (duplicate key, .inf) are appended to `issues` as full lines when a list is given, else raised."""
    import yaml

    text = read_text_file(path, what)
    loader = _loader_class()(text)
    try:
        data = loader.get_single_data()
    except _Refused as exc:
        raise ConfigError([f"{path}: {exc}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what_failed = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError([f"{path}: not valid YAML at {_where(mark)}: {what_failed[:300]}"]) from None
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position] if isinstance(exc.position, int) else ""
        where = f"line {before.count(chr(10)) + 1}, column {len(before) - before.rfind(chr(10))}"
        code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        raise ConfigError([f"{path}: not valid YAML at {where}: character U+{code:04X}: {exc.reason}"]) from None
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
        raise ConfigError([f"{path}: not valid YAML: {str(exc)[:300]}"]) from None
    finally:
        loader.dispose()
    found = [f"{path}: {join_path(list(where))}: {msg}" for where, msg in loader.issues]
    if found and issues is None:
        raise ConfigError(found)
    if issues is not None:
        issues.extend(found)
    return data


def _kind_of(value: Any) -> str:
    """What a document is, without echoing it (a mistaken path must not print some other file)."""
    if value is None:
        return "an empty document"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    return f"a {type(value).__name__}"


def _find_space_file(ref: str, job_dir: Path) -> Path | None:
    """The first regular file among the candidates; failing that, the first thing that exists (so that a
    directory or a device is named as such, not as 'file not found')."""
    cands = [c for base in (job_dir, Path.cwd(), REPO_ROOT)
             for c in (base / ref, base / "search_spaces" / ref, base / "search_spaces" / f"{ref}.yaml")]
    for cand in cands:
        if cand.is_file():
            return cand.resolve()
    return next((c.resolve() for c in cands if c.exists()), None)


def load_space_file(path: Path) -> SearchSpace:
    try:
        raw = read_yaml(path, what="search-space")
        if not isinstance(raw, dict):
            raise ConfigError([f"{path}: must be a mapping with a 'methods' key (got {_kind_of(raw)})"])
        try:
            return SearchSpace.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_pydantic(exc, str(path), model=SearchSpace)) from None
    except ConfigError as exc:
        raise _capped(exc) from None


def _capped(exc: ConfigError) -> ConfigError:
    out = ConfigError(cap_problems(exc.problems))
    out.total = getattr(exc, "total", len(exc.problems))  # how many there were, shown or not
    return out


def load_job(path: str | Path, data_missing_ok: bool = False) -> ResolvedJob:
    """Parse and check a job file. Raises ConfigError listing every problem (the first MAX_PROBLEMS).
    `data_missing_ok`: a data.path that no longer exists is not a problem (`autotune resume` of a job whose
    preprocess stage already left its cleaned splits in the output folder; the caller checks they are there)."""
    try:
        return _load_job(Path(path), data_missing_ok)
    except ConfigError as exc:
        raise _capped(exc) from None


def read_job_config(job_path: Path) -> tuple[JobConfig, list[str], list[str]]:
    """(settings, YAML issues, problems of the settings' limits) of a job file, before its search space and
    data are looked at; a file that is not a mapping of valid settings raises ConfigError."""
    src = str(job_path)
    issues: list[str] = []  # duplicate keys, .inf: reported with the models' problems
    raw = read_yaml(job_path, issues)
    if not isinstance(raw, dict):
        raise ConfigError(issues + [f"{src}: must be a mapping of job settings (got {_kind_of(raw)})"])
    try:
        config = JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_merge(issues, format_pydantic(exc, src, model=JobConfig), src)) from None
    return config, issues, _limit_problems(config, src)


def data_path_problems(config: JobConfig, job_path: Path, data_missing_ok: bool = False) -> tuple[Path | None, list[str]]:
    """(resolved data.path or None, problems): the file must exist (unless data_missing_ok), be a regular
    file and have a format AutoTune reads."""
    src = str(job_path)
    problems: list[str] = []
    if config.data.path is None:
        return None, problems
    data_path = (job_path.resolve().parent / config.data.path).resolve()
    if not data_path.exists():
        if not data_missing_ok:
            problems.append(f"{src}: data.path: file not found (got {show(config.data.path)}, resolved to {data_path})")
    elif not data_path.is_file():
        kind = _file_kind(data_path.stat().st_mode)
        problems.append(f"{src}: data.path: must be a regular file (got a {kind}: {show(config.data.path)}, resolved to {data_path})")
    else:
        fmt = config.data.format if config.data.format != "auto" else format_of(data_path)
        if fmt is None:
            problems.append(f"{src}: data.path: extension must be .csv, .jsonl, .json or .parquet, or set data.format (got {show(data_path.name)})")
    return data_path, problems


def _load_job(job_path: Path, data_missing_ok: bool = False) -> ResolvedJob:
    src = str(job_path)
    config, issues, problems = read_job_config(job_path)
    job_dir = job_path.resolve().parent
    # --- the search space: a file reference or inline -----------------------------------------------
    if isinstance(config.search.space, str):
        space_file = _find_space_file(config.search.space, job_dir)
        if space_file is None:
            raise ConfigError([f"{src}: search.space: file not found (got {show(config.search.space)}; looked beside the job file, in . and in search_spaces/)"])
        if space_file.suffix.lower() not in SPACE_SUFFIXES:  # a mistaken path must not parse (and echo) another file
            raise ConfigError([f"{src}: search.space: must name a {', '.join(SPACE_SUFFIXES)} file (got {show(config.search.space)}, resolved to {space_file})"])
        space_raw = load_space_file(space_file)
        space, errs = compile_space(space_raw, str(space_file))
        errs = _bool_knobs(space_raw, str(space_file), "") + errs
        space_source = str(space_file)
    else:
        space_raw = config.search.space
        space, errs = compile_space(space_raw, src, prefix="search.space")
        errs = _bool_knobs(space_raw, src, "search.space.") + errs
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
            fields = REGISTRY[point.method].Params.model_fields
            bools = [f"{where}.knobs.{k}: must be {_number_kind(fields[k].annotation)}, not true/false (got {show(v)})"
                     for k, v in point.knobs.items() if k in fields and isinstance(v, bool) and _number_kind(fields[k].annotation)]
            if bools:
                problems += bools
                continue
            try:
                REGISTRY[point.method].Params(**point.knobs)
            except ValidationError as exc:
                problems += format_pydantic(exc, src, prefix=("search", "initial_points", i, "knobs"))
                continue
            problems += _point_in_space(space, point, f"{where}.knobs")
    # --- data file must exist ------------------------------------------------------------------------
    data_path, data_problems = data_path_problems(config, job_path, data_missing_ok)
    problems += data_problems
    # --- resources must fit the scheduler's promise ----------------------------------------------------
    if config.scheduler.kind == "asha" and space is not None and config.scheduler.grace_period > _rungs(config, space):
        problems.append(
            f"{src}: scheduler.grace_period: must be <= the number of rungs of the longest trial ({_rungs(config, space)}) (got {config.scheduler.grace_period})"
        )
    objective = config.objective
    # a job.yaml AutoTune wrote holds the default pick: only a changed one asks for several objectives
    if objective.pick != type(objective.pick)() and not objective.multi:
        problems.append(f"{src}: objective.pick: applies to a multi-objective search only: set objective.also_minimize "
                        f"too, or drop pick (got also_minimize [])")
    elif objective.pick.smallest is not None and objective.pick.smallest not in objective.also_minimize:
        problems.append(f"{src}: objective.pick.smallest: must be one of objective.also_minimize "
                        f"{list(objective.also_minimize)} (got {show(objective.pick.smallest)})")
    if config.scheduler.noise_margin > 0 and (objective.metric == "val_loss" or objective.mode != "max"):
        problems.append(f"{src}: scheduler.noise_margin: a margin in standard errors of an accuracy applies to "
                        f"val_accuracy or val_macro_f1 maximised: set it to 0 (got {config.scheduler.noise_margin:g} "
                        f"with objective.metric {objective.metric}, direction {objective.mode})")
    if config.objective.multi and config.sampler.kind == "cmaes":
        problems.append(f"{src}: sampler.kind: must be tpe, random, gp or qmc for a multi-objective search "
                        f"(objective.also_minimize {list(config.objective.also_minimize)}); Optuna's CMA-ES is "
                        f"single-objective (got 'cmaes')")
    if problems or issues:
        raise ConfigError(_merge(issues, problems, src))
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


def _rungs(config: JobConfig, space: CompiledSpace) -> int:
    from autotune.training.loop import rung_count

    return rung_count(space.max_value("epochs", config.training.epochs), config.training)


def _merge(issues: list[str], problems: list[str], src: str) -> list[str]:
    """YAML-level issues first; a model problem at the same path (the value of a duplicate key, .inf) is dropped."""
    where = {i[len(src) + 2:].split(": ", 1)[0] for i in issues if i.startswith(src + ": ")}
    return issues + [p for p in problems if p[len(src) + 2:].split(": ", 1)[0] not in where]


def _limit_problems(config: JobConfig, src: str) -> list[str]:
    """Settings outside LIMITS (valid for the models, but no job needs them)."""
    out = []
    for dotted, (low, high) in LIMITS.items():
        value: Any = config
        for part in dotted.split("."):
            value = getattr(value, "validate_stage" if part == "validate" else part, None)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if low is not None and value < low:
            out.append(f"{src}: {dotted}: must be >= {low:g} (got {show(value)})")
        elif high is not None and value > high:
            out.append(f"{src}: {dotted}: must be <= {high:g} (got {show(value)})")
    return out


def _number_kind(ann) -> str | None:
    """'an integer' / 'a number' for a knob annotation that takes numbers but not true/false."""
    from typing import get_args

    options = get_args(ann) or (ann,)
    if bool in options or any(getattr(o, "__origin__", None) is not None for o in options):
        return None
    return "an integer" if int in options else "a number" if float in options else None


def _bool_knobs(space: SearchSpace, source: str, prefix: str) -> list[str]:
    """true/false given to a numeric knob (fixed, or one of its choices) is refused, not read as 1/0."""
    from autotune.methods import REGISTRY

    out = []
    for method, knobs in space.methods.items():
        fields = REGISTRY[method].Params.model_fields if method in REGISTRY else {}
        for name, spec in (knobs or {}).items():
            kind = _number_kind(fields[name].annotation) if name in fields else None
            if kind is None:
                continue
            where = f"{source}: {prefix}methods.{method}.{name}"
            if isinstance(spec, bool):
                out.append(f"{where}: must be {kind}, not true/false (got {show(spec)})")
            elif isinstance(spec, dict) and isinstance(spec.get("choices"), list):
                out += [f"{where}.choices[{i}]: must be {kind}, not true/false (got {show(c)})"
                        for i, c in enumerate(spec["choices"]) if isinstance(c, bool)]
    return out
