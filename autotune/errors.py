"""The exception family AutoTune raises, and the exit code each one maps to in the CLI.

Every error a user can cause is an ``AutotuneError``; anything else reaching the CLI is a bug and is
shown with its traceback.
"""

from __future__ import annotations


class AutotuneError(Exception):
    """Base class: a problem AutoTune can explain without a traceback."""

    exit_code = 1


class ConfigError(AutotuneError):
    """A job file or search space is invalid. Carries every problem found, not only the first."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class DataError(AutotuneError):
    """The dataset cannot be used as configured (missing column, one class, unreadable file...)."""

    exit_code = 2


class StageError(AutotuneError):
    """A pipeline stage could not finish."""

    exit_code = 1


class GateFailed(StageError):
    """A validation gate did not pass; deploy was skipped on purpose."""

    exit_code = 3


class TrialFailed(AutotuneError):
    """A single trial could not train (NaN loss, bad knob combination, out of memory)."""


class TooManyFailures(StageError):
    """The search stopped because too many trials failed one after another."""

    exit_code = 4


class EngineError(AutotuneError):
    """An external engine (Ray cluster, Optuna storage, MLflow server) does not answer or refuses us."""

    exit_code = 6


class RayEngineError(EngineError):
    exit_code = 6


class OptunaEngineError(EngineError):
    exit_code = 7


class TrackingEngineError(EngineError):
    exit_code = 8
