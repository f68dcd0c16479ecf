"""The rules a CloudZero Billing Format (CBF) row must follow, from CloudZero's AnyCost OpenAPI spec.

Pure: no Airflow imports. Used by ``cbf.py`` before a row leaves the transform and by the local
CloudZero double, so the double rejects exactly what this project promises never to send.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

# Patterns copied from the OpenAPI spec (cloudzero-anycost-openapi.json).
DATETIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(([+-]\d\d:\d\d)|Z)?$")
NUMBER_RE = re.compile(r"^\d+(\.\d{1,})?$")
# CloudZero docs: tag keys are case-sensitive letters, digits and _ . : / = + - @, no whitespace.
TAG_KEY_RE = re.compile(r"^[A-Za-z0-9_.:/=+\-@]+$")

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
KNOWN_COLUMNS = DATETIME_COLUMNS | NUMBER_COLUMNS | TEXT_COLUMNS
REQUIRED_COLUMNS = ("time/usage_start", "cost/cost")


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
            if not TAG_KEY_RE.match(key):
                errors.append(f"column {column!r}: tag key may hold only letters, digits and _ . : / = + - @")
        elif column in DATETIME_COLUMNS:
            if not DATETIME_RE.match(value):
                errors.append(f"column {column!r}: {value!r} is not an ISO-8601 datetime")
        elif column in NUMBER_COLUMNS:
            if not NUMBER_RE.match(value):
                errors.append(f"column {column!r}: {value!r} is not a plain non-negative decimal")
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
