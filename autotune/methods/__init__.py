"""Method registry: name -> Method. Adding a method = one module + one line here; the contract tests
run over everything registered."""

from __future__ import annotations

from autotune.methods.base import ApplyContext, Method, MethodParams, Prepared
from autotune.methods.full import FullMethod
from autotune.methods.head import HeadMethod
from autotune.methods.lora import LoraMethod
from autotune.methods.sparse import SparseMethod

REGISTRY: dict[str, Method] = {m.name: m for m in (HeadMethod(), FullMethod(), LoraMethod(), SparseMethod())}


def get_method(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r} (known: {', '.join(sorted(REGISTRY))})") from None


__all__ = ["REGISTRY", "get_method", "ApplyContext", "Method", "MethodParams", "Prepared"]
