"""What the steps of a window share: source names and the description of invalid rows."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.hooks.litellm import HourTotal
from cloudzero_provider.windows import iso_hour

SOURCES = ("spend_logs", "daily_team", "daily_user", "daily_tag")
MONTH_ROW_LIMIT = 1_000_000  # CloudZero: rows per stream and month


def describe_invalid(hours: Mapping[datetime, HourTotal], table: str) -> str:
    parts = []
    for hour, ht in sorted(hours.items()):
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(ht.invalid.items()))
        parts.append(f"hour {iso_hour(hour)}: {reasons} (e.g. {', '.join(map(str, ht.invalid_samples))})")
    total = sum(sum(ht.invalid.values()) for ht in hours.values())
    return f"{total} invalid {table} row(s) -- " + "; ".join(parts)


def check_dry_run_limit(dry_run: bool, limit: int | None) -> None:
    """``limit`` previews part of an hour, which only a dry run may do."""
    if limit is not None and not dry_run:
        raise AirflowFailException(
            "limit previews only the first N records in a dry run. A real export always sends whole hours: "
            "replace_hourly with part of an hour would erase the rest of that hour in CloudZero. Set dry_run, "
            "or clear limit."
        )
