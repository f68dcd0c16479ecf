"""Property and example tests of drops.py: exact sizes, whole hours, replace_hourly-then-sum splits."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudzero_provider.drops import body_size, group_by_hour, month_of, plan
from cloudzero_provider.windows import hour_of, iso_hour


def cbf(hour: str, i: int, pad: int = 0) -> dict[str, str]:
    return {
        "time/usage_start": hour,
        "cost/cost": f"0.{i:04d}",
        "resource/id": f"czrn:x:{i}",
        "lineitem/description": "x" * pad,
    }


hours = st.sampled_from(
    [f"2026-{m:02d}-{d:02d}T{h:02d}:00:00Z" for m in (10, 11) for d in (1, 30) for h in (0, 13, 23)]
)
row_lists = st.lists(st.tuples(hours, st.integers(0, 400)), min_size=0, max_size=80)


@given(row_lists, st.integers(min_value=700, max_value=20_000))
@settings(max_examples=300, deadline=None)
def test_plan_properties(spec, limit):
    rows = [cbf(h, i, pad) for i, (h, pad) in enumerate(spec)]
    by_hour = group_by_hour(rows)
    requests = plan(by_hour, limit)
    sent: dict[str, list[dict]] = {}
    split_hours = set()
    for req in requests:
        body = json.loads(req.body)
        assert len(req.body) <= limit, "body over the limit"
        assert body_size(
            req.month,
            req.operation,
            [
                len(json.dumps(r, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode())
                for r in body["data"]
            ],
        ) == len(req.body)
        assert body["month"] == req.month and body["operation"] == req.operation
        assert {month_of(hour_of(r["time/usage_start"])) for r in body["data"]} == {req.month}, (
            "one month per request"
        )
        assert {r["time/usage_start"] for r in body["data"]} == {iso_hour(h) for h in req.hours}
        if req.chunks > 1:
            assert len(req.hours) == 1, "a split hour travels alone"
            assert req.operation == ("replace_hourly" if req.chunk == 0 else "sum")
            split_hours.add(req.hours[0])
        else:
            assert req.operation == "replace_hourly"
        for r in body["data"]:
            sent.setdefault(r["time/usage_start"], []).append(r)
    # every row sent exactly once, in order, per hour
    assert {h: [json.dumps(r, sort_keys=True) for r in rs] for h, rs in sent.items()} == {
        iso_hour(h): [json.dumps(r, sort_keys=True) for r in rows if r["time/usage_start"] == iso_hour(h)]
        for h in by_hour
    }
    # a split hour's chunks come consecutively, first chunk first
    for hour in split_hours:
        idx = [i for i, r in enumerate(requests) if hour in r.hours]
        assert idx == list(range(idx[0], idx[0] + len(idx)))
        assert [requests[i].chunk for i in idx] == list(range(len(idx)))


def test_whole_hours_are_packed_until_the_limit():
    rows = [cbf(f"2026-11-01T{h:02d}:00:00Z", i) for h in range(6) for i in range(3)]
    requests = plan(group_by_hour(rows), 10_000)
    assert len(requests) == 1
    assert [iso_hour(h) for h in requests[0].hours] == [f"2026-11-01T{h:02d}:00:00Z" for h in range(6)]
    small = plan(group_by_hour(rows), 600)
    assert all(r.chunks == 1 for r in small) and len(small) > 1


def test_months_never_share_a_request():
    rows = [cbf("2026-10-31T23:00:00Z", 1), cbf("2026-11-01T00:00:00Z", 2)]
    requests = plan(group_by_hour(rows), 1_000_000)
    assert [r.month for r in requests] == ["2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"]


def test_oversized_row_is_refused():
    with pytest.raises(ValueError, match=r"alone is .* bytes, over the request limit of 500"):
        plan(group_by_hour([cbf("2026-11-01T00:00:00Z", 1, pad=1000)]), 500)


def test_idempotency_keys():
    rows = [cbf("2026-11-01T13:00:00Z", i, pad=200) for i in range(10)]
    a, *rest = plan(group_by_hour(rows), 1000)
    assert rest, "the hour was split"
    keys = {r.idempotency_key("conn", "run1/1") for r in [a, *rest]}
    assert len(keys) == len(rest) + 1
    assert a.idempotency_key("conn", "run1/1") == a.idempotency_key("conn", "run1/1")
    assert a.idempotency_key("conn", "run1/1") != a.idempotency_key("conn", "run1/2")
    assert a.idempotency_key("conn", "x") != a.idempotency_key("other", "x")
