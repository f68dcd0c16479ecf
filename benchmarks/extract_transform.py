"""Benchmark: extract + transform of one hour of LiteLLM spend, beside PostgreSQL's own time for the aggregate.

    ./dev bench                      # 100,000 and 1,000,000 spend-log rows in one hour
    ./dev bench --rows 250000        # any sizes
    ./dev bench --daily              # a month of LiteLLM_DailyTeamSpend rollups (the daily-rollup DAG's read)
    ./dev bench --runs 3             # each size's runs in turns with PostgreSQL's, medians compared (--daily: 3)

Each size runs in a fresh child process so its peak RSS is its own. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HOUR = datetime(2026, 11, 1, 13, tzinfo=timezone.utc)
MONTH = ("2026-10-01T00:00:00Z", "2026-10-31T00:00:00Z")  # 30 UTC days
DAILY_DIMENSIONS = ["team_id", "api_key_alias", "model", "model_group", "provider"]


def seed_daily_month(url: str, rows_per_day: int, first_day: str = "2026-10-01") -> None:
    """``rows_per_day`` rollup rows (team x key x model x provider) for each of 30 days from ``first_day``, inside
    PostgreSQL, with their keys in LiteLLM_VerificationToken for the alias lookup."""
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO "LiteLLM_VerificationToken" (token, key_alias)
               SELECT md5('key' || k), 'alias-' || k FROM generate_series(0, 199) AS k
               ON CONFLICT DO NOTHING"""
        )
        cur.execute(
            """INSERT INTO "LiteLLM_DailyTeamSpend" (id, team_id, date, api_key, model, model_group,
                   custom_llm_provider, prompt_tokens, completion_tokens, spend, api_requests,
                   successful_requests, failed_requests, updated_at)
               SELECT %(first)s || '+' || d || '-' || i, 'team-' || mod(i, 40),
                      to_char(%(first)s::date + d, 'YYYY-MM-DD'),
                      md5('key' || mod(i, 200)), 'model-' || mod(i, 12), 'group-' || mod(i, 12),
                      (ARRAY['openai','anthropic','bedrock','vertex_ai'])[1 + mod(i, 4)],
                      1000 + mod(i * 7919, 90000), 100 + mod(i, 7000),
                      round((0.0001 * (1 + mod(i * 7919, 5000)))::numeric, 10)::float8, 1 + mod(i, 500),
                      1 + mod(i, 500), 0, now()
               FROM generate_series(0, 29) AS d, generate_series(0, %(rows)s - 1) AS i""",
            {"rows": rows_per_day, "first": first_day},
        )
    conn.close()
    settle(url, ["LiteLLM_DailyTeamSpend", "LiteLLM_VerificationToken"])


def paired(ours: list[float], theirs: list[float]) -> str:
    """Each of our runs divided by PostgreSQL's run of the same turn, and their median: two runs a few seconds apart
    meet the same machine, which medians taken apart do not pair (this machine's own runs of one statement vary by
    a third from turn to turn). Then the fastest run of each against the other's: what the machine's other work
    does only ever adds time, so a side's fastest run is the nearest to its own cost (``timeit``'s rule)."""
    from statistics import median

    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return (
        f"{' '.join(f'{x:.2f}' for x in ratios)}, median {median(ratios):.2f}x; fastest against fastest "
        f"{min(ours):.2f}s / {min(theirs):.2f}s = {min(ours) / min(theirs):.2f}x"
    )


def empty_stage() -> None:
    """The staging folder emptied (outside the timings): each run writes its files new, as a run's first try does,
    rather than replacing the previous run's, whose blocks the file system would free inside the timing (15-25 ms
    a run for a month of rollups' 5 MB of staged groups and their CBF lines)."""
    root = os.environ["CLOUDZERO_STAGING_URI"]
    for name in os.listdir(root):
        shutil.rmtree(os.path.join(root, name))


def settle(url: str, tables: list[str]) -> None:
    """The state a proxy's long-lived tables are in: vacuumed and analysed, their pages written out -- so that no
    autovacuum or checkpoint of freshly seeded rows runs beside a measured read."""
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(f'VACUUM (ANALYZE) "{table}"')
        cur.execute("CHECKPOINT")
    conn.close()


