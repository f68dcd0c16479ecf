"""One owner per UTC day and stream: hourly (spend logs) or daily-rollup data, never both."""

from __future__ import annotations

import logging
from datetime import datetime

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.drops import (
    serialize_row,
)
from cloudzero_provider.manifests import ManifestStore
from cloudzero_provider.windows import DAY, Window, day_label, iso_hour, parse_hour

log = logging.getLogger(__name__)

# -- source ownership -------------------------------------------------------------------------------------

DAILY_ORIGINS = ("daily_team", "daily_user", "daily_tag")
SWITCH_HINT = {
    "spend_logs": "trigger litellm_cloudzero_range for that day with take_over=true",
    "daily": "trigger litellm_cloudzero_daily_rollup for that day with take_over=true",
}


def day_owner(manifests: ManifestStore, day: datetime) -> str | None:
    """
    Which source owns a UTC day of a stream: the daily-rollup export (its origin, recorded on the day's 00:00
    manifest), ``spend_logs`` when any hour of the day went out from spend logs, or ``None``.

    Daily rows sit at 00:00, so hourly and daily data of one day in one stream would either erase each other
    (``replace_hourly`` of hour 00) or be counted twice: a day has one owner.
    """
    first = manifests.get(day)
    if first and str(first.get("origin", "")) in DAILY_ORIGINS and first.get("status") != "failed":
        return str(first["origin"])
    for hour in Window(day, day + DAY).hour_starts():
        m = manifests.get(hour)
        if (
            m
            and m.get("origin", "spend_logs") == "spend_logs"
            and (m.get("drop_ids") or m.get("status") == "sending")
        ):
            return "spend_logs"
    return None


def clearing_row(hour: str) -> dict[str, str]:
    """One zero-cost CBF row: sent with ``replace_hourly`` it leaves the hour at exactly 0 in CloudZero."""
    return {
        "time/usage_start": hour,
        "cost/cost": "0",
        "lineitem/type": "Usage",
        "lineitem/description": "cleared: this hour holds no LLM spend from this source",
        "resource/service": "litellm",
        "resource/id": "litellm-cleared-hour",
        "usage/amount": "0",
    }


def _apply_ownership(
    rows_by_hour: dict[str, list[bytes]],
    window: Window,
    manifests: ManifestStore,
    *,
    origin: str,
    take_over: bool,
    dropped: list[str],
) -> set[str]:
    """Drop the hours another source owns into ``dropped`` (or, with ``take_over``, add the clearing rows that
    switch them); returns the hours to clear."""
    days = sorted(
        {parse_hour(h).replace(hour=0) for h in rows_by_hour} | {d.start for d in window.each_day()}
    )
    clear: set[str] = set()
    for day in days:
        owner = day_owner(manifests, day)
        if owner is None or owner == origin:
            continue
        if owner in DAILY_ORIGINS and origin in DAILY_ORIGINS:
            if not take_over:
                raise AirflowFailException(
                    f"{day_label(day)} of this stream is owned by the {owner} export, not {origin}: the two "
                    f"rollup tables count the same requests. Nothing was sent. To switch, {SWITCH_HINT['daily']}."
                )
            if iso_hour(day) not in rows_by_hour:
                clear.add(iso_hour(day))
            continue
        hours = Window(day, day + DAY).hour_starts()
        if not take_over:
            if origin == "spend_logs":
                owned = [iso_hour(h) for h in hours if iso_hour(h) in rows_by_hour]
                for h in owned:
                    del rows_by_hour[h]
                dropped.extend(owned)
                log.warning(
                    "%s of this stream is owned by the daily-rollup export (%s): not sending %d hour(s) from spend "
                    "logs into it. To switch the day to hourly data, %s.",
                    day_label(day), owner, len(owned), SWITCH_HINT["spend_logs"],
                )  # fmt: skip
                continue
            raise AirflowFailException(
                f"{day_label(day)} of this stream already holds hourly data exported from spend logs; a daily "
                f"export ({origin}) of it would count its spend twice. Nothing was sent. To switch the day to the "
                f"daily rollup, {SWITCH_HINT['daily']}; to keep hourly data, leave it to litellm_cloudzero_hourly."
            )
        if origin == "spend_logs":  # the daily rows sit at 00:00: replace them, with nothing if need be
            first = iso_hour(day)
            if first not in rows_by_hour:
                clear.add(first)
        else:  # every hour the spend-log export sent that day goes back to 0
            for hour in hours[1:]:
                m = manifests.get(hour)
                if m and m.get("origin", "spend_logs") == "spend_logs" and m.get("drop_ids"):
                    clear.add(iso_hour(hour))
            if iso_hour(day) not in rows_by_hour:
                clear.add(iso_hour(day))
        log.warning("Taking %s of this stream over from %s to %s: clearing %d hour(s)", day_label(day), owner,
                    origin, len(clear))  # fmt: skip
    for cleared_hour in clear:
        rows_by_hour[cleared_hour] = [serialize_row(clearing_row(cleared_hour))]
    return clear
