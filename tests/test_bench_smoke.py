"""Smoke test of the quality benchmark (bench/quality.py --quick): the bench pipeline runs end to end, writes its
JSON and plot and prints its table. It does not judge the numbers: on a busy 2-core machine a 60 s budget may
leave a tool without a model, which the bench records as such."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quality_bench_quick(tmp_path):
    out = tmp_path / "quality.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "bar:" in proc.stdout and "rotten_tomatoes" in proc.stdout  # the table was printed

    report = json.loads(out.read_text())
    for key in ("machine", "args", "data", "samples", "summary", "bar", "table", "plot", "conventions"):
        assert key in report, key
    for key in ("cpu_count", "platform", "python", "torch", "ray", "optuna", "transformers"):
        assert key in report["machine"], key
    assert report["args"]["quick"] is True and report["args"]["layers"] == 1
    assert report["data"]["rotten_tomatoes"]["sizes"] == {"train": 1000, "validation": 300, "test": 600}

    samples = report["samples"]
    assert sorted(s["tool"] for s in samples) == ["autotune", "random"]
    for s in samples:
        assert s["data"] == "rotten_tomatoes" and s["budget_s"] == 60 and s["seed"] == 0
        for key in ("exit_code", "test_accuracy", "val_best", "trials", "curve", "time_to_best_s", "wall_s", "seconds"):
            assert key in s, (s["tool"], key)
        assert isinstance(s["curve"], list) and s["wall_s"] > 0
        assert s["test_accuracy"] is None or 0.0 <= s["test_accuracy"] <= 1.0
        assert s["test_accuracy"] is not None or "stderr_tail" in s
        assert s.get("split_identical") is not False, f"{s['tool']} trained on another split"

    rows = {r["tool"]: r for r in report["summary"]}
    assert set(rows) == {"autotune", "random"}
    for r in rows.values():
        for key in ("test_accuracy_median", "test_accuracy_min", "test_accuracy_max", "trials_median",
                    "time_to_best_median_s", "wall_median_s", "models", "runs"):
            assert key in r, key
    assert len(report["bar"]) == 1
    assert report["bar"][0]["accuracy"] in ("PASS", "FAIL") and report["bar"][0]["half_budget"] in ("PASS", "FAIL", "n/a")

    png = out.with_suffix(".png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
