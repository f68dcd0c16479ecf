"""Transform: staged aggregate rows -> validated CBF rows, reconciled exactly with the source per hour; and the
integrity check of staged CBF rows against what the transform recorded, which the upload runs before sending."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.cbf import (
    EXACT,
    OTHER,
    CBFError,
    StagedCBF,
    cbf_lines,
    exact_decimal,
    exact_sum,
    fold_rare_values,
    fold_smallest_groups,
    is_caller_controlled,
)
from cloudzero_provider.dimensions import resolve
from cloudzero_provider.drops import content_digest, read_cbf_line, serialize_row
from cloudzero_provider.options import DEFAULT_MAX_ROWS_PER_HOUR, DEFAULT_MAX_VALUES_PER_HOUR
from cloudzero_provider.pipeline.common import MONTH_ROW_LIMIT
from cloudzero_provider.pipeline.extract import read_extract, staged_groups
from cloudzero_provider.staging import WindowStage
from cloudzero_provider.windows import (
    Window,
    days_in_month,
    hour_of,
    iso_hour,
    iso_instant,
    parse_hour,
    parse_instant,
)

log = logging.getLogger(__name__)


@dataclass
class HourFigures:
    """One hour's CBF rows, exact cost and tokens as the transform wrote them."""

    rows: int
    cost: str
    tokens: int


@dataclass
class TransformSummary:
    """What ``transform.json`` records of a window."""

    rows: int
    cost: str
    hours: dict[datetime, HourFigures] = field(default_factory=dict)
    extracted_at: datetime | None = None
    max_values_per_hour: int | None = DEFAULT_MAX_VALUES_PER_HOUR
    max_rows_per_hour: int | None = DEFAULT_MAX_ROWS_PER_HOUR


def read_transform(stage: WindowStage) -> TransformSummary:
    raw = stage.read_json("transform.json")
    return TransformSummary(
        rows=int(raw["rows"]),
        cost=str(raw["cost"]),
        hours={
            parse_hour(h): HourFigures(int(f["rows"]), str(f["cost"]), int(f["tokens"]))
            for h, f in raw["hours"].items()
        },
        extracted_at=parse_instant(raw["extracted_at"], what="extracted_at")
        if raw.get("extracted_at")
        else None,
        max_values_per_hour=raw.get("max_values_per_hour"),
        max_rows_per_hour=raw.get("max_rows_per_hour", DEFAULT_MAX_ROWS_PER_HOUR),
    )


