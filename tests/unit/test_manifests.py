"""Manifests: the typed record, read and written only through ManifestStore; one answer to who owns a day."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from cloudzero_provider.manifests import Attempt, Manifest, ManifestStore, SourceTotals
from cloudzero_provider.staging import staging_root

DAY = datetime(2026, 11, 1, tzinfo=timezone.utc)
SENT = datetime(2026, 11, 1, 2, 5, 7, 123000, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path) -> ManifestStore:
    return ManifestStore(staging_root(str(tmp_path)))


def exported(hour: datetime, **kw) -> Manifest:
    return Manifest(hour, rows=2, cost="1.5", drop_ids=["d1"], receipts=[{"drop_id": "d1", "row_count": 2}],
                    sent_at=SENT, extracted_at=SENT, source=SourceTotals(3, "1.5"), **kw)  # fmt: skip


def test_a_manifest_round_trips_through_its_file_with_the_same_keys_as_before(store, tmp_path):
    hour = DAY.replace(hour=1)
    store.write_exported(exported(hour, run="r1"), late_correction=False)
    raw = json.loads((tmp_path / "manifests" / "2026-11-01T01Z.json").read_text())
    assert raw["hour"] == "2026-11-01T01:00:00Z" and raw["status"] == "exported" and raw["cost"] == "1.5"
    assert raw["source"] == {"requests": 3, "spend": "1.5"} and raw["sent_at"] == "2026-11-01T02:05:07.123Z"
    assert raw["late_corrections"] == 0 and "unreadable" not in raw and "reason" not in raw
    back = store.get(hour)
    assert back == exported(hour, run="r1", status="exported")


def test_late_corrections_count_on_and_mark_keeps_what_the_export_recorded(store):
    hour = DAY.replace(hour=2)
    store.write_exported(exported(hour), late_correction=False)
    store.write_exported(exported(hour), late_correction=True)
    store.mark(hour, status="failed", attempt=Attempt(run_id="r2"), reason="x" * 5000)
    m = store.get(hour)
    assert m is not None and (m.status, m.late_corrections, m.cost, m.drop_ids) == (
        "failed",
        1,
        "1.5",
        ["d1"],
    )
    assert (
        m.attempt_run == "r2/-1/0"
        and m.decided_by["run_id"] == "r2"
        and m.reason == "x" * 2000
        and m.sent_cost == 0
    ), "a failed hour counts nothing"
    store.mark(hour, status="sending", attempt=Attempt(run_id="r3"))
    assert store.get(hour).reason is None


@pytest.mark.parametrize(
    "text", ['{"hour": "2026-11-01T03:00:00Z", "stat', "[1, 2]", '{"status": "done"}', '{"cost": "abc"}',
             '{"rows": "many"}', '{"sent_at": "yesterday"}', '{"source": {"spend": "NaN?"}}'],
)  # fmt: skip
def test_an_unreadable_manifest_reads_as_failed_and_says_why(store, text):
    hour = DAY.replace(hour=3)
    store.dir.mkdir(parents=True, exist_ok=True)
    store.path(hour).write_text(text)
    m = store.get(hour)
    assert (
        m is not None
        and m.status == "failed"
        and m.unreadable
        and m.unreadable.startswith("2026-11-01T03Z.json")
    )
    store.mark(hour, status="sending", attempt=Attempt(run_id="r"))
    assert store.get(hour).unreadable is None, "the next write makes it sound again"


def test_hours_lists_manifests_oldest_first_and_ignores_foreign_files(store):
    for h in (5, 1, 3):
        store.write_exported(exported(DAY.replace(hour=h)), late_correction=False)
    (store.dir / "notes.json").write_text("{}")
    (store.dir / ".2026-11-01T07Z.json.abc.tmp").write_text("{}")
    assert store.hours() == [DAY.replace(hour=h) for h in (1, 3, 5)]


def test_one_owner_per_day(store):
    assert store.day_owner(DAY) is None
    store.write_exported(exported(DAY + timedelta(hours=7)), late_correction=False)
    assert store.day_owner(DAY) == "spend_logs"
    other = DAY + timedelta(days=1)
    store.write_exported(exported(other, origin="daily_team"), late_correction=False)
    assert store.day_owner(other) == "daily_team"
    store.mark(other, status="failed", attempt=Attempt(run_id="r"))
    assert store.day_owner(other) is None, "a failed daily export owns nothing"
    third = DAY + timedelta(days=2, hours=4)
    store.mark(third, status="sending", attempt=Attempt(run_id="r"))
    assert store.day_owner(third.replace(hour=0)) == "spend_logs", "an hour in flight claims its day"
