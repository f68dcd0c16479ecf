"""LiteLLM spend -> CloudZero unit-cost telemetry records. Pure: no Airflow imports.

LiteLLM's "cloudzero" logger sends one record per request under ``CLOUDZERO_METRIC_NAME`` with ``model``,
``user_id``, ``team_id``, ``org_id`` and ``end_user_id``. CloudZero's rules (its unit-cost telemetry API reference): at
most 5 ``associated_cost`` dimensions, the same keys on every record of a stream, custom dimensions prefixed
``custom:``, daily granularity, ``value`` > 0, 100 records/s sustained, 5 MB per request. So here: one record per
UTC day and dimension combination, keys built (never typed) as ``custom:<name>``, missing values as ``(none)`` so
every record carries every key, and ``replace`` so that sending a day again never double-counts.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from cloudzero_provider.cbf import EXACT, OTHER, exact_decimal, safe_value
from cloudzero_provider.drops import DEFAULT_MAX_REQUEST_BYTES
from cloudzero_provider.windows import day_start, iso_hour

# Our dimension -> the key LiteLLM's logger uses, so existing CloudZero unit metrics keep their dimensions.
TELEMETRY_KEYS: dict[str, str] = {
    "model": "model",
    "user": "user_id",
    "team_id": "team_id",
    "organization_id": "org_id",
    "end_user": "end_user_id",
}
DEFAULT_TELEMETRY_DIMENSIONS: tuple[str, ...] = ("model", "user", "team_id", "organization_id", "end_user")
VALUES = ("cost", "requests", "tokens")
NONE_VALUE = "(none)"
METRIC_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
MAX_REQUEST_BYTES = DEFAULT_MAX_REQUEST_BYTES
MAX_RECORDS_PER_REQUEST = 500
MAX_VALUES_PER_DAY = 1000
CALLER_CHOSEN = frozenset({"end_user"})  # what an LLM caller sets freely: its request's ``user`` field


def check_metric_name(name: str | None) -> str:
    """A usable metric name, or a ValueError that says what to set."""
    if not name:
        raise ValueError(
            "no unit-cost metric name: set the cloudzero connection's extra \"metric_name\" (LiteLLM's "
            "CLOUDZERO_METRIC_NAME) or CLOUDZERO_TELEMETRY_METRIC"
        )
    if not METRIC_RE.fullmatch(name):
        raise ValueError(
            f"metric name {name!r} must start with a letter or digit and hold only letters, digits, '_', '.', '-' "
            "(at most 128 characters)"
        )
    return name


def check_dimensions(dims: Sequence[str] | None) -> list[str]:
    chosen = list(DEFAULT_TELEMETRY_DIMENSIONS if dims is None else dims)
    unknown = [d for d in chosen if d not in TELEMETRY_KEYS]
    if unknown:
        raise ValueError(
            f"telemetry dimensions {unknown} unknown; choose up to 5 of {sorted(TELEMETRY_KEYS)}"
        )
    if len(chosen) > 5:
        raise ValueError(f"{len(chosen)} telemetry dimensions given; CloudZero allows at most 5")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"telemetry dimensions {chosen} list one twice")
    return chosen


@dataclass
class DayGroup:
    day: datetime  # the UTC day's start
    dims: tuple[str | None, ...]
    cost: Decimal
    requests: int
    tokens: int


def roll_up_days(
    rows: Iterable[Mapping[str, object]],
    dims: Sequence[str],
    *,
    max_values_per_day: int | None = MAX_VALUES_PER_DAY,
) -> list[DayGroup]:
    """
    Aggregated hourly rows (``hour`` a datetime, ``dims``, ``spend``, ``requests``, ``total_tokens``) -> per-day
    groups.

    Values come from LLM callers: each is cut like a CBF value (control characters out, 256 characters plus a
    hash), and a dimension callers choose freely (``end_user``) keeps at most ``max_values_per_day`` values a day,
    those with the most cost; the rest become ``(other)`` with their cost, requests and tokens, so a day's totals
    never move and one caller cannot make a day's records unsendable.
    """
    groups: dict[tuple[datetime, tuple[str | None, ...]], DayGroup] = {}
    for row in rows:
        hour = row["hour"]
        assert isinstance(hour, datetime)
        day = day_start(hour)
        values = row["dims"]
        assert isinstance(values, Mapping)
        key = (day, tuple(_bounded(values.get(d)) for d in dims))
        group = groups.get(key)
        if group is None:
            group = groups[key] = DayGroup(day, key[1], Decimal(0), 0, 0)
        group.cost = EXACT.add(group.cost, Decimal(str(row["spend"])))
        group.requests += int(str(row["requests"]))
        group.tokens += int(str(row["total_tokens"]))
    capped = [i for i, d in enumerate(dims) if d in CALLER_CHOSEN]
    if capped and max_values_per_day:
        groups = _fold(groups, capped, max_values_per_day)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], [v or "" for v in k[1]]))]


def _bounded(value: object) -> str | None:
    return None if value is None else safe_value(str(value))


def _fold(
    groups: dict[tuple[datetime, tuple[str | None, ...]], DayGroup], capped: Sequence[int], cap: int
) -> dict[tuple[datetime, tuple[str | None, ...]], DayGroup]:
    """Per day, the values of each capped dimension beyond the ``cap`` with the most cost become ``(other)``."""
    keep: dict[tuple[datetime, int], set[str | None]] = {}
    for index in capped:
        cost: dict[tuple[datetime, str | None], Decimal] = {}
        for (day, values), group in groups.items():
            cost[(day, values[index])] = EXACT.add(cost.get((day, values[index]), Decimal(0)), group.cost)
        for day in {day for day, _ in cost}:
            ranked = sorted(
                ((v, c) for (d, v), c in cost.items() if d == day), key=lambda vc: (-vc[1], vc[0] or "")
            )
            if len(ranked) > cap:
                keep[(day, index)] = {v for v, _ in ranked[:cap]}
    if not keep:
        return groups
    out: dict[tuple[datetime, tuple[str | None, ...]], DayGroup] = {}
    for (day, values), group in groups.items():
        folded = tuple(
            OTHER if (day, i) in keep and v not in keep[(day, i)] else v for i, v in enumerate(values)
        )
        merged = out.get((day, folded))
        if merged is None:
            out[(day, folded)] = DayGroup(day, folded, group.cost, group.requests, group.tokens)
        else:
            merged.cost = EXACT.add(merged.cost, group.cost)
            merged.requests += group.requests
            merged.tokens += group.tokens
    return out


def to_records(
    groups: Iterable[DayGroup], dims: Sequence[str], value: str = "cost"
) -> tuple[list[dict[str, object]], int]:
    """Day groups -> telemetry records, and how many were skipped because their value was not > 0."""
    if value not in VALUES:
        raise ValueError(f"telemetry value must be one of {VALUES}, got {value!r}")
    keys = [f"custom:{TELEMETRY_KEYS[d]}" for d in dims]
    records: list[dict[str, object]] = []
    skipped = 0
    for group in groups:
        amount: Decimal = (
            group.cost
            if value == "cost"
            else Decimal(group.requests if value == "requests" else group.tokens)
        )
        if not amount > 0:
            skipped += 1
            continue
        records.append(
            {
                "timestamp": iso_hour(group.day),
                "value": exact_decimal(amount),
                "associated_cost": {
                    k: (v if v else NONE_VALUE) for k, v in zip(keys, group.dims, strict=True)
                },
            }
        )
    return records, skipped


def batches(
    records: Sequence[Mapping[str, object]],
    *,
    max_bytes: int = MAX_REQUEST_BYTES,
    max_records: int = MAX_RECORDS_PER_REQUEST,
) -> Iterator[tuple[bytes, int]]:
    """Exact request bodies ``{"records": [...]}`` and how many records each holds, within ``max_bytes`` and
    ``max_records``."""
    head, tail = b'{"records":[', b"]}"
    current: list[bytes] = []
    size = len(head) + len(tail)
    for record in records:
        encoded = json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
        extra = len(encoded) + (1 if current else 0)
        if current and (size + extra > max_bytes or len(current) >= max_records):
            yield head + b",".join(current) + tail, len(current)
            current, size, extra = [], len(head) + len(tail), len(encoded)
        if len(head) + len(tail) + len(encoded) > max_bytes:
            raise ValueError(
                f"one telemetry record is {len(encoded)} bytes, over the request limit {max_bytes}"
            )
        current.append(encoded)
        size += extra
    if current:
        yield head + b",".join(current) + tail, len(current)


def pace_delay(records_sent: int, batch: int, elapsed: float, rate: float) -> float:
    """Seconds to wait before sending ``batch`` more records so that, counted from the task's start, no more than
    ``rate`` records per second have ever been sent -- including this batch. Back-to-back runs stay within the
    limit too, since each run spreads its own records over at least ``records / rate`` seconds."""
    return max(0.0, (records_sent + batch) / rate - elapsed)


def stream_name(metric: str, value: str, dims: Sequence[str]) -> str:
    """A short name for a metric stream (metric, value kind, dimensions in any order): the folder of what it last
    sent each day."""
    return hashlib.sha256(json.dumps([metric, value, sorted(dims)]).encode()).hexdigest()[:16]


def record_key(record: Mapping[str, object]) -> str:
    """A record's dimension values as one text: what ``replace`` and ``delete`` match a record of a day by."""
    return json.dumps(record["associated_cost"], ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def stale_records(
    sent_before: Mapping[str, str], records: Sequence[Mapping[str, object]], day: datetime
) -> list[dict[str, object]]:
    """The records of ``day`` sent before (``record_key`` -> the value sent) that this send no longer holds, to be
    deleted: ``replace`` only replaces records of the same dimension values, so a value that had a record of its own
    and is now folded into ``(other)`` (the cap ranks a day's values by cost, and the day so far keeps growing) would
    otherwise stay beside the ``(other)`` record that counts it too."""
    now = {record_key(r) for r in records}
    return [
        {"timestamp": iso_hour(day), "value": value, "associated_cost": json.loads(key)}
        for key, value in sorted(sent_before.items())
        if key not in now
    ]
