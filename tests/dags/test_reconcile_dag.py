"""The reconciliation DAG: CloudZero made equal to the source, hour by hour, whatever drifted."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

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


def test_with_a_retention_setting_every_older_hour_is_kept_not_lowered(env, monkeypatch):
    export_day(env)
    monkeypatch.setenv("CLOUDZERO_RECONCILE_RETENTION_DAYS", "7")
    # "now" is a week and a day after the exported hours: all of them lie past the retention setting
    monkeypatch.setattr("cloudzero_provider.operators.reconcile.utc_now", lambda: DAY + timedelta(days=8))
    before = env["double"].double.cost_by_hour(CONNECTION_ID)
    delete_hour(
        env["db"], HOURS[4]
    )  # a later hour too: inside the data still held, but older than the setting
    run, summary = reconcile()
    assert run.state == "success"
    assert summary["purged_at_source"] == ["2026-11-01T06Z"] and summary["hours_changed"] == []
    assert env["double"].double.cost_by_hour(CONNECTION_ID) == before, "history kept"


def test_by_default_purged_hours_are_kept_and_a_deleted_later_hour_is_cleared(env):
    """Issue 'leave it running for a year': LiteLLM's retention deletes every spend-log row before a cut-off, and
    every row of one later hour is deleted too; with default settings (no retention configured) the reconciliation
    over both days keeps the purged hours exactly as CloudZero held them and clears the later hour to 0."""
    from cloudzero_provider.ready_dags import build_range_dag, build_reconcile_dag

    hours = [datetime(2026, 11, 1, 21, tzinfo=timezone.utc) + timedelta(hours=i) for i in range(6)]
    for i, hour in enumerate(hours):
        seed_synthetic(env["db"], hour, 40 + i, id_prefix=f"ret{i}")
    conf = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-03T00:00:00Z"}
    assert build_range_dag().test(run_conf=conf).state == "success"
    double = env["double"].double
    held = double.cost_by_hour(CONNECTION_ID)
    assert len(nonzero(held)) == 6
    with psycopg2.connect(env["db"]) as conn, conn.cursor() as cur:  # retention: everything before 23:00 goes
        cur.execute(
            'DELETE FROM "LiteLLM_SpendLogs" WHERE "startTime" < %s', (hours[2].replace(tzinfo=None),)
        )
    delete_hour(env["db"], hours[4])  # 2026-11-02T01:00, inside the retained data
    run = build_reconcile_dag().test(run_conf=conf)
    assert run.state == "success"
    (summary,) = xcom("litellm_cloudzero_reconcile", run.run_id, "reconcile").values()
    after = double.cost_by_hour(CONNECTION_ID)
    for purged in hours[:2]:
        key = purged.strftime("%Y-%m-%dT%H:00:00Z")
        assert after[key] == held[key] != 0, f"{key} kept exactly as CloudZero held it"
    assert after["2026-11-02T01:00:00Z"] == 0, "the deleted later hour is cleared"
    assert summary["purged_at_source"] == ["2026-11-01T21Z", "2026-11-01T22Z"]
    assert summary["hours_changed"] == ["2026-11-02T01Z"] and summary["cleared"] == 1
    verdicts = {h: json.loads((env["staging"] / "manifests" / f"{h}.json").read_text())["reconcile"]["status"]
                for h in ("2026-11-01T21Z", "2026-11-02T01Z", "2026-11-02T00Z")}  # fmt: skip
    assert verdicts == {
        "2026-11-01T21Z": "purged at source",
        "2026-11-02T01Z": "cleared",
        "2026-11-02T00Z": "matches",
    }


def test_an_hour_whose_later_attempt_failed_and_whose_rows_vanish_is_cleared_not_called_foreign(env):
    """CloudZero still holds the hour's last acknowledged export when a later attempt fails: once the hour's rows
    are gone, reconciliation clears it as this exporter's own (it read "foreign data kept" and left the cost)."""
    export_day(env)
    double = env["double"].double
    path = env["staging"] / "manifests" / "2026-11-01T06Z.json"
    record = json.loads(path.read_text())
    assert record["drop_ids"] and Decimal(record["cost"]) > 0
    path.write_text(json.dumps({**record, "status": "failed", "reason": "a later attempt failed"}))
    delete_hour(env["db"], HOURS[4])
    run, summary = reconcile()
    assert run.state == "success"
    assert summary["hours_changed"] == ["2026-11-01T06Z"] and summary["foreign_kept"] == []
    assert double.cost_by_hour(CONNECTION_ID)["2026-11-01T06:00:00Z"] == 0
    assert nonzero(double.cost_by_hour(CONNECTION_ID)) == spend_by_hour(env["db"])
    assert json.loads(path.read_text())["reconcile"]["status"] == "cleared"


def test_other_writers_cost_is_kept_unless_the_run_is_told_to_remove_it(env):
    from cloudzero_provider.ready_dags import build_reconcile_dag

    export_day(env)
    foreign = {"month": "2026-11-01T00:00:00Z", "operation": "sum",
               "data": [{"time/usage_start": "2026-11-01T15:00:00Z", "cost/cost": "7.25", "lineitem/type": "Usage"}]}  # fmt: skip
    requests.post(f"{env['double'].url}/v2/connections/billing/anycost/{CONNECTION_ID}/billing_drops",
                  json=foreign, headers={"Authorization": API_KEY}, timeout=10).raise_for_status()  # fmt: skip
    double = env["double"].double
    run, summary = reconcile()
    assert (
        run.state == "success"
        and summary["foreign_kept"] == ["2026-11-01T15Z"]
        and summary["hours_changed"] == []
    )
    assert double.cost_by_hour(CONNECTION_ID)["2026-11-01T15:00:00Z"] == Decimal("7.25")
    run = build_reconcile_dag().test(run_conf={**CONF, "remove_foreign": True})
    (summary,) = xcom("litellm_cloudzero_reconcile", run.run_id, "reconcile").values()
    assert run.state == "success" and summary["hours_changed"] == ["2026-11-01T15Z"]
    assert double.cost_by_hour(CONNECTION_ID)["2026-11-01T15:00:00Z"] == 0


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
