"""Unit-cost telemetry: pure record building (hypothesis) and the operator against PostgreSQL + the double."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg2
import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudzero_provider.cbf import exact_sum
from cloudzero_provider.operators.telemetry import UnitCostTelemetryOperator
from cloudzero_provider.telemetry_records import (
    batches,
    check_dimensions,
    check_metric_name,
    record_key,
    roll_up_days,
    stale_records,
    stream_name,
    to_records,
)
from cloudzero_provider.testing.double import CloudZeroDouble
from cloudzero_provider.testing.fixtures import API_KEY, CONNECTION_ID
from cloudzero_provider.testing.postgres import airflow_conn_uri
from cloudzero_provider.testing.seed import insert_spend_logs, seed_synthetic, spend_log
from cloudzero_provider.testing.server import CloudZeroDoubleServer
from cloudzero_provider.windows import day_label, day_start, iso_hour

D1 = datetime(2026, 11, 1, 22, tzinfo=timezone.utc)
DIMS = ["model", "user", "team_id", "organization_id", "end_user"]

rows = st.lists(
    st.fixed_dictionaries({
        "hour": st.sampled_from([D1.replace(hour=10), D1.replace(hour=23), D1.replace(day=2, hour=0)]),
        "dims": st.fixed_dictionaries({d: st.one_of(st.none(), st.sampled_from(["a", "B", "c d"])) for d in DIMS}),
        "spend": st.decimals(min_value=0, max_value=1000, places=12).map(str),
        "requests": st.integers(0, 50),
        "total_tokens": st.integers(0, 10_000),
    }),
    max_size=60,
)  # fmt: skip


@given(rows, st.sampled_from(["cost", "requests", "tokens"]))
@settings(max_examples=200, deadline=None)
def test_records_keep_totals_and_keys(data, value):
    groups = roll_up_days(data, DIMS)
    records, skipped = to_records(groups, DIMS, value)
    assert len(records) + skipped == len(groups)
    keys = {frozenset(r["associated_cost"]) for r in records}
    assert len(keys) <= 1 and all(k.startswith("custom:") for ks in keys for k in ks)
    assert all(Decimal(r["value"]) > 0 for r in records)
    field = {"cost": "spend", "requests": "requests", "tokens": "total_tokens"}[value]
    for day in {day_label(r["hour"]) for r in data}:
        expected = exact_sum(str(r[field]) for r in data if day_label(r["hour"]) == day)
        got = exact_sum(r["value"] for r in records if r["timestamp"].startswith(day))
        assert got == expected
    for body, count in batches(records, max_bytes=2000, max_records=7):
        decoded = json.loads(body)
        assert len(body) <= 2000 and 0 < len(decoded["records"]) <= 7
        assert count == len(decoded["records"])


@given(rows, st.integers(1, 3))
@settings(max_examples=150, deadline=None)
def test_folding_caller_values_keeps_every_day_exact(data, cap):
    groups = roll_up_days(data, DIMS, max_values_per_day=cap)
    for day in {day_start(r["hour"]) for r in data}:
        assert exact_sum(g.cost for g in groups if g.day == day) == exact_sum(
            str(r["spend"]) for r in data if day_start(r["hour"]) == day
        )
        assert sum(g.requests for g in groups if g.day == day) == sum(
            r["requests"] for r in data if day_start(r["hour"]) == day
        )
        kept = {g.dims[DIMS.index("end_user")] for g in groups if g.day == day} - {"(other)"}
        assert len(kept) <= cap
    assert len({(g.day, g.dims) for g in groups}) == len(groups), "no two groups share a day and values"


def test_stale_records_are_the_ones_sent_before_that_a_send_no_longer_holds():
    day = D1.replace(hour=0)
    kept = {"timestamp": "2026-11-01T00:00:00Z", "value": "3", "associated_cost": {"custom:end_user_id": "b"}}
    other = {
        "timestamp": "2026-11-01T00:00:00Z",
        "value": "9",
        "associated_cost": {"custom:end_user_id": "(other)"},
    }
    before = {record_key(kept): "2", '{"custom:end_user_id":"a\u00e9"}': "7"}
    assert record_key({"associated_cost": {"b": "2", "a": "é"}}) == '{"a":"é","b":"2"}', (
        "keys sorted, text as is"
    )
    assert stale_records(before, [kept, other], day) == [
        {"timestamp": "2026-11-01T00:00:00Z", "value": "7", "associated_cost": {"custom:end_user_id": "aé"}}
    ]
    assert (
        stale_records(before, [kept, other, {**kept, "associated_cost": {"custom:end_user_id": "aé"}}], day)
        == []
    )
    assert stream_name("m", "cost", ["model", "end_user"]) == stream_name("m", "cost", ["end_user", "model"])
    assert stream_name("m", "cost", ["model"]) != stream_name("m", "tokens", ["model"])


def test_settings_are_checked():
    with pytest.raises(ValueError, match="metric name 'llm cost'"):
        check_metric_name("llm cost")
    with pytest.raises(ValueError, match="no unit-cost metric name"):
        check_metric_name("")
    with pytest.raises(ValueError, match="at most 5"):
        check_dimensions([*DIMS, "model"][:6])
    with pytest.raises(ValueError, match=r"\['api_key'\] unknown"):
        check_dimensions(["api_key"])


@pytest.fixture
def schema_age() -> str:
    return "2026-10"


@pytest.fixture
def tele(litellm_db, monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW__CLOUDZERO__STAGING_URI", str(tmp_path / "staging"))
    double = CloudZeroDouble(API_KEY, connections={CONNECTION_ID}, telemetry_rate=400, telemetry_burst=600)
    with CloudZeroDoubleServer(double) as srv:
        conn = {"conn_type": "cloudzero", "host": srv.url, "password": API_KEY,
                "extra": {"connection_id": CONNECTION_ID, "metric_name": "llm-cost", "max_wait": 0.3}}  # fmt: skip
        monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", json.dumps(conn))
        monkeypatch.setenv("AIRFLOW_CONN_LITELLM_DB", airflow_conn_uri(litellm_db))
        for i in range(4):  # 22:00 and 23:00 on Nov 1, 00:00 and 01:00 on Nov 2
            seed_synthetic(litellm_db, D1 + timedelta(hours=i), 400 + i, end_users=60, id_prefix="tel")
        insert_spend_logs(litellm_db, [spend_log("zero", D1 + timedelta(minutes=3), 0.0, model="free-model")])
        yield srv, litellm_db


def source_by_day(db: str, expr: str = "SUM(spend::numeric)") -> dict[str, Decimal]:
    with psycopg2.connect(db) as conn, conn.cursor() as cur:
        cur.execute(
            f"""SELECT to_char("startTime", 'YYYY-MM-DD'), {expr} FROM "LiteLLM_SpendLogs" GROUP BY 1"""
        )
        return {d: Decimal(v) for d, v in cur.fetchall()}


def sent_by_day(double: CloudZeroDouble, metric: str = "llm-cost") -> dict[str, Decimal]:
    out: dict[str, list[Decimal]] = {}
    for (day, _), value in double.metric_values(metric).items():
        out.setdefault(day, []).append(value)
    return {d: exact_sum(v) for d, v in out.items()}


def run(**kw):
    op = UnitCostTelemetryOperator(task_id="telemetry", window_start="2026-11-01T22:00:00Z",
                                   window_end="2026-11-02T02:00:00Z",
                                   max_records_per_second=400, max_records_per_request=100, **kw)  # fmt: skip
    return op.execute({})


def test_per_day_totals_exact_rerun_unchanged_rate_respected(tele):
    srv, db = tele
    summary = run()
    assert sent_by_day(srv.double) == source_by_day(db)
    assert summary["skipped_not_positive"] == 1, "the zero-cost group is skipped and counted"
    before = srv.double.metric_values("llm-cost")
    run()
    assert srv.double.metric_values("llm-cost") == before, "a re-run changed the metric"
    assert srv.double.rate_limited == 0
    assert summary["records_sent"] > 100, "enough records to exercise pacing"
    keys = {frozenset(k for k, _ in dims) for (_, dims) in before}
    assert keys == {
        frozenset({"custom:model", "custom:user_id", "custom:team_id", "custom:org_id", "custom:end_user_id"})
    }


@pytest.mark.parametrize(("value", "expr"), [("requests", "count(*)"), ("tokens", "SUM(total_tokens)")])
def test_requests_and_tokens(tele, value, expr):
    srv, db = tele
    run(value=value, metric_name=f"llm-{value}")
    assert sent_by_day(srv.double, f"llm-{value}") == source_by_day(db, expr)


def test_a_value_the_cap_folds_later_in_the_day_loses_its_own_record(tele):
    """The day so far, refreshed with ``replace``: a user with a record of its own in the morning, overtaken by
    the afternoon's users and folded into ``(other)``, must not stay beside the ``(other)`` record that counts it."""
    srv, db = tele
    day = D1.replace(hour=0)
    insert_spend_logs(
        db, [spend_log("history", day - timedelta(days=30), 0.5)]
    )  # older spend logs: nothing purged

    def refresh():
        return UnitCostTelemetryOperator(task_id="telemetry", window_start=iso_hour(day), dimensions=["end_user"],
                                         max_values_per_day=2, max_records_per_second=400).execute({})  # fmt: skip

    insert_spend_logs(db, [spend_log(f"m{i}", day + timedelta(hours=2, minutes=i), 100.0 + i, end_user=f"early-{i}")
                           for i in range(2)])  # fmt: skip
    assert refresh()["days"]["2026-11-01"]["deleted_stale"] == 0
    assert {dict(k)["custom:end_user_id"] for _, k in srv.double.metric_values("llm-cost")} >= {
        "early-0",
        "early-1",
    }
    insert_spend_logs(db, [spend_log(f"a{i}", day + timedelta(hours=9, minutes=i), 500.0, end_user=f"later-{i}")
                           for i in range(3)])  # fmt: skip
    summary = refresh()
    assert summary["days"]["2026-11-01"]["deleted_stale"] >= 1
    held = {dict(k)["custom:end_user_id"]: v for (d, k), v in srv.double.metric_values("llm-cost").items()
            if d.startswith("2026-11-01")}  # fmt: skip
    assert len(held) <= 3 and "(other)" in held, held
    assert exact_sum(held.values()) == source_by_day(db)["2026-11-01"], "the day counted once"
    assert refresh()["days"]["2026-11-01"]["deleted_stale"] == 0, "a refresh with nothing new deletes nothing"


