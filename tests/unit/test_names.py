"""Caller-chosen names (pure): bounded, printable, distinct; folding rare values moves no cost."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudzero_provider.cbf import OTHER, exact_sum, fold_rare_values, safe_value


@given(st.text(max_size=2000), st.text(max_size=2000))
@settings(max_examples=300)
def test_safe_values_are_bounded_printable_and_keep_distinct_values_apart(a, b):
    sa, sb = safe_value(a), safe_value(b)
    assert len(sa) <= 256 and not any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in sa)
    if a != b:
        assert sa != sb
    if len(a) <= 256 and a.isprintable():
        assert sa == a, "a plain name is left alone"


def test_safe_value_examples():
    assert safe_value("two\nlines").startswith("twolines~") and len(safe_value("x" * 20_000)) == 256


spends = st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False, allow_infinity=False)
rows_strategy = st.lists(
    st.tuples(st.integers(0, 30), st.integers(0, 3), spends, st.integers(0, 10**6), st.integers(0, 50)),
    min_size=1,
    max_size=80,
    unique_by=lambda t: (t[0], t[1]),  # the aggregate holds one row per combination of values
)


@given(rows_strategy, st.integers(1, 10))
@settings(max_examples=200)
def test_folding_conserves_every_total_and_caps_distinct_values(spec, cap):
    rows = [
        {"hour": "2026-11-01T13:00:00Z", "dims": {"end_user": f"c{u}", "model": f"m{m}"}, "spend": str(spend),
         "requests": requests, "total_tokens": tokens, "prompt_tokens": tokens, "completion_tokens": 0}
        for u, m, spend, tokens, requests in spec
    ]  # fmt: skip
    out, folded = fold_rare_values(rows, ["end_user"], cap)
    assert exact_sum(r["spend"] for r in out) == exact_sum(Decimal(r["spend"]) for r in rows)
    for counter in ("requests", "total_tokens", "prompt_tokens"):
        assert sum(r[counter] for r in out) == sum(r[counter] for r in rows)
    values = {r["dims"]["end_user"] for r in out}
    assert len(values - {OTHER}) <= cap
    assert {r["dims"]["model"] for r in out} == {r["dims"]["model"] for r in rows}, "uncapped untouched"
    distinct = len({r["dims"]["end_user"] for r in rows})
    assert folded.get("end_user", 0) == max(distinct - cap, 0)
    keys = [tuple(sorted(r["dims"].items())) for r in out]
    assert len(keys) == len(set(keys)), "rows that became identical were merged"
