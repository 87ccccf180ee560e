"""Retuning on a schedule. `autotune schedule JOB --cron EXPR` runs `autotune retune JOB` as a child process at
each time the cron expression names, for as long as it runs; `autotune schedule JOB --print KIND` writes the
same schedule for crontab, systemd or Kubernetes instead, for teams that schedule outside AutoTune.

- Cron expressions are the five classic fields (minute hour day-of-month month day-of-week) in the syntax
  every cron understands: `*`, numbers, names (jan, mon), lists, ranges and steps (`*/n`, `a-b/n`), plus the
  shortcuts @hourly, @daily, @weekly, @monthly, @yearly. Extensions only some crons know (L, W, #, ?, H, a
  seconds or year field) are refused, so one expression means the same thing in every file written here.
- Times are UTC in `autotune schedule`, in the systemd timer (OnCalendar= ... UTC) and in the Kubernetes
  CronJob (spec.timeZone); a crontab line runs in the cron daemon's time zone.
- A cycle runs in a session of its own, so a terminal's Ctrl-C reaches the scheduler only, which forwards
  exactly one SIGINT (AutoTune's "interrupt, leave resumable") to the cycle and waits for it to stop. A second
  signal sends the cycle SIGTERM. Nothing is ever killed on a timeout; a scheduler killed outright (SIGKILL)
  leaves a running cycle to finish on its own.
- A cycle that fails is reported and the schedule goes on; a cycle that overruns the next scheduled time
  makes the schedule skip that time, never queue it.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from autotune.errors import ConfigError

FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 7))
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
SHORTCUTS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
             "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
KINDS = ("crontab", "systemd", "kubernetes")
WAIT_STEP_S = 1.0  # the longest sleep between looks at the clock (a changed clock or a resumed laptop)
STOP_TIMEOUT_S = 600  # systemd TimeoutStopSec / Kubernetes terminationGracePeriodSeconds: time to stop resumable
STARTING_DEADLINE_S = 3600  # Kubernetes: a run the controller missed by more than this is skipped
DNS_NAME_MAX = 52  # a CronJob's name: its Jobs append 11 characters and must stay within 63
_ITEM = re.compile(r"^(?:(?P<star>\*)|(?P<lo>[a-z0-9]+)(?:-(?P<hi>[a-z0-9]+))?)(?:/(?P<step>[0-9]+))?$",
                   re.IGNORECASE | re.ASCII)


# ---------------------------------------------------------------------------------------------- cron syntax

class _Field:
    """One parsed cron field: the values it allows, and how it was written (`*`, `*/n`, or anything else)."""

    def __init__(self, index: int, text: str):
        self.name, self.lo, self.hi = FIELDS[index]
        self.index, self.text = index, text
        self.star = text == "*"
        self.star_step: int | None = None
        values: set[int] = set()
        for item in text.split(","):
            values |= self._item(item)
        if self.index == 4 and 7 in values:  # day-of-week 7 is Sunday, as 0 is
            values = (values - {7}) | {0}
        self.values = frozenset(values)

    def _item(self, item: str) -> set[int]:
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(f"{self.name} field {self.text!r}: {item!r} is not a value, a range a-b, a list "
                             "a,b or a step */n, a-b/n")
        step = int(m["step"]) if m["step"] is not None else 1
        if step < 1 or step > self.hi - self.lo + 1:
            raise ValueError(f"{self.name} field {self.text!r}: step /{m['step']} is outside 1..{self.hi - self.lo + 1}")
        if m["star"]:
            if m["step"] is not None and self.text == item:
                self.star_step = step
            lo, hi = self.lo, (6 if self.index == 4 else self.hi)
        else:
            lo = self._value(m["lo"])
            if m["hi"] is None:
                if m["step"] is not None:
                    raise ValueError(f"{self.name} field {self.text!r}: a step needs a range or `*` before it "
                                     f"({item.split('/')[0]}-{self.hi}/{step} or */{step}), not a single value")
                return {lo}
            hi = self._value(m["hi"])
            if hi < lo:
                hint = " (Sunday is 0 or 7: write sat-sun as 6-7)" if self.index == 4 else ""
                raise ValueError(f"{self.name} field {self.text!r}: the range {item!r} runs backwards{hint}")
        return set(range(lo, hi + 1, step))

    def _value(self, token: str) -> int:
        names = MONTHS if self.index == 3 else WEEKDAYS if self.index == 4 else ()
        if token.lower() in names:
            return names.index(token.lower()) + (1 if self.index == 3 else 0)
        if not token.isdigit():
            extra = f" or a name ({names[0]}..{names[-1]})" if names else ""
            raise ValueError(f"{self.name} field {self.text!r}: {token!r} is not a number{extra}")
        value = int(token)
        if not self.lo <= value <= self.hi:
            raise ValueError(f"{self.name} field {self.text!r}: {value} is outside {self.lo}..{self.hi}")
        return value


def _parse(expr: str) -> tuple[str, list[_Field]]:
    """(normalised expression, its five fields); ValueError says why it is not one."""
    text = " ".join(str(expr).split())
    if not text:
        raise ValueError("it is empty")
    if text.startswith("@"):
        text = text.lower()
        if text == "@reboot":
            raise ValueError("@reboot is not a time of day: AutoTune schedules need five fields or @hourly, "
                             "@daily, @weekly, @monthly, @yearly")
        if text not in SHORTCUTS:
            raise ValueError(f"{text!r} is not a known shortcut (@hourly, @daily, @weekly, @monthly, @yearly)")
        text = SHORTCUTS[text]
    parts = text.split(" ")
    if len(parts) != 5:
        raise ValueError(f"it has {len(parts)} field(s); a cron expression has exactly 5 (no seconds or year field)")
    return text.lower(), [_Field(i, p) for i, p in enumerate(parts)]


def _refuse(expr: str, why: str) -> ConfigError:
    return ConfigError([f"--cron: {expr!r} is not a cron expression (minute hour day-of-month month day-of-week, "
                        f"e.g. \"0 2 * * *\"): {why}"])


def check_cron(expr: str) -> str:
    """The expression, normalised (single spaces, lower-case names, shortcuts spelled out); ConfigError if it
    is not a five-field cron expression every cron reads the same way, or if it never fires (30 February)."""
    from croniter import croniter

    try:
        text, _ = _parse(expr)
    except ValueError as exc:
        raise _refuse(expr, str(exc)) from None
    if not croniter.is_valid(text):
        raise _refuse(expr, "croniter cannot parse it")
    try:
        croniter(text, datetime(2000, 1, 1, tzinfo=timezone.utc)).get_next(datetime)
    except Exception:  # noqa: BLE001 - CroniterBadDateError and kin: no date in the coming years matches
        raise _refuse(expr, "no date ever matches it (e.g. day 30 or 31 of February)") from None
    return text


def next_run(expr: str, after: datetime) -> datetime:
    """The first time strictly after `after` that `expr` names, in `after`'s time zone (UTC if it has none)."""
    from croniter import croniter

    if after.tzinfo is None:
        after = after.replace(tzinfo=timezone.utc)
    return croniter(expr, after).get_next(datetime)


