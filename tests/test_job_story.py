"""One small real job (Ray Tune + Optuna + MLflow, tiny model), then what a user sees of it afterwards:

- the MLflow runs say why each trial ended, who wrote them, and carry no "None" params; the splits are
  dataset inputs of the job run;
- the Optuna study holds the same values as MLflow rung by rung, names its objective, points at the MLflow
  job run, states the best-trial rule and names the same best trial as the summary and `autotune status`;
- the output folder travels: copied, moved and unpacked from a tar archive (the original deleted),
  `autotune status` and `autotune ui` open the folder's own store and its artifacts come from there.

The portability test moves the job folder away and runs last."""

from __future__ import annotations

import getpass
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest

from tests.cluster_env import free_port
from tests.test_integration import job_yaml

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def job(tiny_model_dir, synthetic_csv, tmp_path_factory):
    from rich.console import Console

    from autotune import api

    tmp = tmp_path_factory.mktemp("story")
    path = job_yaml(tmp, tiny_model_dir, synthetic_csv, """
        search:
          space:
            methods:
              full: {learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}}
              lora: {learning_rate: 1.0e-3, rank: 2, layers: {choices: [[0], [7]]}}
          initial_points:
            - {method: lora, knobs: {layers: [7]}}               # fails: the tiny model has 2 layers
            - {method: full, knobs: {learning_rate: 3.0e-3}}     # learns
            - {method: full, knobs: {learning_rate: 1.0e-4}}     # worse at rung 1: cut by ASHA
        budget: {num_trials: 4, max_concurrent_trials: 1, max_consecutive_failures: 3}
    """, name="story")
    out = io.StringIO()
    summary = api.submit(path, console=Console(file=out, force_terminal=False, width=200))
    return Path(summary["output_dir"]), summary, out.getvalue()


