"""Method registry: name -> Method. Adding a method = one module + one `register()` line here; the contract
tests run over everything registered. Third-party methods register through the `autotune.methods` entry-point
group: `[project.entry-points."autotune.methods"] my_method = "my_pkg.module:MyMethod"` (a Method subclass or
instance whose `name` is the entry point's name); a plugin that fails to load, or takes a built-in's name, is
left out with a warning naming it, and AutoTune runs on."""

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


ENTRY_POINT_GROUP = "autotune.methods"


def load_plugins() -> list[str]:
    """Register the methods installed packages offer under ENTRY_POINT_GROUP; returns the names registered."""
    import warnings
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            method = obj() if isinstance(obj, type) else obj
            if not isinstance(method, Method):
                raise TypeError(f"{ep.value} is not an autotune Method (got {type(method).__name__})")
            if method.name != ep.name:
                raise ValueError(f"{ep.value} is named {method.name!r}, its entry point {ep.name!r}: they must agree")
            register(method)
            loaded.append(method.name)
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not take AutoTune down
            dist = getattr(getattr(ep, "dist", None), "name", "?")
            warnings.warn(f"autotune: method plugin {ep.name!r} from {dist} not loaded: {exc}", stacklevel=2)
    return loaded


PLUGINS = load_plugins()


def get_method(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r} (known: {', '.join(sorted(REGISTRY))})") from None


__all__ = ["REGISTRY", "PLUGINS", "register", "get_method", "ALL_BATCHES", "ApplyContext", "Method", "MethodParams", "Prepared"]
