"""The test session's Airflow is its own: a shell's Airflow settings never reach it, nor it them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("session_probe.py")


def users_airflow(tmp_path: Path) -> Path:
    """What a shell running a real Airflow looks like: its home, with a configuration and a database."""
    home = tmp_path / "users-airflow"
    home.mkdir()
    (home / "airflow.cfg").write_text("[core]\ndags_folder = /srv/users-dags\nload_examples = True\n")
    (home / "airflow.db").write_bytes(b"")
    return home


def run_probe(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CLOUDZERO_", "LITELLM_", "CZ_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PROBE)],
        cwd=REPO, env={**base, "CZ_PROBE_OUT": str(tmp_path / "seen.json"), **env},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_shells_airflow_settings_do_not_reach_the_session(tmp_path):
    user = users_airflow(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in user.iterdir()}
    proc = run_probe(tmp_path, {
        "AIRFLOW_HOME": str(user),
        "AIRFLOW_CONFIG": str(user / "airflow.cfg"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{user}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": "/srv/users-dags",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "True",
        "AIRFLOW_CONN_LITELLM_DB": "postgres://prod.example/litellm",
        "CLOUDZERO_STAGING_URI": "s3://users-bucket/staging",
        "LITELLM_CONN_ID": "users_db",
    })  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = json.loads((tmp_path / "seen.json").read_text())
    home = Path(seen["home"])
    assert home != user and home.name.startswith("cz-airflow-home-") and seen["env_home"] == str(home)
    assert seen["sql_alchemy_conn"] == f"sqlite:///{home}/airflow.db", (
        "Airflow's database is the session's own"
    )
    assert seen["dags_folder"] == str(REPO / "dags") and seen["load_examples"] is False
    assert "AIRFLOW_CONN_LITELLM_DB" not in seen["env"] and "AIRFLOW_CONFIG" not in seen["env"]
    assert "CLOUDZERO_STAGING_URI" not in seen["env"] and "LITELLM_CONN_ID" not in seen["env"]
    assert {p.name: p.stat().st_mtime_ns for p in user.iterdir()} == before, "the user's Airflow was touched"
    assert not home.exists(), "the session removes the home it made"


def test_the_opt_in_home_is_kept_and_a_real_airflow_home_refused(tmp_path):
    chosen = tmp_path / "kept-home"
    proc = run_probe(tmp_path, {"CZ_TEST_AIRFLOW_HOME": str(chosen)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "seen.json").read_text())["home"] == str(chosen)
    assert (chosen / ".cz-test-airflow-home").exists(), "kept, and marked as the tests' own"
    user = users_airflow(tmp_path)
    proc = run_probe(tmp_path, {"CZ_TEST_AIRFLOW_HOME": str(user)})
    assert proc.returncode != 0
    assert f"CZ_TEST_AIRFLOW_HOME={user} is a folder the tests did not make" in proc.stdout + proc.stderr
    assert sorted(p.name for p in user.iterdir()) == ["airflow.cfg", "airflow.db"]
