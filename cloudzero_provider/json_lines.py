"""Staged JSON lines: written and read byte for byte as ``json`` does, by msgspec where that is exact. Pure: no
Airflow imports."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()


_PLAIN_SCALARS = frozenset({str, int, bool, type(None)})


def _plain(value: Any) -> bool:
    """JSON that msgspec writes byte for byte as ``json.dumps`` does: strings, whole numbers, booleans, null, and
    lists and string-keyed objects of them. Floats are not (``NaN``, ``1e+16``): rows holding one go through
    ``json``."""
    # Called for every staged line: plain loops, no generator per value (they cost more than the encoding).
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or (type(item) not in _PLAIN_SCALARS and not _plain(item)):
                return False
        return True
    if kind is list:
        return all(type(item) in _PLAIN_SCALARS or _plain(item) for item in value)
    return False


def encode_line(row: Any) -> bytes:
    """One staged JSON line, exactly as ``json.dumps(row, ensure_ascii=False, separators=(",", ":"))`` writes it,
    in UTF-8 and ending in a newline; msgspec writes it, several times faster, when the row is :func:`_plain`."""
    if _plain(row):
        return _ENCODER.encode(row) + b"\n"
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def decode_line(line: bytes) -> Any:
    """A staged JSON line as ``json.loads`` reads it; msgspec reads it when it can (``json`` reads what msgspec
    refuses: ``NaN``, numbers out of range, lone surrogates)."""
    try:
        return _DECODER.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):  # json reads a lone surrogate's UTF-8 bytes
        return json.loads(line)


def decode_lines(lines: Iterable[bytes]) -> Iterator[Any]:
    """:func:`decode_line` of every line that is not blank."""
    decode = _DECODER.decode
    for line in lines:
        try:  # msgspec first: a blank line is the rare one it refuses
            row = decode(line)
        except (msgspec.DecodeError, UnicodeDecodeError):
            if not line.strip():
                continue
            row = json.loads(line)
        yield row


# Lines per write: a write per line cost more than the line itself.
BATCH_ROWS = 1024


def join_lines(lines: Iterable[bytes]) -> Iterator[tuple[bytes, int]]:
    """Lines joined :data:`BATCH_ROWS` at a time (a write per line cost more than the line): each batch's bytes and
    its number of lines."""
    batch: list[bytes] = []
    for line in lines:
        batch.append(line)
        if len(batch) == BATCH_ROWS:
            yield b"".join(batch), len(batch)
            batch = []
    if batch:
        yield b"".join(batch), len(batch)
