"""Job and search-space configuration: strict pydantic models, loading and error formatting."""

from autotune.config.job import JobConfig
from autotune.config.loader import ResolvedJob, load_job
from autotune.config.space import CompiledSpace, SearchSpace, compile_space

__all__ = ["JobConfig", "ResolvedJob", "load_job", "CompiledSpace", "SearchSpace", "compile_space"]
