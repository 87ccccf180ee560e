"""Method registry: name -> Method. Adding a method = one module + one `register()` line here; the contract
tests run over everything registered."""

from __future__ import annotations

from autotune.methods.adalora import AdaLoraMethod
from autotune.methods.base import ALL_BATCHES, ApplyContext, Method, MethodParams, Prepared
from autotune.methods.bitfit import BitFitMethod
from autotune.methods.full import FullMethod
from autotune.methods.head import HeadMethod
from autotune.methods.ia3 import Ia3Method
from autotune.methods.ln_tuning import LnTuningMethod
from autotune.methods.loha import LoHaMethod
from autotune.methods.lokr import LoKrMethod
from autotune.methods.lora import LoraMethod
from autotune.methods.qlora import QLoraMethod
from autotune.methods.sparse import SparseMethod
from autotune.methods.vera import VeraMethod
from autotune.methods.zero_shot import ZeroShotMethod

REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method under its name; a second method with a taken name is refused (as peft's registry does)."""
    if method.name in REGISTRY:
        raise ValueError(f"method name {method.name!r} is taken by {type(REGISTRY[method.name]).__name__}")
    REGISTRY[method.name] = method
    return method


for _m in (HeadMethod(), FullMethod(), LoraMethod(), SparseMethod(), BitFitMethod(), LnTuningMethod(), Ia3Method(),
           AdaLoraMethod(), ZeroShotMethod(), QLoraMethod(), VeraMethod(), LoHaMethod(), LoKrMethod()):
    register(_m)


def get_method(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r} (known: {', '.join(sorted(REGISTRY))})") from None


__all__ = ["REGISTRY", "register", "get_method", "ALL_BATCHES", "ApplyContext", "Method", "MethodParams", "Prepared"]
