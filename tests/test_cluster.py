"""Scale-out on real engines: a two-node Ray cluster (second node in its own network namespace), Optuna on
PostgreSQL, an MLflow tracking server with basic auth - all started here. A real small search runs across
both nodes; the second node is killed after one of its trials checkpointed; nothing may be lost or
duplicated; wrong credentials fail in seconds with their own exit code; no canary secret leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.cluster_env import make_stack, missing_prerequisites, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack():
    missing = missing_prerequisites()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the cluster test needs {', '.join(missing)}: .ci/run must install it")
        pytest.skip(f"needs {', '.join(missing)}")
    s = make_stack()
    try:
        s.start()
        yield s
    finally:
        s.stop()
        print(f"\ncluster up {s.timings.get('up_s', 0):.1f} s, down {s.timings.get('down_s', 0):.1f} s")


def cli(args, env, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


def test_wrong_credentials_fail_fast_with_distinct_codes(stack, tmp_path):
    job = tmp_path / "j.yaml"
    job.write_text(f"name: creds\noutput_dir: {tmp_path / 'out'}\n")
    bad_token = tmp_path / "bad-token"
    bad_token.write_text("not-the-token-" + "0" * 20)
    cases = [
        (stack.client_env(token_file=bad_token), 6, "ray"),
        (stack.client_env(pg_password="wrong-password"), 7, "credentials rejected"),
        (stack.client_env(mlflow_password="wrong-password"), 8, "credentials of user 'admin' rejected"),
    ]
    for env, code, message in cases:
        start = time.time()
        proc = cli(["submit", str(job)], env, timeout=120)
        took = time.time() - start
        assert proc.returncode == code, proc.stderr[-1500:]
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert took < 25, f"exit {code} took {took:.1f} s"
        print(f"exit {code} ({message}) after {took:.1f} s")
    ok = cli(["doctor", str(job)], stack.client_env(), timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "2 alive" in ok.stdout and "MLflow server 3." in ok.stdout


def test_search_across_nodes_survives_node_kill(stack, tiny_model_dir, synthetic_csv, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    job = tmp_path / "cluster.yaml"
    job.write_text(textwrap.dedent(f"""
        name: cluster
        output_dir: {out}
        model: {{name_or_path: {tiny_model_dir}, max_length: 16}}
        data: {{path: {synthetic_csv}, text_column: review, label_column: sentiment}}
        search:
          space:
            methods:
              full: {{learning_rate: {{low: 1.0e-4, high: 3.0e-3, log: true}}}}
        budget: {{num_trials: 6, max_concurrent_trials: 2, max_retries: 2}}
        training: {{epochs: 4, batch_size: 8, evals_per_epoch: 2, warmup_ratio: 0.0}}
        objective: {{metric: val_loss}}
        scheduler: {{kind: fifo}}
        ray: {{storage_path: {tmp_path / 'tune-storage'}}}
        tracking: {{registered_model: cluster-model}}
    """))
    env = stack.client_env()
    start = time.time()
    driver = subprocess.Popen([sys.executable, "-m", "autotune.cli", "submit", str(job)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.secrets["mlflow"])
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])

    def worker_trial_checkpointed():
        assert driver.poll() is None, driver.stderr.read()[-3000:]
        exp = client.get_experiment_by_name("cluster")
        if exp is None:
            return None
        for run in client.search_runs([exp.experiment_id], filter_string=f"tags.`autotune.node_ip` = '{stack.node_ip}'"):
            if run.data.metrics.get("val_loss") is not None:  # reported a rung = saved a checkpoint
                return run
        return None

    victim = wait_for(worker_trial_checkpointed, 240, "a trial on the second node to checkpoint", interval=0.5)
    stack.kill_worker_node()
    killed_at = time.time()
    stdout, stderr = driver.communicate(timeout=300)
    wall = time.time() - start
    assert driver.returncode == 0, stderr[-3000:]
    print(f"cluster job {wall:.1f} s; node killed {killed_at - start:.1f} s in")

    exp = client.get_experiment_by_name("cluster")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    trial_ids = [c.data.tags["autotune.trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 6  # one child run per trial, the retried one included
    assert not [c for c in children if c.info.status == "RUNNING"]
    assert all(c.data.tags["autotune.trial_status"] == "finished" for c in children)
    per_node = {}
    for c in children:
        history = client.get_metric_history(c.info.run_id, "val_loss")
        steps = [m.step for m in history]
        assert steps == sorted(set(steps)) == list(range(1, 9)), (c.info.run_name, steps)  # no duplicated rung
        for ip in c.data.tags["autotune.nodes"].split(","):
            per_node[ip] = per_node.get(ip, 0) + 1
    assert set(per_node) == {stack.head_ip, stack.node_ip}  # trials really ran on both nodes
    # the victim was retried on the surviving node, continuing its own run from its checkpoint
    victim_after = client.get_run(victim.info.run_id)
    assert victim_after.data.tags["autotune.nodes"] == f"{stack.node_ip},{stack.head_ip}"
    print(f"trials per node (a retried trial counts on both): {per_node}")

    # the study in Postgres holds every trial exactly once
    import optuna

    storage = f"postgresql+psycopg://postgres:{stack.secrets['pg']}@127.0.0.1:{stack.pg_port}/optuna"
    study = optuna.load_study(study_name="cluster", storage=storage)
    ray_ids = [t.user_attrs["ray_trial_id"] for t in study.trials]
    assert len(ray_ids) == len(set(ray_ids)) == 6
    assert {t.state.name for t in study.trials} == {"COMPLETE"}

    # the deploy artifact sits in the served artifact store and is registered
    manifests = list(stack.artifacts_dir.rglob("MANIFEST.json"))
    assert manifests, "no artifact in the MLflow server's artifact store"
    mv = client.get_model_version_by_alias("cluster-model", "champion")
    assert mv.run_id == parent[0].info.run_id

    # no canary secret in anything the job wrote or logged
    haystacks = {"driver stdout": stdout, "driver stderr": stderr,
                 "postgres optuna": stack.pg_dump("optuna"), "postgres mlflow": stack.pg_dump("mlflow")}
    for root in (out, tmp_path / "tune-storage", stack.artifacts_dir):
        for path in root.rglob("*"):
            if path.is_file():
                haystacks[str(path)] = path.read_bytes().decode("latin-1")
    for name, secret in stack.secrets.items():
        leaks = [where for where, text in haystacks.items() if secret in text]
        assert not leaks, f"{name} secret found in {leaks[:5]}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tracking_uri"].startswith("http://127.0.0.1")
