"""Smoke test of issue 14's benchmarks (bench/throughput.py, memory.py, search_scale.py, startup.py, prefix_cache.py) and
bench 1 (orchestration.py) and issue 15's per-method table (bench/methods.py), each run with --quick in a subprocess:
it exits 0, prints its table and writes its JSON with the expected keys. Only orchestration.py and methods.py start
Ray in quick mode (2- and 3-trial tiny jobs); the numbers are not judged (a loaded 2-core CI machine makes any timing
meaningless)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MACHINE_KEYS = ("cpu_count", "platform", "python", "torch", "optuna", "transformers")

# bench -> (text the printed table holds, top-level JSON keys, keys of each summary row)
CASES = {
    "throughput": ("training samples/s", ("machine", "args", "summary", "samples", "cached_head", "bar", "conventions"),
                   ("method", "autotune_samples_per_s", "hand_samples_per_s", "ratio", "bar")),
    "memory": ("memory per method", ("machine", "args", "summary", "samples", "methods", "conventions"),
               ("method", "peak_rss", "rss_before_train", "optimizer_state_bytes", "trainable_params")),
    "search_scale": ("search cost per trial", ("machine", "args", "summary", "runs", "sampler", "conventions"),
                     ("storage", "at_trials", "suggest_ms_median", "trial_ms_median", "trial_ms_mean_all")),
    "prefix_cache": ("frozen-prefix cache", ("machine", "args", "summary", "samples", "knobs", "conventions"),
                     ("method", "k", "frozen_layers", "speedup_train", "val_accuracy_cached")),
    "methods": ("per method, best of its points", ("machine", "args", "summary", "trials", "methods", "conventions"),
                ("data", "method", "best_val_accuracy", "trainable_params", "optimizer_state_bytes", "seconds_per_epoch")),
    "orchestration": ("orchestration overhead", ("machine", "args", "summary", "samples", "bar", "conventions"),
                      ("concurrency", "tool", "ideal_s", "wall_s", "search_s", "trial_s_median", "first_report_s")),
    "startup": ("CLI start-up", ("machine", "args", "summary", "samples", "bars_s", "conventions"),
                ("command", "seconds", "bar", "ok")),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("bench", list(CASES))
def test_bench_quick(bench, tmp_path):
    out = tmp_path / f"{bench}.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{bench}.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    title, keys, row_keys = CASES[bench]
    assert title in proc.stdout, proc.stdout[-3000:]  # the table was printed (its title; box characters vary)
    assert f"wrote {out}" in proc.stdout

    report = json.loads(out.read_text())
    for key in keys:
        assert key in report, key
    for key in MACHINE_KEYS:
        assert key in report["machine"], key
    assert report["args"]["quick"] is True
    assert report["summary"], "no summary rows"
    for row in report["summary"]:
        for key in row_keys:
            assert key in row, (bench, key)

    if bench == "throughput":
        assert {r["method"] for r in report["summary"]} == {"full", "lora", "sparse", "head"}
        assert all(s["ratio"] > 0 for s in report["samples"])
        assert report["cached_head"] is not None and report["cached_samples"][0]["cold"] is True
    elif bench == "memory":
        assert all(s["peak_rss"] > 0 and s["optimizer_state_bytes"] > 0 for s in report["samples"])
    elif bench == "search_scale":
        assert {r["storage"] for r in report["summary"]} == {"sqlite", "journal", "memory"}
        assert all(len(r["trial_ms"]) == 50 for r in report["runs"])
    elif bench == "methods":  # a real job through Ray, Optuna and MLflow: one row per method, zero_shot trains nothing
        assert [r["method"] for r in report["trials"]["synthetic"]] == ["zero_shot", "head", "bitfit"]
        assert {r["method"]: r["trainable_params"] for r in report["summary"]}["zero_shot"] == 0
    elif bench == "orchestration":  # AutoTune (a real job, the work in a method plugin) and both peers ran it
        assert [r["tool"] for r in report["summary"]] == ["autotune", "bare_ray_tune", "bare_optuna"]
        assert all(s["trials"] == 2 and min(s["trial_s"]) > 0 for s in report["samples"])
    elif bench == "startup":
        assert {r["command"] for r in report["summary"]} == {"validate", "status"}
        assert all(s["ok"] for s in report["samples"]), report["samples"]
        assert "without a job" in proc.stdout  # quick mode says what its status timing is
