"""CloudZero's rows read back (``GET .../billing_drops/{month}``), checked like the CBF we send. Pure: no Airflow.

Reconciliation trusts CloudZero's answer only as far as it proves itself: every row must carry a
``time/usage_start`` and a ``cost/cost`` that pass the same rules (pattern and length) as the rows this exporter
sends. A row that does not stops the reconciliation of its month with a message naming the hour and the value
(cut), never a traceback or a number built from a hostile string (``1e100000000`` would be a 184 MB Decimal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from cloudzero_provider.cbf import EXACT
from cloudzero_provider.cbf_rules import cut, is_datetime, is_number
from cloudzero_provider.windows import hour_of, iso_hour


class ReadBackError(ValueError):
    """CloudZero answered a month with a row this exporter cannot read; that month cannot be reconciled."""


def held_by_hour(rows: Iterable[Any], month: str) -> dict[datetime, Decimal]:
    """
    What CloudZero holds per hour (exact sums of ``cost/cost``) from the rows of one month.

    :param rows: The ``billing_drop`` list CloudZero answered.
    :param month: ``YYYY-MM``, for messages.
    :raises ReadBackError: A row is not an object, or its time or cost breaks the CBF rules.
    """
    held: dict[datetime, Decimal] = {}
    for index, row in enumerate(rows):
        where = f"CloudZero's rows of {month}: row {index}"
        if not isinstance(row, Mapping):
            raise ReadBackError(f"{where} is a {type(row).__name__}, not an object; cannot reconcile {month}")
        start, cost = row.get("time/usage_start"), row.get("cost/cost")
        if not isinstance(start, str) or not is_datetime(start):
            raise ReadBackError(
                f"{where} has time/usage_start {cut(str(start))!r}, not an ISO-8601 date-time; cannot reconcile "
                f"{month}"
            )
        try:
            hour = hour_of(start)
        except ValueError:
            raise ReadBackError(
                f"{where} has time/usage_start {cut(start)!r}, not a date; cannot reconcile {month}"
            ) from None
        if isinstance(cost, (int, float)) and not isinstance(cost, bool):
            cost = str(cost)
        if not isinstance(cost, str) or not is_number(cost):
            raise ReadBackError(
                f"{where} (hour {iso_hour(hour)}) has cost/cost {cut(str(cost))!r}, not a plain non-negative "
                f"decimal; cannot reconcile {month}"
            )
        held[hour] = EXACT.add(held.get(hour, Decimal(0)), Decimal(cost))
    return held
