"""Spend limits (pure): a breach exactly when a day's spend is strictly over a limit."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from cloudzero_provider.report_figures import check_limits

DAY = datetime(2026, 11, 1, tzinfo=timezone.utc)
ROWS = [
    {
        "hour": DAY.replace(hour=10),
        "dims": {"team_id": "a", "user": "u1", "end_user": "c1", "model": "m1"},
        "spend": "60",
    },
    {
        "hour": DAY.replace(hour=11),
        "dims": {"team_id": "a", "user": "u2", "end_user": "c2", "model": "m2"},
        "spend": "40",
    },
    {
        "hour": DAY.replace(hour=12),
        "dims": {"team_id": "b", "user": "u2", "end_user": None, "model": "m1"},
        "spend": "0.5",
    },
]


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"daily_total": "100.5"}, []),  # at the limit: no alert
        ({"daily_total": "100.500000000001"}, []),  # just under
        ({"daily_total": "100.499999999999"}, ["2026-11-01: total spend spent 100.5 USD, over the limit of 100.499999999999 USD"]),
        ({"team": 100}, []),
        ({"team": "99.99"}, ["2026-11-01: team 'a' spent 100 USD, over the limit of 99.99 USD"]),
        ({"user": 40.5}, ["2026-11-01: user 'u1' spent 60 USD, over the limit of 40.5 USD"]),
        ({"customer": 40}, ["2026-11-01: customer 'c1' spent 60 USD, over the limit of 40 USD"]),
        ({"model": "60.5"}, []),
        ({"model": "60.49", "team": "0.49"},
         ["2026-11-01: model 'm1' spent 60.5 USD, over the limit of 60.49 USD",
          "2026-11-01: team 'a' spent 100 USD, over the limit of 0.49 USD",
          "2026-11-01: team 'b' spent 0.5 USD, over the limit of 0.49 USD"]),
    ],
)  # fmt: skip
def test_limits_fire_exactly_when_crossed(limits, expected):
    assert [str(b) for b in check_limits(ROWS, limits)] == expected


def test_unknown_limit_kind_is_named():
    with pytest.raises(ValueError, match=r"unknown limit kind\(s\) \['teams'\]"):
        check_limits(ROWS, {"teams": 1})
