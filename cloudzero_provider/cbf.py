"""Aggregated LiteLLM spend -> CloudZero Billing Format (CBF) rows. Pure: no Airflow imports.

The shape follows LiteLLM's own CloudZero export (service ``litellm``, account = team, region ``cross-region``,
usage family ``llm-usage``, ``provider`` and ``model`` tags) so its users recognise their data, with three fixes:

- ``cost/cost`` is the exact decimal PostgreSQL summed, never a float: a spend of 1e-12 stays non-zero;
- ``resource/id`` is unique per combination of tag values. CloudZero keeps one value per tag per resource (the
  latest row wins, for the whole history), so two teams, keys or models must never share a resource id -- even
  when they differ only in case or punctuation, which the readable CZRN segments cannot tell apart;
- per-hour quantities (tokens, requests) are never tags; tokens go to ``usage/amount``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import (
    MAX_EMAX,
    MAX_PREC,
    MIN_EMIN,
    Context,
    Decimal,
    Inexact,
    InvalidOperation,
    Rounded,
    localcontext,
)
from typing import Any, cast

from cloudzero_provider.cbf_rules import MAX_NUMBER_CHARS, row_errors
from cloudzero_provider.dimensions import Dimension
from cloudzero_provider.json_lines import decode_line, encode_line
from cloudzero_provider.staged_group import StagedGroup
from cloudzero_provider.windows import iso_hour

SERVICE = "litellm"
REGION = "cross-region"
USAGE_FAMILY = "llm-usage"
NO_TEAM = "no-team"
_CZRN_UNSAFE = re.compile(r"[^a-z0-9-]+")
_LOCAL_UNSAFE = re.compile(r"[^a-z0-9._-]+")
# C0 and C1 control characters (newline, tab, NUL, DEL ...): never part of a name a person reads.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_VALUE_CHARS = 256
MAX_SEGMENT_CHARS = 64
OTHER = "(other)"
# Combinations of dimension values whose CBF columns transform_pairs keeps built (a few hundred bytes each), and the
# characters a combination's values may hold in all to be kept: a longer one (a caller's 4 MB user name) is built
# whole each time, so a cache holds at most MAX_CACHED_COMBINATIONS x MAX_CACHED_VALUE_CHARS characters of them.
MAX_CACHED_COMBINATIONS = 5000
MAX_CACHED_VALUE_CHARS = 4096
# The JSON bytes of a combination StagedCBF keeps as a key: its values written out, each character escaped at most
# as \uXXXX, with room for the names.
MAX_CACHED_DIMS_BYTES = 6 * MAX_CACHED_VALUE_CHARS + 1024


def cacheable(values: Iterable[Any]) -> bool:
    """Whether a combination's values are short enough, in all, to be kept in a cache."""
    return sum(len(v) for v in values if type(v) is str) <= MAX_CACHED_VALUE_CHARS


# Decimal arithmetic rounds to 28 digits by default; money sums here must never round, so any rounding raises.
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[InvalidOperation, Inexact, Rounded])


def exact_sum(values: Iterable[str | Decimal]) -> Decimal:
    """The exact sum of decimal values (strings or Decimals), whatever their magnitudes."""
    numbers = list(
        map(Decimal, values)
    )  # read outside the context below: a caller's generator runs in its own
    with localcontext(EXACT):  # sum() adds in the current context: this one never rounds (it raises)
        return sum(numbers, Decimal(0))


class CBFError(ValueError):
    """A row that cannot become valid CBF; the message names the row and the column."""


def exact_decimal(value: str | int | Decimal, *, what: str = "value") -> str:
    """A non-negative decimal as CBF wants it: plain digits, no exponent, no sign, no rounding.

    Trailing zeros after the point are dropped (``0.300000000000000`` -> ``0.3``); the value is unchanged.
    """
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise CBFError(f"{what} {value!r} is not a decimal number") from None
    if not number.is_finite():
        raise CBFError(f"{what} {value!r} is not finite")
    if number < 0:
        raise CBFError(f"{what} {value!r} is negative")
    text = format(number.copy_abs(), "f")  # copy_abs, not abs(): abs() rounds to the context precision
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


_PLAIN_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")


def cbf_cost(spend: Any) -> str | None:
    """:func:`exact_decimal` of a spend written as PostgreSQL writes a non-negative ``numeric`` (``12.50`` ->
    ``12.5``), by text alone; ``None`` for anything else (a ``Decimal``, an exponent, a sign, leading zeros), which
    :func:`exact_decimal` must then read."""
    if type(spend) is not str or len(spend) > MAX_NUMBER_CHARS or not _PLAIN_DECIMAL.fullmatch(spend):
        return None
    if "." in spend:
        spend = spend.rstrip("0").rstrip(".")
    return spend or "0"


