"""Real processes for integration tests: gunicorn, ``celery worker`` (prefork,
with its embedded beat for the sweeper), ``redis-server`` on a free port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from shared.config import PROJECT_ROOT, Settings
from tests.conftest import require

BIN = Path(sys.executable).parent
TERMINAL = {"succeeded", "failed"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def settings_env(settings: Settings, **extra: object) -> dict[str, str]:
    """The environment a deployed process would get for these settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("TUSSIS_") or k in ("DATABASE_URL", "REDIS_URL"))
    }
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "DATABASE_URL": settings.database_url,
            "TUSSIS_BROKER_URL": settings.broker_url,
            "TUSSIS_QUEUE": settings.queue_name,
            "TUSSIS_DATA_DIR": str(settings.data_dir),
            "TUSSIS_MODEL_BUNDLE": str(settings.model_bundle),
            # Always explicit: a test's worker loads only the bundles its test names, never
            # models/inception because it happens to exist (loading it costs every child).
            "TUSSIS_MODEL_BUNDLES": ",".join(
                str(p) for p in (settings.model_bundles or (settings.model_bundle,))
            ),
            "TUSSIS_MODEL_GRACE": str(settings.model_grace_s),
            "TUSSIS_MAX_UPLOAD_BYTES": str(settings.max_upload_bytes),
            "TUSSIS_JOB_MAX_ATTEMPTS": str(settings.job_max_attempts),
            "TUSSIS_SWEEP_INTERVAL": str(settings.sweep_interval_s),
            "TUSSIS_REQUEUE_AFTER": str(settings.requeue_after_s),
            "TUSSIS_JOB_LEASE": str(settings.job_lease_s),
            "TUSSIS_WORKER_MAX_TASKS_PER_CHILD": str(settings.worker_max_tasks_per_child),
            "TUSSIS_PUBLISH_TIMEOUT": str(settings.publish_timeout_s),
            "TUSSIS_TASK_TIME_LIMIT": str(settings.task_time_limit_s),
            "TUSSIS_DRILL_TASK_DELAY_S": str(settings.drill_task_delay_s),
            "TUSSIS_RATE_LIMIT": settings.rate_limit,
            "TUSSIS_YAMNET_MODEL": str(settings.yamnet_model),
            "TUSSIS_COUGH_GATE_BUNDLE": str(settings.cough_gate_bundle or "off"),
            "TUSSIS_COALESCE_JOBS": str(settings.coalesce_jobs),
            "TUSSIS_API_THREADS": str(settings.api_threads),
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Stack:
    """An API and a worker as separate OS processes, as in production."""

    def __init__(self, settings: Settings, log_dir: Path, **extra_env: object) -> None:
        self.settings = settings
        self.env = settings_env(settings, **extra_env)
        self.log_dir = log_dir
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.worker_log = log_dir / f"worker-{uuid.uuid4().hex[:6]}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        fh = open(log, "ab")  # noqa: SIM115 - the child keeps it open
        return subprocess.Popen(
            args,
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_api(self) -> None:
        self.port = free_port()
        self.api = self._spawn(
            [
                str(BIN / "gunicorn"),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "2",
                "api:create_app()",
            ],
            self.log_dir / "api.log",
        )

        def healthy() -> bool:
            if self.api is not None and self.api.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.tail(self.log_dir / 'api.log')}")
            try:
                return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(healthy, 30, "gunicorn to answer /healthz")

    def start_worker(self, concurrency: int = 1, timeout: float = 120) -> None:
        self.worker = self._spawn(
            [
                str(BIN / "celery"),
                "-A",
                "worker.celery_app",
                "worker",
                "--beat",
                "--schedule",
                str(self.settings.data_dir / f"beat-{uuid.uuid4().hex[:6]}"),
                "--concurrency",
                str(concurrency),
                "--loglevel",
                "INFO",
                "-n",
                f"test-{uuid.uuid4().hex[:8]}@%h",
            ],
            self.worker_log,
        )
        self.wait_for_children(concurrency, timeout=timeout)

    def wait_for_children(self, count: int, after: int = 0, timeout: float = 120) -> None:
        """Block until ``count`` children past the first ``after`` have loaded the model
        (``timeout``: longer for Inception V3, 20 to 80 s a child on a shared machine)."""

        def ready() -> bool:
            if self.worker is not None and self.worker.poll() is not None:
                raise RuntimeError(f"celery worker exited: {self.tail(self.worker_log)}")
            text = self.worker_log.read_text(errors="replace")
            return text.count(" ready in ") >= after + count and " ready." in text

        wait_until(ready, timeout, "the worker's model to load")

    def children_ready(self) -> int:
        return self.worker_log.read_text(errors="replace").count(" ready in ")

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def kill_api(self) -> None:
        """SIGKILL the whole API process group: the host is gone."""
        self._stop(self.api, signal.SIGKILL)

    def stop(self) -> None:
        self._stop(self.api, signal.SIGTERM)
        self._stop(self.worker, signal.SIGTERM)

    @staticmethod
    def tail(path: Path, lines: int = 40) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # --- client side ---------------------------------------------------------------

    def submit(self, data: bytes, filename: str = "cough.mp3", **kwargs: Any) -> requests.Response:
        return requests.post(
            f"{self.url}/api/v1/jobs", files={"audio": (filename, data)}, timeout=60, **kwargs
        )

    def job(self, job_id: str) -> dict[str, Any]:
        response = requests.get(f"{self.url}/api/v1/jobs/{job_id}", timeout=10)
        response.raise_for_status()
        return response.json()

    def wait_for_status(
        self, job_id: str, statuses: set[str], timeout: float = 120
    ) -> Mapping[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        try:
            return wait_until(reached, timeout, f"job {job_id} to reach {statuses}", 0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- worker log ---\n{self.tail(self.worker_log)}") from exc

    def wait_done(self, job_id: str, timeout: float = 120) -> Mapping[str, Any]:
        return self.wait_for_status(job_id, TERMINAL, timeout)


class RedisServer:
    """A private redis-server, so a test can stop and restart its broker."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        require(exe is not None, "redis-server is not installed")
        assert exe is not None
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_until(up, 10, "redis-server to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class PostgresServer:
    """A private PostgreSQL cluster (``initdb`` + ``pg_ctl``, run as the ``postgres``
    user when the tests run as root), so a test can stop and restart its database
    without touching the machine's own server."""

    def __init__(self, workdir: Path) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        require(bool(bins) or shutil.which("pg_ctl") is not None, "PostgreSQL is not installed")
        self.bin = bins[-1].parent if bins else Path(str(shutil.which("pg_ctl"))).parent
        self.port = free_port()
        # Outside pytest's private tmp folders, which the postgres user cannot enter.
        self.workdir = Path(tempfile.mkdtemp(prefix="tussis-pg-", dir="/tmp"))
        self.data = self.workdir / "data"
        self.log = self.workdir / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.workdir, user="postgres")
        self._initialised = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, timeout=120)

    def start(self) -> None:
        if not self._initialised:
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
            self._initialised = True
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects every client, as a restart does; ``immediate`` is a crash."""
        if self._initialised:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)


class NginxProxy:
    """nginx with deploy/nginx.conf (the deployment's own file, as docker-compose.yml
    runs it) in front of an API on loopback: only its two addresses are replaced,
    and every path it writes is under a private prefix."""

    CONFIG = PROJECT_ROOT / "deploy" / "nginx.conf"
    UPSTREAM, LISTEN = "server api:5000;", "listen 8080;"

    def __init__(self, upstream_port: int) -> None:
        exe = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/bin/nginx") if Path(p).is_file()), None
        )
        require(exe is not None, "nginx is not installed (Debian: nginx-light)")
        assert exe is not None
        self.exe = exe
        self.port = free_port()
        # Outside pytest's private folders: nginx's workers run as nobody under root.
        self.prefix = Path(tempfile.mkdtemp(prefix="tussis-nginx-", dir="/tmp"))
        self.prefix.chmod(0o755)
        text = self.CONFIG.read_text()
        assert text.count(self.UPSTREAM) == 1 and text.count(self.LISTEN) == 1
        text = text.replace(self.UPSTREAM, f"server 127.0.0.1:{upstream_port};")
        text = text.replace(self.LISTEN, f"listen 127.0.0.1:{self.port};")
        self.config = self.prefix / "nginx.conf"
        self.config.write_text(text)
        self.log = self.prefix / "nginx.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [self.exe, "-p", f"{self.prefix}/", "-c", str(self.config), "-e", "stderr"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*args, "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT
            )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {Stack.tail(self.log)}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_until(up, 10, "nginx to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish what it serves
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.prefix, ignore_errors=True)


class MotoServer:
    """moto's standalone S3 server (``moto_server``) on a free loopback port: a real S3
    HTTP endpoint for boto3, as MinIO or AWS would be."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = BIN / "moto_server"
        require(exe.is_file(), "moto_server is not installed (moto[server])")
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=open(self.workdir / "moto.log", "ab"),  # noqa: SIM115 - the child keeps it
            stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("moto_server exited")
            try:
                return requests.get(self.url, timeout=1).status_code < 500
            except requests.RequestException:
                return False

        wait_until(up, 30, "moto_server to answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