# ---------------------------------------------------------------------------------------------- the schedule

class _Stopper:
    """SIGINT/SIGTERM while the schedule runs. The handler only records the signal, wakes the sleep through a
    pipe and forwards to the running cycle: threading.Event.set() from a handler can deadlock when the signal
    lands while the main thread holds the Event's own lock, a write to a pipe cannot."""

    def __init__(self, echo: Callable[[str], object]):
        self.echo = echo
        self.signum: int | None = None
        self.received = 0
        self.forwarded = 0
        self.child: subprocess.Popen | None = None
        self.r, self.w = os.pipe()  # not inherited by children (PEP 446)
        os.set_blocking(self.w, False)
        self.previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        os.close(self.r)
        os.close(self.w)

    def _handle(self, signum, frame) -> None:
        self.received += 1
        if self.signum is None:
            self.signum = signum
        try:
            os.write(self.w, b"\0")
        except OSError:  # a full pipe already wakes the sleep
            pass
        self.forward()

    def forward(self) -> None:
        """Pass each signal received during a cycle on to it: SIGINT for the first, SIGTERM after that."""
        child = self.child
        while child is not None and child.returncode is None and self.forwarded < self.received:
            sig = signal.SIGINT if self.forwarded == 0 else signal.SIGTERM
            self.forwarded += 1
            try:
                os.kill(child.pid, sig)
            except ProcessLookupError:
                return
            if sig == signal.SIGINT:
                self._say(f"{_signame(self.signum)}: asking the running cycle (pid {child.pid}) to stop and leave "
                          "itself resumable (SIGINT); a second signal stops it with SIGTERM")
            else:
                self._say(f"signal again: sending SIGTERM to the running cycle (pid {child.pid})")

    def _say(self, line: str) -> None:
        try:
            self.echo(line)
        except (RuntimeError, OSError):  # the main thread was printing when the signal came
            pass

    def sleep_until(self, when: datetime, now: Callable[[], datetime]) -> bool:
        """Sleep until `when` by now()'s clock, a short wait at a time; True when a signal ended the sleep."""
        while self.signum is None:
            left = (when - now()).total_seconds()
            if left <= 0:
                return False
            try:
                ready, _, _ = select.select([self.r], [], [], min(left, WAIT_STEP_S))
            except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for other interpreters
                continue
            if ready:
                try:
                    os.read(self.r, 64)
                except BlockingIOError:  # pragma: no cover
                    pass
        return True


