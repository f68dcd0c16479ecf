"""Trust no answer: an hour counts as exported only on CloudZero's receipt, and every input is bounded.

Real PostgreSQL with LiteLLM's schema, the CloudZero double over HTTP, whole DAG runs (dag.test).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import urlsplit

import pytest

from cloudzero_provider.testing.fixtures import CONNECTION_ID
from cloudzero_provider.testing.runs import task_instances, xcom
from cloudzero_provider.testing.seed import seed_synthetic, spend_by_hour

H0 = datetime(2026, 11, 1, 10, tzinfo=timezone.utc)
HOURLY = "litellm_cloudzero_hourly"


@pytest.fixture
def schema_age() -> str:
    return "2026-10"


def run_hourly(hour: datetime, **conf):
    from cloudzero_provider.ready_dags import build_hourly_dag

    return build_hourly_dag().test(logical_date=hour + timedelta(hours=1), run_conf=conf or None)


def manifest(env, hour: str) -> dict:
    return json.loads((env["staging"] / "manifests" / f"{hour}.json").read_text())


def test_a_redirect_and_a_hollow_200_are_not_receipts(env):
    """A 301 (nothing applied) and a 200 page without a receipt (nothing applied) use up the upload's two in-task
    attempts: the try fails, the hour is not marked exported, Airflow's retry sends it, CloudZero ends exact."""
    seed_synthetic(env["db"], H0, 120, id_prefix="rdr")
    srv = env["double"]
    srv.redirect_next(1, status=301, location="https://portal.example/login", method="POST")
    srv.hollow_next(1, method="POST")
    run = run_hourly(H0)
    assert run.state == "success"
    state, tries, _ = task_instances(HOURLY, run.run_id)[("upload", -1)]
    assert (state, tries) == ("success", 2), "the first try did not count the hour as exported"
    double = srv.double
    assert [r["status"] for r in double.requests if r["method"] == "POST"] == [301, 200, 200]
    assert [bool(r.get("applied")) for r in double.requests if r["method"] == "POST"] == [False, False, True]
    assert double.cost_by_hour(CONNECTION_ID) == spend_by_hour(env["db"])
    m = manifest(env, "2026-11-01T10Z")
    assert m["status"] == "exported"
    assert m["receipts"] and m["drop_ids"] == [r["drop_id"] for r in m["receipts"]]
    assert m["receipts"] == [dict(d) for d in double.streams[("", CONNECTION_ID)].drops], (
        "as CloudZero gave it"
    )
    assert m["receipts"][0]["row_count"] == m["rows"] and m["receipts"][0]["month"] == "2026-11-01T00:00:00Z"


def _conn_with_extra(db_url: str, extra: dict) -> str:
    parts = urlsplit(db_url)
    return json.dumps({
        "conn_type": "postgres", "host": parts.hostname, "port": parts.port, "login": parts.username,
        "password": parts.password, "schema": parts.path.lstrip("/"), "extra": extra,
    })  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "timeout"),
    [({"statement_timeout": 600}, "10min"), ({"autocommit": True}, "30min"),
     ({"statement_timeout": "45", "autocommit": True, "hash_groups": False}, "45s")],
)  # fmt: skip
def test_database_extras_are_consumed_and_every_read_stays_read_only(env, monkeypatch, extra, timeout):
    from cloudzero_provider.hooks.litellm import LiteLLMSpendHook

    monkeypatch.setenv("AIRFLOW_CONN_LITELLM_DB", _conn_with_extra(env["db"], extra))
    seen = LiteLLMSpendHook().read_settings()
    assert seen["transaction_read_only"] == "on" and seen["statement_timeout"] == timeout
    ok, message = LiteLLMSpendHook().test_connection()
    assert ok and "READ ONLY=on" in message and f"statement_timeout={timeout}" in message
    hashed = (
        "own dimensions sorted (hash_groups=false)" if "hash_groups" in extra else "own dimensions hashed"
    )
    assert hashed in message
    seed_synthetic(env["db"], H0, 90, id_prefix="ext")
    assert run_hourly(H0).state == "success"
    assert env["double"].double.cost_by_hour(CONNECTION_ID) == spend_by_hour(env["db"])


@pytest.mark.parametrize("value", [0, -5, "ten", 10**9])
def test_a_statement_timeout_out_of_bounds_is_refused_naming_it(env, monkeypatch, value):
    from airflow.sdk.exceptions import AirflowFailException

    from cloudzero_provider.hooks.litellm import LiteLLMSpendHook

    monkeypatch.setenv("AIRFLOW_CONN_LITELLM_DB", _conn_with_extra(env["db"], {"statement_timeout": value}))
    with pytest.raises(AirflowFailException, match='extra "statement_timeout" must be a number of seconds'):
        LiteLLMSpendHook().read_settings()


