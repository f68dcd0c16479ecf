"""Upload: a window's hours to AnyCost, whole, with manifests; hours that became empty are cleared."""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from cloudzero_provider.cbf import exact_decimal, exact_sum
from cloudzero_provider.drops import DEFAULT_MAX_REQUEST_BYTES, content_digest, serialize_row
from cloudzero_provider.hooks.cloudzero import CloudZeroHook
from cloudzero_provider.manifests import (
    EXPORTED,
    FAILED,
    SPEND_LOGS,
    Attempt,
    Manifest,
    ManifestStore,
    SourceTotals,
)
from cloudzero_provider.pipeline.extract import ExtractSummary, read_extract
from cloudzero_provider.pipeline.ownership import apply_ownership, clearing_row
from cloudzero_provider.pipeline.sending import Receipts, send_hours
from cloudzero_provider.pipeline.transform import HourFigures, TransformSummary, cbf_hours, check_staged_cbf
from cloudzero_provider.staging import WindowStage
from cloudzero_provider.windows import Window, hour_label, iso_instant, utc_now

log = logging.getLogger(__name__)


def clear_hours(
    hook: CloudZeroHook,
    hours: Sequence[datetime],
    manifests: ManifestStore,
    *,
    attempt: Attempt,
    origin: str = SPEND_LOGS,
) -> int:
    """Leave each hour at exactly 0 in CloudZero (one zero-cost row with ``replace_hourly``); returns requests."""
    rows_by_hour = {h: [serialize_row(clearing_row(h))] for h in hours}
    connection_id = hook.connection_id
    stamp = utc_now()

    def record(hour: datetime, receipts: Receipts) -> None:
        manifests.write_exported(
            Manifest(
                hour,
                connection_id=connection_id,
                window=hour_label(hour),
                content_sha256=content_digest(rows_by_hour[hour]),
                drop_ids=[r["drop_id"] for r in receipts],
                receipts=receipts,
                sent_at=stamp,
                extracted_at=stamp,
                source=SourceTotals(),
                origin=origin,
                cleared=True,
                run=attempt.key,
                decided_by=attempt.as_record(),
            ),
            late_correction=True,
        )

    return send_hours(hook, rows_by_hour, max_request_bytes=DEFAULT_MAX_REQUEST_BYTES, attempt=attempt,
                      manifests=manifests, on_hour_sent=record)  # fmt: skip


def _held_cost(m: Manifest | None, origin: str, connection_id: str | None) -> Decimal:
    """The cost the AnyCost connection ``connection_id`` may hold in an hour from this source's last acknowledged
    export (:meth:`Manifest.acknowledged_on`): its recorded cost, even when a later attempt failed or was cut off;
    0 when CloudZero never acknowledged rows of the hour there, or they were cleared. A record from before
    connections were kept apart is read as its own connection's: a purged hour is kept, an emptied one cleared."""
    return m.held_on(connection_id, origin) if m is not None else Decimal(0)


def _purged_hours(
    window: Window,
    staged: Mapping[datetime, Any],
    emptied: list[datetime],
    extract: ExtractSummary,
    manifests: ManifestStore,
    recorded: TransformSummary,
    connection_id: str | None,
) -> list[datetime]:
    """Spend-log hours LiteLLM's retention may have purged (:meth:`ExtractSummary.may_be_purged`) whose rows now
    cost less than this export sent for them (nothing, for an emptied hour): sending would lower CloudZero's
    history to what the retention left."""
    if extract.source != SPEND_LOGS:
        return []
    hours = [h for h in window.hour_starts() if (h in staged or h in emptied) and extract.may_be_purged(h)]
    held = manifests.get_many(hours)
    out = []
    for hour in hours:
        now = Decimal(recorded.hours[hour].cost) if hour in staged and hour in recorded.hours else Decimal(0)
        if now < _held_cost(held.get(hour), SPEND_LOGS, connection_id):
            out.append(hour)
    return out


def _emptied_hours(
    window: Window,
    present: set[datetime],
    extract: ExtractSummary,
    manifests: ManifestStore,
    *,
    origin: str,
    connection_id: str | None,
) -> list[datetime]:
    """Hours of the window this source exported with a cost that now have nothing to send -- also when a later
    attempt at the hour failed: without an explicit clearing row, CloudZero would keep their old cost forever (an
    empty hour sends no request)."""
    held = manifests.get_many(window.hour_starts())
    return [
        hour
        for hour in window.hour_starts()
        if hour not in present
        and hour not in extract.failed_hours
        and _held_cost(held.get(hour), origin, connection_id) != 0
    ]


