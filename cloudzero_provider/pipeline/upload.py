"""Upload: a window's hours to AnyCost, whole, with manifests; hours that became empty are cleared."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from cloudzero_provider.cbf import (
    exact_decimal,
    exact_sum,
)
from cloudzero_provider.drops import (
    DEFAULT_MAX_REQUEST_BYTES,
    content_digest,
    serialize_row,
)
from cloudzero_provider.hooks.cloudzero import CloudZeroHook
from cloudzero_provider.manifests import ManifestStore
from cloudzero_provider.pipeline.common import _now
from cloudzero_provider.pipeline.ownership import _apply_ownership, clearing_row
from cloudzero_provider.pipeline.send import _send_all, _staged_cbf
from cloudzero_provider.staging import WindowStage
from cloudzero_provider.windows import Window, hour_label, iso_hour, parse_hour

log = logging.getLogger(__name__)


def clear_hours(
    hook: CloudZeroHook,
    hours: Sequence[datetime],
    manifests: ManifestStore,
    *,
    salt: str,
    origin: str = "spend_logs",
) -> int:
    """Leave each hour at exactly 0 in CloudZero (one zero-cost row with ``replace_hourly``); returns requests."""
    rows_by_hour = {iso_hour(h): [serialize_row(clearing_row(iso_hour(h)))] for h in hours}
    connection_id = hook.connection_id
    stamp = _now()

    def record(hour: str, receipts: list[dict[str, Any]]) -> None:
        manifests.write_exported(
            parse_hour(hour),
            {
                "connection_id": connection_id,
                "window": hour_label(parse_hour(hour)),
                "rows": 0,
                "cost": "0",
                "tokens": 0,
                "content_sha256": content_digest(rows_by_hour[hour]),
                "drop_ids": [r["drop_id"] for r in receipts],
                "receipts": receipts,
                "sent_at": stamp,
                "extracted_at": stamp,
                "source": {"requests": 0, "spend": "0"},
                "origin": origin,
                "cleared": True,
                "run": salt,
            },
            late_correction=True,
        )

    return _send_all(hook, rows_by_hour, max_request_bytes=DEFAULT_MAX_REQUEST_BYTES, salt=salt,
                     manifests=manifests, on_hour_sent=record)  # fmt: skip


def _emptied_hours(
    window: Window,
    rows_by_hour: Mapping[str, Sequence[bytes]],
    extract: Mapping[str, Any],
    manifests: ManifestStore,
    *,
    origin: str,
) -> list[str]:
    """Hours of the window this source exported with a cost that now have nothing to send: without an explicit
    clearing row, CloudZero would keep their old cost forever (an empty hour sends no request)."""
    failed = set(extract.get("failed_hours") or {})
    out = []
    for start in window.hour_starts():
        hour = iso_hour(start)
        if hour in rows_by_hour or hour in failed:
            continue
        m = manifests.get(start)
        if (
            m
            and m.get("status") == "exported"
            and m.get("origin", "spend_logs") == origin
            and not m.get("cleared")
            and Decimal(str(m.get("cost", "0"))) != 0
        ):
            out.append(hour)
    return out


def upload_window(
    hook: CloudZeroHook,
    window: Window,
    stage: WindowStage,
    manifests: ManifestStore,
    *,
    max_request_bytes: int,
    salt: str,
    late_correction: bool = False,
    skip_unchanged: bool = False,
    origin: str = "spend_logs",
    take_over: bool = False,
) -> dict[str, Any]:
    """
    Send the window's CBF rows to AnyCost, one request at a time, and write a manifest per hour.

    Every hour is sent whole (``replace_hourly``; a split hour restarts at its first chunk), so re-running
    a window is safe. An hour whose manifest records a newer extract (e.g. the late-data pass) is not sent.
    Hours the extract recorded as failed (``isolate_hours``) are not sent; their manifests say why, and the
    result lists them under ``failed_hours`` for the caller to fail on after the others went.

    :param skip_unchanged: Do not send an hour whose manifest says it was exported with exactly these rows
        (a retry, or a range run again, redoes only what is not yet in CloudZero).
    :param origin: The source the rows come from (``spend_logs``, ``daily_team``, ``daily_user``); a UTC day of
        a stream is owned by one source (see :func:`day_owner`), and the other never writes into it.
    :param take_over: Switch the days of the window to ``origin``: the other source's hours of those days are
        cleared (left at exactly 0) as the new rows are sent.
    """
    rows_by_hour, recorded = _staged_cbf(window, stage)
    extract = stage.read_json("extract.json")
    owned_elsewhere: list[str] = []
    emptied = _emptied_hours(window, rows_by_hour, extract, manifests, origin=origin)
    cleared = _apply_ownership(rows_by_hour, window, manifests, origin=origin, take_over=take_over,
                               dropped=owned_elsewhere)  # fmt: skip
    for hour in emptied:
        rows_by_hour[hour] = [serialize_row(clearing_row(hour))]
        cleared.add(hour)
    if emptied:
        log.warning("Clearing %d hour(s) to 0 in CloudZero: exported before, they hold no spend now: %s",
                    len(emptied), emptied)  # fmt: skip
    failed: dict[str, str] = dict(extract.get("failed_hours") or {})
    for hour, reason in failed.items():
        rows_by_hour.pop(hour, None)
        manifests.mark(parse_hour(hour), status="failed", run=salt, reason=reason)
    skipped, unchanged = [], []
    for hour in list(rows_by_hour):
        current = manifests.get(parse_hour(hour))
        if current and current.get("extracted_at", "") > extract["extracted_at"]:
            # A newer extract of this hour was already sent: never overwrite it with older data.
            skipped.append(hour)
            del rows_by_hour[hour]
        elif (
            skip_unchanged
            and current
            and current.get("status") == "exported"
            and current.get("content_sha256") == content_digest(rows_by_hour[hour])
        ):
            unchanged.append(hour)
            del rows_by_hour[hour]
    if skipped:
        log.warning("Not sending hour(s) %s: a newer extract of them was already exported", skipped)
    if unchanged:
        log.info("%d hour(s) already exported with exactly these rows, not sent again", len(unchanged))
    connection_id = hook.connection_id
    total_hours = len(rows_by_hour)
    started = time.monotonic()

    def record(hour: str, receipts: list[dict[str, Any]]) -> None:
        src = extract["hours"].get(hour, {})
        fig = recorded["hours"].get(hour) or {"rows": 0, "cost": "0", "tokens": 0}  # a cleared hour
        manifests.write_exported(
            parse_hour(hour),
            {
                "connection_id": connection_id,
                "window": window.label,
                "rows": fig["rows"],
                "cost": fig["cost"],
                "tokens": fig["tokens"],
                "content_sha256": content_digest(rows_by_hour[hour]),
                "drop_ids": [r["drop_id"] for r in receipts],
                "receipts": receipts,
                "sent_at": _now(),
                "extracted_at": extract["extracted_at"],
                "source": {"requests": src.get("requests", 0), "spend": src.get("spend", "0")},
                "origin": origin,
                "cleared": hour in cleared,
                "run": salt,
            },
            late_correction=late_correction,
        )
        done.append(hour)
        elapsed = max(time.monotonic() - started, 1e-9)
        requests_done = sum(int(extract["hours"].get(h, {}).get("requests", 0)) for h in done)
        log.info("Hour %s exported: %d/%d hour(s) of %s done, %.0f source requests/s", hour, len(done),
                 total_hours, window, requests_done / elapsed)  # fmt: skip

    done: list[str] = []
    sent = _send_all(hook, rows_by_hour, max_request_bytes=max_request_bytes, salt=salt, manifests=manifests,
                     on_hour_sent=record)  # fmt: skip
    exported = sorted(rows_by_hour)
    total = exact_decimal(exact_sum(recorded["hours"][h]["cost"] for h in exported if h in recorded["hours"]))
    rows = sum(len(v) for v in rows_by_hour.values())
    drops = sorted({d for h in exported for d in (manifests.get(parse_hour(h)) or {}).get("drop_ids", [])})
    log.info(
        "Uploaded %s to AnyCost connection %s: %d hour(s), %d rows, cost %s USD, %d request(s); drops %s",
        window,
        connection_id,
        len(exported),
        rows,
        total,
        sent,
        drops,
    )
    return {
        "window": window.label,
        "hours": [hour_label(parse_hour(h)) for h in exported],
        "rows": rows,
        "cost": total,
        "requests_sent": sent,
        "drop_ids": drops,
        "skipped_newer": skipped,
        "unchanged": [hour_label(parse_hour(h)) for h in unchanged],
        "cleared": [hour_label(parse_hour(h)) for h in sorted(cleared)],
        "skipped_owned": [hour_label(parse_hour(h)) for h in owned_elsewhere],
        "failed_hours": {hour_label(parse_hour(h)): reason for h, reason in sorted(failed.items())},
    }
