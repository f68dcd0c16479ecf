"""The ready DAGs under a real, distributed Airflow: scheduler, dag-processor, triggerer, api-server and two Celery
workers on a PostgreSQL metadata DB (see harness.py).

The tests share one deployment, and each sets up what it needs there: it unpauses its DAGs, seeds and exports its
own hours (days apart from the others'), waits for its own evidence and undoes the faults it injects, so that it
runs alone and in any order. The hourly DAG's catchup under faults is a fixture, run once for the tests that build
on it (the catchup itself, the telemetry it sets off, a backfill over its hours).
"""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import quote, unquote

import pytest
import requests

from cloudzero_provider.cbf import exact_sum
from cloudzero_provider.testing.double import hour_key
from cloudzero_provider.testing.fixtures import CONNECTION_ID
from cloudzero_provider.testing.seed import seed_synthetic, spend_by_hour
from cloudzero_provider.testing.server import Fault
from cloudzero_provider.windows import hour_label, parse_hour

HOURLY = "litellm_cloudzero_hourly"
RANGE = "litellm_cloudzero_range"
TELEMETRY = "litellm_cloudzero_telemetry"
CATCHUP_HOURS = int(os.environ.get("CZ_DEPLOY_CATCHUP_HOURS", "48"))
FIGURES: dict[str, float] = {}
HOUR = timedelta(hours=1)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def held_by_hour(deployed) -> dict[str, Decimal]:
    return {h: v for h, v in deployed.double.double.cost_by_hour(CONNECTION_ID).items() if v}


def between(by_hour: dict[str, Any], start: datetime, end: datetime) -> dict[str, Any]:
    """The hours of ``[start, end)`` (keys ``YYYY-MM-DDTHH:00:00Z``)."""
    return {h: v for h, v in by_hour.items() if iso(start) <= h < iso(end)}


def trigger_range(deployed, start: datetime, end: datetime) -> str:
    """Trigger the range DAG through the REST API, as the UI's form does; its run id."""
    deployed.unpause(RANGE)
    run = deployed.api("POST", f"/dags/{RANGE}/dagRuns", json={
        "logical_date": None, "conf": {"start": iso(start), "end": iso(end)},
    })  # fmt: skip
    return str(run["dag_run_id"])


@dataclass
class Catchup:
    """What the hourly DAG's catchup left: its runs, and what CloudZero saw while it ran."""

    runs: list[dict[str, Any]]
    run_ids: set[str]
    seconds: float
    requests: list[dict[str, Any]]
    concurrent_requests: int  # requests that overlapped another to the same stream


