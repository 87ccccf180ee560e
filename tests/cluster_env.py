"""A throwaway scale-out stack for tests, all on this machine: PostgreSQL (UTF8, loopback, free port, password
auth over TCP), an MLflow tracking server with basic auth and served artifacts on it, a Ray head and a second
Ray node in a network namespace of its own (veth pair), token auth on. Everything is started with setsid and
torn down by process group or PID - never by name, never with `ray stop`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def missing_prerequisites() -> list[str]:
    out = []
    if os.geteuid() != 0:
        out.append("root (network namespaces, postgres as its own user)")
    if not (PG_BIN / "initdb").is_file():
        out.append("Debian's postgresql-15 (apt-get install --no-upgrade postgresql-15)")
    if not shutil.which("ip"):
        out.append("iproute2")
    return out


@dataclass
class Stack:
    root: Path
    secrets: dict[str, str]
    pg_port: int = 0
    mlflow_port: int = 0
    ray_port: int = 0
    head_ip: str = "10.123.0.1"
    node_ip: str = "10.123.0.2"
    netns: str = ""
    veth: str = ""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    # --- environment for clients -----------------------------------------------------------------
    @property
    def token_file(self) -> Path:
        return self.root / "ray-token"

    def ray_env(self, token_file: Path | None = None) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file or self.token_file)}

    def client_env(self, pg_password=None, mlflow_password=None, token_file=None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "PG", "AUTOTUNE_"))}
        env.update(self.ray_env(token_file))
        env.update({
            "RAY_ADDRESS": f"{self.head_ip}:{self.ray_port}",
            "AUTOTUNE_OPTUNA_STORAGE": f"postgresql+psycopg://postgres@127.0.0.1:{self.pg_port}/optuna",
            "PGPASSWORD": pg_password or self.secrets["pg"],
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.mlflow_port}",
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": mlflow_password or self.secrets["mlflow"],
        })
        return env

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "mlartifacts"

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.time()
        self._start_postgres()
        self._start_mlflow()  # slowest: start it before Ray, wait for it last
        self._start_netns()
        self._start_ray()
        wait_for(self._mlflow_healthy, 90, "the MLflow server")
        self.timings["up_s"] = time.time() - t0

    def stop(self) -> None:
        t0 = time.time()
        for name in ("ray-worker", "ray-head", "mlflow"):
            p = self.procs.pop(name, None)
            if p is not None:
                _kill_group(p, signal.SIGTERM if name != "ray-head" else signal.SIGKILL)
        if (self.root / "pg" / "data" / "postmaster.pid").exists():
            subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.root / "pg" / "data"),
                            "-m", "immediate", "-w", "stop"], capture_output=True)
        if self.netns:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        recorded = Path("/tmp/ray/ray_current_cluster")  # `ray start --head` records its address here
        if recorded.is_file() and recorded.read_text().strip() == f"{self.head_ip}:{self.ray_port}":
            recorded.unlink()
        self.timings["down_s"] = time.time() - t0
        shutil.rmtree(self.root, ignore_errors=True)

    def kill_worker_node(self) -> None:
        _kill_group(self.procs.pop("ray-worker"), signal.SIGKILL)

    # --- PostgreSQL ----------------------------------------------------------------------------------
    def _start_postgres(self) -> None:
        pg = self.root / "pg"
        pg.mkdir()
        shutil.chown(pg, "postgres", "postgres")
        pwfile = pg / "pw"
        pwfile.write_text(self.secrets["pg"] + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        self.pg_port = free_port()
        as_pg = ["runuser", "-u", "postgres", "--"]
        subprocess.run(as_pg + [str(PG_BIN / "initdb"), "-D", str(pg / "data"), "-U", "postgres", "--auth-local=trust",
                                "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale"],
                       check=True, capture_output=True)
        pwfile.unlink()
        subprocess.run(as_pg + [str(PG_BIN / "pg_ctl"), "-D", str(pg / "data"), "-l", str(pg / "log"), "-w", "-o",
                                f"-c listen_addresses=127.0.0.1 -p {self.pg_port} -k {pg}", "start"],
                       check=True, capture_output=True)
        for db in ("optuna", "mlflow"):
            self.psql(f"CREATE DATABASE {db} ENCODING 'UTF8'")

    def psql(self, sql: str, db: str = "postgres") -> str:
        return subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-h", str(self.root / "pg"), "-p",
                               str(self.pg_port), "-d", db, "-Atc", sql], check=True, capture_output=True, text=True).stdout

    def pg_dump(self, db: str) -> str:
        return subprocess.run(["runuser", "-u", "postgres", "--", "pg_dump", "-h", str(self.root / "pg"), "-p",
                               str(self.pg_port), db], check=True, capture_output=True, text=True).stdout

    # --- MLflow --------------------------------------------------------------------------------------
    def _start_mlflow(self) -> None:
        self.mlflow_port = free_port()
        self.artifacts_dir.mkdir()
        ini = self.root / "auth.ini"
        ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{self.root / 'basic_auth.db'}\nadmin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update({"PGPASSWORD": self.secrets["pg"], "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                    "MLFLOW_AUTH_ADMIN_PASSWORD": self.secrets["mlflow"],
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex()})
        log = open(self.root / "mlflow.log", "w")
        self.procs["mlflow"] = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
             "--backend-store-uri", f"postgresql+psycopg://postgres@127.0.0.1:{self.pg_port}/mlflow",
             "--serve-artifacts", "--artifacts-destination", str(self.artifacts_dir),
             "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1"],
            env=env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _mlflow_healthy(self) -> bool:
        import requests

        if self.procs["mlflow"].poll() is not None:
            raise RuntimeError("the MLflow server exited:\n" + (self.root / "mlflow.log").read_text()[-3000:])
        try:
            return requests.get(f"http://127.0.0.1:{self.mlflow_port}/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    # --- network namespace + Ray -----------------------------------------------------------------------
    def _start_netns(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.netns, self.veth = f"autotune{tag}", f"atv{tag}"
        run = lambda *a: subprocess.run(list(a), check=True, capture_output=True)  # noqa: E731
        run("ip", "netns", "add", self.netns)
        run("ip", "link", "add", f"{self.veth}h", "type", "veth", "peer", "name", f"{self.veth}n")
        run("ip", "link", "set", f"{self.veth}n", "netns", self.netns)
        run("ip", "addr", "add", f"{self.head_ip}/24", "dev", f"{self.veth}h")
        run("ip", "link", "set", f"{self.veth}h", "up")
        run("ip", "netns", "exec", self.netns, "ip", "addr", "add", f"{self.node_ip}/24", "dev", f"{self.veth}n")
        run("ip", "netns", "exec", self.netns, "ip", "link", "set", f"{self.veth}n", "up")
        run("ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up")

    def _start_ray(self) -> None:
        self.token_file.write_text(self.secrets["ray"])
        self.ray_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(self.ray_env())
        env.update({  # dead-node detection in ~2.5 s instead of ~13 s (test only)
            "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3",
        })
        common = ["--num-cpus=1", "--block", "--disable-usage-stats"]
        head_log = open(self.root / "ray-head.log", "w")
        self.procs["ray-head"] = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", f"--node-ip-address={self.head_ip}", f"--port={self.ray_port}",
             "--include-dashboard=false", *common],
            env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: _port_open(self.head_ip, self.ray_port), 60, "the Ray head")
        worker_log = open(self.root / "ray-worker.log", "w")
        self.procs["ray-worker"] = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, str(BIN / "ray"), "start", f"--address={self.head_ip}:{self.ray_port}",
             f"--node-ip-address={self.node_ip}", *common],
            env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.alive_nodes() >= 2, 60, "the second Ray node")

    def alive_nodes(self) -> int:
        code = ("import logging, ray; ray.init(logging_level=logging.ERROR); "
                "print(sum(n['Alive'] for n in ray.nodes()))")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(self.ray_env())
        env["RAY_ADDRESS"] = f"{self.head_ip}:{self.ray_port}"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        try:
            return int(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return 0


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _kill_group(proc: subprocess.Popen, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def make_stack() -> Stack:
    root = Path(tempfile.mkdtemp(prefix="autotune-stack-", dir="/tmp"))
    root.chmod(0o755)  # postgres must be able to traverse to its data directory
    secrets = {"pg": "canary-pg-" + os.urandom(6).hex(), "mlflow": "canary-mlflow-" + os.urandom(6).hex(),
               "ray": "canary-ray-" + os.urandom(12).hex()}
    return Stack(root=root, secrets=secrets)