def _record_checked_empty(
    window: Window,
    present: set[datetime],
    extract: ExtractSummary,
    manifests: ManifestStore,
    owned_elsewhere: set[datetime],
    attempt: Attempt,
) -> None:
    """An hour checked and holding no spend gets a record saying so (nothing is sent), so that "no spend" and
    "not done yet" read differently on the ledger. An hour that already has a record keeps it."""
    for hour in window.hour_starts():
        if hour in present or hour in extract.failed_hours or hour in owned_elsewhere:
            continue
        manifests.write_checked_empty(
            Manifest(hour, window=window.label, extracted_at=extract.extracted_at,
                     source=SourceTotals(extract.requests(hour), extract.spend(hour)), run=attempt.key,
                     decided_by=attempt.as_record()),
        )  # fmt: skip


@dataclass
class UploadResult:
    """What an upload did; :meth:`as_xcom` is its small summary, hours as labels."""

    window: Window
    hours: list[datetime]
    rows: int
    cost: str
    requests_sent: int
    drop_ids: list[str]
    skipped_newer: list[datetime] = field(default_factory=list)
    unchanged: list[datetime] = field(default_factory=list)
    cleared: list[datetime] = field(default_factory=list)
    skipped_owned: list[datetime] = field(default_factory=list)
    failed_hours: dict[datetime, str] = field(default_factory=dict)
    kept_purged: list[datetime] = field(default_factory=list)

    def as_xcom(self) -> dict[str, Any]:
        return {
            "window": self.window.label,
            "hours": [hour_label(h) for h in self.hours],
            "rows": self.rows,
            "cost": self.cost,
            "requests_sent": self.requests_sent,
            "drop_ids": self.drop_ids,
            "skipped_newer": [hour_label(h) for h in self.skipped_newer],
            "unchanged": [hour_label(h) for h in self.unchanged],
            "cleared": [hour_label(h) for h in self.cleared],
            "skipped_owned": [hour_label(h) for h in self.skipped_owned],
            "failed_hours": {hour_label(h): why for h, why in sorted(self.failed_hours.items())},
            "kept_purged": [hour_label(h) for h in self.kept_purged],
        }


