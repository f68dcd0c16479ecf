"""The range DAG's plan: chunks sized by the spend-log rows they hold, within ``chunk_hours``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudzero_provider.ready_dags.range import plan_chunks
from cloudzero_provider.windows import HOUR, Window, parse_instant

START = datetime(2026, 10, 30, tzinfo=timezone.utc)


def windows_of(chunks: list[dict[str, str]]) -> list[Window]:
    return [Window(parse_instant(c["window_start"]), parse_instant(c["window_end"])) for c in chunks]


def test_only_time_with_spend_is_mapped_a_day_at_most_with_24_hours():
    window = Window(START, START + timedelta(days=4))
    counts = {START + timedelta(days=2, hours=h): 50 for h in (10, 11, 12)}
    chunks, summary = plan_chunks(window, 24, counts, set())
    assert [w.display for w in windows_of(chunks)] == ["2026-11-01"]
    assert summary["hours"] == 96 and summary["hours_with_spend"] == 3 and summary["chunks"] == 1
    assert (
        summary["chunks_skipped_empty"] == 3
        and summary["requests"] == 150
        and summary["hours_in_chunks"] == 24
    )


def test_a_sparse_month_is_a_few_chunks_of_whole_days():
    window = Window(START, START + timedelta(days=30))
    counts = {START + timedelta(days=d, hours=7): 100 for d in range(30)}
    chunks, summary = plan_chunks(window, 168, counts, set(), chunk_rows=2_000_000)
    assert [w.hours for w in windows_of(chunks)] == [168, 168, 168, 168, 48]
    assert all(w.is_day_aligned for w in windows_of(chunks)) and summary["requests"] == 3000


def test_a_dense_range_is_cut_by_rows_at_day_boundaries():
    window = Window(START, START + timedelta(days=10))
    counts = dict.fromkeys(window.hour_starts(), 10_000)  # 240,000 rows a day
    chunks, summary = plan_chunks(window, 168, counts, set(), chunk_rows=500_000)
    assert [w.hours for w in windows_of(chunks)] == [48] * 5
    assert summary["largest_chunk_requests"] == 480_000
    assert windows_of(chunks)[0].display == "2026-10-30T00Z--2026-11-01T00Z"


def test_a_day_denser_than_the_target_is_cut_into_hours_and_a_huge_hour_stands_alone():
    window = Window(START, START + timedelta(days=1))
    counts = dict.fromkeys(window.hour_starts(), 100)
    counts[START + 5 * HOUR] = 5_000
    chunks, _ = plan_chunks(window, 168, counts, set(), chunk_rows=1_000)
    pieces = windows_of(chunks)
    assert Window(START + 5 * HOUR, START + 6 * HOUR) in pieces
    assert [w.hours for w in pieces] == [5, 1, 10, 8]


def test_exported_hours_are_looked_at_again_and_empty_time_splits_chunks():
    window = Window(START, START + timedelta(days=5))
    counts = {START + 3 * HOUR: 10, START + timedelta(days=4, hours=2): 10}
    exported = {START + timedelta(days=1, hours=9)}
    chunks, summary = plan_chunks(window, 168, counts, exported)
    assert [w.display for w in windows_of(chunks)] == ["2026-10-30T00Z--2026-11-01T00Z", "2026-11-03"]
    assert summary["chunks_skipped_empty"] == 2


def test_short_chunk_hours_keep_their_pieces():
    window = Window(START + 10 * HOUR, START + 24 * HOUR)
    counts = dict.fromkeys(window.hour_starts(), 1)
    chunks, _ = plan_chunks(window, 6, counts, set())
    assert [w.label for w in windows_of(chunks)] == [
        "2026-10-30T10Z--2026-10-30T12Z",
        "2026-10-30T12Z--2026-10-30T18Z",
        "2026-10-30T18Z--2026-10-31T00Z",
    ]


@settings(max_examples=300, deadline=None)
@given(
    offset=st.integers(0, 47),
    hours=st.integers(1, 24 * 20),
    chunk_hours=st.integers(1, 168),
    chunk_rows=st.integers(1, 5_000),
    counts=st.dictionaries(st.integers(0, 24 * 20), st.integers(0, 3_000), max_size=200),
    exported=st.sets(st.integers(0, 24 * 20), max_size=20),
)
def test_plan_properties(offset, hours, chunk_hours, chunk_rows, counts, exported):
    window = Window(START + offset * HOUR, START + (offset + hours) * HOUR)
    by_hour = {window.start + h * HOUR: n for h, n in counts.items()}
    done = {window.start + h * HOUR for h in exported}
    chunks, summary = plan_chunks(window, chunk_hours, by_hour, done, chunk_rows=chunk_rows)
    pieces = windows_of(chunks)
    # ordered, disjoint, inside the range, each within chunk_hours
    assert all(a.end <= b.start for a, b in pairwise(pieces))
    assert all(window.start <= p.start < p.end <= window.end and p.hours <= chunk_hours for p in pieces)
    # every hour with spend or exported before is in exactly one chunk
    wanted = {h for h in window.hour_starts() if by_hour.get(h) or h in done}
    covered = [h for p in pieces for h in p.hour_starts()]
    assert wanted <= set(covered) and len(covered) == len(set(covered))
    # rows per chunk within the target, unless the chunk is one hour holding more on its own
    for p in pieces:
        rows = sum(by_hour.get(h, 0) for h in p.hour_starts())
        assert rows <= chunk_rows or p.hours == 1
        assert rows or any(h in done for h in p.hour_starts()), "an empty chunk was mapped"
    assert summary["chunks"] == len(pieces) and summary["hours_in_chunks"] == len(covered)
    assert summary["requests"] == sum(n for h, n in by_hour.items() if h in set(covered))


def test_taking_days_over_keeps_every_day_in_one_chunk_however_dense():
    """take_over switches a day in one upload, its 00:00 (the daily rows of the whole day) with the rest: a day is
    never cut, not by rows and not by chunk_hours."""
    window = Window(START, START + timedelta(days=3))
    counts = dict.fromkeys(window.hour_starts(), 100)
    counts[START + 5 * HOUR] = 5_000
    cut, _ = plan_chunks(window, 168, counts, set(), chunk_rows=1_000)
    assert any(w.hours < 24 for w in windows_of(cut)), "without take_over the dense day is cut"
    for chunk_hours in (6, 24, 168):
        chunks, _ = plan_chunks(window, chunk_hours, counts, set(), chunk_rows=1_000, whole_days=True)
        assert [w.display for w in windows_of(chunks)] == ["2026-10-30", "2026-10-31", "2026-11-01"]
    joined, _ = plan_chunks(window, 168, counts, set(), whole_days=True)
    assert [w.display for w in windows_of(joined)] == ["2026-10-30T00Z--2026-11-02T00Z"]


def test_taking_over_part_of_a_day_is_refused():
    import pytest
    from airflow.sdk.exceptions import AirflowFailException

    from cloudzero_provider.ready_dags.range import range_window

    assert range_window("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z", take_over=True).hours == 24
    assert range_window("2026-11-01T12:00:00Z", "2026-11-02T00:00:00Z").hours == 12
    with pytest.raises(
        AirflowFailException, match=r"take_over switches whole UTC days, and \[2026-11-01T12:00Z"
    ):
        range_window("2026-11-01T12:00:00Z", "2026-11-02T00:00:00Z", take_over=True)
