"""`autotune submit --force` starts a job over in its folder: the earlier job's own records go (its rungs log
was appended to, its summary would speak for the new job), the MLflow store stays (a new parent run joins the
old runs). A real preprocess-only job, twice."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_integration import job_yaml


def test_submit_force_leaves_no_record_of_the_earlier_job(tiny_model_dir, synthetic_csv, tmp_path):
    from autotune import api

    job = job_yaml(tmp_path, tiny_model_dir, synthetic_csv, "stages: [preprocess]\n", name="again")
    first = api.submit(job)
    out = Path(first["output_dir"])
    # what a longer earlier job would have left too
    (out / "rungs.jsonl").write_text(json.dumps({"t": 1.0, "trial": 0, "rung": 1, "val_accuracy": 0.9}) + "\n")
    for sub in ("search", "ray", "artifact"):
        (out / sub).mkdir(exist_ok=True)
        (out / sub / "old.json").write_text("{}")
    old_summary = (out / "summary.json").read_text()
    assert json.loads(old_summary)["job"] == "again"

    second = api.submit(job, force=True)
    assert not (out / "rungs.jsonl").exists()
    assert not [p for sub in ("search", "ray", "artifact") for p in (out / sub).glob("old.json")]
    assert json.loads((out / "summary.json").read_text())["seconds"] == second["seconds"]
    assert (out / "mlflow.db").is_file() and (out / "state" / "job.json").is_file()