def _signame(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "signal"


def _until(delta: timedelta) -> str:
    secs = max(0.0, delta.total_seconds())
    if secs < 60:
        return f"in {math.ceil(secs)}s"
    hours, minutes = divmod(round(secs / 60), 60)
    return f"in {hours}h {minutes}m"


def _meaning(rc: int) -> str:
    if rc == 0:
        return "done (promoted, kept or skipped)"
    if rc == 9:
        return "busy: another AutoTune process holds the job; this time is skipped"
    if rc < 0:
        try:
            return f"failed: killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"failed: killed by signal {-rc}"
    try:
        from autotune.cli import EXIT_CODES

        what = dict(EXIT_CODES).get(rc)
    except Exception:  # noqa: BLE001 - the meaning is a courtesy
        what = None
    return f"failed ({what})" if what else "failed"


def _continue_with(cycle_cmd: list[str]) -> str:
    if "retune" in cycle_cmd[:-1]:
        return f"`autotune retune {shlex.quote(cycle_cmd[cycle_cmd.index('retune') + 1])}` continues it"
    return f"running `{shlex.join(cycle_cmd)}` again continues it"


def _check_command(cycle_cmd: list[str]) -> None:
    if not cycle_cmd:
        raise ConfigError(["schedule: the cycle command is empty"])
    exe = cycle_cmd[0]
    if shutil.which(exe) is None:
        raise ConfigError([f"schedule: cannot run {exe!r} (not found, or not executable)"])


def run_schedule(cycle_cmd: list[str], expr: str, echo: Callable[[str], object] = print,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc), max_cycles: int | None = None) -> int:
    """Run `cycle_cmd` as a child process at each time `expr` names (by `now`'s clock, UTC by default) until a
    signal stops the schedule or `max_cycles` cycles have run. Returns the exit code for the process: 0 when
    stopped between cycles (or after max_cycles), 128 + the signal (130 SIGINT, 143 SIGTERM) when stopped during
    a cycle, which was asked to stop resumable and waited for. Must run in the main thread (signal handlers)."""
    expr = check_cron(expr)
    _check_command(cycle_cmd)
    stopper = _Stopper(echo)
    try:
        stopper.install()
        return _run(stopper, list(cycle_cmd), expr, echo, now, max_cycles)
    finally:
        stopper.restore()


def _run(stopper: _Stopper, cycle_cmd: list[str], expr: str, echo, now, max_cycles: int | None) -> int:
    cycles = 0
    while True:
        when = next_run(expr, now())
        echo(f"next cycle at {when.isoformat(timespec='seconds')} ({_until(when - now())})")
        if stopper.sleep_until(when, now):
            echo(f"stopped ({_signame(stopper.signum)}) before the next cycle")
            return 0
        if stopper.signum is not None:  # came as the sleep ended: the cycle never starts
            echo(f"stopped ({_signame(stopper.signum)}) before the next cycle")
            return 0
        cycles += 1
        echo(f"cycle {cycles} ({when.isoformat(timespec='seconds')}): {shlex.join(cycle_cmd)}")
        try:
            # a session of its own: a terminal's Ctrl-C reaches the scheduler only, which forwards it once
            child = subprocess.Popen(cycle_cmd, start_new_session=True)
        except OSError as exc:
            echo(f"cycle {cycles} could not start ({exc.strerror or exc}); the schedule goes on")
            rc = None
        else:
            stopper.child = child
            stopper.forward()  # a signal that came while the child was being started
            rc = child.wait()
            stopper.child = None
        if stopper.forwarded:
            name = _signame(stopper.signum)
            if rc == 0:
                echo(f"stopped ({name}) during cycle {cycles}, which finished first (exit 0: {_meaning(0)})")
            else:
                echo(f"stopped ({name}) during cycle {cycles}: the cycle was left resumable (exit {rc}); "
                     f"{_continue_with(cycle_cmd)}")
            return 128 + int(stopper.signum)
        if rc is not None:
            echo(f"cycle {cycles} exit {rc}: {_meaning(rc)}"
                 + ("" if rc in (0, 9) else "; the schedule goes on"))
        if stopper.signum is not None:  # came as the cycle ended: nothing to forward, the cycle is complete
            echo(f"stopped ({_signame(stopper.signum)}) before the next cycle")
            return 0
        if max_cycles is not None and cycles >= max_cycles:
            return 0
        missed = next_run(expr, when)
        if missed <= now():
            echo(f"cycle {cycles} ran past the next scheduled time ({missed.isoformat(timespec='seconds')}); "
                 "missed times are skipped, not queued")


