"""`autotune schedule`: cron checking, the in-process schedule (real child processes, real signals) and the
crontab / systemd / Kubernetes files, each checked against the tool that reads it where that tool is here."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from croniter import croniter

from autotune.errors import ConfigError
from autotune.retune import schedule as sch

UTC = timezone.utc
REPO = Path(__file__).resolve().parents[1]
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CALENDAR_EXPRS = ["0 2 * * *", "*/15 * * * 1-5", "30 4 1,15 * *", "0 */6 * jan-mar mon,wed,fri", "0 0 1-20/3 */2 *",
                  "5 9 * * 6-7", "0 12 * * */2", "@monthly", "10-50/20 3,7 * * *", "0 0 29 2 *"]


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@pytest.fixture()
def job(tmp_path) -> Path:
    folder = tmp_path / "my jobs %1"  # a space and a % in the path: shell, cron and systemd quoting
    folder.mkdir()
    path = folder / "nightly_Job.yaml"
    path.write_text("name: nightly\n")
    return path


# --------------------------------------------------------------------------------------------- cron syntax

@pytest.mark.parametrize("expr, normal", [
    ("0 2 * * *", "0 2 * * *"), ("*/15 * * * 1-5", "*/15 * * * 1-5"), ("  0   2 * * MON ", "0 2 * * mon"),
    ("@daily", "0 0 * * *"), ("0 9 * jan-mar 6-7", "0 9 * jan-mar 6-7"), ("10-50/20 3,7 * * *", "10-50/20 3,7 * * *"),
])
def test_check_cron_accepts_and_normalises(expr, normal):
    assert sch.check_cron(expr) == normal


@pytest.mark.parametrize("expr, why", [
    ("0 2 * *", "exactly 5"), ("61 * * * *", "outside 0..59"), ("@reboot", "@reboot"), ("@fortnightly", "shortcut"),
    ("0 0 2 * * *", "exactly 5"), ("every night at two", "exactly 5"), ("0 2 L * *", "not a number"),
    ("H 2 * * *", "not a number"), ("0 2 * * 5#3", "not a value"), ("5/10 * * * *", "needs a range"),
    ("0 9 * * sat-sun", "backwards"), ("0 0 31 2 *", "no date ever matches"), ("", "empty"),
])
def test_check_cron_refuses_with_a_reason(expr, why):
    with pytest.raises(ConfigError) as err:
        sch.check_cron(expr)
    assert err.value.exit_code == 2
    (line,) = err.value.problems
    assert line.startswith(f"--cron: {expr!r} is not a cron expression (minute hour day-of-month month day-of-week")
    assert why in line


def test_next_run_is_strictly_after_and_time_zone_aware():
    assert sch.next_run("0 2 * * *", datetime(2025, 1, 1, 1, 59, tzinfo=UTC)) == datetime(2025, 1, 1, 2, 0, tzinfo=UTC)
    assert sch.next_run("0 2 * * *", datetime(2025, 1, 1, 2, 0, tzinfo=UTC)) == datetime(2025, 1, 2, 2, 0, tzinfo=UTC)
    friday_night = datetime(2025, 1, 3, 23, 50)  # naive: taken as UTC
    got = sch.next_run("*/15 * * * 1-5", friday_night)
    assert got == datetime(2025, 1, 6, 0, 0, tzinfo=UTC) and got.tzinfo is not None


# --------------------------------------------------------------------------------------------- crontab

def test_crontab_line_reads_back_and_runs_retune_in_the_job_folder(job, tmp_path):
    record = tmp_path / "argv.txt"
    fake = tmp_path / "bin dir" / "autotune"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\n{{ pwd; for a in \"$@\"; do echo \"$a\"; done; }} > {shlex.quote(str(record))}\n")
    fake.chmod(0o755)
    log = job.parent / "retune %d.log"
    text = sch.crontab_entry(job, "30 1 * * 1-5", shlex.quote(str(fake)), log)
    comment, line = text.rstrip("\n").split("\n")
    assert comment.startswith("# AutoTune") and str(job) in comment and "exits 0 (skipped)" in comment
    fields = line.split(" ", 5)
    expr, command = " ".join(fields[:5]), fields[5]
    start = datetime(2025, 6, 6, 12, 0, tzinfo=UTC)
    assert croniter(expr, start).get_next(datetime) == sch.next_run("30 1 * * 1-5", start)
    assert not re.search(r"(?<!\\)%", command), "a bare % ends a crontab command"
    command = command.replace("\\%", "%")  # what cron hands to /bin/sh
    subprocess.run(["/bin/sh", "-c", command], check=True, cwd=tmp_path, timeout=30)
    cwd, *argv = record.read_text().splitlines()
    assert Path(cwd) == job.parent and argv == ["retune", str(job)]
    assert log.exists()


def test_schedule_files_dispatch(job):
    (name, text), = sch.schedule_files("crontab", job, "0 2 * * *").items()
    assert name == "autotune-retune-nightly_Job.crontab" and f"retune {shlex.quote(str(job))}".replace("%", "\\%") in text
    assert set(sch.schedule_files("systemd", job, "0 2 * * *")) == {"autotune-retune-nightly_Job.service",
                                                                  "autotune-retune-nightly_Job.timer"}
    (name, _), = sch.schedule_files("kubernetes", job, "0 2 * * *").items()
    assert name == "autotune-retune-nightly-job.yaml"
    with pytest.raises(ConfigError) as err:
        sch.schedule_files("launchd", job, "0 2 * * *")
    assert "crontab, systemd, kubernetes" in err.value.problems[0]
    with pytest.raises(ConfigError, match="no such job file"):
        sch.schedule_files("crontab", job.parent / "absent.yaml", "0 2 * * *")
    with pytest.raises(ConfigError, match="--cron"):
        sch.schedule_files("crontab", job, "0 2 * *")


# --------------------------------------------------------------------------------------------- systemd

@pytest.mark.parametrize("expr, spec", [
    ("0 2 * * *", "*-*-* 02:00:00"), ("*/15 * * * 1-5", "Mon..Fri *-*-* *:00/15:00"),
    ("0 0 1-20/3 */2 *", "*-01/2-01,04,07,10,13,16,19 00:00:00"), ("0 9 * * 0,7,1", "Mon,Sun *-*-* 09:00:00"),
    ("0 */6 * jan-mar mon,wed,fri", "Mon,Wed,Fri *-01..03-* 00/6:00:00"),
])
def test_cron_to_oncalendar(expr, spec):
    assert sch.cron_to_oncalendar(expr) == spec


def test_cron_to_oncalendar_refuses_cron_day_or():
    with pytest.raises(ConfigError) as err:
        sch.cron_to_oncalendar("0 0 1 * 1")
    assert "two timers" in err.value.problems[0] and "only one" in err.value.problems[0]


def _elapses(spec: str) -> list[datetime]:
    out = subprocess.run(["systemd-analyze", "calendar", "--iterations=3", spec], capture_output=True, text=True,
                         env={**os.environ, "TZ": "UTC"}, timeout=30)
    assert out.returncode == 0, out.stderr
    times = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", out.stdout)
    assert len(times) == 3, out.stdout
    return [datetime.strptime(t, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) for t in times]


def _cron_times(expr: str, start: datetime) -> list[datetime]:
    it = croniter(expr, start)
    return [it.get_next(datetime) for _ in range(3)]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("expr", CALENDAR_EXPRS)
def test_oncalendar_fires_when_cron_does(expr):
    spec = sch.cron_to_oncalendar(expr) + " UTC"
    for _ in range(3):  # systemd-analyze counts from its own now: retry if a firing fell between the two clocks
        before = datetime.now(UTC)
        got = _elapses(spec)
        after = datetime.now(UTC)
        want = _cron_times(sch.check_cron(expr), before)
        if want == _cron_times(sch.check_cron(expr), after):
            assert got == want, f"{expr!r} -> {spec!r}"
            return
    pytest.fail("the clock kept crossing a firing time")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify(job, tmp_path, monkeypatch):
    monkeypatch.chdir(job.parent)  # the unit runs where `--print` ran: a relative output_dir resolves the same
    files = sch.schedule_files("systemd", job, "*/15 * * * 1-5")
    service, timer = files["autotune-retune-nightly_Job.service"], files["autotune-retune-nightly_Job.timer"]
    workdir = f"WorkingDirectory={job.parent}".replace("%", "%%")
    for setting in ("Type=oneshot", "KillSignal=SIGINT", "TimeoutStopSec=600", workdir):
        assert setting in service.splitlines()
    exec_start = next(x for x in service.splitlines() if x.startswith("ExecStart="))
    assert exec_start.endswith(' retune "' + str(job).replace("%", "%%") + '"')
    assert Path(shlex.split(exec_start[len("ExecStart="):])[0]).is_absolute()
    for setting in ("OnCalendar=Mon..Fri *-*-* *:00/15:00 UTC", "Persistent=true",
                    "Unit=autotune-retune-nightly_Job.service", "WantedBy=timers.target"):
        assert setting in timer.splitlines()
    units = tmp_path / "units"
    units.mkdir()
    for name, text in files.items():
        (units / name).write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", *(str(units / n) for n in files)], capture_output=True,
                         text=True, timeout=60)
    said = out.stdout + out.stderr
    ours = [line for line in said.splitlines() if any(n in line for n in files)]
    assert not ours, "systemd-analyze verify:\n" + said  # a warning about our files is a real error, rc or not
    if out.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here (rc {out.returncode}): {said.strip()[:300]}")


# --------------------------------------------------------------------------------------------- kubernetes

def test_kubernetes_cronjob(job):
    (_, text), = sch.schedule_files("kubernetes", job, "0 2 * * *").items()
    assert text.startswith("#") and "PersistentVolumeClaim" in text.split("apiVersion")[0]
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == "batch/v1" and doc["kind"] == "CronJob"
    name = doc["metadata"]["name"]
    assert DNS_1123.match(name) and len(name) <= 52
    spec = doc["spec"]
    assert spec["schedule"] == "0 2 * * *" and spec["concurrencyPolicy"] == "Forbid"
    assert isinstance(spec["startingDeadlineSeconds"], int)
    assert spec["jobTemplate"]["spec"]["backoffLimit"] == 0
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] == 600
    (container,) = pod["containers"]
    assert container["command"] == ["autotune", "retune", "/job/nightly_Job.yaml"]
    assert container["volumeMounts"] == [{"name": "job", "mountPath": "/job"}]
    assert pod["volumes"] == [{"name": "job", "persistentVolumeClaim": {"claimName": f"{name}-data"}}]


@pytest.mark.parametrize("raw", ["Autotune_Retune.My Job!!", "x" * 200, "---", "UPPER" * 20 + "-"])
def test_kubernetes_names_are_dns_1123(raw, job):
    doc = yaml.safe_load(sch.kubernetes_cronjob(job, "0 2 * * *", raw))
    name = doc["metadata"]["name"]
    assert DNS_1123.match(name) and len(name) <= 52, name


# --------------------------------------------------------------------------------------------- run_schedule

def fast_clock(speed: float = 60.0):
    """A clock that starts 0.5 s before a minute and runs `speed` times faster than the real one."""
    base = datetime.now(UTC).replace(second=59, microsecond=500000)
    start = time.monotonic()
    return lambda: base + timedelta(seconds=(time.monotonic() - start) * speed)


def test_run_schedule_runs_cycles_at_cron_times(tmp_path):
    marker = tmp_path / "ran.txt"
    cmd = [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write('ran\\n')", str(marker)]
    said: list[str] = []
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    rc = sch.run_schedule(cmd, "* * * * *", echo=said.append, now=fast_clock(), max_cycles=2)
    assert rc == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert marker.read_text() == "ran\nran\n"
    nexts = [re.match(r"next cycle at (\S+) \(in (\d+s|\d+h \d+m)\)$", s) for s in said if s.startswith("next cycle")]
    assert len(nexts) == 2 and all(nexts), said
    first, second = (datetime.fromisoformat(m[1]) for m in nexts)
    assert first.second == 0 and second - first == timedelta(minutes=1)
    assert [s for s in said if s.startswith("cycle ") and " exit " in s] == [
        "cycle 1 exit 0: done (promoted, kept or skipped)", "cycle 2 exit 0: done (promoted, kept or skipped)"]


def test_a_failed_cycle_does_not_stop_the_schedule(tmp_path):
    marker = tmp_path / "ran.txt"
    cmd = [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write('ran\\n'); sys.exit(4)", str(marker)]
    said: list[str] = []
    assert sch.run_schedule(cmd, "* * * * *", echo=said.append, now=fast_clock(), max_cycles=2) == 0
    assert marker.read_text() == "ran\nran\n"
    failed = [s for s in said if " exit 4: failed" in s]
    assert len(failed) == 2 and all("the schedule goes on" in s for s in failed), said


def test_run_schedule_refuses_a_bad_cron_or_command():
    with pytest.raises(ConfigError, match="--cron"):
        sch.run_schedule([sys.executable, "-c", "pass"], "0 2 * *", max_cycles=1)
    with pytest.raises(ConfigError, match="cannot run"):
        sch.run_schedule(["/nonexistent/autotune", "retune", "x"], "0 2 * * *", max_cycles=1)


CHILD = """\
import os, pathlib, signal, sys, time
out = pathlib.Path(os.environ["CHILD_MARKER"])
def note(text):
    with out.open("a") as fh:
        fh.write(text + "\\n")
