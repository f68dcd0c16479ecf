"""The reconciliation's verdict per hour (pure)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from cloudzero_provider.manifests import Manifest
from cloudzero_provider.verdicts import (
    CLEARED,
    DAILY_OWNED,
    FOREIGN,
    FOREIGN_KEPT,
    MATCHES,
    PURGED,
    REPAIRED,
    decide,
)

H = datetime(2026, 11, 1, 5, tzinfo=timezone.utc)
OURS = Manifest(H, status="exported", cost="3", origin="spend_logs", drop_ids=["d"])
EMPTY = Manifest(H, status="exported", empty=True)
FAILED_LATER = Manifest(H, status="failed", cost="3", origin="spend_logs", drop_ids=["d"], reason="HTTP 503")
SENDING_LATER = Manifest(H, status="sending", cost="3", origin="spend_logs", drop_ids=["d"])
FAILED_NEVER_SENT = Manifest(H, status="failed", origin="spend_logs", reason="HTTP 503")


@pytest.mark.parametrize(
    ("source", "requests", "held", "manifest", "owner", "purged", "foreign", "action", "status", "moved"),
    [
        ("3", 5, "3", OURS, "spend_logs", False, False, "none", MATCHES, "0"),
        ("0", 0, "0", None, None, False, False, "none", MATCHES, "0"),
        (
            "4.5",
            6,
            "3",
            OURS,
            "spend_logs",
            False,
            False,
            "export",
            REPAIRED,
            "1.5",
        ),  # rows later than every pass
        ("3", 5, "0", OURS, "spend_logs", False, False, "export", REPAIRED, "3"),  # CloudZero lost the hour
        ("3", 5, "0", None, None, False, False, "export", REPAIRED, "3"),  # never exported
        (
            "3",
            5,
            "102.5",
            None,
            None,
            False,
            False,
            "export",
            FOREIGN,
            "99.5",
        ),  # another writer, source has spend
        (
            "0",
            0,
            "3",
            OURS,
            "spend_logs",
            False,
            False,
            "clear",
            CLEARED,
            "3",
        ),  # the source's rows were deleted
        (
            "0",
            0,
            "99.5",
            None,
            None,
            False,
            True,
            "clear",
            FOREIGN,
            "99.5",
        ),  # asked to remove other writers' cost
        ("0", 0, "99.5", None, None, False, False, "none", FOREIGN_KEPT, "0"),  # ... and by default not
        (
            "0",
            0,
            "99.5",
            EMPTY,
            "spend_logs",
            False,
            False,
            "none",
            FOREIGN_KEPT,
            "0",
        ),  # checked empty is not ours
        ("0", 0, "3", OURS, "spend_logs", True, True, "none", PURGED, "0"),  # purged: never lowered
        ("1", 2, "3", OURS, "spend_logs", True, False, "none", PURGED, "0"),  # partly purged: never lowered
        ("4", 2, "3", OURS, "spend_logs", True, False, "export", REPAIRED, "1"),  # more at the source: raised
        ("5", 5, "1", OURS, "daily_team", False, True, "none", DAILY_OWNED, "0"),
        # A later attempt failed: CloudZero still holds the last acknowledged export, which is ours to clear.
        ("0", 0, "3", FAILED_LATER, "spend_logs", False, False, "clear", CLEARED, "3"),
        ("0", 0, "3", SENDING_LATER, "spend_logs", False, False, "clear", CLEARED, "3"),
        ("0", 0, "3", FAILED_NEVER_SENT, "spend_logs", False, False, "none", FOREIGN_KEPT, "0"),
    ],
)
def test_verdicts(source, requests, held, manifest, owner, purged, foreign, action, status, moved):
    check = decide(H, source=Decimal(source), requests=requests, held=Decimal(held), manifest=manifest,
                   owner=owner, may_be_purged=purged, remove_foreign=foreign)  # fmt: skip
    assert (check.action, check.status) == (action, status)
    assert check.moved == Decimal(moved)


def test_a_torn_manifest_is_repaired_even_when_the_sums_agree():
    torn = Manifest(H, status="failed", unreadable="x.json: Expecting value")
    check = decide(
        H, source=Decimal(3), requests=5, held=Decimal(3), manifest=torn, owner=None, may_be_purged=False
    )
    assert (check.action, check.status) == ("export", REPAIRED)


def test_cost_sent_to_another_anycost_connection_is_not_ours_to_clear():
    """Reconciling connection B: an hour this exporter sent only to A, whose source is now empty, holds B's cost
    that no record says it sent there -- kept, said (cleared only when asked); one it sent to B too is cleared."""
    only_a = Manifest(H, status="failed", cost="3", origin="spend_logs", drop_ids=["d"], connection_id="conn-a",
                      acknowledged_by={"conn-a": {"origin": "spend_logs", "cost": "3"}})  # fmt: skip
    legacy_a = Manifest(
        H, status="exported", cost="3", origin="spend_logs", drop_ids=["d"], connection_id="conn-a"
    )
    both = Manifest(H, status="exported", cost="3", origin="spend_logs", drop_ids=["d"], connection_id="conn-a",
                    acknowledged_by={"conn-a": {"origin": "spend_logs", "cost": "3"},
                                     "conn-b": {"origin": "spend_logs", "cost": "2"}})  # fmt: skip
    args = {
        "source": Decimal(0),
        "requests": 0,
        "held": Decimal(2),
        "owner": "spend_logs",
        "may_be_purged": False,
    }
    for manifest in (only_a, legacy_a):
        check = decide(H, manifest=manifest, connection_id="conn-b", **args)
        assert (check.action, check.status, check.sent) == ("none", FOREIGN_KEPT, None)
        assert (
            decide(H, manifest=manifest, connection_id="conn-b", remove_foreign=True, **args).action
            == "clear"
        )
    check = decide(H, manifest=both, connection_id="conn-b", **args)
    assert (check.action, check.status, check.sent) == ("clear", CLEARED, Decimal(2))
    check = decide(H, manifest=only_a, connection_id="conn-a", **{**args, "held": Decimal(3)})
    assert (check.action, check.status) == ("clear", CLEARED), (
        "its own connection: the failed-later hour is ours"
    )
