"""Staging on S3 beside a local disk: a 1M-request hour through extract, transform and upload, and the ledger.

    ./dev bench --s3                   # 1,000,000 spend-log rows in one hour; 31 days of ledger
    ./dev bench --s3 --rows 100000     # another size

The S3 API is moto's server on a loopback port (a real HTTP S3 API in this process, so its CPU is shared with the
export's on this machine: a real store's latency is different, its request counts are the same). Each staging kind
runs in a fresh child process against the same database and the CloudZero double; requests to the store are
counted in the child with botocore's event hooks. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HOUR = datetime(2026, 11, 1, 13, tzinfo=timezone.utc)
KEY, CONN, BUCKET = "bench-key", "bench-conn", "cz-bench-staging"
LEDGER_DAYS = 31


def count_requests(fs) -> Counter:
    """Requests the file system's S3 client sends from now on, by kind (LIST, GET, HEAD, PUT, ...)."""
    seen: Counter = Counter()

    def count(request, **_):
        kind = request.method
        if request.method == "GET" and "list-type=2" in request.url:
            kind = "LIST"
        seen[kind] += 1
        if os.environ.get("CZ_BENCH_TRACE"):
            print("S3", kind, request.url.split("?", 1)[-1][:90] if kind == "LIST" else request.url[-70:],
                  file=sys.stderr)  # fmt: skip

    fs.s3.meta.events.register("before-send.s3", count)
    return seen


def child(staging: str) -> dict:
    """Extract, transform and upload the hour with staging at ``staging``; timings, requests, bytes."""
    from cloudzero_provider.operators.extract import LiteLLMSpendExtractOperator
    from cloudzero_provider.operators.transform import CBFTransformOperator
    from cloudzero_provider.operators.upload import AnyCostUploadOperator
    from cloudzero_provider.options import ExportOptions
    from cloudzero_provider.target import ExportTarget

    os.environ["AIRFLOW__CLOUDZERO__STAGING_URI"] = staging
    from airflow.sdk.lineage import get_hook_lineage_collector

    get_hook_lineage_collector()  # Airflow's one-time plugin scan, paid by every task process: not the export's
    target = ExportTarget("cloudzero_default", staging)
    target.check_reachable()
    seen: Counter = Counter()
    if staging.startswith("s3://"):
        seen = count_requests(target.dir.fs)
    times = {}
    started = time.perf_counter()
    dims = os.environ.get("CZ_BENCH_DIMENSIONS")
    options = ExportOptions(dimensions=dims.split(",") if dims else None)
    extracted = LiteLLMSpendExtractOperator(task_id="extract", window_start=HOUR, options=options).execute({})
    times["extract"] = time.perf_counter() - started
    step = time.perf_counter()
    transformed = CBFTransformOperator(task_id="transform", window_start=HOUR, options=options).execute({})
    times["transform"] = time.perf_counter() - step
    step = time.perf_counter()
    AnyCostUploadOperator(task_id="upload", window_start=HOUR, options=options).execute({})
    times["upload"] = time.perf_counter() - step
    times["total"] = time.perf_counter() - started
    counted = dict(seen)
    files = target.dir.fs.find(target.dir.path, detail=True)  # after the count: not the export's requests
    return {
        "requests": extracted["requests"],
        "cbf_rows": transformed["rows"],
        "times": times,
        "store_requests": counted,
        "staged_bytes": sum(int(i.get("size") or 0) for i in files.values()),
        "staged_files": len(files),
    }


