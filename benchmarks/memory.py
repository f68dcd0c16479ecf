"""Peak memory of the export as its inputs grow: a chunk of 24 -> 168 hours, and CloudZero's month read back 10x.

Run with ``./dev bench --memory``. Each measurement runs in a fresh child process (so its peak RSS is its own): the
chunk part transforms and uploads synthetic staged rows (``--rows-per-hour`` CBF rows an hour, 1,300 by default:
CloudZero's 1,000,000 rows a month spread over the hours) to the CloudZero double over HTTP; the read-back part
streams a month of rows from the double and sums it per hour, as reconciliation does. It prints, never asserts.
The double runs in this (parent) process, so its own memory is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
START = datetime(2026, 11, 1, tzinfo=timezone.utc)
KEY, CONN = "bench-key", "bench-conn"


def rss_mb() -> float:
    """Peak resident set of this process image (``VmHWM``): unlike ``ru_maxrss``, it does not inherit the parent's
    peak across fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_chunk(hours: int, rows_per_hour: int, url: str) -> dict:
    """In the child: stage ``hours`` x ``rows_per_hour`` aggregated rows, transform, upload; peak RSS."""
    staging = tempfile.mkdtemp(prefix="cz-bench-mem-")
    os.environ["AIRFLOW_CONN_CLOUDZERO_DEFAULT"] = json.dumps(
        {"conn_type": "cloudzero", "host": url, "password": KEY, "extra": {"connection_id": CONN}}
    )
    from cloudzero_provider.hooks.cloudzero import CloudZeroHook
    from cloudzero_provider.manifests import Attempt
    from cloudzero_provider.pipeline.transform import transform_window
    from cloudzero_provider.pipeline.upload import upload_window
    from cloudzero_provider.target import ExportTarget
    from cloudzero_provider.windows import Window, iso_hour, iso_instant

    window = Window(START, START + timedelta(hours=hours))
    target = ExportTarget("cloudzero_default", staging)
    stage = target.stage(window)
    totals: dict[str, dict] = {}

    def rows():
        for hour in window.hour_starts():
            spend = 0
            for i in range(rows_per_hour):
                cents = 1 + i % 97
                spend += cents
                yield {"hour": iso_hour(hour), "dims": {"team_id": f"team-{i % 40}", "model": f"model-{i % 9}",
                       "user": f"user-{i}"}, "spend": f"0.{cents:04d}", "requests": 3, "prompt_tokens": 10,
                       "completion_tokens": 20, "total_tokens": 30, "successes": 3, "failures": 0}  # fmt: skip
            totals[iso_hour(hour)] = {"requests": 3 * rows_per_hour, "spend": f"{spend / 10_000:.4f}"}

    stage.write_jsonl("extract.jsonl", rows())
    stage.write_json("extract.json", {"extracted_at": iso_instant(START + timedelta(days=40)), "source": "spend_logs",
                                      "dimensions": ["team_id", "model", "user"], "rows": hours * rows_per_hour,
                                      "hours": totals, "failed_hours": {}})  # fmt: skip
    base = rss_mb()
    started = time.perf_counter()
    transformed = transform_window(window, stage, max_rows_per_hour=None)
    after_transform = rss_mb()
    result = upload_window(CloudZeroHook(), window, stage, target.manifests, max_request_bytes=4_000_000,
                           attempt=Attempt(run_id="bench"))  # fmt: skip
    return {
        "hours": hours,
        "cbf_rows": transformed["rows"],
        "requests": result.requests_sent,
        "seconds": round(time.perf_counter() - started, 2),
        "rss_before_mb": round(base, 1),
        "rss_after_transform_mb": round(after_transform, 1),
        "peak_rss_mb": round(rss_mb(), 1),
        "staged_cbf_mb": round(stage.path("cbf.jsonl").stat().st_size / 1e6, 1),
    }


