"""Manifests: the typed record, read and written only through ManifestStore; one answer to who owns a day."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

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


def test_each_anycost_connection_keeps_what_it_acknowledged(store, tmp_path):
    """A manifest remembers, per AnyCost connection, the last export CloudZero acknowledged there: a switch to
    another connection and back still knows what the first holds; a record from before knows only its own."""
    hour = DAY.replace(hour=3)
    store.write_exported(exported(hour, connection_id="conn-a"), late_correction=False)
    store.write_exported(replace(exported(hour, connection_id="conn-b"), cost="0.5"), late_correction=False)
    store.mark(hour, status="failed", attempt=Attempt(run_id="later"), reason="HTTP 503")
    m = store.get(hour)
    assert m.acknowledged_by == {"conn-a": {"origin": "spend_logs", "cost": "1.5"},
                                 "conn-b": {"origin": "spend_logs", "cost": "0.5"}}  # fmt: skip
    assert m.acknowledged_on("conn-b", unknown_as_own=False) == Decimal("0.5"), "failed later: still held"
    assert m.acknowledged_on("conn-a", "spend_logs", unknown_as_own=False) == Decimal("1.5")
    assert m.acknowledged_on("conn-a", "daily_team", unknown_as_own=True) is None
    assert m.acknowledged_on("conn-c", unknown_as_own=True) is None, "known never sent there"
    legacy = Manifest(hour, status="exported", cost="2", drop_ids=["d"], connection_id="conn-a")
    assert legacy.acknowledged_on("conn-c", unknown_as_own=True) == Decimal("2")
    assert legacy.acknowledged_on("conn-c", unknown_as_own=False) is None
    path = tmp_path / "manifests" / "2026-11-01T04Z.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**legacy.to_json(), "hour": "2026-11-01T04:00:00Z"}))
    store.write_exported(exported(DAY.replace(hour=4), connection_id="conn-b"), late_correction=False)
    assert store.get(DAY.replace(hour=4)).acknowledged_by == {"conn-a": {"origin": "spend_logs", "cost": "2"},
                                                              "conn-b": {"origin": "spend_logs", "cost": "1.5"}}  # fmt: skip
    path.write_text(
        json.dumps({**legacy.to_json(), "acknowledged_by": {"conn-a": {"origin": "x", "cost": "NaN?"}}})
    )
    assert store.get(DAY.replace(hour=4)).unreadable, "a malformed entry makes the record read as unreadable"


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


@pytest.mark.parametrize("figure", ["0.0000001", "0.00000012", "0.0000010", "12.50", "0", "1E+3"])
def test_a_recorded_figure_reads_back_as_written_never_in_exponent_notation(store, figure):
    """PostgreSQL writes a sum's text without an exponent; the late pass and the export sensor compare it as text
    with the manifest's, so a figure read back as ``1E-7`` would look changed for ever."""
    hour = DAY.replace(hour=3)
    store.write_exported(
        replace(exported(hour, connection_id="c1"), cost=figure, source=SourceTotals(3, figure)),
        late_correction=False,
    )
    back = store.get(hour)
    plain = "1000" if figure == "1E+3" else figure  # a hand's exponent is written out
    assert (back.cost, back.source.spend, back.acknowledged_by["c1"]["cost"]) == (plain, plain, plain)


@pytest.mark.parametrize(
    ("figure", "why"),
    [("1E+999999999", "out of range"), ("NaN", "not a finite"), ("-Infinity", "not a finite")],
)
def test_a_figure_no_reader_can_compare_makes_the_manifest_unreadable(store, tmp_path, figure, why):
    hour = DAY.replace(hour=4)
    store.write_exported(exported(hour), late_correction=False)
    path = tmp_path / "manifests" / "2026-11-01T04Z.json"
    path.write_text(path.read_text().replace('"cost": "1.5"', f'"cost": "{figure}"'))
    assert why in store.get(hour).unreadable


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
    assert store.day_owner(other) == "daily_team", (
        "a failed re-export leaves the daily rows CloudZero acknowledged before: the day stays theirs"
    )
    never = DAY + timedelta(days=3)
    store.put(Manifest(never, origin="daily_team", status="failed", reason="CloudZero 503"))
    assert store.day_owner(never) is None, "a daily export that failed before any receipt owns nothing"
    store.write_exported(exported(other + timedelta(hours=5)), late_correction=False)
    assert store.day_owner(other) == "spend_logs", (
        "once a spend-log hour went out beside them, spend logs claim the day: a daily retry is refused"
    )
    store.put(Manifest(other + timedelta(hours=5)))  # that hour never sent after all
    store.update(other, lambda m: replace(m, cleared=True))
    assert store.day_owner(other) is None, "nor does one whose rows were cleared"
    third = DAY + timedelta(days=2, hours=4)
    store.mark(third, status="sending", attempt=Attempt(run_id="r"))
    assert store.day_owner(third.replace(hour=0)) == "spend_logs", "an hour in flight claims its day"