def client_of(folder: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")


def trial_runs(folder: Path, parent: str):
    client = client_of(folder)
    exp = client.get_experiment_by_name("story")
    return client, exp, client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")


def test_console_without_a_terminal_is_plain_lines(job):
    _, summary, console = job
    assert "\x1b" not in console
    assert "done:" not in console  # the live progress line is for terminals only


def test_runs_say_why_they_ended(job):
    folder, summary, _ = job
    client, exp, runs = trial_runs(folder, summary["mlflow_run_id"])
    assert len(runs) == 4
    seen = set()
    for r in runs:
        status, note = r.data.tags["autotune.trial_status"], r.data.tags["mlflow.note.content"]
        first = note.split("\n")[0]
        seen.add(status)
        hist = client.get_metric_history(r.info.run_id, "val_loss")
        last = max(hist, key=lambda m: m.step) if hist else None
        if status == "failed":
            assert note == f"failed: {r.data.tags['autotune.error']}" and "layer(s) [7] do not exist" in note
            continue
        rungs = client.get_metric_history(r.info.run_id, "examples")
        best = json.loads(r.data.tags["autotune.best_rung"])
        assert note.split("\n")[2] == (f"best val_loss {best['val_loss']:.4f} at rung {int(best['rung'])} "
                                       f"({int(best['examples']):,} examples)")
        if status == "finished":
            assert first == f"finished: {last.step}/{last.step} rungs"
        elif status == "pruned":
            examples = int(max(rungs, key=lambda m: m.step).value)
            prefix = f"pruned by ASHA at rung {last.step}/4 ({examples:,} examples), val_loss {last.value:.4f} > "
            assert first.startswith(prefix) and first.endswith(", the cut-off among full trials at that rung"), first
            assert float(first[len(prefix):].split(",")[0]) < last.value
    assert {"finished", "pruned", "failed"} <= seen


def test_runs_name_their_source_and_user_and_log_no_none(job):
    folder, summary, _ = job
    client, exp, runs = trial_runs(folder, summary["mlflow_run_id"])
    parent = client.get_run(summary["mlflow_run_id"])
    for r in [parent, *runs]:
        assert r.data.tags["mlflow.user"] == getpass.getuser() == r.info.user_id
        assert r.data.tags["mlflow.source.name"] == "autotune"
        assert "None" not in r.data.params.values()
    assert "tracking.uri" not in parent.data.params and parent.data.params["name"] == "story"
    inputs = {d.dataset.name: {t.key: t.value for t in d.tags} for d in parent.inputs.dataset_inputs}
    assert inputs == {"story-train": {"mlflow.data.context": "training"},
                      "story-validation": {"mlflow.data.context": "validation"},
                      "story-test": {"mlflow.data.context": "testing"}}


def test_study_agrees_with_mlflow_and_summary(job):
    import optuna

    from autotune import api
    from autotune.search.best import BEST_RULE

    folder, summary, _ = job
    client, exp, runs = trial_runs(folder, summary["mlflow_run_id"])
    study = optuna.load_study(study_name="story", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert study.metric_names == ["val_loss"]
    attrs = study.user_attrs
    assert (attrs["autotune.mlflow_experiment_id"], attrs["autotune.mlflow_parent_run_id"]) == (
        exp.experiment_id, summary["mlflow_run_id"])
    assert attrs["autotune.best_rule"] == BEST_RULE and attrs["autotune.objective"] == "val_loss"
    best_number = int(summary["best_trial"].split()[1])
    assert attrs["autotune.best_trial"] == best_number and attrs["autotune.best_value"] == summary["objective_value"]
    by_number = {int(r.data.params["trial_number"]): r for r in runs}
    for t in study.trials:
        run = by_number[t.number]
        assert t.user_attrs["autotune.mlflow_run_id"] == run.info.run_id
        if t.state.name == "FAIL":
            continue
        hist = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_loss")}
        assert t.intermediate_values == hist  # every rung, stepped by rung, the last one included
        assert t.value == hist[max(hist)]  # the rung MLflow shows last (pruned trials too)
        best = json.loads(run.data.tags["autotune.best_rung"])
        assert t.user_attrs["autotune.best_value"] == best["val_loss"] == min(hist.values())
        assert t.user_attrs["autotune.trainable_params"] == int(best["trainable_params"])
    # Optuna's best_trial is the best FINAL value of a COMPLETE trial; ours the best rung of any non-failed
    # trial. Where our pick is a finished trial whose best rung is its last and no other finished trial
    # ties it, they must agree.
    ours = study.trials[best_number]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if ours.state.name == "COMPLETE" and ours.value == ours.user_attrs["autotune.best_value"] \
            and sum(t.value == ours.value for t in complete) == 1:
        assert study.best_trial.number == best_number
    else:
        assert study.best_trial.value >= summary["objective_value"]
    # `autotune status` names the same best trial as the summary
    info = api.status(folder)
    assert info["best"]["trial"] == f"trial-{best_number:03d}-{summary['method']}"
    assert info["best"]["value"] == summary["objective_value"]


def test_status_reads_the_sqlite_store_as_mlflow_does(job, tmp_path):
    """`autotune status` reads the folder's SQLite store without mlflow (tracking/sqlite_read.py): the same
    runs, names, tags and params as MLflow's own client; a file that is not an MLflow store is refused."""
    import sqlite3

    from autotune.tracking.sqlite_read import StoreShapeError, child_runs, sqlite_path

    folder, summary, _ = job
    parent = summary["mlflow_run_id"]
    experiment = json.loads((folder / "state" / "job.json").read_text())["experiment"]
    db = sqlite_path(f"sqlite:///{folder / 'mlflow.db'}")
    assert db == folder / "mlflow.db" and sqlite_path("http://127.0.0.1:5000") is None
    ours = {r.run_id: (r.run_name, r.status, r.tags, r.params) for r in child_runs(db, experiment, parent)}
    theirs = {r.info.run_id: (r.info.run_name, r.info.status, r.data.tags, r.data.params)
              for r in trial_runs(folder, parent)[2]}
    assert ours == theirs and len(ours) >= 2
    assert child_runs(db, experiment, "no-such-parent") == []
    not_mlflow = tmp_path / "other.db"
    sqlite3.connect(not_mlflow).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreShapeError):
        child_runs(not_mlflow, experiment, parent)
    with pytest.raises(StoreShapeError):
        child_runs(db, "no-such-experiment", parent)


def test_folder_copied_moved_and_archived(job, tmp_path):
    """Runs last: the job folder is moved away."""
    from autotune import api

    folder, summary, _ = job
    parent = summary["mlflow_run_id"]
    original_status = api.status(folder)

    def check(where: Path, came_from: Path):
        proc = subprocess.run([sys.executable, "-m", "autotune.cli", "status", str(where), "--json"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        assert info["output_dir"] == str(where)
        assert info["tracking_uri"] == f"sqlite:///{where / 'mlflow.db'}"
        assert info["note"] == proc.stderr.strip()
        assert proc.stderr.startswith(f"note: this job folder was written at {came_from}; its MLflow store now points "
                                      f"at this folder (")
        for key in ("stages", "trials", "best"):
            assert info[key] == original_status[key], key
        client = client_of(where)
        dst = tmp_path / f"dl-{where.name}"
        dst.mkdir()
        assert Path(client.download_artifacts(parent, "job/job.yaml", str(dst))).read_text() == (where / "job.yaml").read_text()
        assert {a.path for a in client.list_artifacts(parent)} >= {"job", "search", "data"}
        mv = client.get_model_version_by_alias("story", "champion")
        model = Path(client.get_model_version_download_uri("story", mv.version).removeprefix("file://"))
        assert model.is_relative_to(where) and (model / "MLmodel").is_file()

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, symlinks=True)
    check(copy, folder)
    assert api.status(folder) == original_status  # the original is left as it was
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "resume", str(copy)], capture_output=True, text=True,
                          timeout=300)  # resuming a copy would write into the original: refused
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"error: 1 problem(s) found:\n  {copy}: this job folder was written at {folder}; `autotune "
                           f"resume` continues a job only in the folder it ran in (status and ui work on copies): move "
                           f"it back to {folder}\n")

    moved = tmp_path / "moved"
    shutil.move(folder, moved)  # the folder the job wrote is gone now
    check(moved, folder)

    archive = tmp_path / "story.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(moved, arcname="story")
    shutil.rmtree(moved)
    shutil.rmtree(copy)
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    check(unpacked / "story", moved)

    # the UI of the unpacked folder: the runs view link once /health answers, artifacts served from it
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "autotune.cli", "ui", str(unpacked / "story"), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert ui.stdout.readline() == f"starting the MLflow UI on 127.0.0.1:{port} (one worker) ...\n"
        line = ui.stdout.readline()
        exp_id = client_of(unpacked / "story").get_experiment_by_name("story").experiment_id
        url = f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
        assert line.startswith(f"MLflow UI: {url}  (server log: "), line
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/health", timeout=5) as resp:  # answered before the link was printed
            assert resp.status == 200
        with urllib.request.urlopen(f"{base}/get-artifact?path=job/job.yaml&run_uuid={parent}", timeout=30) as resp:
            assert resp.read().decode() == (unpacked / "story" / "job.yaml").read_text()
        import psutil

        procs = psutil.Process(ui.pid).children(recursive=True)
        cmdlines = [" ".join(p.cmdline()) for p in procs]
        assert not any("huey" in c for c in cmdlines), cmdlines  # no job consumers
        assert len(procs) <= 2, cmdlines  # mlflow's launcher and one uvicorn worker
    finally:
        ui.send_signal(signal.SIGTERM)  # as `kill` or systemd would: the MLflow server must not outlive it
        try:
            ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
    assert ui.returncode == 0
    assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    # a folder without its store is refused, not opened empty
    (unpacked / "story" / "mlflow.db").unlink()
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "status", str(unpacked / "story")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: 1 problem(s) found:\n  {unpacked / 'story'}: the job's MLflow store is missing "
                           f"(mlflow.db not found); copy or move the whole job folder, or set MLFLOW_TRACKING_URI to "
                           f"where the store is\n")
