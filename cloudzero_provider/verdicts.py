"""Reconciliation's verdict on an hour, given the source, the manifest and CloudZero's own state.

Pure decision: it imports no Airflow and does no I/O (the manifest is the typed record, already read).

Statuses, as the ledger and the run's summary show them:

- ``matches``: CloudZero holds exactly the source's cost (nothing sent);
- ``repaired``: CloudZero differed (lost, rejected or stale data, rows later than every late pass) and the hour was
  exported again from the source;
- ``cleared``: the source holds nothing any more for an hour this exporter sent; the hour was set to exactly 0;
- ``foreign data removed``: CloudZero held cost this exporter never sent for an hour without source spend (another
  writer to the stream) and the run was told to remove it (``remove_foreign``): the hour was set to exactly 0 --
  or re-exported when the source has spend;
- ``foreign data kept``: the same, without ``remove_foreign``: nothing was sent, the verdict says so;
- ``purged at source``: the source may have lost the hour's rows to LiteLLM's retention (the hour is older than
  the oldest row the source still holds, its whole day is gone from the spend logs while the daily rollup still
  counts it, or it is older than the configured retention): CloudZero keeps its history, never lowered;
- ``daily-owned``: the day belongs to the daily-rollup export; this reconciliation leaves it alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudzero_provider.manifests import Manifest

MATCHES = "matches"
REPAIRED = "repaired"
CLEARED = "cleared"
FOREIGN = "foreign data removed"
FOREIGN_KEPT = "foreign data kept"
PURGED = "purged at source"
DAILY_OWNED = "daily-owned"


@dataclass(frozen=True)
class HourCheck:
    """One hour's three views and the verdict."""

    hour: datetime
    source: Decimal  # SUM(spend::numeric) of the valid rows now
    requests: int
    held: Decimal  # what CloudZero holds (or, where it cannot be read, what the manifest says was sent)
    sent: Decimal | None  # what the manifest says this exporter sent (None: never sent)
    action: str  # "none" | "export" | "clear"
    status: str

    @property
    def moved(self) -> Decimal:
        """USD by which the action moves CloudZero."""
        return abs(self.source - self.held) if self.action != "none" else Decimal(0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "requests": self.requests,
            "held": str(self.held),
            "sent": None if self.sent is None else str(self.sent),
            "action": self.action,
            "status": self.status,
        }


def decide(
    hour: datetime,
    *,
    source: Decimal,
    requests: int,
    held: Decimal,
    manifest: Manifest | None,
    owner: str | None,
    may_be_purged: bool,
    remove_foreign: bool = False,
    connection_id: str | None = None,
) -> HourCheck:
    """
    The verdict for one hour. A default never destroys data: an hour that may have lost its rows to LiteLLM's
    retention is never lowered, and cost another writer put in the stream is removed only when asked.

    :param owner: Who owns the hour's day in this stream (``spend_logs``, a daily origin, or None).
    :param may_be_purged: The source may have lost some or all of the hour's rows to retention.
    :param remove_foreign: Clear an hour holding cost this exporter never sent, when the source has none.
    :param connection_id: The AnyCost connection ``held`` was read from: cost this exporter sent to another one is
        not its cost here (nor is that of a record too old to say which connection it went to).
    """
    # A later attempt that failed leaves the last acknowledged export in CloudZero: still this exporter's cost.
    sent = manifest.acknowledged_on(connection_id, unknown_as_own=False) if manifest else None
    ours = manifest is not None and manifest.is_ours and not manifest.empty
    if manifest is not None and manifest.connection_id not in (None, connection_id):
        ours = ours and sent is not None  # what went to another connection is not this one's

    def check(action: str, status: str) -> HourCheck:
        return HourCheck(hour, source, requests, held, sent, action, status)

    if owner is not None and owner != "spend_logs":
        return check("none", DAILY_OWNED)
    if manifest and manifest.unreadable and (source != 0 or requests):
        return check("export", REPAIRED)  # a torn record: export again, which writes a sound one
    if held == source:
        return check("none", MATCHES)
    if may_be_purged and source < held:
        return check("none", PURGED)  # what is left at the source is not the whole hour any more
    if source != 0 or requests:
        # CloudZero lost, missed or changed the hour, or someone else wrote into it: the source wins.
        return check("export", REPAIRED if ours or sent is not None or held == 0 else FOREIGN)
    if ours and sent is not None:
        return check("clear", CLEARED)
    return check("clear", FOREIGN) if remove_foreign else check("none", FOREIGN_KEPT)
