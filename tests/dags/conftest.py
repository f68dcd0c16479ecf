"""Whole-DAG runs (dag.test) against a real PostgreSQL with LiteLLM's schema and the CloudZero double over HTTP."""

from __future__ import annotations

import json

import pytest

from cloudzero_provider.testing.fixtures import API_KEY, CONNECTION_ID
from cloudzero_provider.testing.postgres import airflow_conn_uri


@pytest.fixture
def env(airflow_db, litellm_db, double, tmp_path, monkeypatch):
    """The ready DAGs' settings pointed at this test's database, double and staging folder."""
    conn = {"conn_type": "cloudzero", "host": double.url, "password": API_KEY,
            "extra": {"connection_id": CONNECTION_ID, "max_attempts": 2, "max_wait": 0.2}}  # fmt: skip
    values = {
        "AIRFLOW_CONN_LITELLM_DB": airflow_conn_uri(litellm_db),
        "AIRFLOW_CONN_CLOUDZERO_DEFAULT": json.dumps(conn),
        "CLOUDZERO_STAGING_URI": str(tmp_path / "staging"),
        "CLOUDZERO_SETTLE_MINUTES": "0",
        "CLOUDZERO_TASK_RETRIES": "2",
        "CLOUDZERO_RETRY_DELAY_SECONDS": "1",
        "CLOUDZERO_EXPORT_START": "2026-10-01T00:00:00Z",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {
        "db": litellm_db,
        "double": double,
        "staging": tmp_path / "staging" / "cloudzero_default",
        **values,
    }
