"""Housekeeping: staged data past retention deleted, every manifest kept, nothing a run in flight reads touched.

Real PostgreSQL with LiteLLM's schema, the double over HTTP, whole DAG runs (dag.test).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cloudzero_provider.testing.fixtures import CONNECTION_ID
from cloudzero_provider.testing.runs import xcom
from cloudzero_provider.testing.seed import insert_spend_logs, seed_synthetic, spend_by_hour, spend_log

# A housekeeping run a week after these tests run: a per-run area is kept while it was written within the
# retention, and its files are written now, whatever data time the tests stage.
TODAY = datetime.now(timezone.utc).replace(hour=1, minute=0, second=0, microsecond=0)
RETENTION_PASSED = TODAY + timedelta(days=8)

H0 = datetime(2026, 11, 1, 10, tzinfo=timezone.utc)
HOURS = [H0 + timedelta(hours=i) for i in range(6)]
STAGED = ("extract.jsonl", "extract.json", "cbf.jsonl", "transform.json", "quarantine.jsonl")


@pytest.fixture
def schema_age() -> str:
    return "2026-10"


def staged_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name in STAGED)


def manifests(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "manifests").glob("*.json"))


def test_a_week_later_no_staged_data_of_those_hours_is_left_and_every_manifest_is(env, monkeypatch):
    from cloudzero_provider.ready_dags import (
        build_hourly_dag,
        build_housekeeping_dag,
        build_range_dag,
        build_reconcile_dag,
    )

    for i, hour in enumerate(HOURS):
        seed_synthetic(env["db"], hour, 50 + i, id_prefix=f"hk{i}")
    for hour in HOURS:
        assert build_hourly_dag().test(logical_date=hour + timedelta(hours=1)).state == "success"
    insert_spend_logs(env["db"], [spend_log("late", HOURS[1] + timedelta(minutes=59), 1.5, team_id="t-late")])
    conf = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}
    assert build_range_dag().test(run_conf={**conf, "dry_run": True}).state == "success"
    assert build_reconcile_dag().test(run_conf=conf).state == "success"  # repairs 11:00 in reconcile/
    root = env["staging"]
    kept = manifests(root)
    assert len(kept) >= 6 and staged_files(root), "there is something to clean"
    assert any(p.name.startswith("range-dry-run-") for p in root.iterdir())
    assert (root / "reconcile").is_dir(), "the reconciliation repaired an hour in its own area"
    orphan = root / "manifests" / ".2026-11-01T10Z.json.0123456789ab.tmp"
    orphan.write_text("torn")
    os.utime(orphan, (0, 0))  # a writer killed long ago
    fresh = root / ".fresh.json.0123456789ab.tmp"
    fresh.write_text("being written")
    before = env["double"].double.cost_by_hour(CONNECTION_ID)

    monkeypatch.setenv("AIRFLOW__CLOUDZERO__STAGING_RETENTION_DAYS", "1")
    run = build_housekeeping_dag().test(logical_date=RETENTION_PASSED)
    assert run.state == "success"
    assert staged_files(root) == [], "no staged data file of those hours is left"
    assert manifests(root) == kept, "every manifest is kept"
    assert not orphan.exists() and fresh.exists(), "an old temporary file goes, one being written stays"
    removed = xcom("litellm_cloudzero_housekeeping", run.run_id, "housekeeping")[-1]["cloudzero_default"]
    assert removed["files"] > 0 and removed["bytes"] > 0
    assert {"hourly stages", "reconcile", "temporary files"} <= set(removed["removed"])
    assert any(area.startswith("range-dry-run-") for area in removed["removed"])

    posts = sum(1 for r in env["double"].double.requests if r["method"] == "POST")
    again = build_reconcile_dag().test(run_conf=conf)
    assert again.state == "success"
    assert sum(1 for r in env["double"].double.requests if r["method"] == "POST") == posts, "nothing to send"
    assert env["double"].double.cost_by_hour(CONNECTION_ID) == before == spend_by_hour(env["db"])

    second = build_housekeeping_dag().test(logical_date=RETENTION_PASSED + timedelta(days=1))
    assert (
        xcom("litellm_cloudzero_housekeeping", second.run_id, "housekeeping")[-1]["cloudzero_default"][
            "files"
        ]
        == 0
    )


@pytest.mark.parametrize("value", ["0", "-3", "a month", "1.5"])
def test_a_retention_that_is_not_a_positive_whole_number_fails_the_parse_naming_it(env, monkeypatch, value):
    from cloudzero_provider.ready_dags import build_housekeeping_dag

    monkeypatch.setenv("AIRFLOW__CLOUDZERO__REPORT_RETENTION_DAYS", value)
    with pytest.raises(
        ValueError,
        match=r"\[cloudzero\] report_retention_days \(AIRFLOW__CLOUDZERO__REPORT_RETENTION_DAYS\) must be a positive whole number",
    ):
        build_housekeeping_dag()
