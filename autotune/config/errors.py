"""Turn pydantic validation errors into `FILE: yaml.path: what must hold (got X)` lines."""

from __future__ import annotations

from typing import Any

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
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
    "string_pattern_mismatch": "must match {pattern}",
    "string_too_short": "must have at least {min_length} character(s)",
}


def show(value: Any) -> str:
    """A short, YAML-like rendering of a user value for error messages."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
    """One line per error. Union branches that pydantic reports separately are collapsed."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = [p for p in prefix] + [p for p in err["loc"] if not _is_union_tag(p)]
        if err["type"] == "extra_forbidden" and model is not None:
            allowed = _allowed_keys(model, err["loc"][:-1])
            if allowed:
                err = {**err, "ctx": {"allowed": ", ".join(allowed)}}
        line = f"{source}: {join_path(loc)}: {describe(err)}"
        if line not in lines:
            lines.append(line)
    return lines


def _is_union_tag(part) -> bool:
    # pydantic inserts the branch name (e.g. 'str', 'SearchSpace', 'function-after[...]') into locs
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part in ("str", "int", "float", "bool", "list[str]", "none"))


def _allowed_keys(model, loc) -> list[str]:
    """Walk the model tree along loc and list the field names accepted there."""
    from typing import get_args

    current = model
    for part in loc:
        if _is_union_tag(part) or isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
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
    return sorted(getattr(current, "model_fields", {}).keys())
