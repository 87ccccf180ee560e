"""Run the stages in order. Each stage writes its typed result into its state record; on resume,
succeeded stages whose inputs did not change are skipped and their results reloaded."""

from __future__ import annotations

import time
import traceback
from typing import Callable

from autotune.errors import AutotuneError, GateFailed, StageError
from autotune.pipeline import deploy, preprocess, tune, validate
from autotune.pipeline.context import JobContext
from autotune.pipeline.state import StageState
from autotune.redact import redact

STAGE_IMPL: dict[str, tuple[Callable, type]] = {
    "preprocess": (preprocess.run, preprocess.PreprocessResult),
    "tune": (tune.run, tune.TuneResult),
    "validate": (validate.run, validate.ValidateResult),
    "deploy": (deploy.run, deploy.DeployResult),
}


def run_stages(ctx: JobContext) -> None:
    inputs_hash = ctx.job.fingerprint()
    for name, (fn, result_type) in STAGE_IMPL.items():
        if name not in ctx.job.config.stages:
            ctx.store.save_stage(StageState(stage=name, status="skipped", inputs_hash=inputs_hash,
                                            error="not in the job's stages"))
            continue
        state = ctx.store.stage(name)
        if state.status == "succeeded" and state.inputs_hash == inputs_hash:
            ctx.results[name] = result_type.model_validate(state.outputs)
            ctx.console.print(f"[dim]stage {name}: already succeeded, skipped[/]")
            _stop_on_failed_gate(ctx, name, inputs_hash)
            continue
        state = StageState(stage=name, status="running", inputs_hash=inputs_hash, started_at=time.time())
        ctx.store.save_stage(state)
        ctx.console.rule(f"[bold]{name}")
        try:
            result = fn(ctx)
        except BaseException as exc:
            state.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            state.finished_at = time.time()
            if isinstance(exc, KeyboardInterrupt):
                state.error = "interrupted (Ctrl-C); `autotune resume` continues from here"
            else:
                state.error = redact(str(exc) if isinstance(exc, AutotuneError) else traceback.format_exc()[-4000:])
            try:
                ctx.store.save_stage(state)
            except OSError:  # a full or read-only disk: the record stays "running", which resume runs again
                pass
            if isinstance(exc, (AutotuneError, KeyboardInterrupt)):
                if isinstance(exc, KeyboardInterrupt):
                    ctx.tracker.set_tags(ctx.parent_run_id, {f"autotune.stage.{name}": "interrupted"})
                raise
            raise StageError(redact(f"stage {name} failed: {type(exc).__name__}: {exc}")) from exc
        ctx.results[name] = result
        state.status = "succeeded"
        state.finished_at = time.time()
        state.outputs = result.model_dump(mode="json")
        ctx.store.save_stage(state)
        ctx.tracker.set_tags(ctx.parent_run_id, {f"autotune.stage.{name}": "succeeded"})
        _stop_on_failed_gate(ctx, name, inputs_hash)


def _stop_on_failed_gate(ctx: JobContext, name: str, inputs_hash: str) -> None:
    """A failed gate stops the pipeline before deploy - also when validate's result is reloaded on resume."""
    result = ctx.results.get(name)
    if name != "validate" or result.passed:
        return
    failed = "; ".join(g.detail for g in result.gates if not g.passed)
    skip = StageState(stage="deploy", status="skipped", inputs_hash=inputs_hash, error=f"gate failed: {failed}")
    ctx.store.save_stage(skip)
    raise GateFailed(f"validation gate failed, deploy skipped: {failed}")
