"""The ready DAGs under a real, distributed Airflow: scheduler, dag-processor, triggerer, api-server and two Celery
workers on a PostgreSQL metadata DB (see cloudzero_provider.testing.deployment).

The tests share one deployment and run in file order: catchup first, then what builds on its exports.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import time
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from urllib.parse import quote, unquote

import pytest
import requests

from cloudzero_provider.cbf import exact_sum
from cloudzero_provider.testing.fixtures import CONNECTION_ID
from cloudzero_provider.testing.seed import seed_synthetic, spend_by_hour
from cloudzero_provider.testing.server import Fault

HOURLY = "litellm_cloudzero_hourly"
RANGE = "litellm_cloudzero_range"
TELEMETRY = "litellm_cloudzero_telemetry"
CATCHUP_HOURS = int(os.environ.get("CZ_DEPLOY_CATCHUP_HOURS", "48"))
FIGURES: dict[str, float] = {}
HOUR = timedelta(hours=1)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def finished(runs: list[dict], count: int) -> bool:
    done = [r for r in runs if r["state"] in ("success", "failed")]
    return len(done) >= count


def held_by_hour(deployed) -> dict[str, Decimal]:
    return {h: v for h, v in deployed.double.double.cost_by_hour(CONNECTION_ID).items() if v}


@pytest.mark.timeout(1800)
def test_hourly_catchup_exports_every_hour_exactly_on_two_workers_under_faults(deployed, catchup_start):
    srv = deployed.double
    drops = {"method": "POST", "path_contains": "billing_drops"}
    srv.fail_every(3, Fault("status", status=503, **drops))
    srv.fail_every(5, Fault("lose_response", **drops))
    srv.fail_every(7, Fault("status", status=429, retry_after="1", **drops))
    # Each drop takes a moment, as CloudZero's do: without the one-slot pool, uploads of runs in parallel on the
    # two workers would overlap here and be counted.
    srv.double.processing_delay = 0.5
    deployed.unpause(TELEMETRY)  # it follows the export's Asset events from the first one on
    started = time.monotonic()
    deployed.unpause(HOURLY)
    runs = deployed.wait_for(
        lambda: (lambda rs: rs if finished(rs, CATCHUP_HOURS) else None)(deployed.runs(HOURLY)),
        60 + 25 * CATCHUP_HOURS,
        f"{CATCHUP_HOURS} catchup runs",
        every=3,
    )
    elapsed = time.monotonic() - started
    FIGURES["catchup_hours_per_minute"] = CATCHUP_HOURS / elapsed * 60
    print(
        f"\ncatchup: {CATCHUP_HOURS} hourly runs in {elapsed:.0f}s = {CATCHUP_HOURS / elapsed * 60:.1f} hours/min"
    )
    window = [
        r
        for r in runs
        if r["data_interval_start"]
        and r["data_interval_start"] < iso(catchup_start + timedelta(hours=CATCHUP_HOURS))
    ]
    assert [r["state"] for r in window if r["state"] != "success"] == [], "no catchup run failed"
    assert held_by_hour(deployed) == spend_by_hour(deployed.litellm_url)
    double = srv.double
    assert double.concurrent_requests == 0, "the one-slot pool kept CloudZero free of concurrent requests"
    pools = {ti["pool"] for ti in deployed.task_instances(HOURLY) if ti["task_id"] == "upload"}
    assert pools == {"cloudzero_anycost"}, f"every upload ran in the one-slot pool, not {pools}"
    injected = sorted({r["status"] for r in double.requests if r.get("injected")})
    assert injected == [429, 503] and any(r.get("replayed") for r in double.requests)
    hosts = {ti["hostname"] for ti in deployed.task_instances(HOURLY) if ti.get("hostname")}
    assert len(hosts) >= 2, f"tasks ran on both Celery workers, not only {hosts}"
    states = defaultdict(int)
    for ti in deployed.task_instances(HOURLY):
        states[ti["task_id"], ti["state"]] += 1
    assert states["settle", "failed"] == 0 and states["settle", "up_for_retry"] == 0


def test_the_telemetry_dag_runs_by_itself_from_the_exports_asset_events(deployed):
    deployed.wait_for(
        lambda: (lambda rs: rs and all(r["state"] in ("success", "failed") for r in rs))(
            deployed.runs(TELEMETRY)
        ),
        300,
        "telemetry runs triggered by the export's Asset events",
        every=3,
    )
    runs = deployed.runs(TELEMETRY)
    assert runs and {r["state"] for r in runs} == {"success"}
    assert {r["run_type"] for r in runs} == {"asset_triggered"}
    sent: dict[str, Decimal] = defaultdict(Decimal)
    for (timestamp, _), value in deployed.double.double.metric_values("llm-cost").items():
        sent[timestamp[:10]] += value
    by_day: dict[str, list[Decimal]] = defaultdict(list)
    for hour, spend in spend_by_hour(deployed.litellm_url).items():
        by_day[hour[:10]].append(spend)
    assert dict(sent) == {day: exact_sum(v) for day, v in by_day.items()}


def test_backfill_reprocessing_completed_runs_leaves_cloudzero_identical(deployed, catchup_start):
    before = deployed.double.double.snapshot(CONNECTION_ID)
    start, end = catchup_start + timedelta(hours=1), catchup_start + timedelta(hours=4)
    deployed.cli("backfill", "create", "--dag-id", HOURLY, "--from-date", start.isoformat(), "--to-date",
                 end.isoformat(), "--reprocess-behavior", "completed", "--max-active-runs", "2")  # fmt: skip
    deployed.wait_for(
        lambda: (
            (lambda rs: rs and all(r["state"] in ("success", "failed") for r in rs))(
                [r for r in deployed.runs(HOURLY) if r["run_type"] == "backfill"]
            )
            or None
        ),
        300,
        "the backfill's runs",
        every=3,
    )
    backfilled = [r for r in deployed.runs(HOURLY) if r["run_type"] == "backfill"]
    assert len(backfilled) >= 3 and {r["state"] for r in backfilled} == {"success"}
    assert deployed.double.double.snapshot(CONNECTION_ID) == before


def test_the_range_dag_triggered_through_the_rest_api_exports_its_hours(deployed, catchup_start):
    day = (catchup_start - timedelta(days=2)).replace(hour=0)
    for i, hour in enumerate((3, 4, 17)):
        seed_synthetic(deployed.litellm_url, day + timedelta(hours=hour), 120 + i, id_prefix=f"rng{i}")
    deployed.unpause(RANGE)
    run = deployed.api("POST", f"/dags/{RANGE}/dagRuns", json={
        "logical_date": None, "conf": {"start": iso(day), "end": iso(day + timedelta(days=1))},
    })  # fmt: skip
    deployed.wait_for(
        lambda: (
            deployed.api("GET", f"/dags/{RANGE}/dagRuns/{run['dag_run_id']}")["state"]
            in ("success", "failed")
        ),
        300,
        "the range run",
        every=3,
    )
    assert deployed.api("GET", f"/dags/{RANGE}/dagRuns/{run['dag_run_id']}")["state"] == "success"
    source = spend_by_hour(deployed.litellm_url)
    held = held_by_hour(deployed)
    assert {h: held.get(h) for h in source if h.startswith(day.strftime("%Y-%m-%d"))} == {
        h: v for h, v in source.items() if h.startswith(day.strftime("%Y-%m-%d"))
    }
    labels = {ti["rendered_map_index"] for ti in deployed.task_instances(RANGE, run["dag_run_id"])
              if ti["task_id"] == "chunk.upload"}  # fmt: skip
    assert labels == {day.strftime("%Y-%m-%d")}


LEDGER_ROUTES = ("/cloudzero/ledger", "/cloudzero/ledger.csv", "/cloudzero/ledger.json")


def ledger(deployed, route: str = "/cloudzero/ledger", **params: str) -> requests.Response:
    """A ledger route through the real api-server, as an admin with a token."""
    response = requests.get(f"{deployed.url}{route}", params=params, timeout=60,
                            headers={"Authorization": f"Bearer {deployed.token()}"})  # fmt: skip
    assert response.status_code == 200, (route, params, response.status_code, response.text[:500])
    return response


def test_the_ledger_needs_a_login_and_answers_is_cloudzero_current_and_right(deployed, catchup_start):
    for route in (*LEDGER_ROUTES, "/cloudzero/reports/cloudzero_default/2026-11-01/report.html"):
        for query in ("", f"?dag_id={HOURLY}", f"?dag_id={RANGE}&tab=1"):
            anonymous = requests.get(f"{deployed.url}{route}{query}", timeout=10)
            assert anonymous.status_code in (401, 403) and "exported" not in anonymous.text, (route, query)
    token = deployed.token()
    page = ledger(deployed)
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.headers["x-frame-options"] == "SAMEORIGIN"
    cookie = requests.get(f"{deployed.url}/cloudzero/ledger", cookies={"_token": token}, timeout=30)
    assert cookie.status_code == 200, "the UI's session cookie is accepted too"

    # Is it current? The newest hour CloudZero holds is the newest hour the catchup exported: green.
    exported = [r["data_interval_start"] for r in deployed.runs(HOURLY) if r["state"] == "success"]
    newest = max(datetime.fromisoformat(h.replace("Z", "+00:00")) for h in exported)
    assert '<section class="headline current" id="headline-cloudzero_default">' in page.text
    # (an hour may end meanwhile, and its run export it)
    assert any(
        f"newest hour in CloudZero: <b>{h:%Y-%m-%d %H:00} UTC</b>" in page.text
        for h in (newest, newest + HOUR)
    )
    window = {"start": iso(catchup_start), "end": iso(catchup_start + timedelta(hours=CATCHUP_HOURS))}
    data = ledger(deployed, "/cloudzero/ledger.json", **window).json()
    (head,) = data["headline"]
    assert head["newest_hour_held"] in (iso(newest), iso(newest + HOUR)) and head["behind"] is False
    assert 0 <= head["lag_hours"] < 2
    assert (head["hours_failed"], head["hours_waiting"], head["max_lag_hours"]) == (0, 0, 6)

    # Is it right? Every hour of the catchup exported (or checked and empty), each exactly the source's spend,
    # each linking to the task instance that sent it -- a page the api-server knows.
    source = {
        h: v for h, v in spend_by_hour(deployed.litellm_url).items() if window["start"] <= h < window["end"]
    }
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

    # The tab on the DAG pages: offered to the UI, and what its iframe loads.
    plugins = deployed.api("GET", "/plugins")["plugins"]
    views = next(p for p in plugins if p["name"] == "cloudzero_ledger")["external_views"]
    tab = next(v for v in views if v["destination"] == "dag")
    assert (
        tab["url_route"] == "cloudzero-export-ledger"
        and tab["href"] == "cloudzero/ledger?dag_id={DAG_ID}&tab=1"
    )
    assert any(v["destination"] == "nav" and v["category"] == "browse" for v in views)
    framed = requests.get(f"{deployed.url}/{tab['href'].replace('{DAG_ID}', RANGE)}", cookies={"_token": token},
                          timeout=30)  # fmt: skip
    assert framed.status_code == 200 and f"(the stream of {RANGE})" in framed.text
    assert "Links open inside this tab" in framed.text
    other = requests.get(f"{deployed.url}/{tab['href'].replace('{DAG_ID}', TELEMETRY)}", cookies={"_token": token},
                         timeout=30)  # fmt: skip
    assert other.status_code == 200 and f"{TELEMETRY} does not export to CloudZero" in other.text


def test_a_worker_killed_mid_upload_is_retried_and_the_hour_ends_exact(deployed, catchup_start):
    hour = (catchup_start - timedelta(days=3)).replace(hour=7)
    seed_synthetic(deployed.litellm_url, hour, 200, id_prefix="kill")
    srv = deployed.double
    srv.slow_next(1, 60, method="POST", path_contains="billing_drops")
    run = deployed.api("POST", f"/dags/{RANGE}/dagRuns", json={
        "logical_date": None, "conf": {"start": iso(hour), "end": iso(hour + timedelta(hours=1))},
    })  # fmt: skip
    run_id = run["dag_run_id"]

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
        lambda: (lambda s: s if s in ("success", "failed") else None)(
            deployed.api("GET", f"/dags/{RANGE}/dagRuns/{run_id}")["state"]
        ),
        300,
        "Airflow to notice the dead worker and retry the upload",
        every=3,
    )
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
    deployed.unpause(RANGE)  # so that this test also runs alone
    run = deployed.api("POST", f"/dags/{RANGE}/dagRuns", json={
        "logical_date": None, "conf": {"start": iso(day), "end": iso(day + timedelta(days=1))},
    })  # fmt: skip
    run_id = run["dag_run_id"]

    def run_state():
        state = deployed.api("GET", f"/dags/{RANGE}/dagRuns/{run_id}")["state"]
        return state if state in ("success", "failed") else None

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
    # The range run's Asset event also sets off a telemetry run, whose unit-metric posts are not drops.
    sent = [r["hours"] for r in deployed.double.double.requests[before:] if r.get("applied") and "hours" in r]
    sent = [hours for hours in sent if any(h.startswith(day.strftime("%Y-%m-%d")) for h in hours)]
    assert sent == [[bad]], "only the fixed hour is sent"
    assert held_by_hour(deployed)[bad] == spend_by_hour(deployed.litellm_url)[bad]
    fixed = next(
        h for h in ledger(deployed, "/cloudzero/ledger.json", **window).json()["hours"] if h["hour"] == bad
    )
    assert fixed["status"] == "exported" and fixed["airflow_path"] == upload


def test_a_missing_pool_is_named_in_the_dag_docs_and_the_scheduler_log(deployed, catchup_start):
    details = deployed.api("GET", f"/dags/{RANGE}/details")
    assert "airflow pools set cloudzero_anycost 1" in details["doc_md"]
    deployed.api("DELETE", "/pools/cloudzero_anycost")
    try:
        hour = (catchup_start - timedelta(days=4)).replace(hour=5)
        seed_synthetic(deployed.litellm_url, hour, 50, id_prefix="nopool")
        run = deployed.api("POST", f"/dags/{RANGE}/dagRuns", json={
            "logical_date": None, "conf": {"start": iso(hour), "end": iso(hour + timedelta(hours=1))},
        })  # fmt: skip
        deployed.wait_for(
            lambda: (
                "Tasks using non-existent pool 'cloudzero_anycost' will not be scheduled"
                in (deployed.home / "proc-scheduler.log").read_text(errors="replace")
            ),
            180,
            "the scheduler to name the missing pool",
            every=2,
        )
        upload = next(
            ti for ti in deployed.task_instances(RANGE, run["dag_run_id"]) if ti["task_id"] == "chunk.upload"
        )
        assert upload["state"] in (None, "scheduled"), "never queued without its pool"
    finally:
        deployed.api(
            "POST", "/pools", json={"name": "cloudzero_anycost", "slots": 1, "description": "restored"}
        )


@pytest.fixture(scope="module", autouse=True)
def report_figures():
    yield
    if FIGURES:
        print("\ndeployment figures:", {k: round(v, 2) for k, v in FIGURES.items()})