def transform_window(
    window: Window,
    stage: WindowStage,
    *,
    max_values_per_hour: int | None = DEFAULT_MAX_VALUES_PER_HOUR,
    max_rows_per_hour: int | None = DEFAULT_MAX_ROWS_PER_HOUR,
) -> dict[str, Any]:
    """``extract.jsonl`` -> validated ``cbf.jsonl``, reconciled per hour against PostgreSQL's own totals.

    Works hour by hour (the extract streams its rows in hour order), so memory holds one hour's aggregated rows,
    never a window's. ``transform.json`` records each hour's rows, cost and tokens; the upload checks
    ``cbf.jsonl`` against them and writes them into the hour's manifest. Values LLM callers choose (``end_user``,
    request tags) are capped at ``max_values_per_hour`` distinct values per hour, the rest folded into ``(other)``
    with their cost; then an hour keeps at most ``max_rows_per_hour`` rows across all dimensions, its smallest groups
    summed into one ``(other)`` row (so caps on several dimensions cannot multiply); rows of exactly zero cost are
    not sent (all counted in the result).
    """
    extract = read_extract(stage)
    dims = resolve(extract.dimensions)
    capped = [d.name for d in dims if is_caller_controlled(d.name)]
    cost: dict[datetime, Decimal] = {}
    tokens: dict[datetime, int] = {}
    rows: dict[datetime, int] = {}
    folded: dict[datetime, dict[str, int]] = {}
    row_capped: dict[datetime, int] = {}
    zero_cost = 0

    builder = StagedCBF(dims)
    values_cap = max_values_per_hour if capped and max_values_per_hour is not None else None

    def hour_lines(hour: datetime, items: list[Any], lines: list[bytes]) -> Iterator[tuple[str, str, bytes]]:
        """An hour's CBF rows; its rows decoded and folded first when the hour holds more than a cap allows."""
        if (values_cap is None or len(items) <= values_cap) and not (
            max_rows_per_hour and len(items) > max_rows_per_hour
        ):  # no cap can fold anything: fewer rows than either allows
            return builder.hour_lines(hour, items, lines)
        one_hour = [builder.row(item, line, hour) for item, line in zip(items, lines, strict=True)]
        if values_cap is not None:
            one_hour, hour_folded = fold_rare_values(one_hour, capped, values_cap)
            if hour_folded:
                folded[hour] = hour_folded
        if max_rows_per_hour and len(one_hour) > max_rows_per_hour:
            one_hour, groups_folded = fold_smallest_groups(one_hour, max_rows_per_hour)
            if groups_folded:
                row_capped[hour] = groups_folded
        first, builder.index = builder.index, builder.index + len(one_hour)
        return ((c, a, line) for _, c, a, line in cbf_lines(one_hour, dims, first_index=first))

    def cbf_rows() -> Iterator[bytes]:
        nonlocal zero_cost
        # The extract wrote an hour's rows together (in hour order): their figures are summed once they are written.
        for hour, items, lines in staged_groups(stage):
            costs: list[str] = []
            amounts: list[str] = []
            for row_cost, amount, line in hour_lines(hour, items, lines):
                if row_cost == "0":
                    zero_cost += 1  # adds nothing to CloudZero: not sent, counted
                    continue
                costs.append(row_cost)
                amounts.append(amount)
                yield line
            if costs:
                cost[hour] = EXACT.add(cost.get(hour, Decimal(0)), exact_sum(costs))
                tokens[hour] = tokens.get(hour, 0) + sum(map(int, amounts))
                rows[hour] = rows.get(hour, 0) + len(costs)

    stage.remove("transform.json")
    try:
        written = stage.write_lines("cbf.jsonl", cbf_rows())
    except CBFError as exc:
        stage.remove("cbf.jsonl")
        raise AirflowFailException(f"Window {window}: {exc}") from None
    mismatches = []
    for hour in sorted(set(cost) | set(extract.hours)):
        source = Decimal(extract.spend(hour))
        if cost.get(hour, Decimal(0)) != source:
            mismatches.append(
                f"hour {iso_hour(hour)}: CBF cost/cost sums to {exact_decimal(cost.get(hour, Decimal(0)))} but "
                f"SUM(spend::numeric) of its source rows is {exact_decimal(source)}"
            )
    if mismatches:
        stage.remove("cbf.jsonl")
        raise AirflowFailException(
            f"Window {window} does not reconcile, nothing will be uploaded: " + "; ".join(mismatches)
        )
    total = exact_decimal(exact_sum(cost.values()))
    hours = {h: HourFigures(rows[h], exact_decimal(cost[h]), tokens[h]) for h in sorted(rows)}
    if folded:
        log.warning(
            "Window %s: more than %d distinct caller-chosen values in an hour; the rest were folded into %s with "
            "their cost: %s",
            window, max_values_per_hour, OTHER,
            "; ".join(f"{iso_hour(h)}: {', '.join(f'{n} {k}' for k, n in f.items())}" for h, f in sorted(folded.items())),
        )  # fmt: skip
    if row_capped:
        log.warning(
            "Window %s: more than %d CBF rows in an hour; its smallest groups were summed into one %s row with their "
            "exact cost: %s",
            window, max_rows_per_hour, OTHER,
            "; ".join(f"{iso_hour(h)}: {n} group(s)" for h, n in sorted(row_capped.items())),
        )  # fmt: skip
    projection = _month_projection(hours)
    stage.write_json(
        "transform.json",
        {
            "rows": written,
            "cost": total,
            "hours": {iso_hour(h): f.__dict__ for h, f in hours.items()},
            "extracted_at": iso_instant(extract.extracted_at),
            "folded": {iso_hour(h): f for h, f in sorted(folded.items())},
            "zero_cost_rows": zero_cost,
            "month_projection": projection,
            "max_values_per_hour": max_values_per_hour,
            "max_rows_per_hour": max_rows_per_hour,
            "row_capped": {iso_hour(h): n for h, n in sorted(row_capped.items())},
        },
    )
    log.info(
        "Transformed %s: %d CBF rows over %d hour(s), cost %s USD, %d tokens -- reconciled exactly with the source",
        window, written, len(hours), total, sum(tokens.values()),
    )  # fmt: skip
    return {
        "window": window.label,
        "path": str(stage.path("cbf.jsonl")),
        "rows": written,
        "cost": total,
        "tokens": sum(tokens.values()),
        "hours": len(hours),
        "max_values_per_hour": max_values_per_hour,
        "folded_values": sum(n for f in folded.values() for n in f.values()),
        "max_rows_per_hour": max_rows_per_hour,
        "groups_folded_by_row_cap": sum(row_capped.values()),
        "zero_cost_rows": zero_cost,
        **({"month_projection": projection} if projection else {}),
    }


