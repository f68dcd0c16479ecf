"""Test session set-up: a private Airflow home, and the fixtures of real parts (PostgreSQL, CloudZero double)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["cloudzero_provider.testing.fixtures"]

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Airflow reads these when first imported, which happens while tests are collected: set them first."""
    defaults = {
        "AIRFLOW_HOME": tempfile.mkdtemp(prefix="cz-airflow-home-"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",  # consumers of asset events
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
