"""`autotune` command line: parse arguments, call autotune.api, map errors to exit codes. No logic here.

Exit codes: 0 ok, 1 stage failure, 2 bad input (job file or data), 3 validation gate failed,
4 too many failed trials, 5 artifact verification failed, 6 Ray cluster unusable, 7 Optuna storage unusable,
8 MLflow tracking server unusable, 9 job busy (another submit/resume holds it), 130 interrupted,
143 a schedule stopped by SIGTERM while a cycle ran."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from autotune.errors import AutotuneError, ConfigError

EXIT_CODES = (
    (0, "ok"), (1, "a stage failed"), (2, "bad input (job file, data, job folder)"), (3, "a validation gate failed (deploy skipped)"),
    (4, "too many consecutive failed trials"), (5, "artifact verification failed"), (6, "Ray cluster unusable"),
    (7, "Optuna storage unusable"), (8, "MLflow tracking unusable"),
    (9, "job busy: another submit/resume holds its folder (or its study)"), (130, "interrupted (Ctrl-C)"),
    (143, "schedule stopped by SIGTERM while a cycle ran (left resumable)"),
)
EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_CODES)  # \b: keep the lines

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Search over fine-tuning methods and their knobs; ship the best model.", epilog=EPILOG)


def _version(value: bool) -> None:
    if value:
        from autotune import __version__

        typer.echo(f"autotune {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Search over fine-tuning methods and their knobs; ship the best model."""


@contextmanager
def _user_errors(on_interrupt: str | None = None):
    """Errors a user can cause end the command with their exit code and message, never a traceback."""
    try:
        yield
    except AutotuneError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        if on_interrupt is None:
            raise
        typer.echo(on_interrupt, err=True)
        raise typer.Exit(130) from None
    except OSError as exc:  # a full disk or a read-only folder outside a job's run (submit/resume say more)
        from autotune.disk import find

        found = find(exc)
        if found is None:
            raise
        _fail(found)


def _process_start() -> float:
    """budget.wall_clock_s counts from the start of this process (imports and Ray start-up included)."""
    from autotune.search.budget import process_start_time

    return process_start_time()


def _fail(exc: AutotuneError) -> None:
    if isinstance(exc, ConfigError):
        typer.echo(f"error: {getattr(exc, 'total', len(exc.problems))} problem(s) found:", err=True)
        for line in exc.problems:
            typer.echo(f"  {line}", err=True)
    else:
        typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


@app.command()
def validate(job: Path = typer.Argument(..., help="Job YAML file.")) -> None:
    """Check a job file and its search space without running anything."""
    from autotune import api

    with _user_errors():
        resolved = api.validate(job)
    methods = ", ".join(f"{m} ({len(k)} knobs)" for m, k in resolved.space.methods.items())
    typer.echo(f"{job}: ok - job '{resolved.config.name}', methods: {methods}; "
               f"{_trials_text(resolved.config.budget)} -> {resolved.output_dir}")


def _trials_text(budget) -> str:
    if budget.num_trials is None and (budget.wall_clock_s or budget.time_budget_s):
        secs = budget.wall_clock_s or budget.time_budget_s
        return f"as many trials as fit in {secs:g} s" + (" (whole job)" if budget.wall_clock_s else " (search)")
    return f"{budget.trials} trials"