@pytest.mark.parametrize(
    ("builder", "conf", "message"),
    [
        ("build_hourly_dag", {"settle_minutes": 100_000}, "settle_minutes"),
        ("build_range_dag", {"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z", "chunk_hours": 169},
         "chunk_hours"),
    ],
)  # fmt: skip
def test_form_values_beyond_their_maximum_are_refused_before_any_run(env, builder, conf, message):
    from cloudzero_provider import ready_dags

    dag = getattr(ready_dags, builder)()
    with pytest.raises(Exception, match=message) as info:
        dag.test(logical_date=H0 + timedelta(hours=1), run_conf=conf)
    assert "maximum" in str(info.value) or "less than or equal" in str(info.value)
    assert env["double"].double.requests == []


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"start": "2999-01-01T00:00:00Z", "end": "2999-01-02T00:00:00Z"}, "ends after the current hour"),
        ({"start": "2024-01-01T00:00:00Z", "end": "2025-06-01T00:00:00Z"}, r"at most 8784 \(a year\)"),
        ({"start": "2026-11-01T00:30:00Z", "end": "2026-11-02T00:00:00Z"}, "not aligned to the hour"),
        ({"start": "2026-11-01T00:00:00Z"}, "Give both params start and end"),
    ],
)
def test_a_manual_reconciliation_window_is_refused_before_the_sensor_waits(env, conf, message):
    """The refusal comes from ``check_window``, first in the DAG (its messages: ``test_manual_window_messages``)."""
    from airflow.sdk.exceptions import AirflowFailException

    from cloudzero_provider.ready_dags.common import manual_window

    with pytest.raises(AirflowFailException, match=message):
        manual_window(
            conf.get("start"), conf.get("end"), now=datetime(2026, 12, 2, tzinfo=timezone.utc), what="r"
        )
    from cloudzero_provider.ready_dags import build_reconcile_dag

    run = build_reconcile_dag().test(run_conf=conf)
    assert run.state == "failed"
    states = task_instances("litellm_cloudzero_reconcile", run.run_id)
    assert states[("check_window", -1)][0] == "failed" and states[("check_window", -1)][1] == 1
    assert states[("settle", -1)][0] in ("upstream_failed", None), "the sensor never started"
    assert env["double"].double.requests == []


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2026-11-01T00:00:00Z", "2999-01-01T00:00:00Z", "end no later than"),
        ("2024-01-01T00:00:00Z", "2025-06-01T00:00:00Z", "span at most 366 days"),
    ],
)
def test_a_manual_telemetry_window_is_bounded(start, end, message):
    from airflow.sdk.exceptions import AirflowFailException

    from cloudzero_provider.operators.telemetry import days_of

    with pytest.raises(AirflowFailException, match=message):
        days_of({}, start, end, now=datetime(2026, 12, 2, 5, tzinfo=timezone.utc))


def test_manual_window_messages():
    from airflow.sdk.exceptions import AirflowFailException

    from cloudzero_provider.ready_dags.common import manual_window

    now = datetime(2026, 12, 2, 5, 30, tzinfo=timezone.utc)
    for (start, end), message in {
        ("2026-11-01T00:00:00Z", "2026-12-02T06:00:00Z"): "ends after the current hour 2026-12-02T05:00:00Z",
        ("2024-01-01T00:00:00Z", "2025-06-01T00:00:00Z"): r"at most 8784 \(a year\)",
        ("2026-11-01T00:30:00Z", "2026-11-02T00:00:00Z"): "not aligned to the hour",
        ("2026-11-01T00:00:00Z", None): "Give both params start and end",
    }.items():
        with pytest.raises(AirflowFailException, match=message):
            manual_window(start, end, now=now, what="reconciliation")
    assert manual_window("2026-12-01T00:00:00Z", "2026-12-02T05:00:00Z", now=now, what="x").hours == 29


@pytest.mark.parametrize("cost", ["1e100000000", "NaN", "abc", "-1", "1" * 5000, 1e308, None])
def test_a_month_read_back_with_a_malformed_cost_fails_that_month_clearly(env, cost):
    from cloudzero_provider.ready_dags import build_range_dag, build_reconcile_dag

    seed_synthetic(env["db"], H0, 60, id_prefix="rb")
    conf = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}
    assert build_range_dag().test(run_conf=conf).state == "success"
    double = env["double"].double
    with double.lock:  # another writer's row, as CloudZero would answer it: never validated on the way in
        double.streams[("", CONNECTION_ID)].months["2026-11"].append(
            {"time/usage_start": "2026-11-01T10:00:00Z", "cost/cost": cost}
        )
    posts = sum(1 for r in double.requests if r["method"] == "POST")
    run = build_reconcile_dag().test(run_conf=conf)
    assert run.state == "failed"
    states = task_instances("litellm_cloudzero_reconcile", run.run_id)
    assert states[("reconcile", -1)][:2] == ("failed", 1), "not retried: the answer will not change"
    assert sum(1 for r in double.requests if r["method"] == "POST") == posts, "nothing was sent"
    assert xcom("litellm_cloudzero_reconcile", run.run_id, "reconcile") == {}


def test_the_read_back_error_names_the_hour_and_the_value_cut():
    from cloudzero_provider.readback import ReadBackError, held_by_hour

    with pytest.raises(ReadBackError) as info:
        held_by_hour([{"time/usage_start": "2026-11-01T10:05:00Z", "cost/cost": "9" * 100_000}], "2026-11")
    text = str(info.value)
    assert "hour 2026-11-01T10:00:00Z" in text and "(100000 characters)" in text and len(text) < 400
    assert held_by_hour([{"time/usage_start": "2026-11-01T10:05:00", "cost/cost": "0.5"}], "2026-11") == {
        datetime(2026, 11, 1, 10, tzinfo=timezone.utc): Decimal("0.5")
    }


def test_a_hash_groups_extra_that_is_not_a_boolean_fails_the_connection_test_naming_it(env, monkeypatch):
    from cloudzero_provider.hooks.litellm import LiteLLMSpendHook

    monkeypatch.setenv("AIRFLOW_CONN_LITELLM_DB", _conn_with_extra(env["db"], {"hash_groups": "sometimes"}))
    ok, message = LiteLLMSpendHook().test_connection()
    assert not ok and "extra \"hash_groups\" must be true or false, got 'sometimes'" in message
