"""Sending against the double over HTTP: manifests in flight, receipts kept, 413 re-planned from each hour's start."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cloudzero_provider.drops import serialize_row
from cloudzero_provider.hooks.cloudzero import CloudZeroHook
from cloudzero_provider.manifests import Attempt, ManifestStore
from cloudzero_provider.pipeline.sending import send_hours
from cloudzero_provider.staging import staging_root
from cloudzero_provider.testing.fixtures import CONNECTION_ID
from cloudzero_provider.windows import iso_hour

H = datetime(2026, 11, 1, 10, tzinfo=timezone.utc)


def rows(hour: datetime, n: int, pad: int = 0) -> list[bytes]:
    return [serialize_row({"time/usage_start": iso_hour(hour), "cost/cost": "0.5", "resource/id": f"r{i}",
                           "lineitem/description": "x" * pad}) for i in range(n)]  # fmt: skip


def test_hours_are_marked_in_flight_and_recorded_on_receipt(double, cloudzero_conn, tmp_path):
    store = ManifestStore(staging_root(str(tmp_path)))
    seen: dict[datetime, list] = {}

    def on_sent(hour, receipts):
        assert store.get(hour).status == "sending", "in flight until CloudZero acknowledged it"
        seen[hour] = receipts

    by_hour = {H: rows(H, 3), H + timedelta(hours=1): rows(H + timedelta(hours=1), 2)}
    sent = send_hours(CloudZeroHook(max_wait=0.1), by_hour, max_request_bytes=100_000, attempt=Attempt(run_id="s"), manifests=store,
                      on_hour_sent=on_sent)  # fmt: skip
    assert sent == 1 and set(seen) == set(by_hour)
    drop = double.double.streams[("", CONNECTION_ID)].drops[0]
    assert seen[H] == [drop] and drop["row_count"] == 5


def test_a_413_replans_every_unsent_hour_at_half_size(double, cloudzero_conn, tmp_path):
    double.double.max_body_bytes = 30_000
    store = ManifestStore(staging_root(str(tmp_path)))
    hours = [H + timedelta(hours=i) for i in range(3)]
    by_hour = {h: rows(h, 40, pad=400) for h in hours}
    done: list[datetime] = []
    send_hours(CloudZeroHook(max_wait=0.1), by_hour, max_request_bytes=60_000, attempt=Attempt(run_id="s"), manifests=store,
               on_hour_sent=lambda h, r: done.append(h))  # fmt: skip
    assert sorted(done) == hours
    statuses = [r["status"] for r in double.double.requests]
    assert statuses[0] == 413 and set(statuses[1:]) == {200}
    assert double.double.cost_by_hour(CONNECTION_ID) == {iso_hour(h): 20 for h in hours}


def test_a_failure_marks_the_hours_of_the_request_failed(double, cloudzero_conn, tmp_path):
    from cloudzero_provider.hooks.cloudzero import CloudZeroTransientError

    store = ManifestStore(staging_root(str(tmp_path)))
    double.fail_next(5, 503)
    with pytest.raises(CloudZeroTransientError):
        send_hours(CloudZeroHook(max_wait=0.05, max_attempts=2), {H: rows(H, 1)}, max_request_bytes=100_000,
                   attempt=Attempt(run_id="s"), manifests=store, on_hour_sent=lambda h, r: None)  # fmt: skip
    assert store.get(H).status == "failed"