@app.command()
def doctor(
    job: Path = typer.Argument(..., help="Job YAML file."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to check instead of the job's."),
) -> None:
    """Check that each configured engine (Ray, Optuna storage, MLflow) answers and accepts our credentials."""
    from autotune import api

    with _user_errors():
        checks = api.doctor(job, address=address)
    for c in checks:
        mark = "ok  " if c.ok else "FAIL"
        typer.echo(f"{mark} {c.engine:<7} {c.target}  ({c.seconds:.1f} s) {c.detail}", err=not c.ok)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise typer.Exit(failed[0].error_type.exit_code)


@app.command()
def submit(
    job: Path = typer.Argument(..., help="Job YAML file."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to attach (overrides ray.address and RAY_ADDRESS)."),
    force: bool = typer.Option(False, "--force", help="Start over if the output directory already holds a job."),
) -> None:
    """Run a job: preprocess -> tune -> validate -> deploy."""
    from autotune import api

    with _user_errors(on_interrupt="interrupted: finished trials are kept; continue with `autotune resume OUTPUT_DIR`"):
        api.submit(job, address=address, force=force, started_at=_process_start())


@app.command()
def resume(
    output_dir: Path = typer.Argument(..., help="Output directory of an interrupted job."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to attach."),
) -> None:
    """Continue an interrupted job: finished stages and trials are kept, the MLflow parent run is reused."""
    from autotune import api

    with _user_errors(on_interrupt="interrupted: continue again with `autotune resume OUTPUT_DIR`"):
        api.resume(output_dir, address=address, started_at=_process_start())


@app.command()
def status(output_dir: Path = typer.Argument(..., help="Output directory of a job."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Stages, trials done/running/pruned/failed, best so far."""
    from autotune import api

    with _user_errors():
        info = api.status(output_dir)
    if info.get("note"):
        typer.echo(info["note"], err=True)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"job {info['job']} ({info['output_dir']})")
    typer.echo("stages: " + "  ".join(f"{k}={v}" for k, v in info["stages"].items()))
    typer.echo("trials: " + ("  ".join(f"{k}={v}" for k, v in sorted(info["trials"].items())) or "none yet"))
    b = info.get("best")
    typer.echo(f"best:   {b['metric']}={b['value']:.4f} ({b['trial']}, {b['method']})" if b else "best:   none yet")


@app.command()
def verify(artifact: Path = typer.Argument(..., help="Artifact directory written by the deploy stage."),
           no_load: bool = typer.Option(False, "--no-load", help="Check hashes only; do not load the model.")) -> None:
    """Check an artifact against its MANIFEST (sha256 + size of every file) and load it."""
    from autotune.artifact import verify as do_verify

    with _user_errors():
        manifest = do_verify(artifact, load=not no_load)
    typer.echo(f"{artifact}: ok - {len(manifest['files'])} files match MANIFEST.json" + ("" if no_load else "; model loads"))


@app.command()
def ui(
    target: Path = typer.Argument(..., help="A job's output folder (also a copied, moved or unpacked one) or its job YAML."),
    port: int = typer.Option(5000, "--port", help="Port of the MLflow UI."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address; keep 127.0.0.1 unless you mean to expose it."),
) -> None:
    """Open the MLflow UI on the job's store and print the link to the job's runs."""
    from autotune import api

    def ready(url: str, log: str | None) -> None:
        typer.echo(f"MLflow UI: {url}" + (f"  (server log: {log}; Ctrl-C to stop)" if log else ""))
        # MLflow's runs table starts with the trials folded under the job's run and no metric columns
        typer.echo("  in the runs table: expand the job's run (+) to list its trials; add metric columns such as "
                   "val_accuracy with the Columns button")

    with _user_errors():
        target_info = api.ui_target(target)
        if target_info.note:
            typer.echo(target_info.note, err=True)
        typer.echo(f"starting the MLflow UI on {host}:{port} (one worker) ...")
        code = api.serve_ui(target_info, host, port, ready)
    raise typer.Exit(code)


@app.command()
def retune(
    job: Path = typer.Argument(..., help="Job YAML file (its `retune:` section holds the knobs)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to attach."),
) -> None:
    """Run one retuning cycle: skip (data unchanged), or warm-start a search, compare with the champion and
    promote or keep. Exit 0 for promoted, kept and skipped (also: another cycle of the job is running)."""
    import signal

    from autotune.retune.cycle import retune as run_cycle

    def stop(signum, frame):  # SIGTERM (systemctl stop, a Kubernetes pod ending) stops a cycle as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with _user_errors(on_interrupt="interrupted: the cycle is resumable; `autotune retune JOB` continues it"):
        outcome = run_cycle(job, address=address, started_at=_process_start())
    typer.echo(f"{outcome.decision}: {outcome.reason}" if outcome.reason else outcome.decision)
    raise typer.Exit(outcome.exit_code)


@app.command()
def schedule(
    job: Path = typer.Argument(..., help="Job YAML file."),
    cron: str = typer.Option("0 2 * * *", "--cron", help="When to run a cycle: minute hour day-of-month month day-of-week (UTC)."),
    print_kind: Optional[str] = typer.Option(None, "--print", help="Print the crontab line, systemd service + timer, "
                                             "or Kubernetes CronJob instead of running: crontab|systemd|kubernetes."),
) -> None:
    """Run retuning cycles on a schedule (a long-lived process; SIGTERM/Ctrl-C stop it cleanly, a cycle in
    progress is left resumable) - or print the equivalent schedule for cron, systemd or Kubernetes."""
    import sys

    from autotune import api
    from autotune.retune import schedule as sched

    with _user_errors():
        api.validate(job)  # a bad job file fails now (exit 2), not at 2 am
        expr = sched.check_cron(cron)
        if print_kind is not None:
            for name, text in sched.schedule_files(print_kind, job.resolve(), expr).items():
                typer.echo(f"# ---- {name}")
                typer.echo(text.rstrip("\n"))
            raise typer.Exit(0)
    code = sched.run_schedule([sys.executable, "-m", "autotune.cli", "retune", str(job.resolve())], expr, echo=typer.echo)
    raise typer.Exit(code)


@app.command()
def history(job: Path = typer.Argument(..., help="Job YAML file."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON (cycles, champion lineage).")) -> None:
    """The retuning cycles of a job: when, data, drift, trials, challenger vs champion, decision, lineage."""
    from autotune.config.loader import load_job
    from autotune.retune.cycle import HOME
    from autotune.retune.history import History, fmt_time, table_rows

    with _user_errors():
        resolved = load_job(job, data_missing_ok=True)  # the history outlives the data file
    h = History(resolved.output_dir / HOME)
    cycles, lineage = h.cycles(), h.lineage()
    if as_json:
        typer.echo(json.dumps({"job": resolved.config.name, "cycles": cycles, "lineage": lineage}, indent=2, default=str))
        return
    if not cycles and not lineage:
        typer.echo(f"no retuning cycles yet for {resolved.config.name} ({h.path})")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"retuning of {resolved.config.name}", show_lines=False)
    rows = table_rows(cycles)
    for col in ("cycle", "when", "data", "drift", "mode", "trials", "challenger", "champion", "decision", "champion_after"):
        table.add_column(col.replace("_", " "), overflow="fold")
    for r in rows:
        table.add_row(*r.values())
    console = Console(width=200 if not Console().is_terminal else None)
    console.print(table)
    if lineage:
        console.print("champion lineage: " + " -> ".join(
            f"v{m['version']} ({m['how']}, {fmt_time(m['at'])})" for m in lineage))


@app.command()
def rollback(job: Path = typer.Argument(..., help="Job YAML file."),
             to: Optional[str] = typer.Option(None, "--to", help="Version to make champion (default: the previous one).")) -> None:
    """Move the `champion` alias back (to the previous champion by default); recorded in the history."""
    from autotune.retune.cycle import rollback as do_rollback

    with _user_errors():
        do_rollback(job, to=to)


@app.command("suggest-space")
def suggest_space(
    job: Path = typer.Argument(..., help="Job YAML file (its data, model and budget are read; its space is not)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the space to this file instead of stdout."),
    cuda: Optional[bool] = typer.Option(None, "--cuda/--no-cuda", help="Plan for a machine with (or without) a CUDA "
                                        "GPU and bitsandbytes instead of detecting this one's."),
) -> None:
    """Write a starting search space from the job's data, model and budget, every choice explained in a comment."""
    from autotune.advisor import suggest_space as advise

    with _user_errors():
        text = advise(job, cuda=cuda)
        if out is None:
            typer.echo(text, nl=False)
            return
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{out}: cannot be written ({exc.strerror or type(exc).__name__})"]) from None
    typer.echo(f"wrote {out}; use it with `search: {{space: {out}}}` in the job and check it with `autotune validate`")


@app.command()
def schema() -> None:
    """Print the JSON schema of the job file."""
    from autotune.config.job import JobConfig

    typer.echo(json.dumps(JobConfig.model_json_schema(by_alias=True), indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
