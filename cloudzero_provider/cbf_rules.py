"""The rules a CloudZero Billing Format (CBF) row must follow, from CloudZero's AnyCost OpenAPI spec.

Pure: no Airflow imports. Used by ``cbf.py`` before a row leaves the transform and by the local
CloudZero double, so the double rejects exactly what this project promises never to send.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

# Patterns copied from the OpenAPI spec (cloudzero-anycost-openapi.json); always used with ``fullmatch``, since
# ``$`` would let a final line break through.
DATETIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(([+-]\d\d:\d\d)|Z)?")
NUMBER_RE = re.compile(r"\d+(\.\d{1,})?")
# CloudZero docs: tag keys are case-sensitive letters, digits and _ . : / = + - @, no whitespace.
TAG_KEY_RE = re.compile(r"[A-Za-z0-9_.:/=+\-@]+")

# No number we send or read back is longer: a spend down to float8's smallest normal value (2.2e-308) written out
# in full fits. Checked before the pattern, so a hostile answer never costs a long match or a huge Decimal.
MAX_NUMBER_CHARS = 400
MAX_DATETIME_CHARS = 40

TAG_PREFIX = "resource/tag:"

LINEITEM_TYPES = frozenset(
    {"Usage", "Tax", "Support", "Purchase", "CommittedUsePurchase", "Discount", "Credit", "Fee", "Adjustment"}
)
DATETIME_COLUMNS = frozenset({"time/usage_start", "time/usage_end"})
NUMBER_COLUMNS = frozenset(
    {
        "usage/amount",
        "cost/cost",
        "cost/discounted_cost",
        "cost/amortized_cost",
        "cost/discounted_amortized_cost",
        "cost/on_demand_cost",
    }
)
TEXT_COLUMNS = frozenset(
    {
        "lineitem/id",
        "lineitem/type",
        "lineitem/description",
        "resource/id",
        "resource/service",
        "resource/account",
        "resource/region",
        "resource/usage_family",
        "action/operation",
        "action/usage_type",
        "action/region",
        "action/account",
        "usage/units",
        "bill/invoice_id",
        "k8s/cluster",
        "k8s/namespace",
        "k8s/deployment",
        "k8s/labels",
    }
)
REQUIRED_COLUMNS = ("time/usage_start", "cost/cost")


def is_number(value: str) -> bool:
    """A plain non-negative decimal as CBF carries it (``12.5``), of at most :data:`MAX_NUMBER_CHARS`."""
    return len(value) <= MAX_NUMBER_CHARS and NUMBER_RE.fullmatch(value) is not None


def is_datetime(value: str) -> bool:
    """An ISO-8601 date-time as CBF carries it, of at most :data:`MAX_DATETIME_CHARS`."""
    return len(value) <= MAX_DATETIME_CHARS and DATETIME_RE.fullmatch(value) is not None


def cut(value: str, limit: int = 60) -> str:
    """A value for a message: at most ``limit`` characters, and says how long it was when cut."""
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"


def row_errors(row: Any) -> list[str]:
    """Return every rule the row breaks, each naming the column; an empty list means valid."""
    if not isinstance(row, Mapping):
        return [f"row is a {type(row).__name__}, not an object"]
    errors = [f"missing required column {col!r}" for col in REQUIRED_COLUMNS if col not in row]
    has_tag = False
    for column, value in row.items():
        if not isinstance(column, str):
            errors.append(f"column name {column!r} is not a string")
            continue
        if not isinstance(value, str):
            errors.append(f"column {column!r}: value must be a string, got {type(value).__name__}")
            continue
        if column.startswith(TAG_PREFIX):
            has_tag = True
            key = column[len(TAG_PREFIX) :]
            if not TAG_KEY_RE.fullmatch(key):
                errors.append(f"column {column!r}: tag key may hold only letters, digits and _ . : / = + - @")
        elif column in DATETIME_COLUMNS:
            if not is_datetime(value):
                errors.append(f"column {column!r}: {cut(value)!r} is not an ISO-8601 datetime")
        elif column in NUMBER_COLUMNS:
            if not is_number(value):
                errors.append(f"column {column!r}: {cut(value)!r} is not a plain non-negative decimal")
        elif column == "lineitem/type":
            if value not in LINEITEM_TYPES:
                errors.append(f"column {column!r}: {value!r} is not one of {sorted(LINEITEM_TYPES)}")
        elif column not in TEXT_COLUMNS:
            errors.append(f"unknown column {column!r}")
    if has_tag and not row.get("resource/id"):
        errors.append("column 'resource/id' is required when resource/tag columns are present")
    return errors


def drop_errors(rows: Iterable[Any]) -> list[str]:
    """Errors of a whole billing drop, each prefixed with the row's index (``data[3]``)."""
    out: list[str] = []
    for index, row in enumerate(rows):
        out.extend(f"data[{index}]: {err}" for err in row_errors(row))
    return out
