"""Benchmark: reconciling a day (24 hours x 100,000 requests) when nothing needs repair, beside PostgreSQL's own
aggregate of that day.

    .venv/bin/python benchmarks/reconcile.py              # 100,000 requests per hour
    .venv/bin/python benchmarks/reconcile.py --rows 20000

The day is exported first (extract, transform, upload to the local CloudZero double over HTTP); then the
reconciliation reads the source's hour totals, the manifests and CloudZero's month back and compares. Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DAY = datetime(2026, 11, 1, tzinfo=timezone.utc)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000, help="requests per hour (default 100,000)")
    args = parser.parse_args()
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cz-bench-home-"))
    os.environ["CLOUDZERO_STAGING_URI"] = tempfile.mkdtemp(prefix="cz-bench-")

    import psycopg2

    from cloudzero_provider.dimensions import resolve
    from cloudzero_provider.hooks.litellm import LiteLLMSpendHook, hashes_groups, planner_settings
    from cloudzero_provider.operators.extract import LiteLLMSpendExtractOperator
    from cloudzero_provider.operators.reconcile import ReconcileOperator
    from cloudzero_provider.operators.transform import CBFTransformOperator
    from cloudzero_provider.operators.upload import AnyCostUploadOperator
    from cloudzero_provider.testing.double import CloudZeroDouble
    from cloudzero_provider.testing.fixtures import API_KEY, CONNECTION_ID
    from cloudzero_provider.testing.postgres import ThrowawayPostgres, airflow_conn_uri
    from cloudzero_provider.testing.seed import seed_synthetic
    from cloudzero_provider.testing.server import CloudZeroDoubleServer
    from cloudzero_provider.windows import Window

    window = Window(DAY, DAY + timedelta(days=1))
    kw = {"window_start": window.start.isoformat(), "window_end": window.end.isoformat()}
    with (
        ThrowawayPostgres() as pg,
        CloudZeroDoubleServer(CloudZeroDouble(API_KEY, connections={CONNECTION_ID})) as cz,
    ):
        url = pg.create_database()
        os.environ["AIRFLOW_CONN_LITELLM_DB"] = airflow_conn_uri(url)
        os.environ["AIRFLOW_CONN_CLOUDZERO_DEFAULT"] = json.dumps(
            {
                "conn_type": "cloudzero",
                "host": cz.url,
                "password": API_KEY,
                "extra": {"connection_id": CONNECTION_ID},
            }
        )
        started = time.perf_counter()
        for hour in window.hour_starts():
            seed_synthetic(url, hour, args.rows, id_prefix="rb")
        seeded = time.perf_counter() - started
        started = time.perf_counter()
        LiteLLMSpendExtractOperator(task_id="e", **kw).execute({})
        CBFTransformOperator(task_id="t", **kw).execute({})
        AnyCostUploadOperator(task_id="u", **kw).execute({})
        exported = time.perf_counter() - started
        sql, params = LiteLLMSpendHook().aggregate_sql(window, resolve(None))
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            # as the read runs it (its planner settings, LiteLLMSpendHook._stream)
            for setting in planner_settings(
                hash_groups=hashes_groups(resolve(None)), server_version=conn.server_version
            ):
                cur.execute(f"SET LOCAL {setting}")
            for _ in range(2):  # the second, warm run counts
                cur.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, params)
                pg_seconds = cur.fetchone()[0][0]["Execution Time"] / 1000
        timings = []
        for _ in range(2):
            started = time.perf_counter()
            summary = ReconcileOperator(task_id="r", **kw).execute({})
            timings.append(time.perf_counter() - started)
        posts = sum(1 for r in cz.double.requests if r["method"] == "POST")
        print(
            f"day of 24 x {args.rows:,} requests (seeded {seeded:.0f}s, exported {exported:.1f}s, "
            f"{len(cz.double.rows(CONNECTION_ID)):,} CBF rows in CloudZero): reconciliation {min(timings):.2f}s "
            f"(runs {', '.join(f'{t:.2f}' for t in timings)}), PostgreSQL's own aggregate of the day "
            f"{pg_seconds:.2f}s -> {min(timings) / pg_seconds:.2f}x; {summary['matches']} of "
            f"{summary['hours_checked']} hours match, {len(summary['hours_changed'])} changed, {posts} POST(s) in all",
            flush=True,
        )


if __name__ == "__main__":
    main()
