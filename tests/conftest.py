"""Shared fixtures: a real PostgreSQL with LiteLLM's schema and a real HTTP CloudZero double."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator

import pytest

# Airflow reads these at import time: a private home, no examples, and no metadata DB needed for hooks.
_HOME = tempfile.mkdtemp(prefix="cz-airflow-home-")
os.environ.setdefault("AIRFLOW_HOME", _HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__TEST_CONNECTION", "Enabled")
os.environ.setdefault(
    "AIRFLOW__CORE__DAGS_FOLDER",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dags"),
)
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
os.environ.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False")  # consumers of asset events

from cloudzero_provider.testing.double import CloudZeroDouble  # noqa: E402
from cloudzero_provider.testing.postgres import ThrowawayPostgres  # noqa: E402
from cloudzero_provider.testing.server import CloudZeroDoubleServer  # noqa: E402

API_KEY = "cz-test-key-5f2a9c7e1b"
CONNECTION_ID = "litellm-test-conn"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as server:
        yield server


@pytest.fixture(params=["2026-10", "2025-05"])
def schema_age(request: pytest.FixtureRequest) -> str:
    return request.param


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


def cloudzero_conn_json(url: str, key: str = API_KEY, **extra: str) -> str:
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
    """Airflow's SQLite metadata DB in the tests' AIRFLOW_HOME, migrated once, with the upload pool."""
    import subprocess
    import sys
    from pathlib import Path

    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True)
    subprocess.run([airflow, "pools", "set", "cloudzero_anycost", "1", "AnyCost uploads, one at a time"],
                   check=True, capture_output=True)  # fmt: skip
    return os.environ["AIRFLOW_HOME"]
