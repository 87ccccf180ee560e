"""Docker smoke test: start a Docker daemon without touching the host network (no bridge, no firewall
changes), build the AutoTune image on a base made from Debian's packages (debootstrap + docker import; no
container registry is reachable here) from an offline wheel bundle, bring the compose stack up with --wait,
submit a short job from the host against its PostgreSQL and MLflow, check the results there, tear it all down.
The daemon's data root, the base image and the wheel bundle are cached under /var/cache/autotune-docker, so a
warm run on the same machine skips debootstrap and most of the build. debootstrap takes its Debian mirror from
this machine's own apt sources and its proxy from http_proxy/https_proxy or apt's configuration
(tests/apt_sources.py), so the base builds wherever apt works."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.apt_sources import debootstrap_args
from tests.cluster_env import free_port, wait_for
from tests.test_docker_files import _compose_binary

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CACHE = Path("/var/cache/autotune-docker")
SUITE = "bookworm"
BASE = f"autotune-base:{SUITE}"


@pytest.fixture(scope="module")
def docker_env(tmp_path_factory):
    missing = [what for what, ok in (("root", os.geteuid() == 0), ("dockerd (apt: docker.io)", shutil.which("dockerd")),
                                     ("debootstrap", shutil.which("debootstrap"))) if not ok]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the docker smoke test needs {', '.join(missing)}: .ci/run must install it")
        pytest.skip(f"needs {', '.join(missing)}")
    CACHE.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tmp_path_factory.mktemp("dockerd"))
    sock = run_dir / "docker.sock"
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(run_dir / "cli")}
    log = open(run_dir / "dockerd.log", "w")
    daemon = subprocess.Popen(
        ["dockerd", "--host", f"unix://{sock}", "--data-root", str(CACHE / "data"), "--exec-root", str(run_dir / "exec"),
         "--pidfile", str(run_dir / "docker.pid"), "--bridge=none", "--iptables=false", "--ip6tables=false"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    timings: dict[str, float] = {}
    try:
        wait_for(lambda: subprocess.run(["docker", "version"], env=env, capture_output=True).returncode == 0, 60, "dockerd")
        yield env, timings
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        # dockerd leaves its exec-root network-namespace bind mount behind: unmount what lies under run_dir
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if str(run_dir) in line]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        log.close()
        print("\ndocker figures: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def docker(env, *args, timeout=900, check=True):
    proc = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def ensure_base(env, timings) -> None:
    if docker(env, "image", "inspect", BASE, check=False).returncode == 0:
        timings["base_s (cached)"] = 0.0
        return
    t0 = time.time()
    rootfs = CACHE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    try:
        args, boot_env = debootstrap_args(SUITE, rootfs)  # the machine's own mirror and proxy
    except LookupError as exc:
        pytest.fail(f"cannot build the {SUITE} base: {exc}")
    subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates,postgresql-15",
                    *args], check=True, capture_output=True, timeout=900, env=boot_env)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["docker", "import", "-", BASE], env=env, stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    timings["base_s (cold)"] = time.time() - t0


def wheel_bundle() -> Path:
    """Every wheel the image needs, fetched by the host's pip (which knows this machine's CA and the local
    CPU torch wheel); keyed by the constraints so a change of pins fetches again."""
    key = hashlib.sha256((REPO / "docker" / "constraints.txt").read_bytes() + (REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    bundle = CACHE / f"wheels-{key}"
    if not (bundle / ".complete").exists():
        shutil.rmtree(bundle, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(bundle), "-c", str(REPO / "docker" / "constraints.txt"),
                        "torch==2.13.0", "ray[tune,default]", "mlflow", "optuna", "psycopg[binary]", "setuptools>=68", "wheel",
                        str(REPO)], check=True, capture_output=True, timeout=900)
        for stray in bundle.glob("autotune-*"):
            stray.unlink()
        (bundle / ".complete").touch()
    return bundle


def build_images(env, timings) -> None:
    ctx = CACHE / "context"
    shutil.rmtree(ctx, ignore_errors=True)
    (ctx / "docker").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, ctx / name)
    for name in ("autotune", "search_spaces", "pipelines", "tests/docker"):
        shutil.copytree(REPO / name, ctx / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Dockerfile", "constraints.txt"):
        shutil.copy2(REPO / "docker" / name, ctx / "docker" / name)
    shutil.copytree(wheel_bundle(), ctx / "docker" / "wheels", copy_function=os.link, ignore=shutil.ignore_patterns(".complete"))
    t0 = time.time()
    docker(env, "build", "--network", "host", "-f", "docker/Dockerfile", "--build-arg", f"BASE_IMAGE={BASE}",
           "--build-arg", "PIP_NO_INDEX=1", "-t", "autotune:cpu", str(ctx))
    timings["image_build_s"] = time.time() - t0
    timings["image_size_mb"] = int(docker(env, "image", "inspect", "-f", "{{.Size}}", "autotune:cpu").stdout) / 1e6
    docker(env, "build", "-f", "tests/docker/postgres.Dockerfile", "--build-arg", f"BASE_IMAGE={BASE}",
           "-t", "autotune-postgres:test", str(ctx))


def test_stack_builds_comes_up_and_serves_a_job(docker_env, tiny_model_dir, synthetic_csv, tmp_path):
    env, timings = docker_env
    ensure_base(env, timings)
    build_images(env, timings)

    secrets = {"POSTGRES_PASSWORD": "canary-pg-" + os.urandom(6).hex(), "RAY_AUTH_TOKEN": "canary-ray-" + os.urandom(12).hex()}
    ports = {"POSTGRES_PORT": free_port(), "MLFLOW_PORT": free_port(), "RAY_PORT": free_port()}
    env_file = tmp_path / "stack.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {**secrets, **ports, "AUTOTUNE_IMAGE": "autotune:cpu",
                                                          "POSTGRES_IMAGE": "autotune-postgres:test"}.items()))
    compose = [_compose_binary(), "-p", f"autotune-test-{os.getpid()}", "-f", str(REPO / "docker" / "compose.yaml"),
               "-f", str(REPO / "tests" / "docker" / "compose.hostnet.yaml"), "--env-file", str(env_file)]
    t0 = time.time()
    up = subprocess.run(compose + ["up", "-d", "--wait", "--no-build"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        timings["stack_up_s"] = time.time() - t0
        def nodes() -> int:
            status = subprocess.run(compose + ["exec", "-T", "ray-head", "ray", "status", f"--address=127.0.0.2:{ports['RAY_PORT']}"],
                                    env=env, capture_output=True, text=True, timeout=60)
            return status.stdout.count(" node_")

        wait_for(lambda: nodes() >= 2, 90, "the Ray worker container to join the head", interval=2)

        job = tmp_path / "job.yaml"
        job.write_text(textwrap.dedent(f"""
            name: dockerjob
            output_dir: {tmp_path / 'out'}
            model: {{name_or_path: {tiny_model_dir}, max_length: 16}}
            data: {{path: {synthetic_csv}, text_column: review, label_column: sentiment}}
            search: {{space: {{methods: {{head: {{learning_rate: {{low: 1.0e-3, high: 3.0e-2, log: true}}}}}}}}}}
            budget: {{num_trials: 2, max_concurrent_trials: 2}}
            training: {{epochs: 1, evals_per_epoch: 1}}
            scheduler: {{kind: fifo}}
        """))
        client_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_", "PG", "AUTOTUNE_"))}
        client_env.update({
            "AUTOTUNE_OPTUNA_STORAGE": f"postgresql+psycopg://autotune@127.0.0.1:{ports['POSTGRES_PORT']}/optuna",
            "PGPASSWORD": secrets["POSTGRES_PASSWORD"],
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['MLFLOW_PORT']}",
        })
        t1 = time.time()
        proc = subprocess.run([sys.executable, "-m", "autotune.cli", "submit", str(job)], env=client_env,
                              capture_output=True, text=True, timeout=600)
        timings["job_s"] = time.time() - t1
        assert proc.returncode == 0, proc.stderr[-3000:]

        from mlflow.tracking import MlflowClient
        import optuna

        client = MlflowClient(client_env["MLFLOW_TRACKING_URI"])
        exp = client.get_experiment_by_name("dockerjob")
        runs = client.search_runs([exp.experiment_id])
        assert len([r for r in runs if "mlflow.parentRunId" in r.data.tags]) == 2
        parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][0]
        assert parent.info.status == "FINISHED"
        assert "MANIFEST.json" in {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "model")}
        storage = f"postgresql+psycopg://autotune:{secrets['POSTGRES_PASSWORD']}@127.0.0.1:{ports['POSTGRES_PORT']}/optuna"
        assert len(optuna.load_study(study_name="dockerjob", storage=storage).trials) == 2
        for secret in secrets.values():
            assert secret not in proc.stdout + proc.stderr
    finally:
        t2 = time.time()
        subprocess.run(compose + ["down", "-v", "--timeout", "5"], env=env, capture_output=True, timeout=180)
        timings["stack_down_s"] = time.time() - t2
