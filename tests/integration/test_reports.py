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
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import psycopg2
import pytest
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.cbf import exact_sum
from cloudzero_provider.operators.extract import LiteLLMSpendExtractOperator
from cloudzero_provider.operators.report import SpendReportOperator, SpendThresholdCheckOperator
from cloudzero_provider.operators.transform import CBFTransformOperator
from cloudzero_provider.operators.upload import AnyCostUploadOperator
from cloudzero_provider.testing.fixtures import CONNECTION_ID
from cloudzero_provider.testing.postgres import airflow_conn_uri
from cloudzero_provider.testing.seed import insert_spend_logs, seed_synthetic, spend_by_hour, spend_log

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


SHOTS_COPY = Path("/tmp/ledger-shots")  # the final screenshots, where a reviewer looks


def chromium(url: str, tmp_path: Path, png: Path, height: int = 1400) -> str:
    profile = tmp_path / f"chrome-{png.stem}"
    base = [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", f"--window-size=1280,{height}"]
    subprocess.run([*base, f"--screenshot={png}", url], check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*base, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120)
    return dom.stdout


def screenshots() -> Path:
    shots = Path(os.environ.get("CLOUDZERO_SCREENSHOTS") or tempfile.mkdtemp(prefix="cz-shots-"))
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def keep(png: Path) -> None:
    assert png.stat().st_size > 10_000, f"{png} looks blank"
    SHOTS_COPY.mkdir(parents=True, exist_ok=True)
    shutil.copy(png, SHOTS_COPY / png.name)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_page_in_headless_chromium(exported_day, tmp_path):
    _db, summary, _, staging = exported_day
    shots = screenshots()
    report_dom = chromium(
        (staging / "reports" / "2026-11-01" / "report.html").as_uri(), tmp_path, shots / "report.png"
    )
    assert f'id="total-spend">${summary["spend"]}<' in report_dom
    assert 'id="chart-daily"' in report_dom and 'id="chart-teams"' in report_dom and "<svg" in report_dom
    keep(shots / "report.png")


@pytest.fixture
def ledger_server(monkeypatch):
    """The ledger app served by uvicorn on loopback, its URL. This test is about what the pages show; who may see
    them is proven with Airflow's own dependencies in tests/unit/plugins and against a real api-server."""
    import uvicorn

    from cloudzero_provider.plugins.ledger_app import ACCESS_DEPENDENCIES, app

    for dependency in ACCESS_DEPENDENCIES:
        monkeypatch.setitem(app.dependency_overrides, dependency, lambda: None)
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
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


def hourly_run(hour: datetime):
    from cloudzero_provider.ready_dags import build_hourly_dag

    return build_hourly_dag().test(logical_date=hour + timedelta(hours=1))


@pytest.fixture
def run_in_flight(airflow_db):
    """A run of the hourly DAG the scheduler would have started and not finished: a real row in Airflow's DB.
    Runs of DAY that earlier tests of the session left in the shared DB go first: the ledger reads runs by interval,
    and Airflow allows one run per DAG and logical date."""
    from airflow.models.dagrun import DagRun
    from airflow.settings import Session

    added: list[str] = []
    with Session() as session:  # type: ignore[misc]
        session.query(DagRun).filter(
            DagRun.dag_id.in_(["litellm_cloudzero_hourly", "litellm_cloudzero_daily_rollup"]),
            DagRun.logical_date >= DAY - timedelta(days=1),
            DagRun.logical_date < DAY + timedelta(days=2),
        ).delete(synchronize_session=False)
        session.commit()

    def add(hour: datetime) -> str:
        run_id = f"scheduled__{hour.isoformat()}"
        with Session() as session:  # type: ignore[misc]
            session.query(DagRun).filter(
                DagRun.dag_id == "litellm_cloudzero_hourly", DagRun.logical_date == hour
            ).delete(synchronize_session=False)
            session.add(DagRun(dag_id="litellm_cloudzero_hourly", run_id=run_id, logical_date=hour,
                               run_after=hour + timedelta(hours=1), data_interval=(hour, hour + timedelta(hours=1)),
                               state="running", run_type="scheduled"))  # fmt: skip
            session.commit()
        added.append(run_id)
        return run_id

    yield add
    with Session() as session:  # type: ignore[misc]
        session.query(DagRun).filter(DagRun.run_id.in_(added)).delete(synchronize_session=False)
        session.commit()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_ledger_after_a_catchup_that_fell_behind_a_failure_and_a_reconciliation_in_headless_chromium(
    airflow_db, litellm_db, double, cloudzero_conn, monkeypatch, tmp_path, ledger_server, run_in_flight
):
    """The story a FinOps reader meets, through the real DAGs (dag.test) and Airflow's DB: a range import of
    2026-11-01 06:00-12:00 that nothing continued (today is a month later), a late row corrected by the next
    hourly run, an hour whose run failed on a NaN spend, an overdue hour, a run in flight; then a reconciliation
    after CloudZero lost an hour and the bad row was fixed. Screenshots of each, and the page's own words."""
    from cloudzero_provider.ready_dags import build_range_dag, build_reconcile_dag

    for key, value in {"AIRFLOW_CONN_LITELLM_DB": airflow_conn_uri(litellm_db),
                       "CLOUDZERO_STAGING_URI": str(tmp_path / "staging"), "CLOUDZERO_SETTLE_MINUTES": "0",
                       "CLOUDZERO_TASK_RETRIES": "0", "CLOUDZERO_RETRY_DELAY_SECONDS": "1",
                       "CLOUDZERO_EXPORT_START": "2026-11-01T06:00:00Z"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AIRFLOW__CLOUDZERO__STAGING_URI", raising=False)
    at = {h: DAY + timedelta(hours=h) for h in range(24)}
    for i, h in enumerate((6, 9, 10, 11, 12)):
        seed_synthetic(litellm_db, at[h], 120 + 40 * i, id_prefix=f"led{h}")
    range_run = build_range_dag().test(
        run_conf={"start": "2026-11-01T06:00:00Z", "end": "2026-11-01T12:00:00Z"}
    )
    assert range_run.state == "success"
    insert_spend_logs(
        litellm_db, [spend_log("late-row", at[10] + timedelta(minutes=59), 7.25, team_id="team-0")]
    )
    assert hourly_run(at[11]).state == "success"  # its late pass corrects hour 10
    insert_spend_logs(litellm_db, [spend_log("nan-row", at[12] + timedelta(minutes=3), float("nan"))])
    failed_run = hourly_run(at[12])
    assert failed_run.state == "failed"
    run_in_flight(at[14])
    shots, base = screenshots(), ledger_server
    window = "start=2026-11-01T04:00:00Z&end=2026-11-01T16:00:00Z"

    # 1. Opened without parameters: the last 48 hours, a month after the newest hour CloudZero holds.
    dom = chromium(f"{base}/ledger", tmp_path, shots / "ledger-behind.png", height=1500)
    keep(shots / "ledger-behind.png")
    assert '<section class="headline behind" id="headline-cloudzero_default">' in dom
    assert "newest hour in CloudZero: <b>2026-11-01 11:00 UTC</b>" in dom
    lag = datetime.now(timezone.utc) - (at[11] + timedelta(hours=1))
    assert f'<b class="lag">{lag.days} days ' in dom and "alert over 6 h, CLOUDZERO_MAX_LAG_HOURS" in dom
    assert "show the hours around it" in dom and 'id="count-late"' in dom

    # 2. The window of the range import: every status, the failed hour's reason and its task instance.
    dom = chromium(f"{base}/ledger?{window}", tmp_path, shots / "ledger-failed.png", height=2300)
    keep(shots / "ledger-failed.png")
    statuses = {h: status_of(dom, at[h]) for h in range(4, 16)}
    assert statuses == {
        4: "before the export start", 5: "before the export start", 6: "exported", 7: "no spend", 8: "no spend",
        9: "exported", 10: "late-corrected", 11: "exported", 12: "failed", 13: "late", 14: "running", 15: "late",
    }  # fmt: skip
    failed_row = row_of(dom, at[12])
    assert "spend is NaN" in failed_row
    run_path = quote(failed_run.run_id, safe="")
    assert f'href="../dags/litellm_cloudzero_hourly/runs/{run_path}/tasks/' in failed_row
    assert (
        f'href="../dags/litellm_cloudzero_range/runs/{quote(range_run.run_id, safe="")}/tasks/chunk.upload/mapped/0"'
        in row_of(dom, at[6])
    )
    assert (
        'href="../dags/litellm_cloudzero_hourly/runs/scheduled__2026-11-01T14%3A00%3A00%2B00%3A00"'
        in row_of(dom, at[14])
    )
    assert 'id="chart-hourly-svg"' in dom and "no reconciliation recorded" in dom

    # 3. CloudZero loses hour 9, the bad row is fixed, the day is reconciled: two hours repaired.
    assert double.double.lose_hour(CONNECTION_ID, "2026-11-01T09:00:00Z") > 0
    with psycopg2.connect(litellm_db) as conn, conn.cursor() as cur:
        cur.execute("""UPDATE "LiteLLM_SpendLogs" SET spend = 0.5 WHERE request_id = 'nan-row'""")
    reconcile_run = build_reconcile_dag().test(
        run_conf={"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}
    )
    assert reconcile_run.state == "success"
    dom = chromium(f"{base}/ledger?{window}", tmp_path, shots / "ledger-reconciled.png", height=2300)
    keep(shots / "ledger-reconciled.png")
    assert status_of(dom, at[9]) == status_of(dom, at[12]) == "repaired"
    assert {status_of(dom, at[h]) for h in (6, 11)} == {"exported"}
    assert 'last reconciliation: <a href="../dags/litellm_cloudzero_reconcile/runs/' in dom
    assert "2 repaired" in dom and "matches" in dom
    assert 'class="num diff"' in dom, "where CloudZero held less than the source, the row is highlighted"
    held = double.double.cost_by_hour(CONNECTION_ID)
    assert {h: v for h, v in held.items() if v} == spend_by_hour(litellm_db)


def row_of(dom: str, hour: datetime) -> str:
    start = dom.index(f'id="h-{hour:%Y-%m-%dT%H}"')
    return dom[start : dom.index("</tr>", start)]


def status_of(dom: str, hour: datetime) -> str:
    cell = row_of(dom, hour).split('<td class="st">', 1)[1].split("</td>", 1)[0]
    return re.sub(r"<[^>]+>", "", cell)


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
