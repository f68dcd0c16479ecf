"""The staged line of one aggregated group (``extract.jsonl``): written by the extract, read back by the transform
into the few fields a CBF row is built from. Pure: no Airflow imports.

A group's line is the JSON :func:`~cloudzero_provider.json_lines.encode_line` writes of ``AggregateRow.as_dict()``.
The extract writes the usual line -- every figure an int or ``null``, the spend a non-negative numeric's text -- by
f-string (:func:`group_line`). The transform reads a line's ``hour``, ``requests``, ``spend`` and ``total_tokens``
typed, and its ``dims`` as their JSON bytes (:func:`read_group`): a combination of dimension values repeats across a
window's hours, and its bytes name it without building a dict per line.
"""

from __future__ import annotations

import msgspec


class StagedGroup(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """A group's line, every byte read: msgspec reads these fields as the untyped decoder does
    (``json_lines.decode_line``), ``dims`` left as its JSON bytes (read whole the first time they are seen). A line
    with any other key, or a field of another type, is not one."""

    hour: str
    dims: msgspec.Raw
    requests: int
    spend: str
    total_tokens: int
    successes: int | None = None
    failures: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


_DECODER = msgspec.json.Decoder(StagedGroup)


def read_group(line: bytes) -> StagedGroup | None:
    """A line's :class:`StagedGroup`, or ``None`` for a line of any other form (a field missing or of another
    type, a blank line, JSON that msgspec does not read): those are decoded whole."""
    try:
        return _DECODER.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):  # ValidationError is a DecodeError
        return None


def group_line(
    hour_text: str,
    dims_text: str,
    requests: int | None,
    successes: int | None,
    failures: int | None,
    spend: str,
    prompt_tokens: int,
    completion_tokens: int,
    total_tokens: int,
) -> bytes:
    """The bytes :func:`~cloudzero_provider.json_lines.encode_line` writes of a group whose figures are ints (or
    ``None``), ``spend`` a non-negative numeric's text and ``dims_text`` its encoded ``dims``: no figure holds
    anything JSON escapes, and an f-string writes an int or ``None`` as JSON does."""
    return (
        f'{{"hour":"{hour_text}","dims":{dims_text},"requests":{requests or 0},"successes":'
        f'{"null" if successes is None else successes},"failures":{"null" if failures is None else failures},'
        f'"spend":"{spend}","prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens},'
        f'"total_tokens":{total_tokens}}}\n'
    ).encode()
