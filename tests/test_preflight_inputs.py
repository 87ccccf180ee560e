"""What passes `validate` but cannot run where the job runs is stopped by submit's pre-flight, before anything
starts or is written: resources per trial no node can give (a trial Ray cannot place waits forever), a
local model path that does not exist (a hub error otherwise), an output_dir that is a file (a traceback
otherwise), a tracking URI MLflow has no store for (an unrelated MLflow message otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autotune import api

SCHEMES = "databricks, databricks-uc, http, https, mssql, mysql, postgresql, sqlite, uc"


def _local_cpus() -> int:
    from ray._private.utils import get_num_cpus  # what local Ray will count

    return int(get_num_cpus())


def _local_gpus() -> int:
    from autotune.doctor import local_resources

    return int(local_resources().get("GPU", 0))


def _job(tmp_path: Path, body: str) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(f"name: pre\noutput_dir: {tmp_path / 'out'}\n" + textwrap.dedent(body))
    return job


def _problems(job: Path) -> list[str]:
    checks = api.doctor(job)
    assert checks[0].engine == "job"
    return checks[0].problems


def test_cpu_beyond_this_machine(tmp_path):
    job = _job(tmp_path, "budget: {resources_per_trial: {cpu: 1000}}")
    assert _problems(job) == [
        f"{job}: budget.resources_per_trial.cpu: must be <= {_local_cpus()}, the CPUs of this machine (local Ray) (got 1000)"]


def test_gpu_without_a_gpu(tmp_path):
    if _local_gpus():
        pytest.skip("this machine has a GPU")
    job = _job(tmp_path, "budget: {resources_per_trial: {gpu: 1}}")
    assert _problems(job) == [
        f"{job}: budget.resources_per_trial.gpu: must be 0: Ray finds no GPU on this machine (local Ray) "
        f"(got 1; available: CPU {_local_cpus()})"]


def test_unknown_custom_resource(tmp_path):
    job = _job(tmp_path, "budget: {resources_per_trial: {custom: {big_node: 1}}}")
    assert _problems(job) == [
        f"{job}: budget.resources_per_trial.custom.big_node: this machine (local Ray) has no resource 'big_node' "
        f"(got 1; available: CPU {_local_cpus()}{', GPU %d' % _local_gpus() if _local_gpus() else ''})"]


def test_resources_against_the_nodes_of_a_cluster(tmp_path):
    """The per-node rule (a trial runs on one node) over the resource table `ray.nodes()` gives."""
    from autotune.config import load_job
    from autotune.doctor import resource_problems

    nodes = [{"CPU": 8.0, "memory": 1e10, "node:10.0.0.1": 1.0}, {"CPU": 2.0, "GPU": 1.0, "node:10.0.0.2": 1.0}]
    where = "the Ray cluster at 10.0.0.1:6379"
    ok = load_job(_job(tmp_path, "budget: {resources_per_trial: {cpu: 2, gpu: 1}}"))
    assert resource_problems(ok, nodes, where, one_node=False) == []
    job = _job(tmp_path, "budget: {resources_per_trial: {cpu: 4, gpu: 2, custom: {tpu_pod: 1}}}")
    assert resource_problems(load_job(job), nodes, where, one_node=False) == [
        f"{job}: budget.resources_per_trial.gpu: must be <= 1, the GPUs of any node of {where} (got 2)",
        f"{job}: budget.resources_per_trial.custom.tpu_pod: {where} has no resource 'tpu_pod' (got 1; available: CPU 8)",
    ]
    split = _job(tmp_path, "budget: {resources_per_trial: {cpu: 4, gpu: 1}}")  # each fits somewhere, both nowhere
    assert resource_problems(load_job(split), nodes, where, one_node=False) == [
        f"{split}: budget.resources_per_trial: no single node of {where} has all of CPU 4, GPU 1 "
        "(nodes offer: CPU 8; CPU 2, GPU 1)"]


def test_missing_local_model_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = _job(tmp_path, "model: {name_or_path: ./models/my-bert}")
    assert _problems(job) == [
        f"{job}: model.name_or_path: directory not found (got './models/my-bert', resolved to {tmp_path / 'models' / 'my-bert'})"]
    (tmp_path / "models" / "my-bert").mkdir(parents=True)
    assert _problems(job) == [
        f"{job}: model.name_or_path: {tmp_path / 'models' / 'my-bert'} has no config.json, so it is not a saved "
        "transformers model (got './models/my-bert')"]
    hub = _job(tmp_path, "model: {name_or_path: sentence-transformers/all-MiniLM-L6-v2}")
    assert _problems(hub) == []  # a hub id: whether a hub answers is the model load's business


def test_output_dir_that_is_a_file(tmp_path):
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    job = tmp_path / "job.yaml"
    job.write_text(f"name: pre\noutput_dir: {target}\n")
    assert _problems(job) == [f"{job}: output_dir: must be a directory (got a regular file: '{target}')"]
    job.write_text(f"name: pre\noutput_dir: {target / 'runs'}\n")
    assert _problems(job) == [
        f"{job}: output_dir: {target} is a regular file, so no directory can be made below it (got '{target / 'runs'}')"]
    assert target.read_text() == "root:x:0:0\n"


def test_tracking_uri_with_an_unknown_scheme(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = _job(tmp_path, 'tracking: {uri: "garbage://bob:hunter2@nowhere"}')
    assert _problems(job) == [f"{job}: tracking.uri: scheme must be one of {SCHEMES} (got 'garbage://bob:***@nowhere')"]
    job = _job(tmp_path, 'tracking: {uri: "./mlruns"}')
    assert _problems(job) == [
        f"{job}: tracking.uri: MLflow's file store (a path or file:) is not usable with MLflow 3; give "
        "sqlite:///PATH/mlflow.db or an http(s) tracking server (got './mlruns')"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "htp://typo:5000")
    assert _problems(job) == [
        f"MLFLOW_TRACKING_URI (overrides tracking.uri): scheme must be one of {SCHEMES} (got 'htp://typo:5000')"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql+psycopg://u@db/mlflow")
    assert _problems(job) == []


def test_submit_stops_before_anything_starts_exit_2_every_problem_at_once(tmp_path):
    """The CLI end to end: exit 2, one line per problem, no traceback, nothing written, no Ray started."""
    target = tmp_path / "a-file"
    target.write_text("x")
    job = tmp_path / "job.yaml"
    job.write_text(textwrap.dedent(f"""
        name: pre
        output_dir: {target}
        model: {{name_or_path: /no/such/model}}
        tracking: {{uri: "garbage://nowhere"}}
        budget: {{resources_per_trial: {{cpu: 1000, custom: {{big_node: 1}}}}}}
    """))
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "submit", str(job), "--force"], capture_output=True,
                          text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "error: 5 problem(s) found:" and "Traceback" not in proc.stderr
    assert [l.split(": ")[1] for l in lines[1:]] == [
        "output_dir", "model.name_or_path", "tracking.uri", "budget.resources_per_trial.cpu",
        "budget.resources_per_trial.custom.big_node"]
    assert target.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "job.yaml"]


@pytest.mark.ray
def test_resources_checked_against_a_real_cluster(tmp_path):
    """A one-node Ray cluster (`ray start --head` on 127.0.0.2, 2 CPUs, custom resource big: 1): a job asking
    for more than any node has stops in the pre-flight, exit 2, instead of waiting forever for a node."""
    import signal

    from tests.cluster_env import free_port, wait_for

    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address=127.0.0.2",
                             f"--port={port}", "--num-cpus=2", '--resources={"big": 1}', "--include-dashboard=false",
                             "--block"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    address = f"127.0.0.2:{port}"
    recorded = Path("/tmp/ray/ray_current_cluster")  # `ray start --head` records its address here
    try:
        wait_for(lambda: recorded.is_file() and recorded.read_text().strip() == address, 60, "the Ray head")
        job = _job(tmp_path, "budget: {resources_per_trial: {cpu: 1000, custom: {big: 2, small: 1}}}")
        proc = subprocess.run([sys.executable, "-m", "autotune.cli", "submit", str(job), "--address", address],
                              capture_output=True, text=True, timeout=120, env=env)
        where = f"the Ray cluster at {address}"
        assert (proc.returncode, proc.stderr) == (2, (
            "error: 3 problem(s) found:\n"
            f"  {job}: budget.resources_per_trial.cpu: must be <= 2, the CPUs of {where} (got 1000)\n"
            f"  {job}: budget.resources_per_trial.custom.big: must be <= 1, the amount of 'big' on {where} (got 2)\n"
            f"  {job}: budget.resources_per_trial.custom.small: {where} has no resource 'small' (got 1; available: CPU 2, big 1)\n"))
        assert not (tmp_path / "out").exists()
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head ignores SIGTERM for long; never `ray stop`
        head.wait()
        if recorded.is_file() and recorded.read_text().strip() == address:
            recorded.unlink()