@pytest.fixture(scope="module")
def catchup(deployed, catchup_start) -> Catchup:
    """The hourly DAG's catchup of CATCHUP_HOURS hours, under CloudZero faults that are cleared once it is over.

    The telemetry DAG is unpaused first: it follows the export's Asset events from the first one on.
    """
    srv = deployed.double
    end = iso(catchup_start + timedelta(hours=CATCHUP_HOURS))

    def window(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # its own hours only: other tests run the hourly DAG over days long before them (a backfill)
        return [
            r
            for r in runs
            if r["data_interval_start"] and iso(catchup_start) <= r["data_interval_start"] < end
        ]

    def caught_up() -> list[dict[str, Any]] | None:
        runs = window(deployed.runs(HOURLY))
        done = [r for r in runs if r["state"] in ("success", "failed")]
        return runs if len(done) >= CATCHUP_HOURS else None

    drops = {"method": "POST", "path_contains": "billing_drops"}
    srv.fail_every(3, Fault("status", status=503, **drops))
    srv.fail_every(5, Fault("lose_response", **drops))
    srv.fail_every(7, Fault("status", status=429, retry_after="1", **drops))
    # Each drop takes a moment, as CloudZero's do: without the one-slot pool, uploads of runs in parallel on the
    # two workers would overlap here and be counted.
    srv.double.processing_delay = 0.5
    first_request, concurrent_before = len(srv.double.requests), srv.double.concurrent_requests
    try:
        deployed.unpause(TELEMETRY)
        started = time.monotonic()
        deployed.unpause(HOURLY)
        runs = deployed.wait_for(caught_up, 60 + 25 * CATCHUP_HOURS, f"{CATCHUP_HOURS} catchup runs", every=3)
        seconds = time.monotonic() - started
        seen = srv.double.requests[first_request:]
        concurrent = srv.double.concurrent_requests - concurrent_before
    finally:
        srv.clear_faults()
        srv.double.processing_delay = 0.0
    return Catchup(runs, {r["dag_run_id"] for r in runs}, seconds, seen, concurrent)


# pytest-timeout counts fixtures too: whichever test comes first also waits for the catchup (up to 60 + 25 s an hour).
CATCHUP_TIMEOUT = pytest.mark.timeout(1800)


@CATCHUP_TIMEOUT
def test_hourly_catchup_exports_every_hour_exactly_on_two_workers_under_faults(
    deployed, catchup, catchup_start
):
    FIGURES["catchup_hours_per_minute"] = CATCHUP_HOURS / catchup.seconds * 60
    print(
        f"\ncatchup: {CATCHUP_HOURS} hourly runs in {catchup.seconds:.0f}s = "
        f"{CATCHUP_HOURS / catchup.seconds * 60:.1f} hours/min"
    )
    assert [r["state"] for r in catchup.runs if r["state"] != "success"] == [], "no catchup run failed"
    assert len(catchup.runs) == CATCHUP_HOURS
    end = catchup_start + timedelta(hours=CATCHUP_HOURS)
    assert between(held_by_hour(deployed), catchup_start, end) == between(
        spend_by_hour(deployed.litellm_url), catchup_start, end
    )
    assert catchup.concurrent_requests == 0, "the one-slot pool kept CloudZero free of concurrent requests"
    tis = [ti for ti in deployed.task_instances(HOURLY) if ti["dag_run_id"] in catchup.run_ids]
    tasks = deployed.api("GET", f"/dags/{HOURLY}/tasks")["total_entries"]
    assert len(tis) == tasks * CATCHUP_HOURS, "every task instance of the catchup was read"
    pools = {ti["pool"] for ti in tis if ti["task_id"] == "upload"}
    assert pools == {"cloudzero_anycost"}, f"every upload ran in the one-slot pool, not {pools}"
    injected = sorted({r["status"] for r in catchup.requests if r.get("injected")})
    assert injected == [429, 503] and any(r.get("replayed") for r in catchup.requests)
    hosts = {ti["hostname"] for ti in tis if ti.get("hostname")}
    assert len(hosts) >= 2, f"tasks ran on both Celery workers, not only {hosts}"
    states: dict[tuple[str, str], int] = defaultdict(int)
    for ti in tis:
        states[ti["task_id"], ti["state"]] += 1
    assert states["settle", "failed"] == 0 and states["settle", "up_for_retry"] == 0
    # nothing shared but the bucket: the manifests are there, no component staged anything on its own disk
    keys = deployed.s3_keys()
    spent = {
        hour_label(parse_hour(h)) for h in between(spend_by_hour(deployed.litellm_url), catchup_start, end)
    }
    assert spent and {k.rsplit("/", 1)[-1].removesuffix(".json") for k in keys if "/manifests/" in k} >= spent
    staged_locally = [*deployed.home.rglob("*.jsonl"), *deployed.home.rglob("manifests")]
    assert staged_locally == [], f"staging on S3 only, yet on disk: {staged_locally[:5]}"


@CATCHUP_TIMEOUT
def test_the_telemetry_dag_runs_by_itself_from_the_exports_asset_events(deployed, catchup, catchup_start):
    def telemetry_of_every_catchup_event() -> set[str] | None:
        events = [e for e in deployed.pages("/assets/events", "asset_events", source_dag_id=HOURLY)
                  if e["source_run_id"] in catchup.run_ids]  # fmt: skip
        runs = [[d for d in e["created_dagruns"] if d["dag_id"] == TELEMETRY] for e in events]
        if not events or not all(runs):
            return None
        if any(d["state"] not in ("success", "failed") for consumers in runs for d in consumers):
            return None
        return {d["run_id"] for consumers in runs for d in consumers}

    run_ids = deployed.wait_for(
        telemetry_of_every_catchup_event, 300, "telemetry runs from every Asset event of the catchup", every=3
    )
    runs = [r for r in deployed.runs(TELEMETRY) if r["dag_run_id"] in run_ids]
    assert runs and {r["state"] for r in runs} == {"success"}
    assert {r["run_type"] for r in runs} == {"asset_triggered"}
    days = {iso(catchup_start + timedelta(hours=h))[:10] for h in range(CATCHUP_HOURS)}
    sent: dict[str, Decimal] = defaultdict(Decimal)
    for (timestamp, _), value in deployed.double.double.metric_values("llm-cost").items():
        if timestamp[:10] in days:
            sent[timestamp[:10]] += value
    by_day: dict[str, list[Decimal]] = defaultdict(list)
    for hour, spend in spend_by_hour(deployed.litellm_url).items():
        if hour[:10] in days:
            by_day[hour[:10]].append(spend)
    assert by_day, "the catchup's days hold spend"
    assert dict(sent) == {day: exact_sum(v) for day, v in by_day.items()}


@CATCHUP_TIMEOUT
def test_backfill_reprocessing_completed_runs_leaves_cloudzero_identical(deployed, catchup, catchup_start):
    before = deployed.double.double.snapshot(CONNECTION_ID)
    start, end = catchup_start + timedelta(hours=1), catchup_start + timedelta(hours=4)

    def in_window(run: dict[str, Any]) -> bool:  # this backfill's runs, not another test's
        return iso(start) <= run["data_interval_start"] < iso(end)

    deployed.cli("backfill", "create", "--dag-id", HOURLY, "--from-date", start.isoformat(), "--to-date",
                 end.isoformat(), "--reprocess-behavior", "completed", "--max-active-runs", "2")  # fmt: skip
    deployed.wait_for(
        lambda: (
            (lambda rs: rs and all(r["state"] in ("success", "failed") for r in rs))(
                [r for r in deployed.runs(HOURLY) if r["run_type"] == "backfill" and in_window(r)]
            )
            or None
        ),
        300,
        "the backfill's runs",
        every=3,
    )
    backfilled = [r for r in deployed.runs(HOURLY) if r["run_type"] == "backfill" and in_window(r)]
    assert len(backfilled) >= 3 and {r["state"] for r in backfilled} == {"success"}
    assert deployed.double.double.snapshot(CONNECTION_ID) == before


def test_the_range_dag_triggered_through_the_rest_api_exports_its_hours(deployed, catchup_start):
    day = (catchup_start - timedelta(days=2)).replace(hour=0)
    for i, hour in enumerate((3, 4, 17)):
        seed_synthetic(deployed.litellm_url, day + timedelta(hours=hour), 120 + i, id_prefix=f"rng{i}")
    run_id = trigger_range(deployed, day, day + timedelta(days=1))
    state = deployed.wait_for(lambda: deployed.run_state(RANGE, run_id), 300, "the range run", every=3)
    assert state == "success"
    source = spend_by_hour(deployed.litellm_url)
    held = held_by_hour(deployed)
    assert {h: held.get(h) for h in source if h.startswith(day.strftime("%Y-%m-%d"))} == {
        h: v for h, v in source.items() if h.startswith(day.strftime("%Y-%m-%d"))
    }
    labels = {ti["rendered_map_index"] for ti in deployed.task_instances(RANGE, run_id)
              if ti["task_id"] == "chunk.upload"}  # fmt: skip
    assert labels == {day.strftime("%Y-%m-%d")}


LEDGER_ROUTES = ("/cloudzero/ledger", "/cloudzero/ledger.csv", "/cloudzero/ledger.json")


def ledger(deployed, route: str = "/cloudzero/ledger", **params: str) -> requests.Response:
    """A ledger route through the real api-server, as an admin with a token."""
    response = requests.get(f"{deployed.url}{route}", params=params, timeout=60,
                            headers={"Authorization": f"Bearer {deployed.token()}"})  # fmt: skip
    assert response.status_code == 200, (route, params, response.status_code, response.text[:500])
    return response


def ledger_row(page: str, hour: datetime) -> str:
    start = page.index(f'id="h-{hour:%Y-%m-%dT%H}"')
    return page[start : page.index("</tr>", start)]


def test_the_ledger_needs_a_login_and_shows_the_exported_figures_and_its_dag_tab(deployed, catchup_start):
    hour = (catchup_start - timedelta(days=6)).replace(hour=8)
    seed_synthetic(deployed.litellm_url, hour, 130, id_prefix="ledger")
    run_id = trigger_range(deployed, hour, hour + timedelta(hours=1))
    assert (
        deployed.wait_for(lambda: deployed.run_state(RANGE, run_id), 300, "the range run", every=3)
        == "success"
    )
    key = iso(hour)
    spend = spend_by_hour(deployed.litellm_url)[key]  # what the source holds, from SQL
    cbf_rows = sum(1 for r in deployed.double.double.rows(CONNECTION_ID) if hour_key(r) == key)
    assert spend > 0 and cbf_rows > 0
    hours = {"start": key, "end": iso(hour + timedelta(hours=1))}

    for route in (*LEDGER_ROUTES, "/cloudzero/reports/cloudzero_default/2026-11-01/report.html"):
        for query in (hours, {**hours, "dag_id": HOURLY}, {**hours, "dag_id": RANGE, "tab": "1"}):
            anonymous = requests.get(f"{deployed.url}{route}", params=query, timeout=10)
            assert anonymous.status_code in (401, 403), (route, query)
            assert "exported" not in anonymous.text and key not in anonymous.text, (
                "no figures without a login"
            )
    token = deployed.token()
    page = ledger(deployed, **hours)
    assert '<span id="count-exported">1 exported</span>' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.headers["x-frame-options"] == "SAMEORIGIN"
    row = ledger_row(page.text, hour)
    upload = f"/dags/{RANGE}/runs/{quote(run_id, safe='')}/tasks/chunk.upload/mapped/0"
    assert f'<td class="st"><a href="..{upload}"' in row and ">exported</a>" in row, (
        "status, linked to its upload"
    )
    exact = re.findall(r'title="([^"]+) USD \(exact\)"', row)
    assert [Decimal(v) for v in exact] == [spend, spend], "cost at source and sent, exact in the tooltip"
    (shown,) = ledger(deployed, "/cloudzero/ledger.json", **hours).json()["hours"]
    assert (shown["status"], shown["rows"], shown["airflow_path"]) == ("exported", cbf_rows, upload)
    assert Decimal(shown["source_usd"]) == spend == Decimal(shown["sent_usd"]) and shown["drops"] >= 1
    cookie = requests.get(
        f"{deployed.url}/cloudzero/ledger", params=hours, cookies={"_token": token}, timeout=30
    )
    assert cookie.status_code == 200, "the UI's session cookie is accepted too"
    assert ledger_row(cookie.text, hour) == row, "with the same figures"

    # The tab on the DAG pages: offered to the UI, and what its iframe loads.
    plugins = deployed.api("GET", "/plugins")["plugins"]
    views = next(p for p in plugins if p["name"] == "cloudzero_ledger")["external_views"]
    tab = next(v for v in views if v["destination"] == "dag")
    assert (tab["url_route"], tab["href"]) == (
        "cloudzero-export-ledger",
        "cloudzero/ledger?dag_id={DAG_ID}&tab=1",
    )
    assert any(v["destination"] == "nav" and v["category"] == "browse" for v in views)
    framed = requests.get(f"{deployed.url}/{tab['href'].replace('{DAG_ID}', RANGE)}", params=hours,
                          cookies={"_token": token}, timeout=30)  # fmt: skip
    assert framed.status_code == 200 and f"(the stream of {RANGE})" in framed.text
    assert "Links open inside this tab" in framed.text and ledger_row(framed.text, hour) == row
    other = requests.get(f"{deployed.url}/{tab['href'].replace('{DAG_ID}', TELEMETRY)}", cookies={"_token": token},
                         timeout=30)  # fmt: skip
    assert other.status_code == 200 and f"{TELEMETRY} does not export to CloudZero" in other.text


def test_after_the_catchup_the_ledger_says_cloudzero_is_current_and_every_hour_exact(
    deployed, catchup, catchup_start
):
    # Is it current? The newest hour CloudZero holds is the newest hour the catchup exported: green.
    exported = [r["data_interval_start"] for r in deployed.runs(HOURLY) if r["state"] == "success"]
    newest = max(datetime.fromisoformat(h.replace("Z", "+00:00")) for h in exported)
    page = ledger(deployed).text
    assert '<section class="headline current" id="headline-cloudzero_default">' in page
    # (an hour may end meanwhile, and its run export it)
    held = (newest, newest + HOUR)
    assert any(f"newest hour in CloudZero: <b>{h:%Y-%m-%d %H:00} UTC</b>" in page for h in held)
    window = {"start": iso(catchup_start), "end": iso(catchup_start + timedelta(hours=CATCHUP_HOURS))}
    data = ledger(deployed, "/cloudzero/ledger.json", **window).json()
    (head,) = data["headline"]
    assert head["newest_hour_held"] in [iso(h) for h in held] and head["behind"] is False
    assert 0 <= head["lag_hours"] < 2
    assert (head["hours_failed"], head["hours_waiting"], head["max_lag_hours"]) == (0, 0, 6)

    # Is it right? Every hour of the catchup exported (or checked and empty), each exactly the source's spend,
    # each linking to the task instance that sent it -- a page the api-server knows.
    source = between(spend_by_hour(deployed.litellm_url), catchup_start,
                     catchup_start + timedelta(hours=CATCHUP_HOURS))  # fmt: skip
    hours = data["hours"]
    assert len(hours) == CATCHUP_HOURS
    for hour in hours:
        if hour["hour"] in source:
            assert hour["status"] in ("exported", "late-corrected"), hour
            assert Decimal(hour["sent_usd"]) == Decimal(hour["source_usd"]) == source[hour["hour"]], hour
        else:
            assert hour["status"] == "no spend", hour
        assert hour["airflow_path"].startswith(f"/dags/{HOURLY}/runs/"), hour
    dag, run_id = [unquote(p) for p in hours[5]["airflow_path"].split("/")[2:5:2]]
    assert deployed.api("GET", f"/dags/{dag}/dagRuns/{quote(run_id, safe='')}")["state"] == "success"
    assert '<svg id="chart-hourly-svg"' in ledger(deployed, **window).text

    # The same window as CSV: exact, one line an hour.
    csv_text = ledger(deployed, "/cloudzero/ledger.csv", **window)
    assert csv_text.headers["content-type"] == "text/csv; charset=utf-8"
    assert csv_text.headers["content-disposition"].startswith('attachment; filename="cloudzero-ledger-')
    rows = list(csv.DictReader(io.StringIO(csv_text.text)))
    assert len(rows) == CATCHUP_HOURS
    assert {
        r["hour"]: Decimal(r["sent_usd"]) for r in rows if r["sent_usd"] and Decimal(r["sent_usd"])
    } == source


def test_a_worker_killed_mid_upload_is_retried_and_the_hour_ends_exact(deployed, catchup_start):
    hour = (catchup_start - timedelta(days=3)).replace(hour=7)
    seed_synthetic(deployed.litellm_url, hour, 200, id_prefix="kill")
    srv = deployed.double
    victim = None
    srv.slow_next(1, 60, method="POST", path_contains="billing_drops")
    try:
        run_id = trigger_range(deployed, hour, hour + timedelta(hours=1))

        def upload_running():
            for ti in deployed.task_instances(RANGE, run_id):
                if ti["task_id"] == "chunk.upload" and ti["state"] == "running" and ti.get("hostname"):
                    in_flight = sum(srv.double.in_flight.values())
                    return ti["hostname"] if in_flight else None
            return None

        host = deployed.wait_for(upload_running, 240, "the upload in the middle of its request")
        victim = next(name for name in ("worker1", "worker2") if host.startswith(name))
        deployed.stop_process(victim, signal.SIGKILL)
        state = deployed.wait_for(
            lambda: deployed.run_state(RANGE, run_id),
            300,
            "Airflow to notice the dead worker and retry the upload",
            every=3,
        )
    finally:
        srv.clear_faults()  # the slow answer, if no request met it
        if victim is not None:
            deployed.start_worker(int(victim[-1]))
    assert state == "success"
    upload = next(ti for ti in deployed.task_instances(RANGE, run_id) if ti["task_id"] == "chunk.upload")
    assert upload["try_number"] >= 2, "the killed attempt was retried"
    key = hour.strftime("%Y-%m-%dT%H:00:00Z")
    assert held_by_hour(deployed)[key] == spend_by_hour(deployed.litellm_url)[key], "no duplicate, no loss"
    # The dead worker's request is still being answered, slowly: once CloudZero applies it too, the hour stays exact.
    deployed.wait_for(
        lambda: sum(srv.double.in_flight.values()) == 0, 120, "the killed attempt's request to end"
    )
    assert held_by_hour(deployed)[key] == spend_by_hour(deployed.litellm_url)[key], (
        "the late request changed nothing"
    )


def test_a_poisoned_hour_fails_alone_and_clearing_its_task_after_the_fix_sends_only_it(
    deployed, catchup_start
):
    import psycopg2

    from cloudzero_provider.testing.seed import insert_spend_logs, spend_log

    day = (catchup_start - timedelta(days=5)).replace(hour=0)
    for i, hour in enumerate((2, 3, 4)):
        seed_synthetic(deployed.litellm_url, day + timedelta(hours=hour), 90 + i, id_prefix=f"poison{i}")
    insert_spend_logs(
        deployed.litellm_url, [spend_log("poison-nan", day + timedelta(hours=3, minutes=7), float("nan"))]
    )
    run_id = trigger_range(deployed, day, day + timedelta(days=1))

    def run_state():
        return deployed.run_state(RANGE, run_id)

    assert deployed.wait_for(run_state, 300, "the poisoned range run", every=3) == "failed"
    held = held_by_hour(deployed)
    source = spend_by_hour(deployed.litellm_url)
    good = [(day + timedelta(hours=h)).strftime("%Y-%m-%dT%H:00:00Z") for h in (2, 4)]
    bad = (day + timedelta(hours=3)).strftime("%Y-%m-%dT%H:00:00Z")
    assert {h: held.get(h) for h in good} == {h: source[h] for h in good} and bad not in held
    # The ledger names the failed hour, says why and links the task instance that failed it.
    window = {"start": iso(day), "end": iso(day + timedelta(days=1))}
    page = ledger(deployed, **window).text
    row = page[page.index(f'id="h-{day + timedelta(hours=3):%Y-%m-%dT%H}"') :].split("</tr>", 1)[0]
    assert 'class="st"' in row and ">failed</a>" in row and "spend is NaN" in row
    upload = f"/dags/{RANGE}/runs/{quote(run_id, safe='')}/tasks/chunk.upload/mapped/0"
    assert f'href="..{upload}"' in row
    failed = next(
        h for h in ledger(deployed, "/cloudzero/ledger.json", **window).json()["hours"] if h["hour"] == bad
    )
    assert failed["status"] == "failed" and failed["airflow_path"] == upload
    with psycopg2.connect(deployed.litellm_url) as conn, conn.cursor() as cur:
        cur.execute("""UPDATE "LiteLLM_SpendLogs" SET spend = 0.5 WHERE request_id = 'poison-nan'""")
    before = len(deployed.double.double.requests)
    deployed.api("POST", f"/dags/{RANGE}/clearTaskInstances", json={
        "dry_run": False, "dag_run_id": run_id, "task_ids": ["chunk.upload"], "only_failed": True,
        "reset_dag_runs": True,
    })  # fmt: skip
    deployed.wait_for(lambda: deployed.api("GET", f"/dags/{RANGE}/dagRuns/{run_id}")["state"] != "failed", 60,
                      "the cleared run to start again")  # fmt: skip
    assert deployed.wait_for(run_state, 300, "the cleared upload", every=3) == "success"
    # The range run's Asset event may also set off a telemetry run, whose unit-metric posts are not drops.
    sent = [r["hours"] for r in deployed.double.double.requests[before:] if r.get("applied") and "hours" in r]
    sent = [hours for hours in sent if any(h.startswith(day.strftime("%Y-%m-%d")) for h in hours)]
    assert sent == [[bad]], "only the fixed hour is sent"
    assert held_by_hour(deployed)[bad] == spend_by_hour(deployed.litellm_url)[bad]
    fixed = next(
        h for h in ledger(deployed, "/cloudzero/ledger.json", **window).json()["hours"] if h["hour"] == bad
    )
    assert fixed["status"] == "exported" and fixed["airflow_path"] == upload


def test_a_missing_pool_is_named_in_the_dag_docs_and_the_scheduler_log(deployed, catchup_start):
    deployed.wait_for_dag(RANGE)
    details = deployed.api("GET", f"/dags/{RANGE}/details")
    assert "airflow pools set cloudzero_anycost 1" in details["doc_md"]
    hour = (catchup_start - timedelta(days=4)).replace(hour=5)
    seed_synthetic(deployed.litellm_url, hour, 50, id_prefix="nopool")
    scheduler_log = deployed.home / "proc-scheduler.log"
    seen = scheduler_log.stat().st_size  # only what the scheduler says from now on counts
    deployed.api("DELETE", "/pools/cloudzero_anycost")
    try:
        run_id = trigger_range(deployed, hour, hour + timedelta(hours=1))

        def named() -> bool:
            with open(scheduler_log, "rb") as log:
                log.seek(seen)
                said = log.read().decode(errors="replace")
            return "Tasks using non-existent pool 'cloudzero_anycost' will not be scheduled" in said

        deployed.wait_for(named, 180, "the scheduler to name the missing pool", every=2)
        upload = next(ti for ti in deployed.task_instances(RANGE, run_id) if ti["task_id"] == "chunk.upload")
        assert upload["state"] in (None, "scheduled"), "never queued without its pool"
    finally:
        deployed.api(
            "POST", "/pools", json={"name": "cloudzero_anycost", "slots": 1, "description": "restored"}
        )
    # With its pool back, the waiting run goes on: nothing of this test is left running for the next.
    state = deployed.wait_for(
        lambda: deployed.run_state(RANGE, run_id), 300, "the run, its pool back", every=3
    )
    assert state == "success"
    key = iso(hour)
    assert held_by_hour(deployed)[key] == spend_by_hour(deployed.litellm_url)[key]


def when(moment: str | None) -> datetime | None:
    return datetime.fromisoformat(moment) if moment else None


@pytest.mark.timeout(1500)
def test_a_history_import_during_a_catchup_waits_for_no_more_than_the_request_in_flight(
    deployed, catchup_start
):
    """A 168-hour range triggered while the hourly DAG works through a week of empty hours takes the one-slot pool
    as soon as the upload in flight is done, and the catchup keeps moving whenever nothing of the range waits for
    it. The week is a backfill of the hourly DAG, days before anything else here: the same runs, tasks and weights
    as a catchup (the shared deployment's own catchup is over by now). The range runs alone first, for its time."""
    alone, during = [(catchup_start - timedelta(days=d)).replace(hour=0) for d in (40, 30)]
    week = (catchup_start - timedelta(days=20)).replace(hour=0)
    for tag, first in (("a", alone), ("b", during)):
        for i, offset in enumerate((2, 29, 53, 77, 101, 149)):
            seed_synthetic(
                deployed.litellm_url, first + timedelta(hours=offset), 60 + i, id_prefix=f"fair{tag}{i}"
            )

    def import_range(first: datetime) -> tuple[str, float, datetime, datetime]:
        began, started = time.monotonic(), datetime.now(timezone.utc)
        run_id = trigger_range(deployed, first, first + 168 * HOUR)
        state = deployed.wait_for(lambda: deployed.run_state(RANGE, run_id), 900, "the range run", every=2)
        assert state == "success"
        return run_id, time.monotonic() - began, started, datetime.now(timezone.utc)

    _, seconds_alone, _, _ = import_range(alone)
    deployed.unpause(HOURLY)
    backfill = deployed.api("POST", "/backfills", json={
        "dag_id": HOURLY, "from_date": iso(week), "to_date": iso(week + 167 * HOUR), "max_active_runs": 4,
    })  # fmt: skip

    def backfilled() -> list[dict[str, Any]]:
        return [r for r in deployed.runs(HOURLY) if r["run_type"] == "backfill"
                and iso(week) <= r["data_interval_start"] < iso(week + 168 * HOUR)]  # fmt: skip

    def hourly_pool_tasks() -> list[dict[str, Any]]:
        runs = {r["dag_run_id"] for r in backfilled()}
        return [ti for ti in deployed.task_instances(HOURLY)
                if ti["dag_run_id"] in runs and ti["task_id"] in ("upload", "late_data")]  # fmt: skip

    try:
        # the catchup is in full flow: its uploads take the pool one after another
        deployed.wait_for(lambda: sum(ti["state"] == "success" for ti in hourly_pool_tasks()) >= 3, 300,
                          "the backfilled week's first uploads", every=2)  # fmt: skip
        run_id, seconds_during, started, ended = import_range(during)
        hourly = hourly_pool_tasks()
    finally:
        deployed.api("PUT", f"/backfills/{backfill['id']}/cancel")
    # nothing of this test is left running for the next: the backfill's runs in flight end
    deployed.wait_for(lambda: all(r["state"] in ("success", "failed") for r in backfilled()) or None, 600,
                      "the cancelled backfill's runs in flight", every=3)  # fmt: skip
    FIGURES["range_168h_alone_s"], FIGURES["range_168h_during_catchup_s"] = seconds_alone, seconds_during
    print(f"\n168-hour range alone {seconds_alone:.0f}s, during a catchup {seconds_during:.0f}s "
          f"({seconds_during / seconds_alone:.1f}x)")  # fmt: skip
    uploads = [ti for ti in deployed.task_instances(RANGE, run_id) if ti["task_id"] == "chunk.upload"]
    assert uploads and {ti["state"] for ti in uploads} == {"success"}
    for upload in uploads:
        waiting_from, taken = when(upload["scheduled_when"]), when(upload["queued_when"])
        assert waiting_from and taken
        jumped = [
            ti["dag_run_id"] for ti in hourly if (q := when(ti["queued_when"])) and waiting_from < q < taken
        ]
        assert jumped == [], f"no scheduled hour takes the pool while an import waits for it: {jumped}"
    moved = [ti for ti in hourly if (q := when(ti["queued_when"])) and started < q < ended]
    assert moved, "the catchup kept moving while nothing of the import waited for the pool"
    assert seconds_during < 4 * seconds_alone + 60, "the import finished within a few times its time alone"
    source = between(spend_by_hour(deployed.litellm_url), during, during + 168 * HOUR)
    assert len(source) == 6 and between(held_by_hour(deployed), during, during + 168 * HOUR) == source


@pytest.fixture(scope="module", autouse=True)
def report_figures():
    yield
    if FIGURES:
        print("\ndeployment figures:", {k: round(v, 2) for k, v in FIGURES.items()})
