"""The reconciliation's verdict per hour (pure)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from cloudzero_provider.manifests import Manifest
from cloudzero_provider.verdicts import CLEARED, DAILY_OWNED, FOREIGN, MATCHES, PURGED, REPAIRED, decide

H = datetime(2026, 11, 1, 5, tzinfo=timezone.utc)
OURS = Manifest(H, status="exported", cost="3", origin="spend_logs", drop_ids=["d"])


@pytest.mark.parametrize(
    ("source", "requests", "held", "manifest", "owner", "floor", "action", "status"),
    [
        ("3", 5, "3", OURS, "spend_logs", None, "none", MATCHES),
        ("0", 0, "0", None, None, None, "none", MATCHES),
        ("4.5", 6, "3", OURS, "spend_logs", None, "export", REPAIRED),  # rows later than every late pass
        ("3", 5, "0", OURS, "spend_logs", None, "export", REPAIRED),  # CloudZero lost the hour
        ("3", 5, "0", None, None, None, "export", REPAIRED),  # never exported
        (
            "3",
            5,
            "102.5",
            None,
            None,
            None,
            "export",
            FOREIGN,
        ),  # someone else wrote into an hour we never sent
        ("0", 0, "3", OURS, "spend_logs", None, "clear", CLEARED),  # the source emptied
        ("0", 0, "99.5", None, None, None, "clear", FOREIGN),
        ("0", 0, "3", OURS, "spend_logs", datetime(2026, 11, 2, tzinfo=timezone.utc), "none", PURGED),
        ("5", 5, "1", OURS, "daily_team", None, "none", DAILY_OWNED),
    ],
)
def test_verdicts(source, requests, held, manifest, owner, floor, action, status):
    check = decide(H, source=Decimal(source), requests=requests, held=Decimal(held), manifest=manifest,
                   owner=owner, retention_floor=floor)  # fmt: skip
    assert (check.action, check.status) == (action, status)
    assert check.moved == (abs(Decimal(source) - Decimal(held)) if action != "none" else 0)


def test_a_torn_manifest_is_repaired_even_when_the_sums_agree():
    torn = Manifest(H, status="failed", unreadable="x.json: Expecting value")
    check = decide(
        H, source=Decimal(3), requests=5, held=Decimal(3), manifest=torn, owner=None, retention_floor=None
    )
    assert (check.action, check.status) == ("export", REPAIRED)
