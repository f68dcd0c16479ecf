"""A human is told: a failed run, a repair and a lag each produce one escaped mail through a real SMTP server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cloudzero_provider.testing.fixtures import CONNECTION_ID
from cloudzero_provider.testing.seed import insert_spend_logs, seed_synthetic, spend_log

H0 = datetime(2026, 11, 1, 10, tzinfo=timezone.utc)
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture
def schema_age() -> str:
    return "2026-10"


@pytest.fixture
def told(env, smtp_inbox, monkeypatch):
    monkeypatch.setenv("CLOUDZERO_ALERT_EMAIL", "finops@example.com")
    return smtp_inbox


def test_no_channel_no_mail(env, smtp_inbox):
    from cloudzero_provider.ready_dags import build_hourly_dag

    insert_spend_logs(env["db"], [spend_log("nan", H0 + timedelta(minutes=1), float("nan"))])
    assert build_hourly_dag().test(logical_date=H0 + timedelta(hours=1)).state == "failed"
    assert smtp_inbox.messages == [], "no setting, no noise"


def test_a_run_that_failed_after_its_retries_is_told_once_escaped(told, env):
    from cloudzero_provider.ready_dags import build_hourly_dag

    seed_synthetic(env["db"], H0, 30, id_prefix="ok")
    insert_spend_logs(env["db"], [spend_log(SCRIPT, H0 + timedelta(minutes=1), float("nan"))])
    assert build_hourly_dag().test(logical_date=H0 + timedelta(hours=1)).state == "failed"
    ((to, subject, body),) = told.mails()
    assert to == "finops@example.com"
    assert subject == "LiteLLM -> CloudZero: litellm_cloudzero_hourly failed (extract)"
    assert "window 2026-11-01 10:00:00+00:00 to 2026-11-01 11:00:00+00:00" in body and "spend is NaN" in body
    assert SCRIPT not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_a_reconciliation_that_repaired_hours_is_told_once(told, env):
    from cloudzero_provider.ready_dags import build_range_dag, build_reconcile_dag

    seed_synthetic(env["db"], H0, 30, id_prefix="rc")
    seed_synthetic(env["db"], H0 + timedelta(hours=1), 30, id_prefix="rd")  # CloudZero keeps this month
    conf = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}
    assert build_range_dag().test(run_conf=conf).state == "success"
    assert env["double"].double.lose_hour(CONNECTION_ID, "2026-11-01T10:00:00Z") > 0
    assert told.messages == [], "an export that went well says nothing"
    assert build_reconcile_dag().test(run_conf=conf).state == "success"
    ((_, subject, body),) = told.mails()
    assert (
        subject
        == "LiteLLM -> CloudZero: reconciliation of 2026-11-01T00Z--2026-11-02T00Z changed or found hours"
    )
    assert "1 hour(s) repaired or cleared" in body and "USD moved: 2026-11-01T10Z" in body
    assert build_reconcile_dag().test(run_conf=conf).state == "success"
    assert len(told.messages) == 1, "a reconciliation that only matched says nothing"


def test_a_lag_is_told_once_per_episode(told, env, monkeypatch):
    from cloudzero_provider.ready_dags import build_hourly_dag, build_watch_dag

    seed_synthetic(env["db"], H0, 30, id_prefix="lag")
    assert build_hourly_dag().test(logical_date=H0 + timedelta(hours=1)).state == "success"
    assert told.messages == []
    monkeypatch.setattr(
        "cloudzero_provider.operators.lag.utc_now", lambda: H0 + timedelta(hours=9, minutes=20)
    )
    for _ in range(2):
        assert build_watch_dag().test(logical_date=H0 + timedelta(hours=9, minutes=20)).state == "success"
    ((_, subject, body),) = told.mails()
    assert subject == "LiteLLM -> CloudZero: export of cloudzero_default is 8 hours behind"
    assert "newest hour exported: 2026-11-01T10:00:00Z" in body and "over CLOUDZERO_MAX_LAG_HOURS = 6" in body
    monkeypatch.setattr("cloudzero_provider.operators.lag.utc_now", lambda: H0 + timedelta(hours=2))
    assert build_watch_dag().test(logical_date=H0 + timedelta(hours=2, minutes=20)).state == "success"
    monkeypatch.setattr("cloudzero_provider.operators.lag.utc_now", lambda: H0 + timedelta(days=2))
    assert build_watch_dag().test(logical_date=H0 + timedelta(days=2, minutes=20)).state == "success"
    assert len(told.messages) == 2, "caught up, then fell behind anew: told again"
