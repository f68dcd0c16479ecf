"""CBF rows -> AnyCost Stream requests. Pure: no Airflow imports.

Rules (CloudZero's "Send AnyCost Stream data" page and its AnyCost OpenAPI spec):

- one request carries the rows of one month; ``month`` is sent as the first instant of that month in the
  OpenAPI spec's ISO-8601 form, ``YYYY-MM-01T00:00:00Z`` (CloudZero's docs also show ``YYYY-MM``);
- ``replace_hourly`` replaces exactly the hours present in a request, so a request that carries *whole* hours is
  idempotent, and several whole hours may share one request;
- the exact serialized body must stay under a limit below CloudZero's 5 MB;
- an hour too large for one request goes as a first chunk with ``replace_hourly`` (clearing the hour) and the
  rest with ``sum``. Re-sending such an hour must restart at its first chunk, never resume in the middle.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from cloudzero_provider.json_lines import decode_line
from cloudzero_provider.windows import hour_of, iso_hour, month_start

DEFAULT_MAX_REQUEST_BYTES = 4_000_000  # below 5 MB whether CloudZero means 5,000,000 or 5,242,880 bytes


_SORTED = msgspec.json.Encoder(order="sorted")
_STRING_ROW = msgspec.json.Decoder(dict[str, str])


def serialize_row(row: Mapping[str, str]) -> bytes:
    """A row as it is sent: ``json.dumps(row, ensure_ascii=False, separators=(",", ":"), sort_keys=True)`` in UTF-8,
    byte for byte; msgspec writes it, several times faster, when every key and value is a string (CBF rows)."""
    if type(row) is dict and all(type(k) is str and type(v) is str for k, v in row.items()):
        return _SORTED.encode(row)
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


def read_cbf_line(line: bytes) -> tuple[Any, bytes | None] | None:
    """A staged CBF line (``cbf.jsonl``) as the row :func:`~cloudzero_provider.json_lines.decode_line` reads, with
    that row's :func:`serialize_row` when msgspec read it typed; ``None`` for a blank line. A row of strings only,
    as the transform writes, has every key and value checked a string in C and is written sorted straight, no loop
    per value in Python. Any other line gives its decoded row and ``None``: its caller serializes it where it always
    did, after reading the row's hour, so an edited file fails on the same check as before."""
    try:
        row = _STRING_ROW.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):  # ValidationError is a DecodeError
        # decode_line's own fallback, with a blank line told apart first: it is skipped, never an error.
        return None if not line.strip() else (decode_line(line), None)
    return row, _SORTED.encode(row)


def month_of(hour: datetime) -> str:
    """The ``month`` of a request carrying ``hour``: the month's first instant, ``2026-11-01T00:00:00Z``."""
    return iso_hour(month_start(hour))


def _envelope(month: str, operation: str) -> tuple[bytes, bytes]:
    head = b'{"month":' + json.dumps(month).encode() + b',"operation":' + json.dumps(operation).encode()
    return head + b',"data":[', b"]}"


def body_size(month: str, operation: str, row_sizes: Iterable[int]) -> int:
    head, tail = _envelope(month, operation)
    sizes = list(row_sizes)
    return len(head) + len(tail) + sum(sizes) + max(len(sizes) - 1, 0)


@dataclass(frozen=True)
class DropRequest:
    """One AnyCost request, with the exact bytes to send."""

    month: str
    operation: str  # replace_hourly | sum
    hours: tuple[datetime, ...]
    chunk: int  # 0 for whole hours; the index within a split hour otherwise
    chunks: int  # 1 for whole hours
    rows: int
    body: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    def idempotency_key(self, connection_id: str, salt: str = "") -> str:
        """
        Derived from the connection, the hour(s), the chunk index and the content digest.

        ``salt`` names the attempt (run and try). CloudZero replays the first answer to a key forever, so a key
        reused by a *later* export of identical content would be answered without being applied, even if the
        hour changed in between; salting per attempt keeps the key stable for in-task retries -- the lost
        response case it exists for -- and fresh for every new attempt, which restarts at chunk 0 anyway.
        """
        material = "|".join(
            (connection_id, ",".join(iso_hour(h) for h in self.hours), str(self.chunk), self.digest, salt)
        )
        return "lcz-" + hashlib.sha256(material.encode()).hexdigest()[:48]

    def summary(self) -> dict[str, object]:
        return {
            "month": self.month,
            "operation": self.operation,
            "hours": [iso_hour(h) for h in self.hours],
            "chunk": f"{self.chunk + 1}/{self.chunks}",
            "rows": self.rows,
            "bytes": len(self.body),
        }


