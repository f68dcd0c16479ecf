"""The reconciliation DAG: CloudZero made equal to the source, hour by hour, whatever drifted."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest
import requests

from cloudzero_provider.testing.fixtures import API_KEY, CONNECTION_ID
from cloudzero_provider.testing.runs import xcom
from cloudzero_provider.testing.seed import insert_spend_logs, seed_synthetic, spend_by_hour, spend_log
from cloudzero_provider.windows import parse_instant, utc_now

DAY = datetime(2026, 11, 1, tzinfo=timezone.utc)
HOURS = [DAY + timedelta(hours=h) for h in range(2, 10)]  # 02:00 .. 09:00 hold spend
CONF = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}


@pytest.fixture
def schema_age() -> str:
    return "2026-10"


def export_day(env) -> None:
    from cloudzero_provider.ready_dags import build_range_dag

    for i, hour in enumerate(HOURS):
        seed_synthetic(env["db"], hour, 60 + i, id_prefix=f"rc{i}")
    assert build_range_dag().test(run_conf=CONF).state == "success"
    assert env["double"].double.cost_by_hour(CONNECTION_ID) == spend_by_hour(env["db"])


def reconcile():
    from cloudzero_provider.ready_dags import build_reconcile_dag

    run = build_reconcile_dag().test(run_conf=CONF)
    (summary,) = xcom("litellm_cloudzero_reconcile", run.run_id, "reconcile").values()
    return run, summary


def delete_hour(db: str, hour: datetime) -> None:
    with psycopg2.connect(db) as conn, conn.cursor() as cur:
        cur.execute("""DELETE FROM "LiteLLM_SpendLogs" WHERE "startTime" >= %s AND "startTime" < %s""",
                    (hour.replace(tzinfo=None), (hour + timedelta(hours=1)).replace(tzinfo=None)))  # fmt: skip


def nonzero(held):
    return {h: v for h, v in held.items() if v}


def test_one_reconciliation_repairs_every_kind_of_drift_and_a_second_sends_nothing(env):
    export_day(env)
    double = env["double"].double
    # rows land in an hour 5 hours older than the last exported one -- past every late pass
    insert_spend_logs(env["db"], [spend_log(f"late{i}", HOURS[2] + timedelta(minutes=50 + i), 2.5, team_id="t-late")
                                  for i in range(3)])  # fmt: skip
    delete_hour(env["db"], HOURS[4])  # every row of another hour is deleted
    assert double.lose_hour(CONNECTION_ID, "2026-11-01T07:00:00Z") > 0  # CloudZero loses a third hour
    foreign = {
        "month": "2026-11-01T00:00:00Z",
        "operation": "sum",  # a script writes into a fourth
        "data": [{"time/usage_start": "2026-11-01T08:00:00Z", "cost/cost": "99.5", "lineitem/type": "Usage"}],
    }
    requests.post(f"{env['double'].url}/v2/connections/billing/anycost/{CONNECTION_ID}/billing_drops",
                  json=foreign, headers={"Authorization": API_KEY}, timeout=10).raise_for_status()  # fmt: skip

    started = utc_now()
    run, summary = reconcile()
    assert run.state == "success"
    held = double.cost_by_hour(CONNECTION_ID)
    assert held["2026-11-01T06:00:00Z"] == 0, "the emptied hour is at exactly 0"
    assert nonzero(held) == spend_by_hour(env["db"]), "CloudZero equals the source"
    assert summary["hours_checked"] == 24 and summary["hours_changed"] == [
        "2026-11-01T04Z", "2026-11-01T06Z", "2026-11-01T07Z", "2026-11-01T08Z"
    ]  # fmt: skip
    assert (summary["repaired"], summary["cleared"]) == (3, 1) and summary["basis"].startswith("read back")
    assert summary["usd_moved"] != "0"
    verdict = json.loads((env["staging"] / "manifests" / "2026-11-01T06Z.json").read_text())["reconcile"]
    assert verdict["status"] == "cleared" and verdict["action"] == "clear"
    # when, and which task attempt: the ledger shows the time and links the task instance
    assert verdict["decided_by"] == {
        "dag_id": "litellm_cloudzero_reconcile",
        "run_id": run.run_id,
        "task_id": "reconcile",
        "map_index": -1,
        "try_number": 1,
        "pass": "reconcile",
    }
    assert started <= parse_instant(verdict["at"]) <= utc_now()

    posts = sum(1 for r in double.requests if r["method"] == "POST")
    again, summary = reconcile()
    assert again.state == "success" and summary["hours_changed"] == [] and summary["matches"] == 24
    assert sum(1 for r in double.requests if r["method"] == "POST") == posts, (
        "a second reconciliation sent nothing"
    )


def test_with_the_retention_guard_a_purged_hour_is_reported_not_lowered(env, monkeypatch):
    export_day(env)
    monkeypatch.setenv("CLOUDZERO_RECONCILE_RETENTION_DAYS", "7")  # 2026-11-01 is older than that
    before = env["double"].double.cost_by_hour(CONNECTION_ID)["2026-11-01T03:00:00Z"]
    delete_hour(env["db"], HOURS[1])
    run, summary = reconcile()
    assert run.state == "success"
    assert summary["purged_at_source"] == ["2026-11-01T03Z"] and summary["hours_changed"] == []
    assert env["double"].double.cost_by_hour(CONNECTION_ID)["2026-11-01T03:00:00Z"] == before, "history kept"


def test_torn_files_are_recovered_without_a_hand(env):
    """A truncated manifest is re-exported by the reconciliation; a truncated cbf.jsonl is rebuilt by the upload."""
    from cloudzero_provider.operators.extract import LiteLLMSpendExtractOperator
    from cloudzero_provider.operators.transform import CBFTransformOperator
    from cloudzero_provider.operators.upload import AnyCostUploadOperator

    export_day(env)
    manifest = env["staging"] / "manifests" / "2026-11-01T05Z.json"
    manifest.write_text(manifest.read_text()[:40])
    run, summary = reconcile()
    assert run.state == "success" and summary["hours_changed"] == ["2026-11-01T05Z"]
    assert json.loads(manifest.read_text())["status"] == "exported"

    kw = {"window_start": "2026-11-01T09:00:00Z"}
    LiteLLMSpendExtractOperator(task_id="e", **kw).execute({})
    CBFTransformOperator(task_id="t", **kw).execute({})
    cbf = env["staging"] / "2026-11-01T09Z" / "cbf.jsonl"
    text = cbf.read_text()
    cbf.write_text(text[: len(text) // 2])
    result = AnyCostUploadOperator(task_id="u", **kw).execute({})
    assert result["hours"] == ["2026-11-01T09Z"]
    assert nonzero(env["double"].double.cost_by_hour(CONNECTION_ID)) == spend_by_hour(env["db"])
