"""CloudZero's rows read back (``GET .../billing_drops/{month}``), checked like the CBF we send. Pure: no Airflow.

Reconciliation trusts CloudZero's answer only as far as it proves itself: every row must carry a
``time/usage_start`` and a ``cost/cost`` that pass the same rules (pattern and length) as the rows this exporter
sends. A row that does not stops the reconciliation of its month with a message naming the hour and the value
(cut), never a traceback or a number built from a hostile string (``1e100000000`` would be a 184 MB Decimal).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from cloudzero_provider.cbf import EXACT
from cloudzero_provider.cbf_rules import cut, is_datetime, is_number
from cloudzero_provider.windows import hour_of, iso_hour

# CloudZero holds at most 1,000,000 rows per stream and month: an answer with far more is not a month's rows.
MAX_ROWS_PER_MONTH = 2_000_000
MAX_ROW_BYTES = 1_000_000
MAX_PREFIX_CHARS = 65_536
_SPACE = re.compile(r"[ \t\n\r]*")
_SCALAR_MEMBER = r'"[^"\\]*"\s*:\s*(?:null|true|false|-?[0-9][0-9.eE+-]*|"[^"\\]*")\s*,\s*'


class ReadBackError(ValueError):
    """CloudZero answered a month with a row this exporter cannot read; that month cannot be reconciled."""


def iter_json_array(chunks: Iterable[bytes], key: str) -> Iterator[Any]:
    """
    The items of the array under ``key`` in a JSON object arriving in chunks (``{"billing_drop": [{...}, ...]}``),
    one at a time: memory holds one chunk and one item, never the answer.

    :raises ReadBackError: The answer is not such an object, or an item is larger than :data:`MAX_ROW_BYTES`.
    """
    decoder = json.JSONDecoder()
    text = codecs.getincrementaldecoder("utf-8")(errors="strict")
    start = re.compile(r"\s*\{\s*(?:" + _SCALAR_MEMBER + r")*" + re.escape(json.dumps(key)) + r"\s*:\s*\[")
    buf, pos, started, need_comma = "", 0, False, False
    source = iter(chunks)
    while True:
        if not started:
            match = start.match(buf)
            if match:
                started, pos = True, match.end()
            elif len(buf) > MAX_PREFIX_CHARS:
                raise ReadBackError(f"the answer does not start as an object with a {key!r} list")
        while started:
            pos = _SPACE.match(buf, pos).end()  # type: ignore[union-attr]
            if pos >= len(buf):
                break  # more data
            if buf[pos] == "]":
                return
            if need_comma:
                if buf[pos] != ",":
                    raise ReadBackError(f"the {key!r} list is malformed near {buf[pos : pos + 40]!r}")
                pos, need_comma = pos + 1, False
                continue
            try:
                item, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                if len(buf) - pos > MAX_ROW_BYTES:
                    raise ReadBackError(
                        f"a row of the {key!r} list is larger than {MAX_ROW_BYTES} bytes"
                    ) from None
                break  # an item cut by the chunk's end: more data
            if end == len(buf) and buf[pos] not in '{["':
                break  # a number at the very end may still grow: more data
            yield item
            pos, need_comma = end, True
        chunk = next(source, None)
        if chunk is None:
            if not started:
                raise ReadBackError(f"the answer is not an object with a {key!r} list")
            raise ReadBackError(f"the answer ended before its {key!r} list did")
        buf = buf[pos:] + text.decode(chunk)
        pos = 0


def held_by_hour(rows: Iterable[Any], month: str) -> dict[datetime, Decimal]:
    """
    What CloudZero holds per hour (exact sums of ``cost/cost``) from the rows of one month.

    :param rows: The ``billing_drop`` list CloudZero answered.
    :param month: ``YYYY-MM``, for messages.
    :raises ReadBackError: A row is not an object, or its time or cost breaks the CBF rules.
    """
    held: dict[datetime, Decimal] = {}
    for index, row in enumerate(rows):
        if index >= MAX_ROWS_PER_MONTH:
            raise ReadBackError(
                f"CloudZero's rows of {month}: more than {MAX_ROWS_PER_MONTH} rows, more than a stream holds in a "
                f"month; cannot reconcile {month}"
            )
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