def on_int(signum, frame):
    note("interrupted")
    if os.environ.get("CHILD_IGNORES_FIRST_SIGINT"):
        return
    sys.exit(130)
def on_term(signum, frame):
    note("terminated")
    sys.exit(143)
signal.signal(signal.SIGINT, on_int)
signal.signal(signal.SIGTERM, on_term)
note("started")
while True:
    time.sleep(0.05)
"""

SCHEDULER = """\
import sys, time
from datetime import datetime, timedelta, timezone
from autotune.retune.schedule import run_schedule
base = datetime.now(timezone.utc).replace(second=59, microsecond=500000)  # the next cycle is 0.5 s away
start = time.monotonic()
now = lambda: base + timedelta(seconds=time.monotonic() - start)
sys.exit(run_schedule(sys.argv[2:], sys.argv[1], echo=lambda s: print(s, flush=True), now=now))
"""


def start_scheduler(tmp_path: Path, expr: str, job: Path, **env) -> tuple[subprocess.Popen, Path, Path]:
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "scheduler.py").write_text(SCHEDULER)
    marker, log = tmp_path / "child.txt", tmp_path / "scheduler.out"
    cmd = [sys.executable, str(tmp_path / "scheduler.py"), expr, sys.executable, str(tmp_path / "child.py"),
           "retune", str(job)]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "CHILD_MARKER": str(marker), **env})
    return proc, marker, log


def finish(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_a_cycle_leaves_it_resumable(tmp_path, job, sig, code):
    proc, marker, log = start_scheduler(tmp_path, "* * * * *", job)
    try:
        wait_for(lambda: "started" in read(marker), "the cycle to start")
        proc.send_signal(sig)
        assert finish(proc) == code, read(log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert read(marker).split() == ["started", "interrupted"]  # one SIGINT, nothing else
    out = read(log)
    assert f"stopped ({sig.name}) during cycle 1: the cycle was left resumable (exit 130)" in out, out
    assert f"`autotune retune {shlex.quote(str(job))}` continues it" in out, out


def test_a_second_signal_sends_sigterm_to_the_cycle(tmp_path, job):
    proc, marker, log = start_scheduler(tmp_path, "* * * * *", job, CHILD_IGNORES_FIRST_SIGINT="1")
    try:
        wait_for(lambda: "started" in read(marker), "the cycle to start")
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "interrupted" in read(marker), "the cycle to get SIGINT")
        assert proc.poll() is None, "the scheduler must wait for the cycle, not give up on it"
        proc.send_signal(signal.SIGTERM)
        assert finish(proc) == 143, read(log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert read(marker).split() == ["started", "interrupted", "terminated"]
    assert "left resumable (exit 143)" in read(log)


def test_sigterm_while_sleeping_exits_0_at_once(tmp_path, job):
    proc, marker, log = start_scheduler(tmp_path, "0 0 1 1 *", job)  # next cycle months away
    try:
        wait_for(lambda: "next cycle at" in read(log), "the scheduler to sleep")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert finish(proc) == 0, read(log)
        assert time.monotonic() - sent < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopped (SIGTERM) before the next cycle" in read(log)
    assert read(marker) == ""
    assert "cycle 1" not in read(log)
