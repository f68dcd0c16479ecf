"""The transform's work on one window, an hour at a time: staged groups -> CBF lines, and the record of what was built
(``transform.json``), reconciled exactly with PostgreSQL's own totals.

The transform runs it over ``extract.jsonl``. The extract of a daily rollup runs it too, as it reads: it reads a day
at a time, and builds one day's rows while PostgreSQL aggregates the next, so that the transform finds them built
(see :func:`~cloudzero_provider.pipeline.transform.transform_window`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from cloudzero_provider import __version__
from cloudzero_provider.cbf import (
    EXACT,
    StagedCBF,
    cbf_lines,
    exact_decimal,
    exact_sum,
    fold_rare_values,
    fold_smallest_groups,
    is_caller_controlled,
)
from cloudzero_provider.dimensions import Dimension
from cloudzero_provider.options import DEFAULT_MAX_ROWS_PER_HOUR, DEFAULT_MAX_VALUES_PER_HOUR
from cloudzero_provider.pipeline.common import MONTH_ROW_LIMIT
from cloudzero_provider.staged_group import StagedGroup
from cloudzero_provider.windows import days_in_month, iso_hour, iso_instant


def builds_as_read(source: str) -> bool:
    """Whether the extract of ``source`` builds its CBF rows as it reads: a daily rollup's does (it is read a day at a
    time); a spend-log window is one statement, and holding its hour's lines would lift a 10M-row hour's memory."""
    return source != "spend_logs"


class NotReconciled(ValueError):
    """The CBF rows of some hour do not sum to PostgreSQL's total of its source rows; the message names each."""


@dataclass
class HourFigures:
    """One hour's CBF rows, exact cost and tokens as the transform wrote them."""

    rows: int
    cost: str
    tokens: int


