"""One owner per UTC day and stream: hourly (spend logs) or daily-rollup data, never both.

Who owns a day is :meth:`ManifestStore.day_owner`; this module applies the answer to the hours about to be sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.manifests import DAILY_ORIGINS, SPEND_LOGS, ManifestStore
from cloudzero_provider.windows import Window, day_label, day_start, iso_hour

log = logging.getLogger(__name__)

SWITCH_HINT = {
    "spend_logs": "trigger litellm_cloudzero_range for that day with take_over=true",
    "daily": "trigger litellm_cloudzero_daily_rollup for that day with take_over=true",
}


def clearing_row(hour: datetime) -> dict[str, str]:
    """One zero-cost CBF row: sent with ``replace_hourly`` it leaves the hour at exactly 0 in CloudZero."""
    return {
        "time/usage_start": iso_hour(hour),
        "cost/cost": "0",
        "lineitem/type": "Usage",
        "lineitem/description": "cleared: this hour holds no LLM spend from this source",
        "resource/service": "litellm",
        "resource/id": "litellm-cleared-hour",
        "usage/amount": "0",
    }


@dataclass
class Ownership:
    """What owning the window's days changed: hours cleared to 0, hours not sent because another source owns
    their day."""

    cleared: set[datetime] = field(default_factory=set)
    owned_elsewhere: list[datetime] = field(default_factory=list)


def apply_ownership(
    present: set[datetime],
    window: Window,
    manifests: ManifestStore,
    *,
    origin: str,
    take_over: bool,
) -> Ownership:
    """Of the hours about to be sent (``present``), which another source's day owns (not to be sent), and which
    hours must be cleared to 0 to switch a day with ``take_over`` (send :func:`clearing_row` for them).

    ``take_over`` switches whole days only: a day's 00:00 holds its daily rows, so a window holding part of a day
    would clear the whole day's and send part of it (the range plans a day into one chunk when it takes over)."""
    if take_over and not window.is_day_aligned:
        raise AirflowFailException(
            f"take_over switches whole UTC days; {window} covers part of one, whose daily rows at 00:00 count the "
            "whole day. Nothing was sent. Take over whole days (start and end at 00:00 UTC)."
        )
    days = sorted({day_start(h) for h in present} | {d.start for d in window.each_day()})
    held = manifests.get_many(h for d in days for h in Window.day(d).hour_starts())
    owners = manifests.day_owners(days, held=held)
    out = Ownership()
    for day in days:
        owner = owners[day]
        if owner is None or owner == origin:
            continue
        if owner in DAILY_ORIGINS and origin in DAILY_ORIGINS:
            if not take_over:
                raise AirflowFailException(
                    f"{day_label(day)} of this stream is owned by the {owner} export, not {origin}: the two "
                    f"rollup tables count the same requests. Nothing was sent. To switch, {SWITCH_HINT['daily']}."
                )
            if day not in present:
                out.cleared.add(day)
            continue
        hours = Window.day(day).hour_starts()
        if not take_over:
            if origin == SPEND_LOGS:
                owned = [h for h in hours if h in present]
                out.owned_elsewhere.extend(owned)
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
        if origin == SPEND_LOGS:  # the daily rows sit at 00:00: replace them, with nothing if need be
            if day not in present:
                out.cleared.add(day)
        else:  # every hour the spend-log export sent that day goes back to 0
            for hour in hours[1:]:
                m = held.get(hour)
                if m and m.is_ours and m.drop_ids:
                    out.cleared.add(hour)
            if day not in present:
                out.cleared.add(day)
        log.warning("Taking %s of this stream over from %s to %s: clearing %d hour(s)", day_label(day), owner,
                    origin, len(out.cleared))  # fmt: skip
    return out