def measure_daily(url: str, runs: int) -> dict:
    """Runs in the child: the daily-rollup extract + transform of a month, and PostgreSQL alone, taken in turns
    (``runs`` of each, after one warm-up of PostgreSQL) so that both meet the same machine; medians are compared."""
    os.environ["AIRFLOW_CONN_LITELLM_DB"] = url.replace("postgresql://", "postgres://", 1)
    os.environ["CLOUDZERO_STAGING_URI"] = tempfile.mkdtemp(prefix="cz-bench-")
    import psycopg2

    from cloudzero_provider.dimensions import resolve
    from cloudzero_provider.hooks.litellm import LiteLLMSpendHook, hashes_groups, planner_settings
    from cloudzero_provider.operators.extract import LiteLLMSpendExtractOperator
    from cloudzero_provider.operators.transform import CBFTransformOperator
    from cloudzero_provider.options import ExportOptions
    from cloudzero_provider.testing.reference_sql import one_level_daily_sql
    from cloudzero_provider.windows import Window

    window = Window.of(*MONTH)
    ours = LiteLLMSpendHook().aggregate_sql(window, resolve(DAILY_DIMENSIONS), "daily_team")
    # The one plain grouping the three-step statement replaced (a key-alias subquery per row, every row sorted).
    one_level = one_level_daily_sql(MONTH[0][:10], MONTH[1][:10], DAILY_DIMENSIONS)
    conn = psycopg2.connect(url)

    as_read = planner_settings(hash_groups=hashes_groups(resolve(DAILY_DIMENSIONS), "daily_team"),
                               server_version=conn.server_version)  # fmt: skip

    def postgres_alone(sql: str, params: dict) -> float:
        """The statement executed in full on the server, its result discarded there: EXPLAIN ANALYZE's execution
        time (planning, the rows' text and their trip to the client not counted), under the read's settings."""
        with conn.cursor() as cur:
            for setting in as_read:
                cur.execute(f"SET LOCAL {setting}")
            cur.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, params)
            return cur.fetchone()[0][0]["Execution Time"] / 1000

    def fetched(sql: str, params: dict) -> float:
        """The statement's rows received by a bare client (psycopg 3, streamed, nothing done with them): PostgreSQL's
        time plus the rows' text and their trip, the floor of any reader."""
        import psycopg

        with psycopg.connect(url) as client, client.cursor() as cur:
            started = time.perf_counter()
            for _ in cur.stream(sql, params, size=5000):
                pass
            return time.perf_counter() - started

    # The read itself runs a statement per day (pipelined): their times summed, beside the month's one statement.
    by_day = [
        LiteLLMSpendHook().aggregate_sql(day, resolve(DAILY_DIMENSIONS), "daily_team")
        for day in window.each_day()
    ]
    postgres_alone(*ours), postgres_alone(*one_level)  # warm-up: the tables' pages in PostgreSQL's buffers
    # Once per task process, whatever it reads: Airflow scans the installed plugins (lineage) and discovers the
    # providers' filesystems (the first staged file). Timed apart, as the hourly measure does.
    from airflow.sdk.lineage import get_hook_lineage_collector

    from cloudzero_provider.staging import staging_root

    started = time.perf_counter()
    get_hook_lineage_collector()
    staging_root().exists()
    set_up_seconds = time.perf_counter() - started
    kw = {"window_start": MONTH[0], "window_end": MONTH[1]}
    pg_runs, one_level_runs, fetch_runs, our_runs, extract_runs, day_runs = [], [], [], [], [], []
    for _ in range(runs):
        pg_runs.append(postgres_alone(*ours))
        day_runs.append(sum(postgres_alone(*statement) for statement in by_day))
        one_level_runs.append(postgres_alone(*one_level))
        fetch_runs.append(fetched(*ours))
        empty_stage()
        started = time.perf_counter()
        extracted = LiteLLMSpendExtractOperator(
            task_id="extract", source="daily_team", options=ExportOptions(dimensions=DAILY_DIMENSIONS), **kw
        ).execute({})
        extract_runs.append(time.perf_counter() - started)
        transformed = CBFTransformOperator(task_id="transform", **kw).execute({})
        our_runs.append(time.perf_counter() - started)
    with conn.cursor() as cur:
        cur.execute('SELECT count(*) FROM "LiteLLM_DailyTeamSpend"')
        table_rows = cur.fetchone()[0]
    conn.close()
    return {
        "table_rows": table_rows,
        "requests": extracted["requests"],
        "cbf_rows": transformed["rows"],
        "pg_runs": pg_runs,
        "one_level_runs": one_level_runs,
        "day_runs": day_runs,
        "days": len(by_day),
        "fetch_runs": fetch_runs,
        "our_runs": our_runs,
        "extract_runs": extract_runs,
        "set_up_seconds": set_up_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(url: str, dims: list[str] | None, runs: int) -> dict:
    """Runs in the child: PostgreSQL alone, then extract + transform through the real operators; with ``runs`` > 1
    taken in turns, medians compared."""
    os.environ["AIRFLOW_CONN_LITELLM_DB"] = url.replace("postgresql://", "postgres://", 1)
    os.environ["CLOUDZERO_STAGING_URI"] = tempfile.mkdtemp(prefix="cz-bench-")
    from statistics import median

    import psycopg2

    from cloudzero_provider.dimensions import resolve
    from cloudzero_provider.hooks.litellm import LiteLLMSpendHook, hashes_groups, planner_settings
    from cloudzero_provider.operators.extract import LiteLLMSpendExtractOperator
    from cloudzero_provider.operators.transform import CBFTransformOperator
    from cloudzero_provider.options import ExportOptions
    from cloudzero_provider.windows import Window

    window = Window.hour(HOUR)
    sql, params = LiteLLMSpendHook().aggregate_sql(window, resolve(dims))
    # The read's own planner settings (LiteLLMSpendHook._stream), and PostgreSQL's defaults (parallel workers, JIT,
    # sorting allowed), under which a statement typed into psql would run.
    from airflow.sdk.lineage import get_hook_lineage_collector

    get_hook_lineage_collector()  # once per process, in every task: Airflow scans the installed plugins
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # PostgreSQL alone: the identical statement, executed in full on the server, result discarded there; a first,
    # cold run is not counted.
    conn = psycopg2.connect(url)
    conn.autocommit = True
    as_read = planner_settings(hash_groups=hashes_groups(resolve(dims)), server_version=conn.server_version)

    def postgres_alone(settings: list[str]) -> dict:
        with conn.cursor() as cur:
            cur.execute("RESET ALL")
            for setting in settings:
                cur.execute(f"SET {setting}")
            cur.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, params)
            return cur.fetchone()[0][0]

    postgres_alone(as_read)
    pg_runs, default_runs, extract_runs, our_runs = [], [], [], []

    def ours() -> tuple[dict, dict]:
        empty_stage()
        started = time.perf_counter()
        extracted = LiteLLMSpendExtractOperator(
            task_id="extract", window_start=HOUR, options=ExportOptions(dimensions=dims)
        ).execute({})
        extract_runs.append(time.perf_counter() - started)
        transformed = CBFTransformOperator(task_id="transform", window_start=HOUR).execute({})
        our_runs.append(time.perf_counter() - started)
        return extracted, transformed

    for turn in range(runs):
        # PostgreSQL's defaults first (they sort every row, on disk): the two runs compared then take turns at
        # following them, so that neither always meets what that leaves behind (one order runs once more when the
        # number of turns is odd).
        default_runs.append(postgres_alone([])["Execution Time"] / 1000)
        if turn % 2:
            extracted, transformed = ours()
        plan = postgres_alone(as_read)
        pg_runs.append(plan["Execution Time"] / 1000)
        if not turn % 2:
            extracted, transformed = ours()
    conn.close()
    return {
        "requests": extracted["requests"],
        "aggregate_result_rows": plan["Plan"]["Actual Rows"],
        "cbf_rows": transformed["rows"],
        "pg_seconds": median(pg_runs),
        "pg_default_seconds": median(default_runs),
        "extract_seconds": median(extract_runs),
        "extract_transform_seconds": median(our_runs),
        "pg_runs": pg_runs,
        "default_runs": default_runs,
        "our_runs": our_runs,
        "rss_before_mb": rss_before / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, action="append", help="spend-log rows in the hour (repeatable)")
    parser.add_argument("--dimensions", help="comma-separated dimensions (default: the default set)")
    parser.add_argument("--daily", action="store_true", help="a month of daily rollups instead of one hour")
    parser.add_argument("--daily-rows", type=int, default=5000, help="rollup rows per day (default 5000)")
    parser.add_argument(
        "--runs", type=int, default=3, help="--daily: runs of each, medians compared (default 3)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    dims = args.dimensions.split(",") if args.dimensions else None
    if args.child:
        runs = args.runs or (3 if args.daily else 1)
        print(json.dumps(measure_daily(args.child, runs) if args.daily else measure(args.child, dims, runs)))
        return
    if args.daily:
        run_daily(args.daily_rows, args.runs or 3)
        return

    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cz-bench-home-"))
    from cloudzero_provider.testing.postgres import ThrowawayPostgres
    from cloudzero_provider.testing.seed import seed_synthetic

    sizes = args.rows or [100_000, 1_000_000]
    print(f"{'rows':>10} {'groups':>7} {'PostgreSQL':>11} {'extract+transform':>18} {'ratio':>6} "
          f"{'rows/s':>10} {'peak RSS':>9}   (PostgreSQL: the statement as the read runs it; its defaults after)")  # fmt: skip
    with ThrowawayPostgres() as pg:
        for size in sizes:
            url = pg.create_database()
            started = time.perf_counter()
            seed_synthetic(url, HOUR, size)
            seeded = time.perf_counter() - started
            settle(url, ["LiteLLM_SpendLogs"])  # no autovacuum of the fresh rows beside a measured read
            cmd = [sys.executable, __file__, "--child", url, "--runs", str(args.runs or 1)] + (
                ["--dimensions", args.dimensions] if dims else []
            )
            out = (
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            r = json.loads(out)
            ratio = r["extract_transform_seconds"] / r["pg_seconds"]
            print(
                f"{r['requests']:>10,} {r['cbf_rows']:>7,} {r['pg_seconds']:>10.2f}s {r['extract_transform_seconds']:>17.2f}s "
                f"{ratio:>5.2f}x {r['requests'] / r['extract_transform_seconds']:>10,.0f} {r['peak_rss_mb']:>7.0f}MB"
                f"   (PostgreSQL with its defaults {r['pg_default_seconds']:.2f}s, ours "
                f"{r['extract_transform_seconds'] / r['pg_default_seconds']:.2f}x that; seeded in {seeded:.1f}s; "
                f"RSS before extract {r['rss_before_mb']:.0f}MB)"
                + (
                    f"; medians of {len(r['pg_runs'])} runs in turns, PostgreSQL "
                    f"{' '.join(f'{v:.2f}' for v in r['pg_runs'])}, with its defaults "
                    f"{' '.join(f'{v:.2f}' for v in r['default_runs'])}, ours "
                    f"{' '.join(f'{v:.2f}' for v in r['our_runs'])}; each run of ours against PostgreSQL's of its "
                    f"turn {paired(r['our_runs'], r['pg_runs'])}"
                    if len(r["pg_runs"]) > 1
                    else ""
                ),
                flush=True,
            )
            pg.drop_database(url)


def run_daily(rows_per_day: int, runs: int) -> None:
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cz-bench-home-"))
    from statistics import median

    from cloudzero_provider.testing.postgres import ThrowawayPostgres

    with ThrowawayPostgres() as pg:
        url = pg.create_database()
        started = time.perf_counter()
        seed_daily_month(url, rows_per_day)
        seeded = time.perf_counter() - started
        cmd = [sys.executable, __file__, "--child", url, "--daily", "--runs", str(runs)]
        r = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        )
        took, pg_took, one_level = median(r["our_runs"]), median(r["pg_runs"]), median(r["one_level_runs"])
        fetch = median(r["fetch_runs"])
        extract = median(r["extract_runs"])
        transform = median(b - a for a, b in zip(r["extract_runs"], r["our_runs"], strict=True))

        def each(values: list[float]) -> str:
            return " ".join(f"{v:.2f}" for v in values)

        print(
            f"daily rollup, 30 days x {rows_per_day:,} rows ({r['table_rows']:,} table rows, {r['requests']:,} "
            f"requests): {r['cbf_rows']:,} CBF rows; medians of {runs} runs taken in turns -- PostgreSQL "
            f"{pg_took:.2f}s for the month's aggregate in one statement ({each(r['pg_runs'])}), "
            f"{median(r['day_runs']):.2f}s for the {r['days']} day statements the read runs, summed "
            f"({each(r['day_runs'])}), {one_level:.2f}s for one plain "
            f"grouping ({each(r['one_level_runs'])}), {fetch:.2f}s for the one statement's rows to reach a bare "
            f"client ({each(r['fetch_runs'])}); extract+transform {took:.2f}s ({each(r['our_runs'])}; medians: "
            f"extract {extract:.2f}s, {extract - fetch:+.2f}s on the bare client's fetch, transform "
            f"{transform:.2f}s): {took / pg_took:.2f}x the one statement (each run against the statement's of its turn "
            f"{paired(r['our_runs'], r['pg_runs'])}), {took / fetch:.2f}x its rows fetched, {took / one_level:.2f}x the "
            "plain grouping; "
            f"{r['table_rows'] / took:,.0f} rows/s, peak RSS {r['peak_rss_mb']:.0f}MB (seeded in {seeded:.1f}s; "
            f"the task process's own set-up, not counted: {r['set_up_seconds']:.2f}s)",
            flush=True,
        )
        pg.drop_database(url)


if __name__ == "__main__":
    main()
