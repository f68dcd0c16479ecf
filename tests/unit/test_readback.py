"""CloudZero's rows read back: streamed, checked like the CBF we send, summed per hour exactly."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudzero_provider.readback import ReadBackError, held_by_hour, iter_json_array

rows = st.lists(
    st.fixed_dictionaries({
        "time/usage_start": st.sampled_from(["2026-11-01T10:00:00Z", "2026-11-01T10:30:00Z", "2026-11-30T23:00:00",
                                             "2026-11-02T05:00:00.000+00:00"]),
        "cost/cost": st.decimals(min_value=0, max_value=10**6, places=9).map(lambda d: format(d, "f")),
        "resource/tag:user": st.text(max_size=30),
    }),
    max_size=40,
)  # fmt: skip


@given(rows, st.integers(1, 300), st.sampled_from(["", " ", "\n  "]))
@settings(max_examples=200, deadline=None)
def test_a_streamed_answer_reads_as_the_whole_one_whatever_the_chunks(data, size, space):
    body = json.dumps({"billing_drop": data}, indent=1 if space else None).encode() + space.encode()
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    assert list(iter_json_array(chunks, "billing_drop")) == data
    held = held_by_hour(iter_json_array(chunks, "billing_drop"), "2026-11")
    assert sum(held.values()) == sum(Decimal(r["cost/cost"]) for r in data)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>Sign in</html>", "not an object with a 'billing_drop' list"),
        (b'{"billing_drop": [{"a": 1}', "ended before its 'billing_drop' list did"),
        (b'{"billing_drop": [1 2]}', "malformed near '2]}'"),
        (b'{"billing_drop": ["' + b"x" * 1_100_000, "larger than 1000000 bytes"),
    ],
)
def test_an_answer_that_is_not_a_list_of_rows_fails_clearly(body, message):
    with pytest.raises(ReadBackError, match=message):
        list(iter_json_array([body[i : i + 4096] for i in range(0, len(body), 4096)], "billing_drop"))


@pytest.mark.parametrize("cost", ["1e100000000", "NaN", "abc", "-1", "1" * 5000, "Infinity", "0x10", "1.5\n"])
def test_a_malformed_cost_names_the_hour_and_the_value_cut(cost):
    with pytest.raises(ReadBackError) as info:
        held_by_hour([{"time/usage_start": "2026-11-01T10:05:00Z", "cost/cost": cost}], "2026-11")
    assert "hour 2026-11-01T10:00:00Z" in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("start", ["yesterday", "2026-11-01", "0001-01-01T00:00:00+05:00", None, 12])
def test_a_malformed_time_is_named(start):
    with pytest.raises(ReadBackError, match="time/usage_start"):
        held_by_hour([{"time/usage_start": start, "cost/cost": "1"}], "2026-11")


def test_rows_sum_per_hour_exactly_and_naive_times_are_utc():
    held = held_by_hour([{"time/usage_start": "2026-11-01T10:05:00", "cost/cost": "0.1"},
                         {"time/usage_start": "2026-11-01T10:55:00Z", "cost/cost": "0.2"}], "2026-11")  # fmt: skip
    assert held == {datetime(2026, 11, 1, 10, tzinfo=timezone.utc): Decimal("0.3")}
