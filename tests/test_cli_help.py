"""The command line describes itself: --version, the exit codes in --help, flags shown as flags."""

from __future__ import annotations

import subprocess
import sys

import autotune


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], capture_output=True, text=True, timeout=120)


def test_version():
    proc = cli("--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"autotune {autotune.__version__}\n", "")


def test_help_lists_the_exit_codes():
    proc = cli("--help")
    assert proc.returncode == 0
    assert proc.stdout.endswith(
        "  Exit codes:\n"
        "      0  ok\n"
        "      1  a stage failed\n"
        "      2  bad input (job file, data, job folder)\n"
        "      3  a validation gate failed (deploy skipped)\n"
        "      4  too many consecutive failed trials\n"
        "      5  artifact verification failed\n"
        "      6  Ray cluster unusable\n"
        "      7  Optuna storage unusable\n"
        "      8  MLflow tracking unusable\n"
        "      9  job busy: another submit/resume holds its folder (or its study)\n"
        "    130  interrupted (Ctrl-C)\n"
        "    143  schedule stopped by SIGTERM while a cycle ran (left resumable)\n")
    assert "  --version  Print the version and exit.\n" in proc.stdout


def test_flags_are_shown_as_flags_and_options_with_their_value():
    status = cli("status", "--help").stdout
    assert "  --json  Print JSON.\n" in status and "<bool>" not in status
    ui = cli("ui", "--help").stdout
    assert "  --port <int>  Port of the MLflow UI.  [default: 5000]\n" in ui