def child_readback(url: str) -> dict:
    """In the child: stream the month back from the double and sum it per hour; peak RSS."""
    os.environ["AIRFLOW_CONN_CLOUDZERO_DEFAULT"] = json.dumps(
        {
            "conn_type": "cloudzero",
            "host": url,
            "password": KEY,
            "extra": {"connection_id": CONN, "timeout": [10, 600]},
        }
    )
    from cloudzero_provider.hooks.cloudzero import CloudZeroHook
    from cloudzero_provider.readback import held_by_hour

    hook = CloudZeroHook()
    hook.settings  # noqa: B018 -- resolve the connection before measuring
    base = rss_mb()
    started = time.perf_counter()
    rows = hook.iter_billing_drop("2026-11")
    held = held_by_hour(rows or [], "2026-11")
    return {
        "hours": len(held),
        "seconds": round(time.perf_counter() - started, 2),
        "rss_before_mb": round(base, 1),
        "peak_rss_mb": round(rss_mb(), 1),
    }


def run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def month_rows(n: int) -> list[dict]:
    hours = 30 * 24
    return [
        {
            "time/usage_start": (START + timedelta(hours=i % hours)).strftime("%Y-%m-%dT%H:00:00Z"),
            "cost/cost": f"0.{1 + i % 9999:04d}",
            "resource/id": f"czrn:litellm:bench:{i}",
            "lineitem/type": "Usage",
            "resource/tag:user": f"user-{i}",
            "usage/amount": "30",
        }
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs="*")
    parser.add_argument("--rows-per-hour", type=int, default=1300)
    parser.add_argument("--chunk-hours", default="24,72,168")
    parser.add_argument("--month-rows", default="100000,1000000")
    args = parser.parse_args()
    if args.child is not None:
        kind, *rest = args.child
        result = (
            child_chunk(int(rest[0]), int(rest[1]), rest[2]) if kind == "chunk" else child_readback(rest[0])
        )
        print(json.dumps(result))
        return

    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cz-bench-home-"))
    from cloudzero_provider.testing.double import CloudZeroDouble
    from cloudzero_provider.testing.server import CloudZeroDoubleServer

    print(f"Peak RSS of the export as its input grows ({os.cpu_count()} cores); each line a fresh process")
    print(
        f"\nchunk upload: {args.rows_per_hour} CBF rows per hour, transformed and uploaded to the double over HTTP"
    )
    print(f"{'hours':>6} {'CBF rows':>9} {'requests':>8} {'staged MB':>9} {'seconds':>8} {'RSS before':>10} "
          f"{'peak RSS':>9}")  # fmt: skip
    for hours in (int(h) for h in args.chunk_hours.split(",")):
        with CloudZeroDoubleServer(CloudZeroDouble(KEY, connections={CONN})) as srv:
            r = run_child("chunk", str(hours), str(args.rows_per_hour), srv.url)
        print(f"{r['hours']:>6} {r['cbf_rows']:>9,} {r['requests']:>8} {r['staged_cbf_mb']:>9} {r['seconds']:>8} "
              f"{r['rss_before_mb']:>8} MB {r['peak_rss_mb']:>6} MB")  # fmt: skip
    print("\nmonth read back: GET billing_drops/2026-11 streamed and summed per hour, as reconciliation does")
    print(f"{'rows':>10} {'hours':>6} {'seconds':>8} {'RSS before':>10} {'peak RSS':>9}")
    for n in (int(x) for x in args.month_rows.split(",")):
        double = CloudZeroDouble(KEY, connections={CONN})
        double.streams[("", CONN)].months["2026-11"] = month_rows(n)
        with CloudZeroDoubleServer(double) as srv:
            r = run_child("readback", srv.url)
        print(
            f"{n:>10,} {r['hours']:>6} {r['seconds']:>8} {r['rss_before_mb']:>8} MB {r['peak_rss_mb']:>6} MB"
        )


if __name__ == "__main__":
    main()
