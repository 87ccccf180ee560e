"""Search spaces: the problem (which methods, which knobs, which ranges), kept apart from the algorithm.

A space YAML looks like

    methods:
      head:
        learning_rate: {low: 1.0e-3, high: 3.0e-2, log: true}
      lora:
        learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}
        rank: {low: 2, high: 32, log: true}
        target_modules: {choices: [[query, value], [query, key, value, dense]]}
        dropout: 0.05            # a bare value is fixed, not searched

Each knob is checked against its method's typed knob model: unknown knobs, ranges on non-numeric knobs,
bounds that break the knob's own constraints, `low > high` and `log` with `low <= 0` are all errors.
Bounds are inclusive, as in Optuna.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from autotune.config.errors import describe, show


class PortfolioPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field(..., description="Method of the configuration.")
    knobs: dict[str, Any] = Field(default_factory=dict, description="Its knob values (missing ones are sampled).")
    why: str | None = Field(None, description="Where it comes from (measured on which data sets).")


class SearchSpace(BaseModel):
    """The raw space as written. `compile_space` checks it against the method registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str | None = Field(None, description="Free text: what this space is for.")
    methods: dict[str, dict[str, Any]] = Field(
        ..., min_length=1, description="method name -> {knob: fixed value | {low, high, log, step} | {choices: [...]}}."
    )
    portfolio: list[PortfolioPoint] = Field(
        default_factory=list,
        description="Configurations tried first (search.portfolio: true), in the order given: each names a method and "
                    "some of its knobs; knobs outside this space's ranges, and methods not in it, are left out.",
    )


@dataclass(frozen=True)
class Knob:
    """One compiled knob: how Optuna suggests it and how its value is decoded back."""

    name: str  # Ray/Optuna parameter name: "<method>.<knob>"
    kind: str  # "fixed" | "int" | "float" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    value: Any = None
    list_valued: bool = False  # choices are lists, encoded as comma-joined strings for Optuna

    def suggest(self, trial) -> None:
        if self.kind == "int":
            trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        elif self.kind == "float":
            trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        elif self.kind == "categorical":
            trial.suggest_categorical(self.name, list(self.choices))

    def decode(self, raw: Any) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.list_valued and isinstance(raw, str):
            return [_parse_scalar(x) for x in raw.split(",")] if raw else []
        return raw


