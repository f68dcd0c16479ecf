"""No Docker engine here: parse the compose file and check it wires what the README says."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load():
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_stack_services_and_executor():
    compose = load()
    services = compose["services"]
    for name, command in [("airflow-apiserver", "api-server"), ("airflow-scheduler", "scheduler"),
                          ("airflow-dag-processor", "dag-processor"), ("airflow-triggerer", "triggerer"),
                          ("airflow-worker", "celery worker")]:  # fmt: skip
        assert services[name]["command"] == command
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        assert "postgres" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert "./dags:/opt/airflow/dags" in services[name]["volumes"]
        assert "cloudzero-staging:/opt/airflow/cloudzero-staging" in services[name]["volumes"]
        assert services[name]["env_file"] == [".env"]
        assert services[name]["build"] == "."
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert services["redis"]["image"].startswith("redis")
    assert services["postgres"]["image"].startswith("postgres")


def test_init_creates_the_one_slot_pool():
    command = " ".join(load()["services"]["airflow-init"]["command"])
    assert "airflow db migrate" in command
    assert re.search(r"airflow pools set cloudzero_anycost 1 ", command)


def test_demo_profile():
    services = load()["services"]
    assert services["litellm-db"]["profiles"] == ["demo"] and services["cloudzero-double"]["profiles"] == [
        "demo"
    ]
    mounts = services["litellm-db"]["volumes"]
    for mount in mounts:
        assert (ROOT / mount.split(":")[0]).is_file(), mount
    assert any("litellm-2026-10.sql" in m for m in mounts)
    assert services["cloudzero-double"]["entrypoint"] == ["cloudzero-double"]


def test_env_example_matches_the_demo_services():
    env = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert "@litellm-db:5432/litellm" in env["AIRFLOW_CONN_LITELLM_DB"]
    assert '"host": "http://cloudzero-double:8123"' in env["AIRFLOW_CONN_CLOUDZERO_DEFAULT"]
    double_cmd = load()["services"]["cloudzero-double"]["command"]
    assert double_cmd[double_cmd.index("--api-key") + 1] in env["AIRFLOW_CONN_CLOUDZERO_DEFAULT"]
    assert double_cmd[double_cmd.index("--connection") + 1] in env["AIRFLOW_CONN_CLOUDZERO_DEFAULT"]
    assert env["CLOUDZERO_STAGING_URI"] == "/opt/airflow/cloudzero-staging"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"], "components must share the JWT secret"


def test_dockerfile_installs_the_repo_with_the_locked_versions():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM apache/airflow:3.3.2" in dockerfile
    assert "--constraint /opt/cloudzero-provider/constraints/runtime-py3.11.txt" in dockerfile
    constraints = (ROOT / "constraints" / "runtime-py3.11.txt").read_text()
    lock = (ROOT / "uv.lock").read_text()
    for name in ("apache-airflow", "apache-airflow-providers-postgres", "apache-airflow-providers-http"):
        pinned = re.search(rf"^{name}==([\d.]+)", constraints, re.M).group(1)
        assert f'name = "{name}"\nversion = "{pinned}"' in lock