def test_a_day_sent_again_after_litellms_retention_purged_it_keeps_what_cloudzero_holds(tele):
    """Telemetry's deletes never reach a day whose spend logs may be purged: what was sent stays, as the late pass
    keeps such hours."""
    srv, db = tele
    run()
    held = srv.double.metric_values("llm-cost")
    with psycopg2.connect(db) as conn, conn.cursor() as cur:
        cur.execute("""DELETE FROM "LiteLLM_SpendLogs" WHERE "startTime" < '2026-11-02'""")  # retention
    summary = run()
    assert summary["days"]["2026-11-01"] == {
        "records": 0, "skipped": 0, "deleted_stale": 0, "kept_possibly_purged": len(
            [k for k in held if k[0].startswith("2026-11-01")]
        )
    }  # fmt: skip
    assert srv.double.metric_values("llm-cost") == held, "CloudZero keeps the purged day as it was sent"


def test_503_burst_is_ridden_out(tele):
    srv, db = tele
    srv.fail_next(3, 503, path_contains="/unit-cost/")
    run()
    assert sent_by_day(srv.double) == source_by_day(db)
    assert sum(1 for r in srv.double.requests if r.get("injected")) == 3


def test_bad_settings_fail_clearly_or_skip(tele, monkeypatch):
    with pytest.raises(AirflowFailException, match="metric name 'bad name'"):
        run(metric_name="bad name")
    with pytest.raises(AirflowFailException, match="at most 5"):
        run(dimensions=["model", "user", "team_id", "organization_id", "end_user", "model"])
    srv, _ = tele
    conn = json.loads(__import__("os").environ["AIRFLOW_CONN_CLOUDZERO_DEFAULT"])
    del conn["extra"]["metric_name"]
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", json.dumps(conn))
    with pytest.raises(AirflowSkipException, match="no metric name"):
        run()
    assert srv.double.requests == []