# ---------------------------------------------------------------------------------------------- files to print

def _one_line(what: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ConfigError([f"schedule: the {what} {value!r} contains a line break"])
    return value


def crontab_entry(job: Path, expr: str, autotune_bin: str, log: Path, workdir: Path | None = None) -> str:
    """A comment and one crontab line running `autotune retune JOB` in `workdir` (default: the job's folder),
    output appended to `log`. `autotune_bin` is a shell command prefix, already quoted (e.g. shlex.quote(path))."""
    expr = check_cron(expr)
    job, log = Path(job).absolute(), Path(log).absolute()
    workdir = Path(workdir).absolute() if workdir else job.parent
    command = (f"cd {shlex.quote(str(workdir))} && {autotune_bin} retune {shlex.quote(str(job))} "
               f">> {shlex.quote(str(log))} 2>&1")
    command = _one_line("command", command).replace("%", "\\%")  # cron turns a bare % into a line break
    return (f"# AutoTune scheduled retuning of {_one_line('job path', str(job))}; a second cycle while one runs "
            f"exits 0 (skipped). Times are in the cron daemon's time zone.\n{expr} {command}\n")


def cron_to_oncalendar(expr: str) -> str:
    """The systemd calendar spec ("DOW *-MONTH-DOM HH:MM:00") matching the same times as the cron expression,
    without a time zone. ConfigError when both day fields are restricted: cron matches either (OR), one
    OnCalendar= both (AND)."""
    text = check_cron(expr)
    minute, hour, dom, month, dow = _parse(text)[1]
    if not dom.star and not dow.star:
        raise ConfigError([
            f"--cron: {expr!r} restricts both the day of month ({dom.text}) and the day of week ({dow.text}); cron "
            "runs on either, a systemd OnCalendar= only where both match, so it cannot be one OnCalendar=. "
            f"Use two timers (\"{minute.text} {hour.text} {dom.text} {month.text} *\" and "
            f"\"{minute.text} {hour.text} * {month.text} {dow.text}\"), or restrict only one of the two fields"])
    days = ""
    if not dow.star:
        order = [1, 2, 3, 4, 5, 6, 0]  # systemd weeks start on Monday
        days = _runs([order.index(v) for v in dow.values], lambda i: WEEKDAYS[order[i]].capitalize()) + " "
    return (f"{days}*-{_component(month, '{:02d}')}-{_component(dom, '{:02d}')} "
            f"{_component(hour, '{:02d}')}:{_component(minute, '{:02d}')}:00")


def _component(field: _Field, fmt: str) -> str:
    if field.star:
        return "*"
    if field.star_step is not None:
        return f"{fmt.format(field.lo)}/{field.star_step}"  # from the first value, every n: as cron's */n
    return _runs(list(field.values), fmt.format)


def _runs(values: list[int], show: Callable[[int], str]) -> str:
    """Sorted values as a systemd list: runs of three or more as a..b, the rest one by one."""
    values = sorted(set(values))
    out, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        if j - i >= 2:
            out.append(f"{show(values[i])}..{show(values[j])}")
        else:
            out.extend(show(v) for v in values[i:j + 1])
        i = j + 1
    return ",".join(out)


def _systemd_word(word: str) -> str:
    """One ExecStart= argument: quoted when needed; % and $ doubled (systemd specifiers, variables)."""
    _one_line("command argument", word)
    if not re.fullmatch(r"[A-Za-z0-9_@+=:,./-]+", word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word.replace("%", "%%").replace("$", "$$")


def systemd_units(job: Path, expr: str, autotune_bin: str, unit: str, workdir: Path | None = None) -> dict[str, str]:
    """{UNIT.service, UNIT.timer}: a oneshot service running `autotune retune JOB` in the job's folder (a stop
    sends SIGINT, which leaves the cycle resumable) and a timer firing it at the cron expression's times, UTC.
    `autotune_bin` is a shell command prefix (split with shlex); its first word must be an absolute path."""
    expr = check_cron(expr)
    calendar = cron_to_oncalendar(expr)
    job = Path(job).absolute()
    argv = shlex.split(autotune_bin) + ["retune", str(job)]
    workdir = _one_line("working directory", str(Path(workdir).absolute() if workdir else job.parent)).replace("%", "%%")
    where = _one_line("job path", str(job)).replace("%", "%%")
    service = (
        "[Unit]\n"
        f"Description=AutoTune retuning of {where}\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"WorkingDirectory={workdir}\n"
        f"ExecStart={' '.join(_systemd_word(w) for w in argv)}\n"
        "# `systemctl stop` interrupts the cycle as Ctrl-C does: it stops resumable and `autotune retune` continues it\n"
        "KillSignal=SIGINT\n"
        "KillMode=mixed\n"
        f"TimeoutStopSec={STOP_TIMEOUT_S}\n"
    )
    timer = (
        "[Unit]\n"
        f"Description=AutoTune retuning of {where} (cron \"{expr}\", UTC)\n"
        "\n"
        "[Timer]\n"
        f"OnCalendar={calendar} UTC\n"
        "Persistent=true\n"
        f"Unit={unit}.service\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return {f"{unit}.service": service, f"{unit}.timer": timer}


def dns_name(text: str) -> str:
    """A DNS-1123 label of at most 52 characters (a CronJob's name); a long one keeps a hash of the whole."""
    name = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-") or "autotune-retune"
    if len(name) > DNS_NAME_MAX:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        name = f"{name[:DNS_NAME_MAX - 9].rstrip('-')}-{digest}"
    return name


def kubernetes_cronjob(job: Path, expr: str, name: str, image: str = "autotune:latest") -> str:
    """A batch/v1 CronJob running `autotune retune /job/JOBFILE` at the cron expression's times (UTC), one at
    a time, never retried, with the job's folder on the PersistentVolumeClaim NAME-data at /job."""
    import yaml

    expr = check_cron(expr)
    job = Path(job)
    name = dns_name(name)
    labels = {"app.kubernetes.io/name": "autotune", "app.kubernetes.io/component": "retune",
              "app.kubernetes.io/instance": name}
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "schedule": expr,
            "timeZone": "Etc/UTC",
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": STARTING_DEADLINE_S,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {"backoffLimit": 0, "template": {
                "metadata": {"labels": dict(labels)},  # a copy: no YAML anchors in the output
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": STOP_TIMEOUT_S,
                    "containers": [{
                        "name": "retune",
                        "image": image,
                        "command": ["autotune", "retune", f"/job/{job.name}"],
                        "workingDir": "/job",
                        "volumeMounts": [{"name": "job", "mountPath": "/job"}],
                    }],
                    "volumes": [{"name": "job", "persistentVolumeClaim": {"claimName": f"{name}-data"}}],
                },
            }}},
        },
    }
    header = (
        f"# AutoTune scheduled retuning of {_one_line('job file name', job.name)} (cron \"{expr}\", UTC).\n"
        f"# The PersistentVolumeClaim {name}-data must hold the job folder, mounted at /job: the job file\n"
        "# (paths in it relative to it), its data and its output folder. One cycle at a time (Forbid), never retried.\n"
    )
    return header + yaml.safe_dump(manifest, sort_keys=False)


def schedule_files(kind: str, job: Path, expr: str) -> dict[str, str]:
    """{file name: content} for `autotune schedule JOB --print KIND`, names derived from the job file's stem."""
    if kind not in KINDS:
        raise ConfigError([f"--print: {kind!r} is not one of {', '.join(KINDS)}"])
    expr = check_cron(expr)
    job = Path(job).absolute()
    if not job.is_file():
        raise ConfigError([f"{job}: no such job file"])
    unit = "autotune-retune-" + (re.sub(r"[^A-Za-z0-9_.:-]+", "-", job.stem).strip("-") or "job")
    found = shutil.which("autotune")
    autotune_bin = shlex.quote(str(Path(found).absolute())) if found else shlex.join([sys.executable, "-m", "autotune.cli"])
    # run where the user runs autotune: a job's relative output_dir (runs/<name> by default) is under it
    if kind == "crontab":
        return {f"{unit}.crontab": crontab_entry(job, expr, autotune_bin, job.parent / f"{unit}.log", Path.cwd())}
    if kind == "systemd":
        return systemd_units(job, expr, autotune_bin, unit, Path.cwd())
    name = dns_name(unit)
    return {f"{name}.yaml": kubernetes_cronjob(job, expr, name)}