def _build(
    month: str, operation: str, hours: Sequence[datetime], chunk: int, chunks: int, rows: Sequence[bytes]
) -> DropRequest:
    head, tail = _envelope(month, operation)
    body = head + b",".join(rows) + tail
    return DropRequest(month, operation, tuple(hours), chunk, chunks, len(rows), body)


def plan_hour(hour: datetime, rows: Sequence[bytes], max_bytes: int) -> list[DropRequest]:
    """One hour's serialized rows -> one request, or a ``replace_hourly`` chunk followed by ``sum`` chunks."""
    month = month_of(hour)
    if body_size(month, "replace_hourly", (len(r) for r in rows)) <= max_bytes:
        return [_build(month, "replace_hourly", [hour], 0, 1, rows)]
    groups: list[list[bytes]] = [[]]
    for index, row in enumerate(rows):
        operation = "replace_hourly" if len(groups) == 1 else "sum"
        candidate = groups[-1] + [row]
        if body_size(month, operation, (len(r) for r in candidate)) <= max_bytes:
            groups[-1].append(row)
            continue
        if not groups[-1]:
            raise ValueError(
                f"CBF row {index} of hour {iso_hour(hour)} alone is {len(row)} bytes, over the request limit of "
                f"{max_bytes}"
            )
        groups.append([row])
        if body_size(month, "sum", [len(row)]) > max_bytes:
            raise ValueError(
                f"CBF row {index} of hour {iso_hour(hour)} alone is {len(row)} bytes, over the request limit of "
                f"{max_bytes}"
            )
    return [
        _build(month, "replace_hourly" if i == 0 else "sum", [hour], i, len(groups), group)
        for i, group in enumerate(groups)
    ]


def plan(
    rows_by_hour: Mapping[datetime, Sequence[bytes]], max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> list[DropRequest]:
    """
    Serialized CBF rows grouped by hour -> the requests to send, in order.

    Whole hours of one month are packed together while the body stays within ``max_bytes``; an hour that does
    not fit one request is split (``replace_hourly`` then ``sum``) and travels in requests of its own.
    """
    return list(plan_stream(((h, rows_by_hour[h]) for h in sorted(rows_by_hour)), max_bytes))


def plan_stream(
    hours: Iterable[tuple[datetime, Sequence[bytes]]], max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> Iterator[DropRequest]:
    """
    As :func:`plan`, for hours that arrive one by one in ascending order: each request is yielded as soon as it is
    complete, so memory holds one request's rows and the hour being packed, never a window.
    """
    pack_month, pack_hours, pack_rows, pack_bytes = "", [], [], 0  # type: ignore[var-annotated]
    previous: datetime | None = None
    for hour, hour_rows in hours:
        if previous is not None and hour <= previous:
            raise ValueError(
                f"hours must arrive in ascending order: {iso_hour(hour)} after {iso_hour(previous)}"
            )
        previous = hour
        rows = list(hour_rows)
        if not rows:
            continue
        month = month_of(hour)
        size = sum(len(r) for r in rows)
        if body_size(month, "replace_hourly", (len(r) for r in rows)) > max_bytes:
            if pack_hours:
                yield _build(pack_month, "replace_hourly", pack_hours, 0, 1, pack_rows)
            pack_month, pack_hours, pack_rows, pack_bytes = "", [], [], 0
            yield from plan_hour(hour, rows, max_bytes)
            continue
        head, tail = _envelope(month, "replace_hourly")
        together = len(head) + len(tail) + pack_bytes + size + len(pack_rows) + len(rows) - 1
        if pack_hours and (month != pack_month or together > max_bytes):
            yield _build(pack_month, "replace_hourly", pack_hours, 0, 1, pack_rows)
            pack_hours, pack_rows, pack_bytes = [], [], 0
        pack_month = month
        pack_hours.append(hour)
        pack_rows.extend(rows)
        pack_bytes += size
    if pack_hours:
        yield _build(pack_month, "replace_hourly", pack_hours, 0, 1, pack_rows)


def group_by_hour(rows: Iterable[Mapping[str, str]]) -> dict[datetime, list[bytes]]:
    """CBF rows, serialized, by the hour of their ``time/usage_start``."""
    out: dict[datetime, list[bytes]] = {}
    hours: dict[str, datetime] = {}  # an hour's rows share one text: parse it once
    for row in rows:
        text = row["time/usage_start"]
        hour = hours.get(text) or hours.setdefault(text, hour_of(text))
        out.setdefault(hour, []).append(serialize_row(row))
    return out


def content_digest(rows: Iterable[bytes]) -> str:
    """Order-independent digest of an hour's rows: the same content gives the same digest however it was sent."""
    h = hashlib.sha256()
    for row in sorted(rows):
        h.update(row)
        h.update(b"\n")
    return h.hexdigest()