def fill_month(endpoint: str) -> int:
    """Give every hour of the ledger's 31 days a manifest, copies of the exported hour's: a month fully exported."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench")  # fmt: skip
    folder = "staging/cloudzero_default/manifests/"
    body = client.get_object(Bucket=BUCKET, Key=f"{folder}{HOUR:%Y-%m-%dT%HZ}.json")["Body"].read()
    end = HOUR + timedelta(hours=11)
    hour, written = end - timedelta(days=LEDGER_DAYS), 0
    while hour < end:
        if hour != HOUR:
            client.put_object(Bucket=BUCKET, Key=f"{folder}{hour:%Y-%m-%dT%HZ}.json", Body=body)
            written += 1
        hour += timedelta(hours=1)
    return written + 1


def ledger_child(staging: str) -> dict:
    """The ledger of one stream over 31 days (744 hours): requests and time, twice."""
    from cloudzero_provider.plugins.ledger_data import read_stream
    from cloudzero_provider.settings import ExportSettings
    from cloudzero_provider.target import ExportTarget

    os.environ["AIRFLOW__CLOUDZERO__STAGING_URI"] = staging
    target = ExportTarget("cloudzero_default", staging)
    target.check_reachable()
    end = HOUR + timedelta(hours=11)
    start = end - timedelta(days=LEDGER_DAYS)
    runs: list[dict] = []
    for _ in range(2):
        seen = count_requests(target.dir.fs)
        started = time.perf_counter()
        ledger = read_stream(
            "cloudzero_default",
            start,
            end,
            settings=ExportSettings.from_env(),
            runs={},
            now=end + timedelta(hours=1),
        )
        runs.append(
            {"seconds": time.perf_counter() - started, "requests": dict(seen), "hours": len(ledger.hours)}
        )
    return {"runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="spend-log rows in the hour (default 1,000,000)"
    )
    parser.add_argument("--dimensions", help="comma-separated dimensions (default: the default set)")
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs of each staging kind, alternating (default 2)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ledger", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(ledger_child(args.child) if args.ledger else child(args.child)))
        return

    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cz-bench-home-"))
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    from cloudzero_provider.testing.double import CloudZeroDouble
    from cloudzero_provider.testing.postgres import ThrowawayPostgres, airflow_conn_uri
    from cloudzero_provider.testing.seed import seed_synthetic
    from cloudzero_provider.testing.server import CloudZeroDoubleServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket=BUCKET)  # fmt: skip
    try:
        with ThrowawayPostgres() as pg, CloudZeroDoubleServer(CloudZeroDouble(KEY, connections={CONN})) as cz:
            url = pg.create_database()
            started = time.perf_counter()
            seed_synthetic(url, HOUR, args.rows)
            seeded = time.perf_counter() - started
            env = dict(os.environ)
            env.update({
                "AIRFLOW_CONN_LITELLM_DB": airflow_conn_uri(url),
                "AIRFLOW_CONN_CLOUDZERO_DEFAULT": json.dumps(
                    {"conn_type": "cloudzero", "host": cz.url, "password": KEY, "extra": {"connection_id": CONN}}),
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                    {"conn_type": "aws", "login": "bench", "password": "bench",
                     "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}),
                "AWS_EC2_METADATA_DISABLED": "true",
                "CLOUDZERO_SETTLE_MINUTES": "0",
                "CLOUDZERO_EXPORT_START": "2026-10-01T00:00:00Z",
            })  # fmt: skip
            kinds = {
                "local": tempfile.mkdtemp(prefix="cz-bench-stage-"),
                "s3": f"s3://aws_default@{BUCKET}/staging",
            }
            print(
                f"one hour of {args.rows:,} spend-log rows (seeded in {seeded:.0f}s), extract + transform + upload"
            )
            print(f"{'staging':>8} {'CBF rows':>9} {'extract':>8} {'transform':>10} {'upload':>7} {'total':>7} "
                  f"{'files':>6} {'staged':>9}  store requests")  # fmt: skip
            results = {}
            if args.dimensions:
                env["CZ_BENCH_DIMENSIONS"] = args.dimensions
            for kind, staging in [k for _ in range(args.repeat) for k in kinds.items()]:
                out = (
                    subprocess.run(
                        [sys.executable, __file__, "--child", staging],
                        env=env,
                        check=True,
                        stdout=subprocess.PIPE,
                        stderr=None if os.environ.get("CZ_BENCH_TRACE") else subprocess.PIPE,
                        text=True,
                    )
                    .stdout.strip()
                    .splitlines()[-1]
                )
                r = results[kind] = json.loads(out)
                t = r["times"]
                requests = ", ".join(f"{k} {v}" for k, v in sorted(r["store_requests"].items())) or "-"
                print(f"{kind:>8} {r['cbf_rows']:>9,} {t['extract']:>7.2f}s {t['transform']:>9.2f}s "
                      f"{t['upload']:>6.2f}s {t['total']:>6.2f}s {r['staged_files']:>6} "
                      f"{r['staged_bytes'] / 1e6:>7.2f}MB  {requests}", flush=True)  # fmt: skip
            print(
                f"S3 / local (the last runs): {results['s3']['times']['total'] / results['local']['times']['total']:.2f}x"
            )
            for filled in (False, True):
                manifests = fill_month(endpoint) if filled else 1
                out = subprocess.run(
                    [sys.executable, __file__, "--child", kinds["s3"], "--ledger"], env=env, check=True,
                    stdout=subprocess.PIPE, stderr=None if os.environ.get("CZ_BENCH_TRACE") else subprocess.PIPE,
                    text=True,
                ).stdout.strip().splitlines()[-1]  # fmt: skip
                for i, run in enumerate(json.loads(out)["runs"], 1):
                    requests = ", ".join(f"{k} {v}" for k, v in sorted(run["requests"].items()))
                    print(f"ledger of {LEDGER_DAYS} days ({run['hours']} hours, {manifests} manifests) on S3, view "
                          f"{i}: {run['seconds'] * 1000:.0f} ms, {requests}", flush=True)  # fmt: skip
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
