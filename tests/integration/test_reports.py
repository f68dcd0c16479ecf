"""Reports and limits: exact totals for every grouping, alerts exactly when a limit is crossed, the ledger page."""

from __future__ import annotations

import asyncio
import csv
import email
import io
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.cbf import exact_sum
from cloudzero_provider.operators.extract import LiteLLMSpendExtractOperator
from cloudzero_provider.operators.report import SpendReportOperator, SpendThresholdCheckOperator
from cloudzero_provider.operators.transform import CBFTransformOperator
from cloudzero_provider.operators.upload import AnyCostUploadOperator
from cloudzero_provider.testing.postgres import airflow_conn_uri
from cloudzero_provider.testing.seed import insert_spend_logs, seed_synthetic, spend_log

DAY = datetime(2026, 11, 1, tzinfo=timezone.utc)


@pytest.fixture
def schema_age() -> str:
    return "2026-10"


@pytest.fixture
def exported_day(litellm_db, double, cloudzero_conn, monkeypatch, tmp_path):
    """Three hours of spend exported through the real operators; the day's report written."""
    monkeypatch.setenv("AIRFLOW_CONN_LITELLM_DB", airflow_conn_uri(litellm_db))
    monkeypatch.setenv("CLOUDZERO_STAGING_URI", str(tmp_path / "staging"))
    hours = [DAY + timedelta(hours=h) for h in (9, 10, 11)]
    for i, hour in enumerate(hours):
        seed_synthetic(litellm_db, hour, 300 + i, id_prefix="rep")
    insert_spend_logs(
        litellm_db, [spend_log("tiny", hours[0], 1e-12, team_id="team-0", end_user="customer-1")]
    )
    for hour in hours:
        kw = {"window_start": hour.isoformat()}
        LiteLLMSpendExtractOperator(task_id="e", **kw).execute({})
        CBFTransformOperator(task_id="t", **kw).execute({})
        AnyCostUploadOperator(task_id="u", **kw).execute({})
    window = {"window_start": DAY.isoformat(), "window_end": (DAY + timedelta(days=1)).isoformat()}
    summary = SpendReportOperator(task_id="r", tag_prefixes=["taskName"], **window).execute({})
    return litellm_db, summary, window, tmp_path / "staging" / "cloudzero_default"


def sql_totals(db: str, column: str) -> dict[str, Decimal]:
    with psycopg2.connect(db) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT COALESCE(NULLIF({column}, ''), '(none)'), SUM(spend::numeric) FROM \"LiteLLM_SpendLogs\" GROUP BY 1"
        )
        return {k: v for k, v in cur.fetchall()}


def model_spend_and_tokens(db: str) -> dict[str, tuple[Decimal, int]]:
    with psycopg2.connect(db) as conn, conn.cursor() as cur:
        cur.execute(
            """SELECT model, SUM(spend::numeric), SUM(total_tokens) FROM "LiteLLM_SpendLogs" GROUP BY 1"""
        )
        return {model: (spend, int(tokens)) for model, spend, tokens in cur.fetchall()}


def test_report_totals_equal_the_source_for_every_grouping(exported_day):
    db, summary, _, staging = exported_day
    report = json.loads((staging / "reports" / "2026-11-01" / "report.json").read_text())
    total = sql_totals(db, "'all'")["all"]
    assert Decimal(report["totals"]["spend"]) == total == Decimal(summary["spend"])
    for grouping, column in [("team", "team_id"), ("customer", "end_user"), ("user", '"user"'), ("model", "model"),
                             ("api_key", "metadata->>'user_api_key_alias'"),
                             ("tag:taskName", "(SELECT substr(t, 10) FROM jsonb_array_elements_text(request_tags) t "
                                              "WHERE t LIKE 'taskName:%' LIMIT 1)")]:  # fmt: skip
        got = {g["key"]: Decimal(g["spend"]) for g in report["groups"][grouping]}
        assert got == sql_totals(db, column), grouping
        for group in report["groups"][grouping]:
            assert exact_sum(m["spend"] for m in group["models"]) == Decimal(group["spend"])
    csv_rows = list(
        csv.DictReader(io.StringIO((staging / "reports" / "2026-11-01" / "by_team.csv").read_text()))
    )
    assert exact_sum(r["spend_usd"] for r in csv_rows if r["model"] == "(all)") == total
    per_1k = {r["model"]: r for r in report["cost_per_1k_tokens"]}
    by_model = model_spend_and_tokens(db)
    assert set(per_1k) == set(by_model)
    for model, (spend, tokens) in by_model.items():
        shown = per_1k[model]
        assert Decimal(shown["spend"]) == spend, model
        assert shown["tokens"] == tokens, model
        # Shown to 6 places: within half a unit of the 6th place of the exact figure from the source's sums.
        exact = spend * 1000 / tokens
        assert re.fullmatch(r"\d+\.\d{6}", shown["usd_per_1k_tokens"]), model
        assert abs(Decimal(shown["usd_per_1k_tokens"]) - exact) <= Decimal("0.0000005"), model


