"""Pytest fixtures for tests against real parts: a PostgreSQL with LiteLLM's schema and the CloudZero double.

Load with ``pytest_plugins = ["cloudzero_provider.testing.fixtures"]`` in a ``conftest.py``. Nothing here changes
the environment at import time; ``cloudzero_conn`` sets ``AIRFLOW_CONN_CLOUDZERO_DEFAULT`` for one test only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudzero_provider.testing.double import CloudZeroDouble
from cloudzero_provider.testing.postgres import ThrowawayPostgres
from cloudzero_provider.testing.server import CloudZeroDoubleServer

API_KEY = "cz-test-key-5f2a9c7e1b"
CONNECTION_ID = "litellm-test-conn"


@pytest.fixture(scope="session")
def api_key() -> str:
    """The API key the double accepts."""
    return API_KEY


@pytest.fixture(scope="session")
def connection_id() -> str:
    """The AnyCost connection id the double knows."""
    return CONNECTION_ID


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as server:
        yield server


@pytest.fixture(params=["2026-10", "2025-05"])
def schema_age(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def litellm_db(postgres_server: ThrowawayPostgres, schema_age: str) -> Iterator[str]:
    """A fresh database with LiteLLM's schema at each age; its URL."""
    url = postgres_server.create_database(schema_age)
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def double() -> Iterator[CloudZeroDoubleServer]:
    with CloudZeroDoubleServer(CloudZeroDouble(API_KEY, connections={CONNECTION_ID})) as server:
        yield server


def cloudzero_conn_json(url: str, key: str = API_KEY, **extra: object) -> str:
    """A ``cloudzero`` connection as JSON for an ``AIRFLOW_CONN_*`` variable."""
    return json.dumps(
        {
            "conn_type": "cloudzero",
            "host": url,
            "password": key,
            "extra": {"connection_id": CONNECTION_ID, **extra},
        }
    )


@pytest.fixture
def cloudzero_conn(double: CloudZeroDoubleServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """``cloudzero_default`` pointing at the double, as an AIRFLOW_CONN_ variable."""
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(double.url))
    return "cloudzero_default"


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Airflow's metadata DB in the tests' AIRFLOW_HOME, migrated once, with the upload pool."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True)
    subprocess.run([airflow, "pools", "set", "cloudzero_anycost", "1", "AnyCost uploads, one at a time"],
                   check=True, capture_output=True)  # fmt: skip
    return os.environ["AIRFLOW_HOME"]


class SmtpInbox:
    """What a real SMTP server on loopback received: raw messages, and each one parsed."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content.decode("utf-8", errors="replace"))
        return "250 OK"

    def mails(self) -> list[tuple[str, str, str]]:
        """``(to, subject, text of every part)`` of each message."""
        import email

        out = []
        for raw in self.messages:
            mail = email.message_from_string(raw)
            parts = [p.get_payload(decode=True) for p in mail.walk() if not p.is_multipart()]
            body = "".join(p.decode("utf-8", errors="replace") for p in parts if isinstance(p, bytes))
            out.append((str(mail["To"]), str(mail["Subject"]), body))
        return out


@pytest.fixture
def smtp_inbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpInbox]:
    """A real SMTP server on a loopback port (aiosmtpd) as the ``smtp_default`` connection; its inbox."""
    import socket

    from aiosmtpd.controller import Controller

    inbox = SmtpInbox()
    controller = None
    for _ in range(5):  # the port is free when picked; another process may take it before the server binds
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        candidate = Controller(inbox, hostname="127.0.0.1", port=port)
        try:
            candidate.start()
        except (OSError, RuntimeError):
            continue
        controller = candidate
        break
    if controller is None:
        pytest.fail("no loopback port could be bound for the SMTP server in 5 tries")
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": port,
        "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "airflow@example.com"},
    }))  # fmt: skip
    try:
        yield inbox
    finally:
        controller.stop()