def _month_projection(hours: Mapping[datetime, HourFigures]) -> int | None:
    """Rows a month would reach at the busiest hour's rate, when that crosses CloudZero's per-stream limit."""
    if not hours:
        return None
    busiest = max(fig.rows for fig in hours.values())
    projected = busiest * 24 * days_in_month(min(hours))
    if projected <= MONTH_ROW_LIMIT:
        return None
    log.warning(
        "At this window's busiest hour (%d CBF rows) a month would reach %d rows, over CloudZero's %d rows per "
        "stream and month: drop a high-cardinality dimension or lower max_values_per_hour",
        busiest, projected, MONTH_ROW_LIMIT,
    )  # fmt: skip
    return projected


class StagedOrderError(ValueError):
    """``cbf.jsonl`` is not in hour order (the transform writes it so): an edited or foreign file."""


@dataclass
class StagedHour:
    """What ``cbf.jsonl`` holds of one hour: rows, exact cost, and the digest of the rows as they would be sent."""

    rows: int
    cost: Decimal
    digest: str


def cbf_hours(stage: WindowStage) -> Iterator[tuple[datetime, list[bytes]]]:
    """``cbf.jsonl`` one hour at a time, each row serialized as it is sent: memory holds one hour's rows.

    :raises StagedOrderError: An hour's rows are not together (the transform writes them in hour order).
    """
    for hour, rows, _ in _cbf_hours(stage, costs=False):
        yield hour, rows


def _cbf_hours(stage: WindowStage, *, costs: bool) -> Iterator[tuple[datetime, list[bytes], Decimal]]:
    """As :func:`cbf_hours`, with the exact sum of each hour's ``cost/cost`` when ``costs`` (else 0)."""
    hours_of: dict[str, datetime] = {}  # an hour's rows share one text: parse it once
    current: datetime | None = None
    rows: list[bytes] = []
    cost = Decimal(0)
    done: set[datetime] = set()
    for line in stage.read_lines("cbf.jsonl"):
        read = read_cbf_line(line)
        if read is None:
            continue
        row, body = read
        text = row["time/usage_start"]
        hour = hours_of.get(text) or hours_of.setdefault(text, hour_of(text))
        if hour != current:
            if current is not None:
                done.add(current)
                yield current, rows, cost
            if hour in done:
                raise StagedOrderError(f"the rows of hour {iso_hour(hour)} are not together")
            current, rows, cost = hour, [], Decimal(0)
        rows.append(body if body is not None else serialize_row(row))
        if costs:
            cost = EXACT.add(cost, Decimal(row["cost/cost"]))
    if current is not None:
        yield current, rows, cost


def check_staged_cbf(
    window: Window, stage: WindowStage
) -> tuple[dict[datetime, StagedHour], TransformSummary]:
    """Read ``cbf.jsonl`` once, hour by hour, and check it against what the transform recorded.

    A ``cbf.jsonl`` that does not hold the rows and cost the transform reconciled (a torn, reordered or edited file)
    is rebuilt once from ``extract.jsonl`` with the transform's own settings; if it still disagrees nothing is sent.
    Memory holds one hour's rows and a few figures per hour.
    """
    problems: list[str] = []
    for attempt in (1, 2):
        recorded = read_transform(stage)
        staged: dict[datetime, StagedHour] = {}
        torn = ""
        try:
            for hour, rows, cost in _cbf_hours(stage, costs=True):
                staged[hour] = StagedHour(len(rows), cost, content_digest(rows))
        # A line cut in the middle, rows out of order, an hour or a cost that is not one (an edited file).
        except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError) as exc:
            torn = f"cbf.jsonl cannot be read ({exc})"
        problems = [
            f"hour {iso_hour(h)}: cbf.jsonl holds {staged[h].rows if h in staged else 0} rows / "
            f"{exact_decimal(staged[h].cost) if h in staged else '0'} USD, the transform recorded {fig.rows} / {fig.cost}"
            for h, fig in sorted(recorded.hours.items())
            if h not in staged or staged[h].rows != fig.rows or staged[h].cost != Decimal(fig.cost)
        ]
        problems += [
            f"hour {iso_hour(h)}: in cbf.jsonl but not in transform.json"
            for h in staged
            if h not in recorded.hours
        ]
        if torn:
            problems.append(torn)
        if not problems:
            return staged, recorded
        if attempt == 1:
            log.warning("Window %s: staged CBF rows do not match the transform (%s); transforming again",
                        window, "; ".join(problems))  # fmt: skip
            transform_window(window, stage, max_values_per_hour=recorded.max_values_per_hour,
                             max_rows_per_hour=recorded.max_rows_per_hour)  # fmt: skip
    raise AirflowFailException(f"Window {window}: refusing to send CBF rows that do not match the transform: "
                               + "; ".join(problems))  # fmt: skip