def test_days_follow_the_exported_hours():
    """The live path: the hour of each triggering event is read from its extra (a full ISO instant; the short
    label of events emitted by version 0.1 is still understood)."""
    from types import SimpleNamespace

    from cloudzero_provider.operators.telemetry import days_of

    events = {
        "asset": [
            SimpleNamespace(extra={"hour": "2026-11-01T23:00:00Z", "window": "2026-11-01T23Z"}),
            SimpleNamespace(extra={"hour": "2026-11-02T00Z"}),
            SimpleNamespace(extra={}),  # an event of someone else's: no hour, ignored
        ]
    }
    days = days_of({"triggering_asset_events": events}, None, None)
    assert [d.label for d in days] == ["2026-11-01T00Z--2026-11-02T00Z", "2026-11-02T00Z--2026-11-03T00Z"]
    with pytest.raises(ValueError, match="not aligned to the hour"):
        days_of({"triggering_asset_events": {"a": [SimpleNamespace(extra={"hour": "2026-11-01T23:30:00Z"})]}},
                None, None)  # fmt: skip
    assert [d.label for d in days_of({}, "2026-11-03T05:00:00Z", None)] == ["2026-11-03T00Z--2026-11-04T00Z"]
    with pytest.raises(AirflowFailException, match="No days to send"):
        days_of({}, None, None)
    far = {
        "asset": [
            SimpleNamespace(
                extra={"hour": "2024-02-29T10:00:00Z"}
            ),  # an import's, or a stray event: its day only
            SimpleNamespace(extra={"hour": "2026-11-01T23:00:00Z"}),
            SimpleNamespace(extra={"hour": "2062-11-01T00:00:00Z"}),  # after the current hour: ignored
        ]
    }
    days = days_of(
        {"triggering_asset_events": far}, None, None, now=datetime(2026, 12, 2, 5, tzinfo=timezone.utc)
    )
    assert [d.label for d in days] == ["2024-02-29T00Z--2024-03-01T00Z", "2026-11-01T00Z--2026-11-02T00Z"], (
        "the days the events name, never every day between them"
    )