class CBFBuild:
    """
    One window's CBF rows, built an hour at a time from its staged groups (memory holds one hour's).

    Values LLM callers choose (``end_user``, request tags) are capped at ``max_values_per_hour`` distinct values per
    hour, the rest folded into ``(other)`` with their cost; then an hour keeps at most ``max_rows_per_hour`` rows
    across all dimensions, its smallest groups summed into one ``(other)`` row (so caps on several dimensions cannot
    multiply); rows of exactly zero cost are not sent (all counted in the record).

    :param dims: The dimensions the groups were extracted with.
    """

    def __init__(
        self,
        dims: Sequence[Dimension],
        *,
        max_values_per_hour: int | None = DEFAULT_MAX_VALUES_PER_HOUR,
        max_rows_per_hour: int | None = DEFAULT_MAX_ROWS_PER_HOUR,
    ) -> None:
        self.dims = list(dims)
        self.max_values_per_hour = max_values_per_hour
        self.max_rows_per_hour = max_rows_per_hour
        self.capped = [d.name for d in dims if is_caller_controlled(d.name)]
        self.values_cap = max_values_per_hour if self.capped and max_values_per_hour is not None else None
        self.builder = StagedCBF(dims)
        self.cost: dict[datetime, Decimal] = {}
        self.tokens: dict[datetime, int] = {}
        self.rows: dict[datetime, int] = {}
        self.folded: dict[datetime, dict[str, int]] = {}
        self.row_capped: dict[datetime, int] = {}
        self.zero_cost = 0

    def hour_lines(self, hour: datetime, items: Sequence[Any], lines: Sequence[bytes]) -> Iterator[bytes]:
        """An hour's CBF lines from its staged items and lines (as ``groups_by_hour`` gives them); their figures are
        counted once the last is taken. :class:`~cloudzero_provider.cbf.CBFError` names a row that cannot be CBF."""
        costs: list[str] = []
        amounts: list[str] = []
        for row_cost, amount, line in self._built(hour, items, lines):
            if row_cost == "0":
                self.zero_cost += 1  # adds nothing to CloudZero: not sent, counted
                continue
            costs.append(row_cost)
            amounts.append(amount)
            yield line
        if costs:
            self.cost[hour] = EXACT.add(self.cost.get(hour, Decimal(0)), exact_sum(costs))
            self.tokens[hour] = self.tokens.get(hour, 0) + sum(map(int, amounts))
            self.rows[hour] = self.rows.get(hour, 0) + len(costs)

    def _built(
        self, hour: datetime, items: Sequence[StagedGroup | dict[str, Any]], lines: Sequence[bytes]
    ) -> Iterator[tuple[str, str, bytes]]:
        """An hour's CBF rows; its rows decoded and folded first when the hour holds more than a cap allows."""
        builder, values_cap, max_rows = self.builder, self.values_cap, self.max_rows_per_hour
        if (values_cap is None or len(items) <= values_cap) and not (max_rows and len(items) > max_rows):
            # No cap can fold anything: fewer rows than either allows.
            return builder.hour_lines(hour, items, lines)
        one_hour = [builder.row(item, line, hour) for item, line in zip(items, lines, strict=True)]
        if values_cap is not None:
            one_hour, hour_folded = fold_rare_values(one_hour, self.capped, values_cap)
            if hour_folded:
                self.folded[hour] = hour_folded
        if max_rows and len(one_hour) > max_rows:
            one_hour, groups_folded = fold_smallest_groups(one_hour, max_rows)
            if groups_folded:
                self.row_capped[hour] = groups_folded
        first, builder.index = builder.index, builder.index + len(one_hour)
        return ((c, a, line) for _, c, a, line in cbf_lines(one_hour, self.dims, first_index=first))

    def record(
        self,
        written: int,
        source_spend: Mapping[datetime, str],
        *,
        extracted_at: datetime,
        built_from: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """What ``transform.json`` records of the rows built, once each hour's cost is checked against
        ``source_spend`` (PostgreSQL's ``SUM(spend::numeric)`` of its valid source rows, per hour).

        :param written: CBF lines written.
        :param built_from: What rows built as the extract was read were built from (:func:`built_from`): the
            transform takes them as built only while it holds.
        :raises NotReconciled: An hour's rows do not sum to its source's total.
        """
        mismatches = []
        for hour in sorted(set(self.cost) | set(source_spend)):
            source = Decimal(source_spend.get(hour, "0"))
            if self.cost.get(hour, Decimal(0)) != source:
                mismatches.append(
                    f"hour {iso_hour(hour)}: CBF cost/cost sums to {exact_decimal(self.cost.get(hour, Decimal(0)))} "
                    f"but SUM(spend::numeric) of its source rows is {exact_decimal(source)}"
                )
        if mismatches:
            raise NotReconciled("; ".join(mismatches))
        hours = {
            h: HourFigures(n, exact_decimal(self.cost[h]), self.tokens[h])
            for h, n in sorted(self.rows.items())
        }
        record: dict[str, Any] = {
            "rows": written,
            "cost": exact_decimal(exact_sum(self.cost.values())),
            "hours": {iso_hour(h): f.__dict__ for h, f in hours.items()},
            "extracted_at": iso_instant(extracted_at),
            "folded": {iso_hour(h): f for h, f in sorted(self.folded.items())},
            "zero_cost_rows": self.zero_cost,
            "month_projection": month_projection(hours),
            "max_values_per_hour": self.max_values_per_hour,
            "max_rows_per_hour": self.max_rows_per_hour,
            "row_capped": {iso_hour(h): n for h, n in sorted(self.row_capped.items())},
        }
        if built_from:
            record["built_from"] = {**built_from, "record_sha256": record_digest(record)}
        return record


def built_from(extract_digest: str, cbf_digest: str, dimensions: Sequence[str]) -> dict[str, Any]:
    """What rows built as the extract was read were built from, and by which build: the SHA-256 of
    ``extract.jsonl`` and of the ``cbf.jsonl`` written, the dimensions, and the provider's version (a build changed
    by an upgrade between the extract and the transform is not taken)."""
    return {
        "extract_sha256": extract_digest,
        "cbf_sha256": cbf_digest,
        "dimensions": list(dimensions),
        "provider_version": __version__,
    }


def record_digest(record: Mapping[str, Any]) -> str:
    """The SHA-256 of a ``transform.json`` record but for its ``built_from`` (a record edited since it was built is
    not taken)."""
    content = {k: v for k, v in record.items() if k != "built_from"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def month_projection(hours: Mapping[datetime, HourFigures]) -> int | None:
    """Rows a month would reach at the busiest hour's rate, when that crosses CloudZero's per-stream limit."""
    if not hours:
        return None
    busiest = max(fig.rows for fig in hours.values())
    projected = busiest * 24 * days_in_month(min(hours))
    return projected if projected > MONTH_ROW_LIMIT else None
