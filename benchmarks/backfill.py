"""Benchmark: history imports under a real, distributed Airflow (scheduler, dag-processor, triggerer, api-server,
Celery workers, PostgreSQL metadata DB; see tests/deployment/harness.py).

    ./dev bench --backfill                  # 30 days x 10,000 requests/hour through the range DAG
    ./dev bench --backfill --days 7 --rows 2000
    ./dev bench --backfill --chunk-hours 24  # at most a day per chunk (the trigger form's chunk_hours)
    ./dev bench --backfill --compare        # also: 168-hour range holding 6 hours of spend vs the hourly
                                            # DAG's catchup of those 6 hours
    ./dev bench --backfill --daily          # instead: a month of daily rollups imported through the daily-rollup
                                            # DAG, a chunk per day and then in its default chunks

The range DAG is triggered through the REST API as the UI's trigger form does. Printed: wall time, task instances,
hours per minute, source rows per second, PostgreSQL's own time for the same aggregate (EXPLAIN ANALYZE), and
where the time went: per step (plan, extract, transform, upload) the task instances' summed and wall-clock
seconds, queued -> running latency (worker start-up and scheduling), and the CloudZero double's time answering.
The floor is a one-hour range of 100 requests in the same deployment: task start-up and scheduling alone.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RANGE = "litellm_cloudzero_range"
HOURLY = "litellm_cloudzero_hourly"
DAILY = "litellm_cloudzero_daily_rollup"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


@dataclass
class RangeRun:
    """A finished range run: wall seconds as the client saw them, its state, and its task instances."""

    wall: float
    state: str
    run: dict[str, Any]
    tis: list[dict[str, Any]]


def trigger_range(
    d, start: datetime, end: datetime, chunk_hours: int | None = None, *, dag_id: str = RANGE, **more: Any
) -> RangeRun:
    """Trigger the range DAG (or ``dag_id``) as the UI form does; wait; return the run and its task instances."""
    began = time.monotonic()
    conf: dict[str, object] = {"start": iso(start), "end": iso(end), **more}
    if chunk_hours:
        conf["chunk_hours"] = chunk_hours
    run = d.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
    state = d.wait_for(
        lambda: (lambda s: s if s in ("success", "failed") else None)(
            d.api("GET", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}")["state"]
        ),
        3600,
        "the run",
        every=1,
    )
    wall = time.monotonic() - began
    finished = d.api("GET", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}")
    return RangeRun(wall, state, finished, d.task_instances(dag_id, run["dag_run_id"]))


def breakdown(result: RangeRun) -> list[str]:
    """Where a range run's time went, from its task instances' own timestamps: per step (plan, extract,
    transform, upload) how many ran, their summed seconds, the wall-clock seconds during which at least one ran,
    and the longest; and the time between a task being queued and running (worker start-up and scheduling)."""
    steps: dict[str, list[tuple[datetime, datetime]]] = {}
    waits: list[float] = []
    for ti in result.tis:
        started, ended = when(ti.get("start_date")), when(ti.get("end_date"))
        queued = when(ti.get("queued_when"))
        if started and ended:
            steps.setdefault(ti["task_id"].rsplit(".", 1)[-1], []).append((started, ended))
        if started and queued:
            waits.append((started - queued).total_seconds())
    lines = []
    for step in ("plan", "plan_days", "settle", "extract", "transform", "upload"):
        spans = sorted(steps.get(step, []))
        if not spans:
            continue
        covered = covered_seconds(spans)
        total = sum((b - a).total_seconds() for a, b in spans)
        longest = max((b - a).total_seconds() for a, b in spans)
        lines.append(f"    {step:<9} {len(spans):>3} TI(s): {total:6.1f}s summed, {covered:6.1f}s of wall "
                     f"with one running, longest {longest:5.1f}s")  # fmt: skip
    run_start, run_end = when(result.run.get("start_date")), when(result.run.get("end_date"))
    starts = [a for spans in steps.values() for a, _ in spans]
    ends = [b for spans in steps.values() for _, b in spans]
    if waits:
        lines.append(f"    queued -> running (worker start-up, scheduling): {sum(waits):.1f}s summed over "
                     f"{len(waits)} TI(s), mean {sum(waits) / len(waits):.1f}s, longest {max(waits):.1f}s")  # fmt: skip
    if run_start and run_end and starts:
        busy = covered_seconds([span for spans in steps.values() for span in spans])
        lines.append(f"    run {(run_end - run_start).total_seconds():.1f}s start to end, {busy:.1f}s with a task "
                     f"running: first task running after {(min(starts) - run_start).total_seconds():.1f}s, run "
                     f"ended {(run_end - max(ends)).total_seconds():.1f}s after the last task")  # fmt: skip
    return lines


def covered_seconds(spans: list[tuple[datetime, datetime]]) -> float:
    """Seconds during which at least one of the spans ran (the length of their union)."""
    covered, reach = 0.0, None
    for a, b in sorted(spans):
        if reach is None or b > reach:
            covered += (b - (a if reach is None else max(a, reach))).total_seconds()
            reach = b
    return covered


def pg_aggregate_seconds(
    url: str, start: datetime, end: datetime, dimensions: list[str] | None = None, source: str = "spend_logs"
) -> float:
    """PostgreSQL's own time for the read of ``[start, end)`` in one statement (``source`` and ``dimensions``: the
    default hourly read), as the read runs it."""
    import os

    import psycopg2

    from cloudzero_provider.dimensions import resolve
    from cloudzero_provider.hooks.litellm import LiteLLMSpendHook, hashes_groups, planner_settings
    from cloudzero_provider.testing.postgres import airflow_conn_uri
    from cloudzero_provider.windows import Window

    os.environ["AIRFLOW_CONN_LITELLM_DB"] = airflow_conn_uri(url)
    dims = resolve(dimensions)
    sql, params = LiteLLMSpendHook().aggregate_sql(Window(start, end), dims, source)  # type: ignore[arg-type]
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        # as the read runs it (its planner settings, LiteLLMSpendHook._stream)
        for setting in planner_settings(
            hash_groups=hashes_groups(dims, source),  # type: ignore[arg-type]
            server_version=conn.server_version,
        ):
            cur.execute(f"SET LOCAL {setting}")
        cur.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, params)
        return float(cur.fetchone()[0][0]["Execution Time"]) / 1000


def daily_imports(d, rows_per_day: int) -> None:
    """A month of daily rollups imported through the daily-rollup DAG's trigger form twice -- September a chunk per
    day (``chunk_days`` 1, as every import ran before chunks), October in the DAG's default chunks -- each checked
    exact against the table, with where the time went; first the floor, a one-day import of a few rows."""
    from benchmarks.extract_transform import seed_daily_month
    from cloudzero_provider.ready_dags.daily_rollup import DAILY_DIMENSIONS, DEFAULT_CHUNK_DAYS
    from cloudzero_provider.testing.fixtures import CONNECTION_ID
    from cloudzero_provider.testing.seed import spend_by_day

    d.unpause(DAILY)
    for first in ("2026-09-01", "2026-10-01"):
        began = time.monotonic()
        seed_daily_month(d.litellm_url, rows_per_day, first)
        print(f"seeded 30 days x {rows_per_day:,} rollup rows from {first} in {time.monotonic() - began:.0f}s",
              flush=True)  # fmt: skip
    # The floor: a one-day import of 100 rollup rows in the same deployment -- task start-up and scheduling.
    seed_daily_month(d.litellm_url, 100, "2026-08-01")
    day = datetime(2026, 8, 1, tzinfo=timezone.utc)
    floor = trigger_range(d, day, day + timedelta(days=1), dag_id=DAILY)
    print(f"floor: a one-day import of 100 rollup rows: {floor.wall:.1f}s wall, {floor.state}, {len(floor.tis)} "
          "task instances", flush=True)  # fmt: skip
    print("\n".join(breakdown(floor)), flush=True)
    for first, chunk_days in (("2026-09-01", 1), ("2026-10-01", DEFAULT_CHUNK_DAYS)):
        start = datetime.fromisoformat(first).replace(tzinfo=timezone.utc)
        end = start + timedelta(days=30)
        pg = pg_aggregate_seconds(d.litellm_url, start, end, list(DAILY_DIMENSIONS["team"]), "daily_team")
        rr = trigger_range(d, start, end, dag_id=DAILY, chunk_days=chunk_days)
        held = {
            h: v for h, v in d.double.double.cost_by_hour(CONNECTION_ID).items() if h.startswith(first[:7])
        }
        source = {h: v for h, v in spend_by_day(d.litellm_url).items() if h.startswith(first[:7])}
        print(f"daily rollups of 30 days x {rows_per_day:,} rows from {first}, chunk_days {chunk_days}: "
              f"{rr.wall:.0f}s wall, {rr.state}, {len(rr.tis)} task instances; PostgreSQL's own aggregate of the "
              f"month in one statement {pg:.2f}s ({rr.wall / pg:.0f}x); exact: {held == source and len(held) == 30}",
              flush=True)  # fmt: skip
        print("\n".join(breakdown(rr)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rows", type=int, default=10_000, help="requests per hour")
    parser.add_argument("--compare", action="store_true", help="also the 168-hour range vs hourly catchup")
    parser.add_argument("--chunk-hours", type=int, help="the most hours per chunk (default: the DAG's)")
    parser.add_argument("--daily", action="store_true", help="a month of daily rollups through the daily DAG")
    parser.add_argument("--daily-rows", type=int, default=5000, help="--daily: rollup rows per day")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is needed (apt-get install redis-server)")
    from cloudzero_provider.testing.fixtures import CONNECTION_ID
    from cloudzero_provider.testing.seed import analyze_spend_logs, seed_synthetic, spend_by_hour
    from tests.deployment.harness import Deployment

    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    catchup_start = now - timedelta(hours=6)
    settings = {"CLOUDZERO_EXPORT_START": catchup_start.isoformat(), "CLOUDZERO_SETTLE_MINUTES": "0",
                "CLOUDZERO_TASK_RETRIES": "2", "CLOUDZERO_RETRY_DELAY_SECONDS": "3"}  # fmt: skip
    with Deployment(settings, workers=2) as d:
        if args.daily:
            daily_imports(d, args.daily_rows)
            return
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
            rr = trigger_range(d, catchup_start - timedelta(hours=162), catchup_start + timedelta(hours=6))
            print(f"hourly catchup of 6 hours with spend: {catchup:.0f}s ({6 / catchup * 60:.1f} hours/min); "
                  f"range of 168 hours holding the same 6: {rr.wall:.0f}s, {len(rr.tis)} task instances, {rr.state} "
                  f"-> {rr.wall / catchup:.2f}x the catchup", flush=True)  # fmt: skip
        start = (catchup_start - timedelta(days=args.days + 2)).replace(hour=0)
        end = start + timedelta(days=args.days)
        # The floor: a one-hour range of a few requests, in the same deployment -- task start-up and scheduling.
        floor_hour = start - timedelta(days=1)
        seed_synthetic(d.litellm_url, floor_hour, 100, id_prefix="floor")
        floor = trigger_range(d, floor_hour, floor_hour + timedelta(hours=1))
        print(f"floor: a one-hour range of 100 requests: {floor.wall:.1f}s wall, {floor.state}, {len(floor.tis)} "
              "task instances", flush=True)  # fmt: skip
        print("\n".join(breakdown(floor)), flush=True)
        began = time.monotonic()
        for hour in range(args.days * 24):  # statistics refreshed once, at the end
            seed_synthetic(d.litellm_url, start + timedelta(hours=hour), args.rows, id_prefix=f"b{hour}",
                           analyze=False)  # fmt: skip
        analyze_spend_logs(d.litellm_url)
        seeded = time.monotonic() - began
        pg = pg_aggregate_seconds(d.litellm_url, start, end)
        answering = d.double.double.handling_seconds
        rr = trigger_range(d, start, end, args.chunk_hours)
        answering = d.double.double.handling_seconds - answering
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
        chunking = f"chunks of up to {args.chunk_hours} hours" if args.chunk_hours else "default chunks"
        print(f"range of {args.days} days x {args.rows:,} requests/hour in {chunking} ({rows:,} rows, seeded in "
              f"{seeded:.0f}s): {rr.wall:.0f}s wall, {rr.state}, {len(rr.tis)} task instances, "
              f"{hours / rr.wall * 60:.0f} hours/min, {rows / rr.wall:,.0f} rows/s; PostgreSQL's own aggregate of "
              f"the range {pg:.1f}s ({rr.wall / pg:.1f}x); floor (one-hour range) {floor.wall:.1f}s; "
              f"exact: {held == source}", flush=True)  # fmt: skip
        print("\n".join(breakdown(rr)), flush=True)
        print(f"    PostgreSQL's aggregate alone {pg:.1f}s; the CloudZero double answering the uploads {answering:.1f}s",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