def _count_up(root: str, times: int) -> None:
    """In another process: add one to an hour's ``rows``, ``times`` times, by compare-and-swap."""
    store = ManifestStore(staging_root(root))

    def add(m):
        m = m or Manifest(DAY)
        m.rows += 1
        return m

    for _ in range(times):
        store.update(DAY, add)


def test_writers_in_several_processes_lose_no_update(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_count_up, args=(str(tmp_path), 40)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert ManifestStore(staging_root(str(tmp_path))).get(DAY).rows == 120


def test_the_failure_callback_never_flips_an_hour_another_run_exported(store):
    """The race of issue 'leave it running for a year': a failed run's callback decides to mark the hour failed
    while a slow upload of another run is about to record it exported. Whatever the interleaving, the hour ends
    exported, and the callback reports that it did not mark it."""
    import threading
    import time

    hour = DAY.replace(hour=9)
    store.mark(hour, status="sending", attempt=Attempt(run_id="upload"))
    read_it = threading.Event()
    original = store._parse

    def slow_parse(h, raw):  # the callback's read happens, then the upload's whole write tries to slip in
        m = original(h, raw)
        if threading.current_thread().name == "callback":
            read_it.set()
            time.sleep(0.3)
        return m

    store._parse = slow_parse  # type: ignore[method-assign]
    outcome = {}
    callback = threading.Thread(
        name="callback",
        target=lambda: outcome.update(marked=store.mark_failed_unless_exported(
            hour, attempt=Attempt(run_id="failed-run"), reason="task extract failed")),
    )  # fmt: skip
    callback.start()
    read_it.wait(5)
    store.write_exported(exported(hour, run="upload"), late_correction=False)
    callback.join(5)
    final = store.get(hour)
    assert final.status == "exported" and final.run == "upload"
    assert outcome["marked"] is True, (
        "the callback marked it before the upload, which then recorded it exported"
    )

    # and the other way round: the upload recorded first, the callback then finds it exported and leaves it
    later = DAY.replace(hour=10)
    store.write_exported(exported(later), late_correction=False)
    assert store.mark_failed_unless_exported(later, attempt=Attempt(run_id="failed-run"), reason="x") is False
    assert store.get(later).status == "exported"


def test_staged_files_are_private_on_a_local_disk(tmp_path):
    import stat

    store = ManifestStore(staging_root(str(tmp_path / "root")))
    store.write_exported(exported(DAY), late_correction=False)
    for path in (tmp_path / "root", tmp_path / "root" / "manifests"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE(store.path(DAY).stat().st_mode) == 0o600


def test_the_newest_held_hour_skips_failed_hours_counts_empty_ones_and_covers_a_daily_day(store):
    assert store.newest_held() is None
    store.write_exported(exported(DAY + timedelta(hours=5)), late_correction=False)
    store.write_exported(Manifest(DAY + timedelta(hours=6), empty=True), late_correction=False)
    store.mark(DAY + timedelta(hours=7), status="failed", attempt=Attempt(), reason="boom")
    store.mark(DAY + timedelta(hours=8), status="sending", attempt=Attempt())
    assert store.newest_held() == DAY + timedelta(hours=6), (
        "checked and empty counts; failed and sending do not"
    )
    assert store.newest_held(look_back=2) is None, "only the newest look_back manifests are read"
    nov2 = DAY + timedelta(days=1)
    store.write_exported(exported(nov2, origin="daily_team"), late_correction=False)
    assert store.newest_held() == nov2 + timedelta(hours=23), "a daily-rollup day covers all its hours"
