from __future__ import annotations

from datetime import datetime, timezone
from itertools import pairwise

import pytest

from cloudzero_provider.windows import Window


def test_window_parsing_and_labels():
    w = Window.of("2026-11-01T13:00:00+02:00", "2026-11-01T15:00:00Z")
    assert w.start == datetime(2026, 11, 1, 11, tzinfo=timezone.utc)
    assert w.hours == 4 and w.label == "2026-11-01T11Z--2026-11-01T15Z"
    assert [h.label for h in w.each_hour()] == [
        "2026-11-01T11Z",
        "2026-11-01T12Z",
        "2026-11-01T13Z",
        "2026-11-01T14Z",
    ]
    assert Window.hour("2026-11-01T13:00:00Z").label == "2026-11-01T13Z"
    assert w.naive_utc()[0].tzinfo is None


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2026-11-01T13:00:01Z", "2026-11-01T14:00:00Z", "window start .* not aligned"),
        ("2026-11-01T13:00:00Z", "2026-11-01T13:00:00Z", "not after its start"),
        ("2026-11-01T13:00:00", "2026-11-01T14:00:00Z", "no time zone"),
    ],
)
def test_window_errors(start, end, message):
    with pytest.raises(ValueError, match=message):
        Window.of(start, end)


def test_chunks_cover_the_window_exactly_aligned_to_days():
    w = Window.of("2026-11-01T10:00:00Z", "2026-11-03T05:00:00Z")
    chunks = w.chunks(24)
    assert [c.display for c in chunks] == [
        "2026-11-01T10Z--2026-11-02T00Z",
        "2026-11-02",
        "2026-11-03T00Z--2026-11-03T05Z",
    ]
    assert [c.label for c in w.chunks(6)][:3] == ["2026-11-01T10Z--2026-11-01T12Z", "2026-11-01T12Z--2026-11-01T18Z",
                                                   "2026-11-01T18Z--2026-11-02T00Z"]  # fmt: skip
    for size in (1, 5, 6, 24, 48):
        pieces = w.chunks(size)
        assert pieces[0].start == w.start and pieces[-1].end == w.end
        assert all(a.end == b.start for a, b in pairwise(pieces))
        assert sum(p.hours for p in pieces) == w.hours and all(p.hours <= size for p in pieces)
    with pytest.raises(ValueError, match="at least one hour"):
        w.chunks(0)
