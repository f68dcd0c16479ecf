"""Staged JSON lines and sent rows: msgspec writes and reads them byte for byte as ``json`` does."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudzero_provider.drops import read_cbf_line, serialize_row
from cloudzero_provider.json_lines import (
    decode_line,
    decode_lines,
    encode_line,
)

texts = st.text(alphabet=st.characters(), max_size=20) | st.sampled_from(
    ["", "\x00\x1f\x7f\u2028", 'é"\\\n\t', "\ud800"]
)
scalars = st.none() | st.booleans() | st.integers(-(2**80), 2**80) | texts
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e16, -0.0, 1e-7, 2.5])
json_values = st.recursive(
    scalars | numbers,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)


def reference(row: object) -> bytes | type[BaseException]:
    try:
        return json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
    except (UnicodeEncodeError, ValueError) as exc:
        return type(exc)


def same(a: object, b: object) -> bool:
    """Equal as JSON values, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=500)
@given(json_values)
def test_a_line_is_written_and_read_exactly_as_json_would(row):
    expected = reference(row)
    try:
        line = encode_line(row)
    except (UnicodeEncodeError, ValueError) as exc:
        assert expected is type(exc)
        return
    assert line == expected
    assert same(decode_line(line), json.loads(line))


@settings(max_examples=300)
@given(
    st.binary(max_size=40)
    | st.sampled_from(
        [b'{"a":NaN}', b'{"a":1e400}', b'{"a":"\\ud800"}', b'{"a":1,"a":2}', b'{"\xed\xa0\x80":1}']
    )
)
def test_any_bytes_read_as_json_reads_them(raw):
    try:
        expected = json.loads(raw)
    except ValueError as exc:
        try:
            decode_line(raw)
        except ValueError as again:
            assert type(again) is type(exc) or isinstance(again, type(exc))
            return
        raise AssertionError(f"{raw!r} was read, json refuses it") from None
    assert same(decode_line(raw), expected)


@settings(max_examples=500)
@given(st.dictionaries(texts, texts | scalars | numbers, max_size=12))
def test_a_row_is_sent_exactly_as_json_sorts_it(row):
    try:
        expected: bytes | type[BaseException] = json.dumps(
            row, ensure_ascii=False, separators=(",", ":"), sort_keys=True
        ).encode("utf-8")
    except (UnicodeEncodeError, ValueError) as exc:
        expected = type(exc)
    try:
        assert serialize_row(row) == expected
    except (UnicodeEncodeError, ValueError) as exc:
        assert expected is type(exc)


@settings(max_examples=300)
@given(
    st.lists(
        st.sampled_from(
            [
                b"\n",
                b"  \r\n",
                b'{"a":NaN}\n',
                b'{"a":1e400}\n',
                b'{"b":"\\ud800"}\n',
                b"[1,2]",
                b'{"a":1\n',
                b"\x80\n",
            ]
        )
        | json_values.map(
            lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"
        ),
        max_size=8,
    )
)
def test_lines_read_in_a_stream_are_each_line_as_json_reads_it_blank_ones_skipped(lines):
    expected = []
    for line in lines:
        if line.strip():
            try:
                expected.append(json.loads(line))
            except ValueError:
                with pytest.raises(ValueError):  # a line json refuses is never skipped
                    list(decode_lines(lines))
                return
    assert all(same(a, b) for a, b in zip(decode_lines(lines), expected, strict=True))


@settings(max_examples=500)
@given(
    st.sampled_from(
        [
            b"\n",
            b"  \r\n",
            b'{"a":NaN}\n',
            b'{"b":"\\ud800"}\n',
            b"[1,2]",
            b'{"a":1\n',
            b"\x80\n",
            b'{"a":"1","a":"2"}\n',
            b'{"a":1,"a":"b"}\n',
            b' {"a":"b"}  \r\n',
        ]
    )
    | st.dictionaries(texts, texts, max_size=12).map(
        lambda row: json.dumps(row, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"
    )
    | st.dictionaries(texts, texts | scalars | numbers, max_size=6).map(
        lambda row: json.dumps(row, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"
    )
)
def test_a_staged_cbf_line_is_read_and_sent_as_its_decoded_row_is(line):
    """The upload's typed read of cbf.jsonl gives, for every line, the row decoding it gives and -- its own bytes
    or, for a line msgspec does not read typed, serialize_row's -- the same bytes and the same error; None only for a
    blank line. Only a row of strings comes with its bytes."""
    if not line.strip():
        assert read_cbf_line(line) is None
        return
    try:
        row = decode_line(line)
    except ValueError as exc:
        with pytest.raises(type(exc)):
            read_cbf_line(line)
        return
    got = read_cbf_line(line)
    assert got is not None and same(got[0], row)
    try:
        expected: object = serialize_row(row)
    except ValueError as exc:  # UnicodeEncodeError included: a lone surrogate cannot be sent
        expected = type(exc)
    try:
        sent = got[1] if got[1] is not None else serialize_row(got[0])
    except ValueError as exc:
        assert expected is type(exc)
        return
    assert sent == expected
    assert got[1] is None or all(type(k) is str and type(v) is str for k, v in got[0].items())
