"""The provider as a user meets it: Airflow's CLI lists it and tests the connection against the double."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cloudzero_provider.testing.fixtures import cloudzero_conn_json

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def airflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([AIRFLOW, *args], capture_output=True, text=True, env=full_env, timeout=120)


def test_providers_list_and_hooks():
    listed = airflow("providers", "list")
    assert listed.returncode == 0, listed.stderr
    assert "airflow-provider-cloudzero" in listed.stdout
    hooks = airflow("providers", "hooks")
    line = next(ln for ln in hooks.stdout.splitlines() if ln.startswith("cloudzero "))
    assert "cloudzero_provider.hooks.cloudzero.CloudZeroHook" in line and "cloudzero_conn_id" in line


def test_connection_form_metadata():
    from cloudzero_provider.get_provider_info import get_provider_info

    (conn_type,) = get_provider_info()["connection-types"]
    assert conn_type["ui-field-behaviour"]["relabeling"] == {"host": "API base URL", "password": "API key"}
    assert conn_type["conn-fields"]["connection_id"]["label"] == "AnyCost connection ID"
    assert set(conn_type["ui-field-behaviour"]["hidden-fields"]) == {"login", "port", "schema"}


def test_connections_test_cli(double):
    ok = airflow("connections", "test", "cloudzero_default",
                 env={"AIRFLOW_CONN_CLOUDZERO_DEFAULT": cloudzero_conn_json(double.url)})  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Connection success!" in ok.stdout
    secret = "sk-not-the-right-key-42"
    bad = airflow("connections", "test", "cloudzero_default",
                  env={"AIRFLOW_CONN_CLOUDZERO_DEFAULT": cloudzero_conn_json(double.url, key=secret)})  # fmt: skip
    assert bad.returncode != 0
    assert "403" in bad.stdout
    assert secret not in bad.stdout + bad.stderr
