"""Turn pydantic validation errors into `FILE: yaml.path: what must hold (got X)` lines.

Messages stay small whatever the input: every echoed value is cut to MAX_SHOWN characters, each line to
MAX_LINE, and a report to its first MAX_PROBLEMS lines (`cap_problems`)."""

from __future__ import annotations

import reprlib
from typing import Any

MAX_SHOWN = 200  # characters of a user value echoed in a message
MAX_LINE = 600  # characters of one problem line
MAX_PROBLEMS = 50  # problem lines shown; the rest are counted

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 3, 10, 10, 10, 10
_repr.maxstring, _repr.maxother, _repr.maxlong = MAX_SHOWN, MAX_SHOWN, MAX_SHOWN

_TEMPLATES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "missing": "is required",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "finite_number": "must be a finite number",
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
    "string_pattern_mismatch": "must match {pattern}",
    "string_too_short": "must have at least {min_length} character(s)",
}


def show(value: Any) -> str:
    """A short, YAML-like rendering of a user value for error messages: at most MAX_SHOWN characters of
    it, never the whole of a huge string, list or mapping."""
    if isinstance(value, str):
        if len(value) > MAX_SHOWN:
            return f"{value[:MAX_SHOWN]!r}... ({len(value)} characters)"
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value != value:
        return ".nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    text = _repr.repr(value)  # bounded: reprlib stops at a few items per level and a few levels
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def cap_problems(problems: list[str]) -> list[str]:
    """The first MAX_PROBLEMS lines, each cut to MAX_LINE characters, plus a count of the rest."""
    shown = [p if len(p) <= MAX_LINE else p[: MAX_LINE - 3] + "..." for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        shown.append(f"... and {len(problems) - MAX_PROBLEMS} more problem(s) not shown")
    return shown


def join_path(parts: tuple | list) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top>"


def describe(err: dict) -> str:
    """The 'what must hold (got X)' part of one pydantic error."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key" + (f" (allowed: {ctx['allowed']})" if "allowed" in ctx else "")
    if kind == "missing":
        return "is required"
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected', '?')} (got {show(err.get('input'))})"
    if kind in ("value_error", "assertion_error"):
        msg = str(ctx.get("error", err["msg"]))
        return msg
    template = _TEMPLATES.get(kind)
    ctx = {k: (f"{v:g}" if isinstance(v, float) else v) for k, v in ctx.items()}
    msg = template.format(**ctx) if template else err["msg"][0].lower() + err["msg"][1:]
    return f"{msg} (got {show(err.get('input'))})"


def format_pydantic(exc, source: str, prefix: tuple = (), model=None) -> list[str]:
    """One line per error. Union branches that pydantic reports separately are collapsed.
    Linear in the number of errors (a file with 100k unknown keys must not take minutes)."""
    lines: dict[str, None] = {}  # ordered set
    allowed_at: dict[tuple, list[str]] = {}
    for err in exc.errors(include_url=False):
        loc = [p for p in prefix] + [p for p in err["loc"] if not _is_union_tag(p)]
        if err["type"] == "extra_forbidden" and model is not None:
            parent = tuple(err["loc"][:-1])
            if parent not in allowed_at:
                allowed_at[parent] = _allowed_keys(model, parent)
            if allowed_at[parent]:
                err = {**err, "ctx": {"allowed": ", ".join(allowed_at[parent])}}
        lines[f"{source}: {join_path(loc)}: {describe(err)}"] = None
    return list(lines)


def _is_union_tag(part) -> bool:
    # pydantic inserts the branch name (e.g. 'str', 'SearchSpace', 'function-after[...]') into locs
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part in ("str", "int", "float", "bool", "list[str]", "none"))


def _yaml_keys(model) -> dict[str, Any]:
    """YAML key -> field of a model: the alias where there is one (`validate`, not `validate_stage`)."""
    return {(f.alias or name): f for name, f in getattr(model, "model_fields", {}).items()}


def _allowed_keys(model, loc) -> list[str]:
    """Walk the model tree along loc and list the YAML keys accepted there."""
    from typing import get_args

    current = model
    for part in loc:
        if _is_union_tag(part) or isinstance(part, int):
            continue
        fields = _yaml_keys(current)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        nxt = None
        for cand in (ann, *get_args(ann)):
            if hasattr(cand, "model_fields"):
                nxt = cand
                break
        if nxt is None:
            return []
        current = nxt
    return sorted(_yaml_keys(current))
