"""Names from LLM callers are hostile: markup, spreadsheet formulas, huge and multi-line values, big spends.

Through the real operators (PostgreSQL with LiteLLM's schema, the double over HTTP): the export stays exact and
bounded, the report's totals stay exact, no page carries live markup, no CSV cell starts a formula, and the alert
text carries no live markup.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg2
import pytest

from cloudzero_provider import alerts
from cloudzero_provider.dimensions import resolve
from cloudzero_provider.hooks.litellm import AggregateRow, LiteLLMSpendHook
from cloudzero_provider.json_lines import encode_line
from cloudzero_provider.operators.extract import LiteLLMSpendExtractOperator
from cloudzero_provider.operators.report import SpendLimitsBreached
from cloudzero_provider.operators.transform import CBFTransformOperator
from cloudzero_provider.operators.upload import AnyCostUploadOperator
from cloudzero_provider.options import ExportOptions
from cloudzero_provider.report_figures import check_limits
from cloudzero_provider.testing.fixtures import CONNECTION_ID
from cloudzero_provider.testing.postgres import airflow_conn_uri
from cloudzero_provider.testing.seed import insert_spend_logs, spend_by_hour, spend_log
from cloudzero_provider.windows import Window

HOUR = datetime(2026, 11, 1, 9, tzinfo=timezone.utc)
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
HOSTILE = [
    SCRIPT,
    IMG,
    '=HYPERLINK("http://x","y")',
    "+cmd|' /C calc'!A0",
    "@SUM(1+1)",
    "x" * 20_000,
    "two\nlines",
]
DIMS = ["team_id", "user", "end_user", "api_key_alias", "model", "tag:taskName"]
FORMULA = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture
def schema_age() -> str:
    return "2026-10"


@pytest.fixture
def hostile_db(litellm_db, cloudzero_conn, monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_LITELLM_DB", airflow_conn_uri(litellm_db))
    monkeypatch.setenv("CLOUDZERO_STAGING_URI", str(tmp_path / "staging"))
    rows = []
    for i, name in enumerate(HOSTILE):
        for j, spend in enumerate((1_000_000.5, 12_345.678901, 1e-12)):
            rows.append(
                spend_log(
                    f"h{i}-{j}",
                    HOUR + timedelta(minutes=i, seconds=j),
                    spend,
                    team_id=name,
                    user=name[::-1],
                    end_user=name,
                    metadata={"user_api_key_alias": name, "user_api_key_team_alias": name},
                    request_tags=[f"taskName:{name}"],
                )
            )
    insert_spend_logs(litellm_db, rows)
    return litellm_db, tmp_path / "staging" / "cloudzero_default"


def test_hostile_names_export_exactly_and_bounded(hostile_db, double):
    db, _ = hostile_db
    kw = {"window_start": HOUR.isoformat()}
    LiteLLMSpendExtractOperator(task_id="e", options=ExportOptions(dimensions=DIMS), **kw).execute({})
    CBFTransformOperator(task_id="t", **kw).execute({})
    AnyCostUploadOperator(task_id="u", **kw).execute({})
    assert double.double.cost_by_hour(CONNECTION_ID) == spend_by_hour(db)
    rows = double.double.rows(CONNECTION_ID)
    values = [
        v for r in rows for k, v in r.items() if k.startswith("resource/tag:") or k == "resource/account"
    ]
    assert values and all(len(v) <= 256 for v in values), "no name longer than 256 characters"
    assert not any("\n" in v or "\r" in v for v in values), "no control character"
    long_tags = {v for v in values if v.startswith("xxxx")}
    assert long_tags and all("~" in v for v in long_tags), "a cut value carries the hash of the original"
    assert all(len(r["resource/id"]) < 200 for r in rows)


def test_the_extract_stages_hostile_names_as_json_writes_them(hostile_db):
    """Each group's staged line, built straight from PostgreSQL's record, is the bytes json writes of its
    AggregateRow: quotes, newlines, markup and a 20,000-character name included."""
    hook, dims, window = LiteLLMSpendHook(), resolve(DIMS), Window.hour(HOUR)
    expected = [
        encode_line(r.as_dict()) if isinstance(r, AggregateRow) else r for r in hook.aggregate(window, dims)
    ]
    assert sum(isinstance(line, bytes) for line in expected) >= len(HOSTILE)
    assert list(hook.staged_lines(window, dims)) == expected


def test_hostile_names_report_and_alerts_carry_no_live_markup_or_formula(hostile_db, double):
    from cloudzero_provider.operators.report import SpendReportOperator

    db, staging = hostile_db
    window = {"window_start": "2026-11-01T00:00:00Z", "window_end": "2026-11-02T00:00:00Z"}
    summary = SpendReportOperator(task_id="r", tag_prefixes=["taskName"], **window).execute({})
    assert Decimal(summary["spend"]) == sum(spend_by_hour(db).values())
    folder = staging / "reports" / "2026-11-01"
    page = (folder / "report.html").read_text()
    for markup in (SCRIPT, IMG, "<img", "onerror=alert(1)>"):
        assert markup not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, "the name is shown, escaped"
    for path in folder.glob("*.csv"):
        for row in csv.reader(io.StringIO(path.read_text())):
            for cell in row:
                if cell.startswith(FORMULA):
                    Decimal(cell)  # only a number may start so
    customers = (folder / "by_customer.csv").read_text()
    assert "'=HYPERLINK(" in customers and "'+cmd|" in customers and "'@SUM(1+1)" in customers

    aggregate = [
        AggregateRow.from_staged(json.loads(line)).as_row()
        for line in (folder / "aggregate.jsonl").read_text().splitlines()
    ]
    breaches = check_limits(aggregate, {"customer": "1", "team": "1"})
    breached = SpendLimitsBreached(breaches)
    assert len(breaches) == 14 and breached.html.count("<li>") == 14
    assert SCRIPT not in breached.html and IMG not in breached.html and "&lt;script&gt;" in breached.html
    assert "<" not in breached.slack.replace("&lt;", "") and "<!channel>" not in breached.slack
    capped = alerts.as_html(breaches, cap=5)
    assert capped.count("<li>") == 6 and "<li>... and 9 more</li>" in capped, (
        "the list is capped with a count"
    )
    assert "... and 9 more" in alerts.as_slack(breaches, cap=5)


def test_a_4_mb_end_user_leaves_telemetry_and_reports_sendable_and_exact(
    litellm_db, double, monkeypatch, tmp_path
):
    """One caller sends a 4 MB ``user`` field: the day's unit-cost records still go out (the name cut to 256
    characters plus a hash), the report's CSV stays small, and every total stays exact."""
    from cloudzero_provider.operators.report import SpendReportOperator
    from cloudzero_provider.operators.telemetry import UnitCostTelemetryOperator
    from cloudzero_provider.testing.fixtures import cloudzero_conn_json

    monkeypatch.setenv("AIRFLOW_CONN_LITELLM_DB", airflow_conn_uri(litellm_db))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(double.url, metric_name="llm-cost")
    )
    monkeypatch.setenv("CLOUDZERO_STAGING_URI", str(tmp_path / "staging"))
    huge = "c" * 4_000_000
    # LiteLLM's schema indexes end_user, which caps it near 8 kB; a database without that index (an older or a
    # trimmed deployment) holds any length. The export must not depend on the index being there.
    with psycopg2.connect(litellm_db) as conn, conn.cursor() as cur:
        cur.execute('DROP INDEX IF EXISTS "LiteLLM_SpendLogs_end_user_idx"')
    insert_spend_logs(litellm_db, [
        spend_log("big-0", HOUR, 2.5, end_user=huge, team_id="t1", model="m1"),
        spend_log("big-1", HOUR + timedelta(minutes=1), 0.125, end_user=huge + "d", team_id="t1", model="m1"),
        spend_log("ok-0", HOUR + timedelta(minutes=2), 1.0, end_user="alice", team_id="t2", model="m2"),
    ])  # fmt: skip
    summary = UnitCostTelemetryOperator(
        task_id="tele", window_start="2026-11-01T00:00:00Z", window_end="2026-11-02T00:00:00Z"
    ).execute({})
    assert summary["records_sent"] == 3
    values = double.double.metric_values("llm-cost")
    assert sum(values.values()) == Decimal("3.625")
    names = [dict(dims)["custom:end_user_id"] for _, dims in values]
    assert max(len(n) for n in names) <= 256 and len(set(names)) == 3, "cut, and still told apart"

    window = {"window_start": "2026-11-01T00:00:00Z", "window_end": "2026-11-02T00:00:00Z"}
    report = SpendReportOperator(task_id="r", **window).execute({})
    assert Decimal(report["spend"]) == Decimal("3.625")
    folder = tmp_path / "staging" / "cloudzero_default" / "reports" / "2026-11-01"
    csv_bytes = sum(p.stat().st_size for p in folder.glob("*.csv"))
    assert csv_bytes < 20_000, f"CSVs hold {csv_bytes} bytes"
    assert (folder / "report.html").stat().st_size < 200_000
    customers = list(csv.reader(io.StringIO((folder / "by_customer.csv").read_text())))
    totals = [Decimal(r[3]) for r in customers[1:] if r[2] == "(all)"]
    assert sum(totals) == Decimal("3.625") and len(totals) == 3
