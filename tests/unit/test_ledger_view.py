"""The ledger's pure view: one meaning per status, links to what decided an hour, figures to the cent with the
exact value on demand, the headline's lag, the chart and the downloads -- hostile values escaped everywhere."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudzero_provider import ledger_view as lv
from cloudzero_provider.manifests import Manifest, SourceTotals

H = datetime(2026, 11, 1, 10, tzinfo=timezone.utc)
START = datetime(2026, 11, 1, 6, tzinfo=timezone.utc)
NOW = datetime(2026, 11, 2, 12, 30, tzinfo=timezone.utc)
HOURLY = "litellm_cloudzero_hourly"
DECIDED = {"dag_id": "litellm_cloudzero_range", "run_id": "manual__2026-11-02T01:02:03+00:00",
           "task_id": "chunk.upload", "map_index": 0, "try_number": 2, "pass": ""}  # fmt: skip


def exported(hour: datetime = H, **kw) -> Manifest:
    base = {"status": "exported", "rows": 3, "cost": "12388.32867181858424623081991100", "drop_ids": ["d1"],
            "source": SourceTotals(40, "12388.32867181858424623081991100"), "sent_at": hour + timedelta(hours=2),
            "decided_by": DECIDED}  # fmt: skip
    return Manifest(hour, **{**base, **kw})


def status(manifest=None, run=None, hour=H, **kw) -> lv.LedgerHour:
    args = {"now": NOW, "export_start": START, "due_at": hour + timedelta(hours=1, minutes=10),
            "schedule_dag": HOURLY, **kw}  # fmt: skip
    return lv.classify(hour, manifest, run, **args)


RUNNING = lv.RunInfo(HOURLY, "scheduled__2026-11-01T10:00:00+00:00", "running")
QUEUED = lv.RunInfo(HOURLY, "scheduled__2026-11-01T10:00:00+00:00", "queued")
DONE = lv.RunInfo(HOURLY, "scheduled__2026-11-01T10:00:00+00:00", "success")
RUN_PATH = "/dags/litellm_cloudzero_hourly/runs/scheduled__2026-11-01T10%3A00%3A00%2B00%3A00"
TI_PATH = (
    "/dags/litellm_cloudzero_range/runs/manual__2026-11-02T01%3A02%3A03%2B00%3A00/tasks/chunk.upload/mapped/0"
)


def test_an_hour_without_a_record_is_before_the_start_not_yet_due_running_or_late():
    assert status(hour=START - timedelta(hours=1)).status == lv.BEFORE_START
    live = status(now=H + timedelta(minutes=69))
    assert (live.status, live.link) == (lv.NOT_YET_DUE, None) and "due at 2026-11-01 11:10 UTC" in live.detail
    for run in (RUNNING, QUEUED):
        got = status(run=run)
        assert (got.status, got.link.path) == (lv.RUNNING, RUN_PATH)
    late = status()
    assert late.status == lv.LATE and late.link == lv.Link("/dags/litellm_cloudzero_hourly", HOURLY)
    ended = status(run=DONE)
    assert ended.status == lv.LATE and "ended success without a record" in ended.detail
    assert ended.link.path == RUN_PATH


def test_a_day_of_the_tag_stream_its_daily_run_found_empty_has_no_spend_not_late():
    """The request-tag stream gets only daily rows: a day its daily-rollup run read and found empty leaves no record
    (one would claim the day), and reads as no spend once the run succeeded -- late while it has not, as before."""
    daily_run = lv.RunInfo(
        "litellm_cloudzero_daily_rollup", "scheduled__2026-11-01T00:00:00+00:00", "success"
    )
    day = H.replace(hour=0)
    due = day + timedelta(days=1)
    now = due + timedelta(hours=2)
    empty = status(hour=H, run=daily_run, daily_stream=True, due_at=due, now=now)
    assert (empty.status, empty.detail) == (
        lv.NO_SPEND,
        "its daily-rollup run read the day and found no rows",
    )
    assert empty.link.path.startswith("/dags/litellm_cloudzero_daily_rollup/runs/")
    failed_run = lv.RunInfo(daily_run.dag_id, daily_run.run_id, "failed")
    assert status(hour=H, run=failed_run, daily_stream=True, due_at=due, now=now).status == lv.LATE
    assert status(hour=H, run=daily_run, due_at=due, now=now).status == lv.LATE, (
        "an hourly stream records empties"
    )
    failed_day = Manifest(day, status="failed", origin="daily_tag", reason="look-back pass: HTTP 503")
    late = status(hour=H, run=daily_run, daily_stream=True, due_at=due, now=now, day_manifest=failed_day)
    assert late.status == lv.LATE, "a day whose 00:00 holds a failed record was not found empty"


def test_a_failed_hour_says_why_and_links_the_attempt_that_failed():
    failed = Manifest(
        H, status="failed", reason="task transform failed: spend is NaN in 1 row", decided_by=DECIDED
    )
    got = status(failed)
    assert (got.status, got.detail, got.link.path) == (lv.FAILED, failed.reason, TI_PATH)
    assert "try 2" in got.link.label
    assert status(failed, RUNNING).status == lv.RUNNING, "a retry in flight is running, not failed"
    assert "spend is NaN" in status(failed, RUNNING).detail
    assert status(failed, DONE).link.path == TI_PATH
    sending = status(Manifest(H, status="sending"))
    assert sending.status == lv.FAILED and "stopped part-way" in sending.detail
    unreadable = status(Manifest(H, status="failed", unreadable="x.json: malformed field"))
    assert unreadable.detail == "x.json: malformed field"
    nothing = status(Manifest(H, status="failed"), run=DONE)
    assert nothing.detail == "no reason recorded" and nothing.link.path == RUN_PATH


def test_exported_hours_read_as_exported_no_spend_late_corrected_repaired_or_purged():
    assert status(exported()).status == lv.EXPORTED
    empty = Manifest(H, status="exported", empty=True, source=SourceTotals(0, "0"), decided_by=DECIDED)
    assert status(empty).status == lv.NO_SPEND
    assert status(exported(late_corrections=2)).status == lv.LATE_CORRECTED
    verdict = {"status": "repaired", "source": "5", "held": "3", "at": "2026-11-02T02:05:00.000Z",
               "decided_by": {**DECIDED, "dag_id": "litellm_cloudzero_reconcile", "task_id": "reconcile",
                              "map_index": -1, "pass": "reconcile"}}  # fmt: skip
    for name in ("repaired", "cleared", "foreign data removed"):
        got = status(exported(reconcile={**verdict, "status": name}))
        assert got.status == lv.REPAIRED and got.detail.startswith(name)
        assert (
            got.link.path.startswith("/dags/litellm_cloudzero_reconcile/runs/")
            and "/mapped/" not in got.link.path
        )
        assert "source 5.00 USD, CloudZero held 3.00 USD" in got.detail and got.differs
    purged = status(exported(reconcile={**verdict, "status": "purged at source"}))
    assert purged.status == lv.PURGED
    matches = status(exported(reconcile={**verdict, "status": "matches", "held": "5"}))
    assert matches.status == lv.EXPORTED and matches.verdict.at == datetime(
        2026, 11, 2, 2, 5, tzinfo=timezone.utc
    )
    assert status(exported(), RUNNING).status == lv.EXPORTED, "CloudZero holds it while a re-run is in flight"
    empty = Manifest(H, status="exported", empty=True, source=SourceTotals(0, "0"),
                     reconcile={**verdict, "status": "foreign data kept", "source": "0", "held": "99.5"})  # fmt: skip
    kept = status(empty)
    assert kept.status == lv.NO_SPEND and kept.differs
    assert kept.detail == "foreign data kept: source 0.00 USD, CloudZero held 99.50 USD"


def test_daily_rollup_days_show_as_such():
    day = datetime(2026, 11, 1, tzinfo=timezone.utc)
    daily = exported(day, origin="daily_team")
    first = status(daily, hour=day, daily_owner="daily_team", day_manifest=daily)
    later = status(None, hour=H, daily_owner="daily_team", day_manifest=daily)
    assert (first.status, later.status) == (lv.DAILY_ROW, lv.IN_DAILY)
    assert first.sent is not None and later.sent is None and later.link.path == TI_PATH


@given(
    has_manifest=st.booleans(), state=st.sampled_from(["exported", "failed", "sending"]),
    empty=st.booleans(), late=st.integers(0, 3), run=st.sampled_from([None, RUNNING, QUEUED, DONE]),
    offset=st.integers(-10, 60), verdict=st.sampled_from([None, "matches", "repaired", "purged at source", "<x>"]),
)  # fmt: skip
def test_every_hour_gets_exactly_one_documented_status(
    has_manifest, state, empty, late, run, offset, verdict
):
    hour = START + timedelta(hours=offset)
    manifest = None
    if has_manifest:
        manifest = Manifest(hour, status=state, empty=empty, late_corrections=late,
                            reconcile={"status": verdict} if verdict else None)  # fmt: skip
    got = status(manifest, run, hour=hour, due_at=hour + timedelta(hours=1))
    assert got.status in lv.STATUS_MEANING
    if manifest is None and hour >= START and run is None:
        assert got.status == (lv.LATE if hour + timedelta(hours=1) <= NOW else lv.NOT_YET_DUE)
    if manifest is not None and state != "exported" and (run is None or not run.in_flight):
        assert got.status == lv.FAILED


@pytest.mark.parametrize(
    ("record", "path"),
    [
        (
            {"dag_id": "d", "run_id": "r/1?x#y", "task_id": "t", "map_index": -1},
            "/dags/d/runs/r%2F1%3Fx%23y/tasks/t",
        ),
        (
            {"dag_id": "..", "run_id": ".", "task_id": "t", "map_index": "3"},
            "/dags/%2E%2E/runs/%2E/tasks/t/mapped/3",
        ),
        ({"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": "x"}, "/dags/d/runs/r/tasks/t"),
        ({"dag_id": "", "run_id": "adhoc", "task_id": "u"}, None),
        ({"dag_id": "d", "run_id": "adhoc", "task_id": "u"}, None),
        ("not a record", None),
    ],
)
def test_links_name_the_task_instance_with_every_segment_encoded(record, path):
    link = lv.ti_path(record)
    assert (link.path if link else None) == path


@given(st.decimals(min_value=-(10**9), max_value=10**9, allow_nan=False, allow_infinity=False, places=30))
def test_money_is_within_half_a_cent_and_never_hides_a_cost(value):
    text = lv.money(value)
    if value == 0:
        assert text == "0.00"
    elif abs(value) < Decimal("0.005"):
        assert text in ("<0.01", ">-0.01")
    else:
        assert abs(Decimal(text.replace(",", "")) - value) <= Decimal("0.005")
        assert len(text.split(".")[1]) == 2


def test_money_and_span_read_as_people_say_them():
    assert lv.money(Decimal("12388.32867181858424623081991100")) == "12,388.33"
    assert lv.money(Decimal("1E-12")) == "<0.01" and lv.money(None) == ""
    assert lv.money(Decimal("0.005")) == "0.01"
    assert lv.span(timedelta(minutes=45)) == "45 min"
    assert lv.span(timedelta(hours=3, minutes=10)) == "3 h 10 min"
    assert lv.span(timedelta(days=31, hours=4, minutes=9)) == "31 days 4 h"


@given(st.lists(st.tuples(st.integers(0, 71), st.decimals(0, 10**6, places=12), st.decimals(0, 10**6, places=12)),
                max_size=40, unique_by=lambda t: t[0]))  # fmt: skip
def test_day_totals_are_exact_sums_of_their_hours(items):
    hours = [lv.LedgerHour(START + timedelta(hours=o), lv.EXPORTED, source=s, sent=t) for o, s, t in items]
    days = lv.day_totals(hours)
    assert sum(d.hours for d in days) == len(hours)
    for d in days:
        mine = [h for h in hours if h.hour.date() == d.day.date()]
        assert d.source == sum((h.source for h in mine), Decimal(0))
        assert d.sent == sum((h.sent for h in mine), Decimal(0))
        assert d.differs == (d.source != d.sent)


def test_the_headline_is_red_past_the_max_lag_and_green_within():
    newest = datetime(2026, 11, 2, 5, tzinfo=timezone.utc)
    six = lv.headline("s", [], now=newest + timedelta(hours=7), newest_held=newest, max_lag_hours=6)
    assert six.lag == timedelta(hours=6) and not six.behind
    seven = lv.headline(
        "s", [], now=newest + timedelta(hours=7, minutes=1), newest_held=newest, max_lag_hours=6
    )
    assert seven.behind and lv.span(seven.lag) == "6 h 1 min"
    assert lv.headline("s", [], now=NOW, newest_held=None, max_lag_hours=6).behind
    hours = [lv.LedgerHour(H, lv.FAILED), lv.LedgerHour(H, lv.LATE), lv.LedgerHour(H, lv.RUNNING),
             lv.LedgerHour(H, lv.NOT_YET_DUE)]  # fmt: skip
    counted = lv.headline("s", hours, now=NOW, newest_held=H, max_lag_hours=6)
    assert (counted.failed, counted.waiting) == (1, 2)
    assert counted.as_json()["lag_hours"] == 25.5


def test_the_last_reconciliation_is_the_latest_run_with_its_verdicts():
    def verdict(run, at, status):
        return lv.Verdict(status, at and datetime.fromisoformat(at), run, None, None, None)

    found = lv.last_reconciliation([
        (H, verdict("old/-1/1/reconcile", "2026-11-02T02:00:00+00:00", "matches")),
        (H, verdict("new/-1/1/reconcile", "2026-11-03T02:00:00+00:00", "repaired")),
        (H + timedelta(hours=1), verdict("new/-1/1/reconcile", "2026-11-03T02:00:00+00:00", "matches")),
        (H + timedelta(hours=9), verdict("legacy", None, "matches")),
    ])  # fmt: skip
    assert found.run == "new/-1/1/reconcile" and found.counts == {"repaired": 1, "matches": 1}
    assert lv.last_reconciliation([]) is None


HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def page_with_hostile_values() -> lv.LedgerPage:
    bad = {**DECIDED, "run_id": HOSTILE, "task_id": HOSTILE}
    hours = [
        status(Manifest(H, status="failed", reason='=HYPERLINK("http://x")' + HOSTILE * 100, decided_by=bad)),
        status(exported(H + timedelta(hours=1), reconcile={"status": HOSTILE, "source": "1", "held": "2"})),
        status(hour=H + timedelta(hours=2)),
    ]
    head = lv.headline(HOSTILE, hours, now=NOW, newest_held=H, max_lag_hours=6)
    return lv.LedgerPage("cloudzero_default", H, H + timedelta(hours=3), NOW, hours, [head],
                         query={"stream": "cloudzero_default", "dag_id": HOSTILE}, streams=["a", HOSTILE],
                         reports=[(HOSTILE, "reports/x")], dag_id=HOSTILE, reconcile_dag="r")  # fmt: skip


def test_the_page_escapes_every_value_and_holds_no_script():
    text = lv.render_page(page_with_hostile_values())
    assert "<script" not in text and "<img" not in text and HOSTILE not in text
    assert "&lt;script&gt;" in text
    chart = lv.hourly_chart(page_with_hostile_values().hours)
    svg = ET.fromstring(chart[chart.index("<svg") : chart.index("</svg>") + len("</svg>")])  # well-formed
    assert any(HOSTILE in (t.text or "") for t in svg.iter("{http://www.w3.org/2000/svg}title"))


def test_the_page_shows_lag_statuses_figures_links_and_downloads():
    hours = [
        status(exported()),
        status(Manifest(H + timedelta(hours=1), status="failed", reason="task upload failed: 403", decided_by=DECIDED),
               hour=H + timedelta(hours=1)),
        status(hour=H + timedelta(hours=2)),
    ]  # fmt: skip
    newest = H
    head = lv.headline("cloudzero_default", hours, now=NOW, newest_held=newest, max_lag_hours=6,
                       newest_path="?stream=cloudzero_default&start=a&end=b")  # fmt: skip
    page = lv.LedgerPage("cloudzero_default", H, H + timedelta(hours=3), NOW, hours, [head],
                         query={"stream": "cloudzero_default"}, reconcile_dag="litellm_cloudzero_reconcile")  # fmt: skip
    text = lv.render_page(page)
    assert '<section class="headline behind" id="headline-cloudzero_default">' in text
    assert "1 day 1 h behind" in text and "newest hour in CloudZero: <b>2026-11-01 10:00 UTC</b>" in text
    assert "no reconciliation recorded" in text and 'href="../dags/litellm_cloudzero_reconcile"' in text
    assert 'title="12388.328671818584246230819911 USD (exact)">12,388.33</td>' in text
    assert "12388.3286718185842462308199110" not in text.replace('title="12388.328671818584246230819911', "")
    assert f'<a href="..{TI_PATH}"' in text and "task upload failed: 403" in text
    assert 'href="../dags/litellm_cloudzero_hourly"' in text  # the late hour
    assert 'id="download-csv" href="ledger.csv?stream=cloudzero_default&amp;start=2026-11-01T10' in text
    assert 'id="chart-hourly"' in text and "<svg" in text
    for s in (lv.EXPORTED, lv.FAILED, lv.LATE):
        assert f"<dt>{s}</dt>" in text


def test_downloads_hold_the_exact_figures_and_no_formula():
    page = page_with_hostile_values()
    rows = list(csv.DictReader(io.StringIO(lv.ledger_csv(page))))
    assert list(rows[0]) == lv.CSV_COLUMNS and len(rows) == 3
    assert rows[0]["detail"].startswith("'=HYPERLINK") and len(rows[0]["detail"]) <= lv.MAX_TEXT + 1
    assert rows[1]["sent_usd"] == "12388.328671818584246230819911" and rows[1]["differs"] == "yes"
    for row in rows:
        assert not any(v.startswith(("=", "+", "@", "\t", "\r")) for v in row.values())
    data = json.loads(lv.ledger_json(page))
    assert data["hours"][0]["status"] == "failed" and data["hours"][1]["reconciliation"]["status"] == HOSTILE
    assert data["days"][0]["sent_usd"] == "12388.328671818584246230819911"


def test_the_view_imports_nothing_from_airflow():
    code = "import sys, cloudzero_provider.ledger_view; print(sorted(m for m in sys.modules if m.startswith('airflow')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