def upload_window(
    hook: CloudZeroHook,
    window: Window,
    stage: WindowStage,
    manifests: ManifestStore,
    *,
    max_request_bytes: int,
    attempt: Attempt,
    late_correction: bool = False,
    skip_unchanged: bool = False,
    origin: str = SPEND_LOGS,
    take_over: bool = False,
    lower_purged: bool = False,
) -> UploadResult:
    """
    Send the window's CBF rows to AnyCost, one request at a time, and write a manifest per hour.

    Every hour is sent whole (``replace_hourly``; a split hour restarts at its first chunk), so re-running
    a window is safe. An hour whose manifest records a newer extract (e.g. the late-data pass) is not sent.
    Hours the extract recorded as failed (``isolate_hours``) are not sent; their manifests say why, and the
    result lists them under ``failed_hours`` for the caller to fail on after the others went.

    :param skip_unchanged: Do not send an hour whose manifest says it was exported with exactly these rows
        (a retry, or a range run again, redoes only what is not yet in CloudZero).
    :param origin: The source the rows come from (``spend_logs``, ``daily_team``, ``daily_user``); a UTC day of
        a stream is owned by one source (see :meth:`ManifestStore.day_owner`), and the other never writes into it.
    :param take_over: Switch the days of the window to ``origin``: the other source's hours of those days are
        cleared (left at exactly 0) as the new rows are sent.
    :param lower_purged: Send spend-log hours even where that lowers what this export sent before, in hours
        LiteLLM's retention may have purged (at or before the oldest spend-log row left). Off: such hours are kept
        as CloudZero holds them and listed under ``kept_purged`` -- a re-run over history past the retention must
        not erase it. Only for rows deleted on purpose.
    """
    staged, recorded = check_staged_cbf(window, stage)
    extract = read_extract(stage)
    present = set(staged)
    here = hook.connection_id  # what the manifests say went elsewhere, this AnyCost connection does not hold
    emptied = _emptied_hours(window, present, extract, manifests, origin=origin, connection_id=here)
    kept_purged = (
        [] if lower_purged else _purged_hours(window, staged, emptied, extract, manifests, recorded, here)
    )
    if kept_purged:
        log.warning(
            "Not sending %d hour(s) that LiteLLM's retention may have purged (at or before the oldest spend-log row "
            "left, %s): CloudZero keeps the higher cost this export sent before: %s. If their rows were deleted on "
            "purpose, run again with lower_purged.",
            len(kept_purged),
            iso_instant(extract.oldest_spend_log) if extract.oldest_spend_log else "none left",
            [hour_label(h) for h in kept_purged],
        )
        emptied = [h for h in emptied if h not in kept_purged]
    ownership = apply_ownership(present, window, manifests, origin=origin, take_over=take_over)
    cleared = set(ownership.cleared) | set(emptied)
    if emptied:
        log.warning("Clearing %d hour(s) to 0 in CloudZero: exported before, they hold no spend now: %s",
                    len(emptied), [hour_label(h) for h in emptied])  # fmt: skip
    for hour, reason in extract.failed_hours.items():
        manifests.mark(hour, status=FAILED, attempt=attempt, reason=reason)
    if origin == SPEND_LOGS:
        _record_checked_empty(window, present, extract, manifests, set(ownership.owned_elsewhere), attempt)
    digests = {h: fig.digest for h, fig in staged.items()}
    digests.update({h: content_digest([serialize_row(clearing_row(h))]) for h in cleared})
    candidates = (
        present - set(ownership.owned_elsewhere) - set(extract.failed_hours) - set(kept_purged)
    ) | cleared
    skipped, unchanged = [], []
    records = manifests.get_many(candidates)
    for hour in sorted(candidates):
        current = records.get(hour)
        if current and current.extracted_at and current.extracted_at > extract.extracted_at:
            # A newer extract of this hour was already sent: never overwrite it with older data.
            skipped.append(hour)
        elif (
            skip_unchanged
            and current
            and current.status == EXPORTED
            and current.content_sha256 == digests[hour]
            # sent to this AnyCost connection: after the connection's extra names another, history goes again
            and current.connection_id in (None, here)
        ):
            unchanged.append(hour)
    to_send = candidates - set(skipped) - set(unchanged)
    if skipped:
        log.warning("Not sending hour(s) %s: a newer extract of them was already exported",
                    [hour_label(h) for h in skipped])  # fmt: skip
    if unchanged:
        log.info("%d hour(s) already exported with exactly these rows, not sent again", len(unchanged))
    started = time.monotonic()
    done: list[datetime] = []

    def groups() -> Iterator[tuple[datetime, list[bytes]]]:
        """The hours to send in hour order: staged rows read hour by hour, clearing rows merged in."""
        staged_groups = ((h, rows) for h, rows in cbf_hours(stage) if h in to_send and h not in cleared)
        clearing = ((h, [serialize_row(clearing_row(h))]) for h in sorted(to_send & cleared))
        return heapq.merge(staged_groups, clearing, key=lambda group: group[0])

    def record(hour: datetime, receipts: Receipts) -> None:
        fig = recorded.hours.get(hour) if hour not in cleared else None
        fig = fig or HourFigures(0, "0", 0)
        manifests.write_exported(
            Manifest(
                hour,
                connection_id=here,
                window=window.label,
                rows=fig.rows,
                cost=fig.cost,
                tokens=fig.tokens,
                content_sha256=digests[hour],
                drop_ids=[r["drop_id"] for r in receipts],
                receipts=receipts,
                sent_at=utc_now(),
                extracted_at=extract.extracted_at,
                source=SourceTotals(extract.requests(hour), extract.spend(hour)),
                origin=origin,
                cleared=hour in cleared,
                run=attempt.key,
                decided_by=attempt.as_record(),
            ),
            late_correction=late_correction,
        )
        done.append(hour)
        elapsed = max(time.monotonic() - started, 1e-9)
        requests_done = sum(extract.requests(h) for h in done)
        log.info("Hour %s exported: %d/%d hour(s) of %s done, %.0f source requests/s", hour_label(hour), len(done),
                 len(to_send), window, requests_done / elapsed)  # fmt: skip

    sent = send_hours(hook, groups, max_request_bytes=max_request_bytes, attempt=attempt, manifests=manifests,
                      on_hour_sent=record)  # fmt: skip
    exported = sorted(to_send)
    total = exact_decimal(
        exact_sum(recorded.hours[h].cost for h in exported if h in recorded.hours and h not in cleared)
    )
    rows = sum(staged[h].rows if h in staged and h not in cleared else 1 for h in exported)
    drops = sorted({d for h in exported for d in (manifests.get(h) or Manifest(h)).drop_ids})
    log.info(
        "Uploaded %s to AnyCost connection %s: %d hour(s), %d rows, cost %s USD, %d request(s); drops %s",
        window, here, len(exported), rows, total, sent, drops,
    )  # fmt: skip
    return UploadResult(
        window=window,
        hours=exported,
        rows=rows,
        cost=total,
        requests_sent=sent,
        drop_ids=drops,
        skipped_newer=skipped,
        unchanged=unchanged,
        cleared=sorted(cleared),
        skipped_owned=ownership.owned_elsewhere,
        failed_hours=dict(sorted(extract.failed_hours.items())),
        kept_purged=kept_purged,
    )
