"""Run by test_session.py in a child pytest, under a shell's Airflow settings: reports what Airflow sees.

Not collected by itself (its name does not start with ``test_``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def test_report_what_airflow_sees() -> None:
    from airflow.configuration import AIRFLOW_HOME, conf

    seen = {
        "home": AIRFLOW_HOME,
        "env_home": os.environ["AIRFLOW_HOME"],
        "sql_alchemy_conn": conf.get("database", "sql_alchemy_conn"),
        "dags_folder": conf.get("core", "dags_folder"),
        "load_examples": conf.getboolean("core", "load_examples"),
        "env": sorted(k for k in os.environ if k.startswith(("AIRFLOW", "CLOUDZERO_", "LITELLM_"))),
    }
    Path(os.environ["CZ_PROBE_OUT"]).write_text(json.dumps(seen))