def safe_value(value: str, limit: int = MAX_VALUE_CHARS) -> str:
    """
    A caller-controlled name (team, user, customer, tag, alias) made safe to send and show: control characters
    stripped, and anything over ``limit`` characters cut. A value that had to change ends in ``~`` and 8 hex
    digits of the original's hash, so two distinct originals never become one value.
    """
    if len(value) <= limit and _CONTROL.search(value) is None:  # the usual case: nothing to change or copy
        return value
    cleaned = _CONTROL.sub("", value)
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned[: limit - 9]}~{digest}"


def czrn_segment(value: str | None) -> str:
    """CloudZero's own LiteLLM tools' rule: lower-case, anything outside [a-z0-9-] becomes '-', empty -> unknown.

    Cut to 64 characters: the digest at the end of the resource id keeps long values apart.
    """
    cleaned = _CZRN_UNSAFE.sub("-", (value or "").lower()[: MAX_SEGMENT_CHARS * 4]).strip("-")
    return cleaned[:MAX_SEGMENT_CHARS].strip("-") or "unknown"


def resource_digest(dims: Mapping[str, str | None]) -> str:
    """A digest of the exact tag set: different values (case, punctuation, unicode, none vs '') never merge."""
    canonical = json.dumps(sorted(dims.items()), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def resource_id(dims: Mapping[str, str | None]) -> str:
    """``czrn:litellm:<provider>:cross-region:<team>:llm-usage:<model>-<digest of all dimension values>``."""
    model = (
        _LOCAL_UNSAFE.sub("-", (dims.get("model") or "unknown").lower()[:256]).strip("-")[:64] or "unknown"
    )
    return ":".join(
        (
            "czrn",
            SERVICE,
            czrn_segment(dims.get("provider")),
            REGION,
            czrn_segment(dims.get("team_id")),
            USAGE_FAMILY,
            f"{model}-{resource_digest(dims)}",
        )
    )


def to_cbf(
    hour: datetime,
    dims: Mapping[str, str | None],
    *,
    spend: str | Decimal,
    total_tokens: int,
    requests: int,
    tag_keys: Mapping[str, str],
) -> dict[str, str]:
    """
    One aggregated group -> one CBF row.

    :param hour: The hour's start, aware UTC.
    :param dims: Dimension name -> value (``None`` for none).
    :param spend: Exact summed spend.
    :param total_tokens: Tokens of the group (``usage/amount``).
    :param requests: Requests of the group, named in the line item's description.
    :param tag_keys: Dimension name -> CBF tag key.
    """
    if hour.utcoffset() != timedelta(0) or hour.minute or hour.second or hour.microsecond:
        raise CBFError(f"hour {hour!r} is not the start of a UTC hour")
    if total_tokens < 0:
        raise CBFError(f"total tokens {total_tokens} are negative")
    row = {
        "time/usage_start": iso_hour(hour),
        "cost/cost": exact_decimal(spend, what="spend"),
        "usage/amount": str(int(total_tokens)),
        "usage/units": "tokens",
        "lineitem/type": "Usage",
        "lineitem/description": f"LiteLLM spend: {requests} request{'s' if requests != 1 else ''}",
        "resource/id": resource_id(dims),
        "resource/service": SERVICE,
        "resource/account": safe_value(dims.get("team_id") or NO_TEAM) if "team_id" in dims else SERVICE,
        "resource/region": REGION,
        "resource/usage_family": USAGE_FAMILY,
    }
    for name, value in dims.items():
        if value is not None:
            row[f"resource/tag:{tag_keys[name]}"] = safe_value(value)
    return row


def transform(rows: Iterable[Mapping[str, Any]], dims: Sequence[Dimension]) -> Iterator[dict[str, str]]:
    """
    Aggregated rows (as staged by the extract, ``hour`` a datetime) -> validated CBF rows.

    Raises :class:`CBFError` naming the row (its index and hour) and the column for anything invalid.
    """
    for _, cbf in transform_pairs(rows, dims):
        yield cbf


def transform_pairs(
    rows: Iterable[Mapping[str, Any]], dims: Sequence[Dimension]
) -> Iterator[tuple[Mapping[str, Any], dict[str, str]]]:
    """As :func:`transform`, each CBF row with the aggregated row it came from.

    What depends only on a row's dimension values (resource id, account, tags) is built and validated once per
    combination of values, and an hour's text once per hour: a combination repeats across the hours and days of a
    window. A row this shortcut cannot vouch for (a spend not written as PostgreSQL writes a numeric, a count that
    is not a non-negative int, a new hour or combination) goes through :func:`to_cbf` and
    :func:`~cloudzero_provider.cbf_rules.row_errors` whole, so every row and every error is the one they give.
    """
    for row, _, _, cbf in _transform(rows, dims, as_lines=False):
        yield row, cast(dict[str, str], cbf)  # as_lines=False: a dict


def cbf_lines(
    rows: Iterable[Mapping[str, Any]], dims: Sequence[Dimension], *, first_index: int = 0
) -> Iterator[tuple[Mapping[str, Any], str, str, bytes]]:
    """As :func:`transform_pairs`, each CBF row as its staged line -- the bytes
    :func:`~cloudzero_provider.json_lines.encode_line` writes of it, built from the combination's columns encoded
    once and the row's own figures (digits, an hour's text: nothing JSON escapes), never a dict per row -- with the
    aggregated row, and the row's ``cost/cost`` and ``usage/amount`` as the line holds them. An error names a row
    by its index counted from ``first_index``."""
    items = _transform(
        rows, dims, as_lines=True, first_index=first_index
    )  # each row's line as bytes, never a dict
    return cast(Iterator[tuple[Mapping[str, Any], str, str, bytes]], items)


@dataclass(frozen=True, slots=True)
class _Combination:
    """The CBF columns of one combination of dimension values (resource id, account, tags), validated, and the
    same columns as the end of a staged line (``"resource/id":...}`` and the newline)."""

    columns: dict[str, str]
    line_end: str


def _transform(
    rows: Iterable[Mapping[str, Any]], dims: Sequence[Dimension], *, as_lines: bool, first_index: int = 0
) -> Iterator[tuple[Mapping[str, Any], str, str, dict[str, str] | bytes]]:
    tag_keys = {d.name: d.tag for d in dims}
    known: dict[tuple[Any, ...], _Combination] = {}
    known_combination = known.get
    hour: Any = None
    hour_text = ""
    line_start = ""
    for index, row in enumerate(rows, first_index):
        try:
            values = row["dims"]
            combination = known_combination((*values, *values.values()))  # names and values, in order
            same_hour = row["hour"] is hour
            spend, tokens, requests = row["spend"], row["total_tokens"], row["requests"]
        except (KeyError, TypeError, AttributeError):  # unhashable or missing: to_cbf names it
            combination = None
        # cbf_cost's text and a non-negative int's digits are numbers as is_number reads them, but for the length.
        if (
            combination is not None
            and same_hour
            and type(tokens) is int
            and type(requests) is int
            and tokens >= 0
            and (cost := cbf_cost(spend)) is not None
            and len(amount := str(tokens)) <= MAX_NUMBER_CHARS
        ):
            if as_lines:  # the bytes encode_line writes of the dict below
                yield row, cost, amount, _usage_line(line_start, cost, amount, requests, combination.line_end)
            else:
                plural = "s" if requests != 1 else ""
                yield (
                    row,
                    cost,
                    amount,
                    {
                        "time/usage_start": hour_text,
                        "cost/cost": cost,
                        "usage/amount": amount,
                        "usage/units": "tokens",
                        "lineitem/type": "Usage",
                        "lineitem/description": f"LiteLLM spend: {requests} request{plural}",
                        **combination.columns,
                    },
                )
            continue
        cbf = _checked_cbf(index, row, tag_keys)
        hour, hour_text = row["hour"], cbf["time/usage_start"]  # an ISO-8601 date-time: nothing to escape
        line_start = _line_start(hour_text)
        values = row["dims"]
        if cacheable(values.values()):
            if len(known) >= MAX_CACHED_COMBINATIONS:  # memory stays bounded however many a window holds
                known.clear()
            with contextlib.suppress(TypeError, AttributeError):
                columns = {k: v for k, v in cbf.items() if k not in _PER_ROW}
                known[(*values, *values.values())] = _Combination(
                    columns, _line_end(columns) if as_lines else ""
                )
        yield row, cbf["cost/cost"], cbf["usage/amount"], (encode_line(cbf) if as_lines else cbf)


class StagedCBF:
    """Staged group lines -> CBF lines, an hour's lines at a time, each line exactly what :func:`cbf_lines` gives
    for the row it decodes to.

    A line of the usual form is read as its :class:`~cloudzero_provider.staged_group.StagedGroup`: once its hour and
    its ``dims`` bytes have been built and checked whole, its CBF line is those bytes' validated columns and its own
    figures, under the same conditions as :func:`cbf_lines` takes a row's. Any other line, and the first of each
    hour and of each combination, is decoded and goes through :func:`to_cbf` and
    :func:`~cloudzero_provider.cbf_rules.row_errors` whole.

    :param dims: The dimensions the lines were extracted with.
    """

    def __init__(self, dims: Sequence[Dimension]) -> None:
        self.tag_keys = {d.name: d.tag for d in dims}
        self.index = 0  # rows built so far: an error names a row by its index, as cbf_lines does
        self._known: dict[bytes, str] = {}  # dims bytes -> the end of a CBF line ("resource/id":...}\n)

    @staticmethod
    def row(item: StagedGroup | dict[str, Any], line: bytes, hour: datetime) -> dict[str, Any]:
        """The aggregated row a staged line decodes to, its ``hour`` the datetime given."""
        if isinstance(item, dict):
            return item
        row = cast(dict[str, Any], decode_line(line))
        row["hour"] = hour
        return row

    def hour_lines(
        self, hour: datetime, items: Sequence[StagedGroup | dict[str, Any]], lines: Sequence[bytes]
    ) -> Iterator[tuple[str, str, bytes]]:
        """One hour's items and lines (as :func:`~cloudzero_provider.pipeline.extract.staged_groups` gives them)
        -> each CBF row's ``cost/cost``, ``usage/amount`` and line."""
        known = self._known
        line_start = ""
        for item, line in zip(items, lines, strict=True):
            index = self.index
            self.index = index + 1
            if line_start and type(item) is StagedGroup:
                line_end = known.get(bytes(item.dims))
                tokens, requests = item.total_tokens, item.requests
                if (
                    line_end is not None
                    and tokens >= 0
                    and (cost := cbf_cost(item.spend)) is not None
                    and len(amount := str(tokens)) <= MAX_NUMBER_CHARS
                ):  # as _transform's own shortcut
                    yield cost, amount, _usage_line(line_start, cost, amount, requests, line_end)
                    continue
            row = self.row(item, line, hour)
            cbf = _checked_cbf(index, row, self.tag_keys)
            line_start = _line_start(cbf["time/usage_start"])
            if (
                type(item) is StagedGroup
                and len(item.dims)
                <= MAX_CACHED_DIMS_BYTES  # padding or repeated keys: a short value, long bytes
                and cacheable(row["dims"].values())
            ):
                if len(known) >= MAX_CACHED_COMBINATIONS:  # memory stays bounded however many a window holds
                    known.clear()
                known[bytes(item.dims)] = _line_end({k: v for k, v in cbf.items() if k not in _PER_ROW})
            yield cbf["cost/cost"], cbf["usage/amount"], encode_line(cbf)


def _line_start(hour_text: str) -> str:
    """A CBF line up to its cost's digits (an ISO-8601 hour holds nothing JSON escapes)."""
    return f'{{"time/usage_start":"{hour_text}","cost/cost":"'


def _line_end(columns: Mapping[str, str]) -> str:
    """A combination's columns as the end of a CBF line: what encode_line writes after the row's own figures."""
    return encode_line(columns)[1:].decode()


def _usage_line(line_start: str, cost: str, amount: str, requests: int, line_end: str) -> bytes:
    """The bytes encode_line writes of a usage row: its hour's ``line_start``, its figures (digits: nothing to
    escape) and its combination's ``line_end``."""
    plural = "s" if requests != 1 else ""
    return (
        f'{line_start}{cost}","usage/amount":"{amount}","usage/units":"tokens","lineitem/type":"Usage",'
        f'"lineitem/description":"LiteLLM spend: {requests} request{plural}",{line_end}'
    ).encode()


# The columns of a CBF row that vary with more than its dimension values (to_cbf writes them first).
_PER_ROW = frozenset(
    {"time/usage_start", "cost/cost", "usage/amount", "usage/units", "lineitem/type", "lineitem/description"}
)


def _checked_cbf(index: int, row: Mapping[str, Any], tag_keys: Mapping[str, str]) -> dict[str, str]:
    """One aggregated row -> its validated CBF row; :class:`CBFError` names the row, its hour and the column."""
    try:
        cbf = to_cbf(
            row["hour"],
            row["dims"],
            spend=row["spend"],
            total_tokens=int(row["total_tokens"]),
            requests=int(row["requests"]),
            tag_keys=tag_keys,
        )
    except (CBFError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CBFError(f"{_where(index, row)}: {exc}") from None
    errors = row_errors(cbf)
    if errors:
        raise CBFError(f"{_where(index, row)}: " + "; ".join(errors))
    return cbf


def _where(index: int, row: Mapping[str, Any]) -> str:
    hour = row.get("hour")
    return f"aggregated row {index} (hour {iso_hour(hour) if isinstance(hour, datetime) else hour!r})"


def is_caller_controlled(name: str) -> bool:
    """Dimensions whose values an LLM caller chooses freely (its ``user`` field, its request tags)."""
    return name == "end_user" or name.startswith("tag:")


def fold_rare_values(
    rows: Sequence[Mapping[str, Any]], capped: Sequence[str], cap: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """
    One hour's aggregated rows with at most ``cap`` distinct values per dimension in ``capped``: the values with
    the most spend are kept, the rest become ``(other)``, and rows that then share every dimension value are
    merged -- spend summed exactly, counters added -- so the hour's totals do not move by a digit.

    :return: The rows, and per capped dimension how many distinct values were folded.
    """
    folded: dict[str, int] = {}
    keep: dict[str, set[Any]] = {}
    for name in capped:
        spend_by_value: dict[Any, Decimal] = {}
        for row in rows:
            value = row["dims"].get(name)
            spend_by_value[value] = EXACT.add(
                spend_by_value.get(value, Decimal(0)), Decimal(str(row["spend"]))
            )
        if len(spend_by_value) > cap:
            ranked = sorted(spend_by_value.items(), key=lambda kv: (-kv[1], str(kv[0])))
            keep[name] = {value for value, _ in ranked[:cap]}
            folded[name] = len(spend_by_value) - cap
    if not keep:
        return [dict(r) for r in rows], folded
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        dims = {k: (v if k not in keep or v in keep[k] else OTHER) for k, v in row["dims"].items()}
        key = tuple(sorted(dims.items(), key=lambda kv: kv[0]))
        current = merged.get(key)
        if current is None:
            merged[key] = {**row, "dims": dims, "spend": str(row["spend"])}
            continue
        current["spend"] = str(EXACT.add(Decimal(current["spend"]), Decimal(str(row["spend"]))))
        for counter in (
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "successes",
            "failures",
        ):
            if current.get(counter) is not None or row.get(counter) is not None:
                current[counter] = int(current.get(counter) or 0) + int(row.get(counter) or 0)
    return list(merged.values()), folded


def _merge_into(target: dict[str, Any], row: Mapping[str, Any]) -> None:
    """Add ``row``'s spend (exactly) and counters to ``target``."""
    target["spend"] = str(EXACT.add(Decimal(str(target["spend"])), Decimal(str(row["spend"]))))
    for counter in (
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "successes",
        "failures",
    ):
        if target.get(counter) is not None or row.get(counter) is not None:
            target[counter] = int(target.get(counter) or 0) + int(row.get(counter) or 0)


def fold_smallest_groups(rows: Sequence[Mapping[str, Any]], cap: int) -> tuple[list[dict[str, Any]], int]:
    """
    One hour's aggregated rows, at most ``cap`` of them: the ``cap - 1`` groups with the most spend are kept and
    every other group is summed into one row whose every dimension reads ``(other)`` -- spend exact, counters
    added -- so the hour's totals do not move by a digit, however the dimensions multiply.

    :return: The rows, and how many groups were folded.
    """
    if len(rows) <= cap:
        return [dict(r) for r in rows], 0
    ranked = sorted(rows, key=lambda r: (-Decimal(str(r["spend"])), json.dumps(r["dims"], sort_keys=True)))
    kept = [dict(r) for r in ranked[: cap - 1]]
    rest = ranked[cap - 1 :]
    other: dict[str, Any] = {**rest[0], "dims": dict.fromkeys(rest[0]["dims"], OTHER), "spend": "0"}
    for counter in (
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "successes",
        "failures",
    ):
        if counter in other:
            other[counter] = 0 if other[counter] is not None else None
    for row in rest:
        _merge_into(other, row)
    same = next((r for r in kept if r["dims"] == other["dims"]), None)
    if same is not None:
        _merge_into(same, other)
    else:
        kept.append(other)
    return kept, len(rest)
