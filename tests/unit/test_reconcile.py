"""The reconciliation's verdict per hour (pure)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from cloudzero_provider.reconcile import CLEARED, DAILY_OWNED, FOREIGN, MATCHES, PURGED, REPAIRED, decide

H = datetime(2026, 11, 1, 5, tzinfo=timezone.utc)
OURS = {"status": "exported", "cost": "3", "origin": "spend_logs", "drop_ids": ["d"]}


@pytest.mark.parametrize(
    ("source", "requests", "held", "manifest", "owner", "floor", "action", "status", "moved"),
    [
        ("3", 5, "3", OURS, "spend_logs", None, "none", MATCHES, "0"),
        ("0", 0, "0", None, None, None, "none", MATCHES, "0"),
        # rows later than every late pass
        ("4.5", 6, "3", OURS, "spend_logs", None, "export", REPAIRED, "1.5"),
        ("3", 5, "0", OURS, "spend_logs", None, "export", REPAIRED, "3"),  # CloudZero lost the hour
        ("3", 5, "0", None, None, None, "export", REPAIRED, "3"),  # never exported
        # someone else wrote into an hour we never sent
        ("3", 5, "102.5", None, None, None, "export", FOREIGN, "99.5"),
        ("0", 0, "3", OURS, "spend_logs", None, "clear", CLEARED, "3"),  # the source emptied
        ("0", 0, "99.5", None, None, None, "clear", FOREIGN, "99.5"),
        ("0", 0, "3", OURS, "spend_logs", datetime(2026, 11, 2, tzinfo=timezone.utc), "none", PURGED, "0"),
        ("5", 5, "1", OURS, "daily_team", None, "none", DAILY_OWNED, "0"),
    ],
)
def test_verdicts(source, requests, held, manifest, owner, floor, action, status, moved):
    check = decide(H, source=Decimal(source), requests=requests, held=Decimal(held), manifest=manifest,
                   owner=owner, retention_floor=floor)  # fmt: skip
    assert (check.action, check.status) == (action, status)
    assert check.moved == Decimal(moved), "USD the action moves CloudZero by"


def test_a_torn_manifest_is_repaired_even_when_the_sums_agree():
    torn = {"hour": "2026-11-01T05:00:00Z", "status": "failed", "unreadable": "x.json: Expecting value"}
    check = decide(
        H, source=Decimal(3), requests=5, held=Decimal(3), manifest=torn, owner=None, retention_floor=None
    )
    assert (check.action, check.status) == ("export", REPAIRED)
