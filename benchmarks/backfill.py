"""Benchmark: history imports under a real, distributed Airflow (scheduler, dag-processor, triggerer, api-server,
Celery workers, PostgreSQL metadata DB; see tests/deployment/harness.py).

    ./dev bench --backfill                  # 30 days x 10,000 requests/hour through the range DAG
    ./dev bench --backfill --days 7 --rows 2000
    ./dev bench --backfill --chunk-hours 168 # the range in week-sized chunks (the trigger form's chunk_hours)
    ./dev bench --backfill --compare        # also: 168-hour range holding 6 hours of spend vs the hourly
                                            # DAG's catchup of those 6 hours

The range DAG is triggered through the REST API as the UI's trigger form does. Printed: wall time, task instances,
hours per minute, source rows per second, and PostgreSQL's own time for the same aggregate (EXPLAIN ANALYZE).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RANGE = "litellm_cloudzero_range"
HOURLY = "litellm_cloudzero_hourly"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def trigger_range(
    d, start: datetime, end: datetime, chunk_hours: int | None = None
) -> tuple[float, int, str]:
    """Trigger the range DAG as the UI form does; wait; return wall seconds, task instances and state."""
    began = time.monotonic()
    conf: dict[str, object] = {"start": iso(start), "end": iso(end)}
    if chunk_hours:
        conf["chunk_hours"] = chunk_hours
    run = d.api("POST", f"/dags/{RANGE}/dagRuns", json={"logical_date": None, "conf": conf})
    state = d.wait_for(
        lambda: (lambda s: s if s in ("success", "failed") else None)(
            d.api("GET", f"/dags/{RANGE}/dagRuns/{run['dag_run_id']}")["state"]
        ),
        3600,
        "the range run",
        every=2,
    )
    return time.monotonic() - began, len(d.task_instances(RANGE, run["dag_run_id"])), state


def pg_aggregate_seconds(url: str, start: datetime, end: datetime) -> float:
    import os

    import psycopg2

    from cloudzero_provider.dimensions import resolve
    from cloudzero_provider.hooks.litellm import LiteLLMSpendHook
    from cloudzero_provider.testing.postgres import airflow_conn_uri
    from cloudzero_provider.windows import Window

    os.environ["AIRFLOW_CONN_LITELLM_DB"] = airflow_conn_uri(url)
    sql, params = LiteLLMSpendHook().aggregate_sql(Window(start, end), resolve(None))
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, params)
        return float(cur.fetchone()[0][0]["Execution Time"]) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rows", type=int, default=10_000, help="requests per hour")
    parser.add_argument("--compare", action="store_true", help="also the 168-hour range vs hourly catchup")
    parser.add_argument("--chunk-hours", type=int, help="the range's chunk size (default: the DAG's, a day)")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is needed (apt-get install redis-server)")
    from cloudzero_provider.testing.fixtures import CONNECTION_ID
    from cloudzero_provider.testing.seed import seed_synthetic, spend_by_hour
    from tests.deployment.harness import Deployment

    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    catchup_start = now - timedelta(hours=6)
    settings = {"CLOUDZERO_EXPORT_START": catchup_start.isoformat(), "CLOUDZERO_SETTLE_MINUTES": "0",
                "CLOUDZERO_TASK_RETRIES": "2", "CLOUDZERO_RETRY_DELAY_SECONDS": "3"}  # fmt: skip
    with Deployment(settings, workers=2) as d:
        d.unpause(RANGE)
        if args.compare:
            for h in range(6):
                seed_synthetic(
                    d.litellm_url, catchup_start + timedelta(hours=h), args.rows, id_prefix=f"c{h}"
                )
            began = time.monotonic()
            d.unpause(HOURLY)
            d.wait_for(lambda: len([r for r in d.runs(HOURLY) if r["state"] in ("success", "failed")]) >= 6,
                       1200, "6 catchup runs", every=2)  # fmt: skip
            catchup = time.monotonic() - began
            d.api("PATCH", f"/dags/{HOURLY}", json={"is_paused": True})
            wall, tis, state = trigger_range(
                d, catchup_start - timedelta(hours=162), catchup_start + timedelta(hours=6)
            )
            print(f"hourly catchup of 6 hours with spend: {catchup:.0f}s ({6 / catchup * 60:.1f} hours/min); "
                  f"range of 168 hours holding the same 6: {wall:.0f}s, {tis} task instances, {state} -> "
                  f"{wall / catchup:.2f}x the catchup", flush=True)  # fmt: skip
        start = (catchup_start - timedelta(days=args.days + 2)).replace(hour=0)
        end = start + timedelta(days=args.days)
        began = time.monotonic()
        for hour in range(args.days * 24):
            seed_synthetic(d.litellm_url, start + timedelta(hours=hour), args.rows, id_prefix=f"b{hour}")
        seeded = time.monotonic() - began
        pg = pg_aggregate_seconds(d.litellm_url, start, end)
        wall, tis, state = trigger_range(d, start, end, args.chunk_hours)
        hours = args.days * 24
        rows = hours * args.rows
        held = {
            h: v
            for h, v in d.double.double.cost_by_hour(CONNECTION_ID).items()
            if start <= datetime.fromisoformat(h.replace("Z", "+00:00")) < end
        }
        source = {
            h: v
            for h, v in spend_by_hour(d.litellm_url).items()
            if h in held or start <= datetime.fromisoformat(h.replace("Z", "+00:00")) < end
        }
        print(f"range of {args.days} days x {args.rows:,} requests/hour in chunks of {args.chunk_hours or 24} hours ({rows:,} rows, seeded in {seeded:.0f}s): "
              f"{wall:.0f}s wall, {state}, {tis} task instances, {hours / wall * 60:.0f} hours/min, "
              f"{rows / wall:,.0f} rows/s; PostgreSQL's own aggregate of the range {pg:.1f}s "
              f"({wall / pg:.1f}x); exact: {held == source}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