@dataclass(frozen=True)
class CompiledSpace:
    methods: dict[str, tuple[Knob, ...]]
    portfolio: tuple[tuple[str, dict[str, Any]], ...] = ()  # (method, knobs) inside the space, in order

    def max_value(self, short: str, default: float) -> float:
        """Largest value a knob (e.g. `epochs`) can take in any method; `default` where a method leaves it unset."""
        best = None
        for knobs in self.methods.values():
            by_short = {k.name.split(".", 1)[1]: k for k in knobs}
            k = by_short.get(short)
            if k is None or (k.kind == "fixed" and k.value is None):
                v = default
            elif k.kind == "fixed":
                v = k.value
            elif k.kind == "categorical":
                v = max((default if c is None else float(c)) for c in k.choices)
            else:
                v = k.high
            best = v if best is None else max(best, v)
        return float(best if best is not None else default)

    def contains(self, method: str, knobs: dict[str, Any]) -> dict[str, Any]:
        """The knobs of (method, knobs) that are searched by this space and lie inside it (others dropped)."""
        by_short = {k.name.split(".", 1)[1]: k for k in self.methods.get(method, ())}
        kept = {}
        for short, value in knobs.items():
            k = by_short.get(short)
            if k is None or k.kind == "fixed":
                continue
            if k.kind == "categorical":
                enc = ",".join(map(str, value)) if k.list_valued and isinstance(value, list) else value
                if enc in k.choices:
                    kept[short] = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and k.low <= value <= k.high:
                kept[short] = value
        return kept

    def define_by_run(self, trial) -> dict[str, Any]:
        """Optuna define-by-run: pick the method first, then only that method's knobs.
        Pure and fast (no I/O): Ray calls it on the driver for every trial."""
        method = trial.suggest_categorical("method", list(self.methods))
        fixed = {}
        for knob in self.methods[method]:
            if knob.kind == "fixed":
                fixed[knob.name] = knob.value
            else:
                knob.suggest(trial)
        return fixed or None  # Ray merges returned constants into the trial config

    def decode(self, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Flat trial config ({'method': 'lora', 'lora.rank': 8, ...}) -> (method, knob values)."""
        method = config["method"]
        knobs = {}
        for knob in self.methods[method]:
            short = knob.name.split(".", 1)[1]
            if knob.kind == "fixed":
                knobs[short] = knob.value
            elif knob.name in config:
                knobs[short] = knob.decode(config[knob.name])
        return method, knobs

    def encode_point(self, method: str, knobs: dict[str, Any]) -> dict[str, Any]:
        """(method, knob values) -> flat Optuna params, e.g. for enqueueing a known-good point."""
        point: dict[str, Any] = {"method": method}
        by_short = {k.name.split(".", 1)[1]: k for k in self.methods[method]}
        for short, value in knobs.items():
            knob = by_short.get(short)
            if knob is None or knob.kind == "fixed":
                continue
            point[knob.name] = ",".join(map(str, value)) if knob.list_valued and isinstance(value, list) else value
        return point


def _parse_scalar(text: str):
    try:
        return int(text)
    except ValueError:
        return text


def _is_numeric(annotation, want) -> bool:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_is_numeric(a, want) for a in args if a is not type(None))
    return annotation is want


def _is_list(annotation) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(_is_list(a) for a in typing.get_args(annotation) if a is not type(None))


def compile_space(space: SearchSpace, source: str, prefix: str = "") -> tuple[CompiledSpace | None, list[str]]:
    """Check `space` against the registry. Returns (compiled, problems); problems are full error lines."""
    from autotune.methods import REGISTRY

    problems: list[str] = []
    where = (prefix + "." if prefix else "")
    compiled: dict[str, tuple[Knob, ...]] = {}
    for method_name, knobs in space.methods.items():
        mpath = f"{where}methods.{method_name}"
        method = REGISTRY.get(method_name)
        if method is None:
            problems.append(f"{source}: {mpath}: unknown method (known: {', '.join(sorted(REGISTRY))})")
            continue
        fields = method.Params.model_fields
        out: list[Knob] = []
        mine: list[str] = []  # this method's problems (later methods are checked even if earlier ones fail)
        for knob_name, spec in (knobs or {}).items():
            kpath = f"{mpath}.{knob_name}"
            if knob_name == "layers" and isinstance(spec, dict) and set(spec) == {"importance_top_k"}:
                # `layers: {importance_top_k: ...}`: the probe's top k layers, k fixed or searched
                knob_name, spec, kpath = "importance_top_k", spec["importance_top_k"], f"{kpath}.importance_top_k"
            if knob_name not in fields:
                mine.append(f"{source}: {kpath}: unknown knob for method {method_name} (allowed: {', '.join(fields)})")
                continue
            knob, errs = _compile_knob(f"{method_name}.{knob_name}", fields[knob_name], spec)
            mine.extend(f"{source}: {kpath}{sub}: {msg}" for sub, msg in errs)
            if knob is not None and not errs:
                out.append(knob)
        if not mine:
            mine += _check_combinations(method, out, source, mpath)
        if not mine:  # what the method needs of this machine (qlora: a CUDA GPU), said before anything starts
            mine += [f"{source}: {mpath}: {need}" for need in method.unmet_requirements()]
        problems += mine
        compiled[method_name] = tuple(out)
    portfolio = []
    for i, point in enumerate(space.portfolio):
        if point.method not in REGISTRY:
            problems.append(f"{source}: {where}portfolio[{i}].method: unknown method (known: {', '.join(sorted(REGISTRY))})")
            continue
        if point.method not in compiled:
            continue  # a shipped portfolio may name methods a narrowed space left out
        method = REGISTRY[point.method]
        try:
            method.Params(**point.knobs)
        except ValidationError as exc:
            problems += [f"{source}: {where}portfolio[{i}].knobs{''.join('.' + str(x) for x in e['loc'])}: {describe(e)}"
                         for e in exc.errors(include_url=False)]
            continue
        portfolio.append((point.method, point.knobs))
    if problems:
        return None, problems
    space_c = CompiledSpace(compiled)
    kept = tuple((m, space_c.contains(m, k)) for m, k in portfolio)
    return CompiledSpace(compiled, kept), []


def _check_combinations(method, knobs: list[Knob], source: str, mpath: str) -> list[str]:
    """The fixed values together, and each range endpoint / choice with them, must make valid knobs:
    `full: {layers: [1], unfreeze_last_k: {low: 1, high: 3}}` would fail in every trial."""
    fixed = {k.name.split(".", 1)[1]: k.value for k in knobs if k.kind == "fixed"}
    out: list[str] = []

    def attempt(values: dict, where: str) -> None:
        try:
            method.Params(**values)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                line = f"{source}: {where}: {describe(err)}"
                if line not in out:
                    out.append(line)

    attempt(fixed, mpath)
    for k in knobs:
        short = k.name.split(".", 1)[1]
        candidates = [k.low, k.high] if k.kind in ("int", "float") else [k.decode(c) for c in k.choices]
        for value in candidates if k.kind != "fixed" else []:
            attempt({**fixed, short: value}, f"{mpath}.{short} = {show(value)}")
    return out


def _compile_knob(name: str, field, spec) -> tuple[Knob | None, list[tuple[str, str]]]:
    ann = field.annotation
    adapter = TypeAdapter(typing.Annotated[ann, *field.metadata]) if field.metadata else TypeAdapter(ann)

    def check(value, sub):
        try:
            return adapter.validate_python(value), []
        except ValidationError as exc:
            return None, [(sub, describe(e)) for e in exc.errors(include_url=False)]

    if isinstance(spec, dict) and "choices" in spec:
        extra = set(spec) - {"choices"}
        if extra:
            return None, [("", f"a choice knob takes only 'choices' (got extra keys {sorted(extra)})")]
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            return None, [(".choices", f"must be a non-empty list (got {show(choices)})")]
        errs = []
        for i, c in enumerate(choices):
            errs += check(c, f".choices[{i}]")[1]
        if errs:
            return None, errs
        list_valued = any(isinstance(c, list) for c in choices)
        enc = tuple(",".join(map(str, c)) if isinstance(c, list) else c for c in choices)
        if len(set(enc)) != len(enc):
            return None, [(".choices", f"must not repeat a choice (got {show(choices)})")]
        return Knob(name, "categorical", choices=enc, list_valued=list_valued), []
    if isinstance(spec, dict) and ("low" in spec or "high" in spec):
        allowed = {"low", "high", "log", "step"}
        extra = set(spec) - allowed
        if extra:
            return None, [("", f"a range takes low, high, log, step (got extra keys {sorted(extra)})")]
        is_int = _is_numeric(ann, int)
        if not is_int and not _is_numeric(ann, float):
            return None, [("", f"a range needs a numeric knob; use choices for this one (got {show(spec)})")]
        errs = []
        for key in ("low", "high"):
            if key not in spec:
                errs.append((f".{key}", "is required"))
        if errs:
            return None, errs
        low, high = spec["low"], spec["high"]
        for key, v in (("low", low), ("high", high)):
            if is_int and not (isinstance(v, int) and not isinstance(v, bool)):
                errs.append((f".{key}", f"must be an integer (got {show(v)})"))
            elif not isinstance(v, (int, float)) or isinstance(v, bool):
                errs.append((f".{key}", f"must be a number (got {show(v)})"))
            else:
                errs += check(v, f".{key}")[1]
        if errs:
            return None, errs
        log = spec.get("log", False)
        step = spec.get("step")
        if not isinstance(log, bool):
            return None, [(".log", f"must be true or false (got {show(log)})")]
        if low > high:
            return None, [("", f"low <= high must hold (got low={show(low)}, high={show(high)})")]
        if log and low <= 0:
            return None, [(".low", f"must be > 0 when log is true (got {show(low)})")]
        if step is not None:
            if not isinstance(step, (int, float)) or step <= 0 or (is_int and not isinstance(step, int)):
                return None, [(".step", f"must be a positive {'integer' if is_int else 'number'} (got {show(step)})")]
            if log:
                return None, [(".step", "cannot be combined with log: true")]
        return Knob(name, "int" if is_int else "float", low=low, high=high, log=log, step=step), []
    # a bare value: fixed
    value, errs = check(spec, "")
    if errs:
        return None, errs
    return Knob(name, "fixed", value=value, list_valued=_is_list(ann)), []