def test_threshold_check_lists_every_breach(exported_day):
    _, summary, window, _ = exported_day
    ok = SpendThresholdCheckOperator(task_id="c", limits={"daily_total": summary["spend"]}, **window).execute(
        {}
    )
    assert ok["breaches"] == 0
    with pytest.raises(AirflowFailException) as info:
        SpendThresholdCheckOperator(
            task_id="c", limits={"team": "0.01", "daily_total": "1"}, **window
        ).execute({})
    message = str(info.value)
    assert message.startswith("21 spend limit breach(es): 2026-11-01: total spend spent")
    assert message.count("team 'team-") == 20


def test_notifiers_are_airflow_notifiers():
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    from cloudzero_provider.ready_dags import alert_notifiers, build_report_dag
    from cloudzero_provider.settings import ExportSettings

    settings = ExportSettings(alert_limits={"team": 5}, alert_email=["finops@example.com"])
    (notifier,) = alert_notifiers(settings)
    assert isinstance(notifier, SmtpNotifier)
    assert notifier.to == ["finops@example.com"]
    dag = build_report_dag(settings)
    callbacks = dag.get_task("check_limits").on_failure_callback
    assert isinstance(callbacks, list) and len(callbacks) == 1, "one notifier: the one configured"
    assert isinstance(callbacks[0], SmtpNotifier)
    assert (callbacks[0].to, callbacks[0].subject) == (notifier.to, notifier.subject)
    assert "check_limits" not in build_report_dag(ExportSettings()).task_dict, "no limits, no check, no noise"
    with pytest.raises(ImportError, match="apache-airflow-providers-slack"):
        alert_notifiers(ExportSettings(alert_slack_conn_id="slack"))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def chromium(url: str, tmp_path: Path, png: Path) -> str:
    profile = tmp_path / f"chrome-{png.stem}"
    base = [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1400"]
    subprocess.run([*base, f"--screenshot={png}", url], check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*base, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120)
    return dom.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_and_ledger_pages_in_headless_chromium(exported_day, tmp_path, monkeypatch):
    import uvicorn

    from cloudzero_provider.plugins.ledger_app import LEDGER_ACCESS, app

    # This test is about what the pages show; who may see them is proven against a real api-server.
    monkeypatch.setitem(app.dependency_overrides, LEDGER_ACCESS, lambda: None)

    _db, summary, _, staging = exported_day
    # the ledger shows a late correction and a failure too
    m10 = staging / "manifests" / "2026-11-01T10Z.json"
    manifest = json.loads(m10.read_text())
    m10.write_text(json.dumps({**manifest, "late_corrections": 1}))
    m11 = staging / "manifests" / "2026-11-01T11Z.json"
    m11.write_text(json.dumps({**json.loads(m11.read_text()), "status": "failed"}))

    shots = Path(os.environ.get("CLOUDZERO_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    report_dom = chromium(
        (staging / "reports" / "2026-11-01" / "report.html").as_uri(), tmp_path, shots / "report.png"
    )
    assert f'id="total-spend">${summary["spend"]}<' in report_dom
    assert 'id="chart-daily"' in report_dom and 'id="chart-teams"' in report_dom and "<svg" in report_dom
    assert (shots / "report.png").stat().st_size > 10_000

    # The server is handed a socket bound to port 0 and already listening, so no other process can take the
    # port between choosing it and serving on it.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "the ledger's uvicorn server stopped before it started serving"
            assert time.monotonic() < deadline, "the ledger's uvicorn server did not start within 30 s"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/ledger?start=2026-11-01T08:00:00Z&end=2026-11-01T13:00:00Z"
        dom = chromium(url, tmp_path, shots / "ledger.png")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()
    assert '<span id="count-exported">1 exported</span>' in dom
    assert '<span id="count-late-corrected">1 late-corrected</span>' in dom
    assert '<span id="count-failed">1 failed</span>' in dom
    assert '<span id="count-not-yet">2 not yet</span>' in dom
    assert (
        f"<td>2026-11-01T10:00:00Z</td><td>late-corrected</td><td>{manifest['rows']}</td><td>{manifest['source']['spend']}</td><td>{manifest['cost']}</td>"
        in dom
    )
    assert 'href="reports/cloudzero_default/2026-11-01/report.html"' in dom
    assert (shots / "ledger.png").stat().st_size > 10_000


def test_daily_report_dag_waits_for_the_export_then_reports_and_checks(airflow_db, exported_day, monkeypatch):
    from cloudzero_provider.ready_dags import build_report_dag
    from cloudzero_provider.testing.runs import task_instances

    _, summary, _, staging = exported_day
    monkeypatch.setenv("CLOUDZERO_ALERT_LIMITS", json.dumps({"daily_total": summary["spend"]}))
    run = build_report_dag().test(logical_date=DAY + timedelta(days=1))
    states = {
        task: state
        for (task, _), (state, _, _) in task_instances("litellm_cloudzero_daily_report", run.run_id).items()
    }
    assert states == {"wait_for_export": "success", "report": "success", "check_limits": "success"}
    monkeypatch.setenv("CLOUDZERO_ALERT_LIMITS", json.dumps({"customer": "0.05"}))
    run = build_report_dag().test(logical_date=DAY + timedelta(days=1))
    states = {
        task: state
        for (task, _), (state, _, _) in task_instances("litellm_cloudzero_daily_report", run.run_id).items()
    }
    assert states["check_limits"] == "failed" and run.state == "failed"
    assert (staging / "reports" / "2026-11-01" / "report.html").exists()


def test_breach_emails_through_smtp_notifier_and_no_breach_stays_silent(
    airflow_db, exported_day, monkeypatch
):
    """A real SMTP server on loopback receives the SmtpNotifier's mail, and only when a limit is crossed."""
    from aiosmtpd.controller import UnthreadedController

    from cloudzero_provider.ready_dags import build_report_dag

    class Inbox:
        def __init__(self) -> None:
            self.messages: list[str] = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(envelope.content.decode("utf-8", errors="replace"))
            return "250 OK"

    _, summary, _, _ = exported_day
    inbox = Inbox()
    loop = asyncio.new_event_loop()
    controller = UnthreadedController(inbox, hostname="127.0.0.1", port=0, loop=loop)
    # Binds port 0 and reads the port back: no other process can take it between its choice and the bind.
    controller.begin()
    port = controller.server.sockets[0].getsockname()[1]
    serving = threading.Thread(target=loop.run_forever, daemon=True)
    serving.start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": port,
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "airflow@example.com"},
        }))  # fmt: skip
        monkeypatch.setenv("CLOUDZERO_ALERT_EMAIL", "finops@example.com")
        monkeypatch.setenv("CLOUDZERO_ALERT_LIMITS", json.dumps({"daily_total": summary["spend"]}))
        assert build_report_dag().test(logical_date=DAY + timedelta(days=1)).state == "success"
        assert inbox.messages == [], "no breach, no noise"
        monkeypatch.setenv("CLOUDZERO_ALERT_LIMITS", json.dumps({"daily_total": "4.5"}))
        assert build_report_dag().test(logical_date=DAY + timedelta(days=1)).state == "failed"
        (raw,) = inbox.messages
        mail = email.message_from_string(raw)
        body = "".join(p.get_payload(decode=True).decode() for p in mail.walk() if not p.is_multipart())
        assert (
            mail["To"] == "finops@example.com"
            and mail["Subject"] == "LiteLLM spend limit crossed (2026-11-01)"
        )
        assert f"total spend spent {summary['spend']} USD, over the limit of 4.5 USD" in body
    finally:
        loop.call_soon_threadsafe(loop.stop)
        serving.join(timeout=10)
        controller.end()
        loop.close()
