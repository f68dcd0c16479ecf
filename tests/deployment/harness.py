"""A real, distributed Airflow on loopback ports, the topology of docker-compose.yaml without Docker.

For this repository's deployment tests and backfill benchmark: it reads the repository's compose file and DAGs
folder, so it lives beside the tests rather than in the provider's package.

PostgreSQL (metadata and LiteLLM's database: the project's throwaway server), Redis, ``airflow api-server``,
``scheduler``, ``dag-processor``, ``triggerer`` and two ``celery worker`` processes, each started in its own
session so that stopping its process group stops its children too. Readiness is read from the api-server's health
endpoint and the REST API, never from sleeps. Every component logs to ``<home>/proc-<name>.log``; a failed wait
prints their tails. Redis and the api-server start on free loopback ports, and again on another one if the port
chosen was taken before they bound it (see cloudzero_provider.testing.ports).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from cloudzero_provider.testing.double import CloudZeroDouble
from cloudzero_provider.testing.fixtures import API_KEY, CONNECTION_ID
from cloudzero_provider.testing.ports import ATTEMPTS, address_in_use, candidate_port, listening
from cloudzero_provider.testing.postgres import ThrowawayPostgres, airflow_conn_uri
from cloudzero_provider.testing.server import CloudZeroDoubleServer

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
# compose settings that name compose hosts or files: the harness gives its own loopback values
HOST_SPECIFIC = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CLOUDZERO__STAGING_URI",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION",
}


def compose() -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((REPO / "docker-compose.yaml").read_text()))


def compose_airflow_env() -> dict[str, str]:
    """The environment every Airflow container of the compose stack gets (x-airflow-common)."""
    return {k: str(v) for k, v in compose()["x-airflow-common"]["environment"].items()}


class NotReady(Exception):
    """A component answered, but is not ready yet (an api-server still starting, a DAG not parsed yet)."""


# What "not ready yet" looks like while the components start: nothing listening yet, a connection dropped or slow,
# an answer saying so. :meth:`Deployment.wait_for` retries these only: any other exception from a predicate is a
# bug in it, and surfaces at once rather than as a timeout minutes later.
NOT_READY: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    ConnectionError,
    socket.timeout,
    NotReady,
)
# Answers of a server that is starting or restarting behind its port.
STARTING_STATUSES = frozenset({502, 503, 504})


class Deployment:
    """
    Start with :meth:`start` (or as a context manager), stop with :meth:`stop`.

    :param settings: Extra environment for every Airflow process (``CLOUDZERO_*`` settings, connections).
    :param workers: How many Celery workers.
    """

    def __init__(self, settings: dict[str, str] | None = None, *, workers: int = 2) -> None:
        self.settings = settings or {}
        self.workers = workers
        self.home = Path(tempfile.mkdtemp(prefix="cz-deploy-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pg: ThrowawayPostgres | None = None
        self.double: CloudZeroDoubleServer | None = None
        self.redis: subprocess.Popen[bytes] | None = None
        self.api_port = 0  # chosen when the api-server starts
        self.env: dict[str, str] = {}
        self.litellm_url = ""
        self._token: str | None = None

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> Deployment:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.pg = ThrowawayPostgres().start()
        meta_url = self.pg.create_database(None)
        self.litellm_url = self.pg.create_database("2026-10")
        self.double = CloudZeroDoubleServer(CloudZeroDouble(API_KEY, connections={CONNECTION_ID})).start()
        redis_port = self.start_redis()
        parts = urlsplit(meta_url)
        sqlalchemy = f"postgresql+psycopg2://{parts.netloc}{parts.path}"
        env = {k: v for k, v in compose_airflow_env().items() if k not in HOST_SPECIFIC}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy,
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{parts.netloc}{parts.path}",
                "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(48),
                "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                "AIRFLOW__CLOUDZERO__STAGING_URI": str(self.home / "staging"),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                # Shipped in the provider's testing package, which every Airflow process imports like any
                # installed provider; the tests folder stays off their path, so that they run what a deployment
                # runs, and a module found only because the repository is on sys.path would fail here too.
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "cloudzero_provider.testing.hostname.worker_hostname",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                "AIRFLOW_CONN_LITELLM_DB": airflow_conn_uri(self.litellm_url),
                "AIRFLOW_CONN_CLOUDZERO_DEFAULT": json.dumps(
                    {
                        "conn_type": "cloudzero",
                        "host": self.double.url,
                        "password": API_KEY,
                        "extra": {"connection_id": CONNECTION_ID, "max_attempts": 3, "max_wait": 2},
                    }
                ),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.settings)
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CLOUDZERO_", "LITELLM_"))
        }
        self.env = {**base, **env}
        self.cli("db", "migrate", timeout=300)
        self.cli("pools", "set", "cloudzero_anycost", "1", "AnyCost uploads, one at a time")
        self.wait_for(lambda: self._redis_up(redis_port), 30, "redis")
        # Every other component is told the api-server's port (the workers reach the execution API through it),
        # so they start once it holds one.
        self.procs["api-server"], self.api_port = self._listen(
            "api-server",
            lambda port: [AIRFLOW, "api-server", "--port", str(port), "--host", "127.0.0.1"],
            self._env_for_api_port,
            timeout=240,
        )
        for name in ("scheduler", "dag-processor", "triggerer"):
            self.procs[name] = self._airflow(name, name)
        for i in range(1, self.workers + 1):
            self.start_worker(i)
        self.wait_for(
            self._healthy, 240, "api-server health: metadatabase, scheduler, triggerer, dag-processor"
        )

    def _env_for_api_port(self, port: int) -> dict[str, str]:
        self.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{port}/execution/"
        return self.env

    def start_redis(self) -> int:
        """Start the Celery broker on a free loopback port; return the port."""
        redis_server = shutil.which("redis-server") or "redis-server"
        self.redis, port = self._listen(
            "redis",
            lambda port: [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                          "no"],
            lambda port: dict(os.environ),
            timeout=30,
        )  # fmt: skip
        return port

    def start_worker(self, index: int) -> None:
        self.procs[f"worker{index}"] = self._spawn(
            f"worker{index}",
            [AIRFLOW, "celery", "worker", "--celery-hostname", f"worker{index}@%h", "--concurrency", "2",
             "--without-gossip", "--without-mingle"],
            {**self.env, "CZ_WORKER_NAME": f"worker{index}"},
        )  # fmt: skip

    def stop(self) -> None:
        for name in list(self.procs):
            self.stop_process(name)
        if self.redis is not None:
            self._killpg(self.redis)
            self.redis = None
        if self.double is not None:
            self.double.stop()
            self.double = None
        if self.pg is not None:
            self.pg.stop()
            self.pg = None

    def stop_process(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            self._killpg(proc, sig)

    @staticmethod
    def _killpg(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- processes --------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.home / f"proc-{name}.log", "ab")  # noqa: SIM115 -- handed to the child, closed with it
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=self.home)  # fmt: skip

    def _listen(
        self,
        name: str,
        argv: Callable[[int], list[str]],
        env: Callable[[int], dict[str, str]],
        timeout: float,
    ) -> tuple[subprocess.Popen[bytes], int]:
        """
        Start ``name`` on a free loopback port and wait until it listens there; start it again on another port
        when the one chosen was taken before it could bind it (see cloudzero_provider.testing.ports).

        :param argv: The command for a port.
        :param env: The environment for a port.
        :return: The process and its port.
        """
        log = self.home / f"proc-{name}.log"
        for _ in range(ATTEMPTS):
            port = candidate_port()
            offset = log.stat().st_size if log.exists() else 0
            proc = self._spawn(name, argv(port), env(port))
            try:
                if self._listens(name, proc, port, log, offset, timeout):
                    return proc, port
            except BaseException:
                self._killpg(proc)
                raise
        raise RuntimeError(f"{name}: every one of {ATTEMPTS} free ports was taken before it could bind one")

    def _listens(
        self, name: str, proc: subprocess.Popen[bytes], port: int, log: Path, offset: int, timeout: float
    ) -> bool:
        """True once ``proc`` listens on ``port``; False when it exited because another process holds the port."""
        deadline = time.monotonic() + timeout
        while not listening(proc.pid, port):
            if proc.poll() is not None:
                with open(log, "rb") as file:
                    file.seek(offset)
                    if address_in_use(file.read().decode(errors="replace")):
                        return False
                raise RuntimeError(f"{name} exited before it listened on port {port}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{name} did not listen on port {port} within {timeout:.0f}s\n{self.logs()}"
                )
            time.sleep(0.2)
        return True

    def _airflow(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self._spawn(name, [AIRFLOW, *args], self.env)

    def cli(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def logs(self, lines: int = 40) -> str:
        out = []
        for path in sorted(self.home.glob("proc-*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(out)

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str, every: float = 1.0) -> Any:
        """
        Call ``predicate`` every ``every`` seconds until it returns something true, and return that.

        Only the "not ready yet" exceptions of :data:`NOT_READY` are retried; any other exception from the
        predicate surfaces at once. A component that exited, or the timeout, raises with every component's log
        tail.
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
            except NOT_READY as exc:
                last = exc
            if last and not isinstance(last, BaseException):
                return last
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited while waiting for {what}\n{self.logs()}")
            time.sleep(every)
        raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what} (last: {last!r})\n{self.logs()}")

    def _redis_up(self, port: int) -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def _healthy(self) -> bool:
        response = requests.get(f"{self.url}/api/v2/monitor/health", timeout=5)
        if response.status_code in STARTING_STATUSES:
            raise NotReady(f"health: HTTP {response.status_code}")
        response.raise_for_status()
        health = response.json()
        parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        return all((health.get(p) or {}).get("status") == "healthy" for p in parts)

    # -- REST -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def password(self, user: str = "admin") -> str:
        path = self.home / "simple_auth_manager_passwords.json.generated"
        return str(json.loads(path.read_text())[user])

    def token(self, user: str = "admin") -> str:
        response = requests.post(f"{self.url}/auth/token",
                                 json={"username": user, "password": self.password(user)}, timeout=10)  # fmt: skip
        response.raise_for_status()
        return str(response.json()["access_token"])

    def api(self, method: str, path: str, **kw: Any) -> Any:
        if self._token is None:
            self._token = self.token()
        response = requests.request(method, f"{self.url}/api/v2{path}", timeout=30,
                                    headers={"Authorization": f"Bearer {self._token}"}, **kw)  # fmt: skip
        if response.status_code in STARTING_STATUSES:
            raise NotReady(f"{method} {path}: HTTP {response.status_code}")
        response.raise_for_status()
        return response.json() if response.content else None

    def pages(self, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a REST collection: the api-server answers at most ``[api] maximum_page_limit`` (100)
        items per request, whatever limit is asked for."""
        items: list[dict[str, Any]] = []
        while True:
            page = self.api("GET", path, params={**params, "limit": 100, "offset": len(items)})
            items.extend(page[key])
            if not page[key] or len(items) >= page["total_entries"]:
                return items

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.pages(f"/dags/{dag_id}/dagRuns", "dag_runs")

    def task_instances(self, dag_id: str, run_id: str = "~") -> list[dict[str, Any]]:
        return self.pages(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", "task_instances")

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        """The run's state once it has finished (``success`` or ``failed``), else None."""
        state = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
        return str(state) if state in ("success", "failed") else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        def parsed() -> Any:
            try:
                return self.api("GET", f"/dags/{dag_id}")
            except requests.HTTPError as exc:
                if exc.response is not None and exc.response.status_code == 404:
                    return None  # not parsed yet
                raise

        self.wait_for(parsed, timeout, f"the DAG processor to parse {dag_id}")

    def unpause(self, dag_id: str) -> None:
        self.wait_for_dag(dag_id)
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})


@contextlib.contextmanager
def deployment(settings: dict[str, str] | None = None, workers: int = 2) -> Iterator[Deployment]:
    with Deployment(settings, workers=workers) as d:
        yield d
