"""The ready DAGs under a real, distributed Airflow: scheduler, dag-processor, triggerer, api-server and two Celery
workers on a PostgreSQL metadata DB (see cloudzero_provider.testing.deployment).

The tests share one deployment and run in file order: catchup first, then what builds on its exports.
"""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal

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


def test_the_ledger_page_needs_a_login(deployed):
    anonymous = requests.get(f"{deployed.url}/cloudzero/ledger", timeout=10)
    assert anonymous.status_code in (401, 403) and "exported" not in anonymous.text
    report = requests.get(
        f"{deployed.url}/cloudzero/reports/cloudzero_default/2026-11-01/report.html", timeout=10
    )
    assert report.status_code in (401, 403)
    token = deployed.token()
    page = requests.get(f"{deployed.url}/cloudzero/ledger", headers={"Authorization": f"Bearer {token}"},
                        timeout=30)  # fmt: skip
    assert page.status_code == 200 and 'id="count-exported"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    cookie = requests.get(f"{deployed.url}/cloudzero/ledger", cookies={"_token": token}, timeout=30)
    assert cookie.status_code == 200, "the UI's session cookie is accepted too"


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
