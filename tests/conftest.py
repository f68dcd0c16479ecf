"""Test session set-up: a private Airflow home, and the fixtures of real parts (PostgreSQL, CloudZero double)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["cloudzero_provider.testing.fixtures"]

REPO = Path(__file__).resolve().parent.parent
# Opt-in: keep the session's Airflow home in this folder (to read its logs and database afterwards).
HOME_OPT_IN = "CZ_TEST_AIRFLOW_HOME"
# A folder the tests made their Airflow home carries this file; the opt-in refuses any other non-empty folder,
# so that it can never point the session (and its `airflow db migrate`) at someone's real Airflow.
HOME_MARKER = ".cz-test-airflow-home"
# Settings the session must not take from the shell: Airflow's own (AIRFLOW_HOME, AIRFLOW_CONFIG, AIRFLOW__*,
# AIRFLOW_CONN_*, AIRFLOW_VAR_*) and the ready DAGs' (CLOUDZERO_*, LITELLM_*). A shell that has them set is
# running a real Airflow: its metadata database, staging folder or connections are not the tests' to touch.
INHERITED_PREFIXES = ("AIRFLOW", "_AIRFLOW", "CLOUDZERO_", "LITELLM_")
# Except the tests' own knobs, which choose real parts to test against, never what is tested.
TEST_KNOBS = {"CLOUDZERO_TEST_POSTGRES_URL", "CLOUDZERO_SCREENSHOTS"}
SETTINGS = {
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",  # consumers of asset events
}
_made_home = pytest.StashKey["Path | None"]()


def private_airflow_home() -> tuple[Path, bool]:
    """The session's Airflow home, and whether the session made it (and so removes it at the end)."""
    chosen = os.environ.get(HOME_OPT_IN)
    if not chosen:
        return Path(tempfile.mkdtemp(prefix="cz-airflow-home-")), True
    home = Path(chosen).expanduser().resolve()
    if home.exists() and any(home.iterdir()) and not (home / HOME_MARKER).exists():
        raise pytest.UsageError(
            f"{HOME_OPT_IN}={chosen} is a folder the tests did not make (no {HOME_MARKER} in it): it may be a "
            "real Airflow home, whose database the tests would migrate. Name an empty or new folder."
        )
    home.mkdir(parents=True, exist_ok=True)
    (home / HOME_MARKER).touch()
    return home, False


def pytest_configure(config: pytest.Config) -> None:
    """Airflow reads its settings when first imported, which happens while tests are collected: set them first."""
    if "airflow" in sys.modules:
        raise pytest.UsageError("Airflow was imported before the test session chose its settings")
    home, made = private_airflow_home()
    for key in [k for k in os.environ if k.startswith(INHERITED_PREFIXES) and k not in TEST_KNOBS]:
        del os.environ[key]
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ.update(SETTINGS)
    config.stash[_made_home] = home if made else None


def pytest_unconfigure(config: pytest.Config) -> None:
    home = config.stash.get(_made_home, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)
