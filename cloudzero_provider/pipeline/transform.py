"""Transform: staged aggregate rows -> validated CBF rows, reconciled exactly with the source per hour."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from decimal import Decimal
from itertools import groupby
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.cbf import (
    EXACT,
    OTHER,
    CBFError,
    exact_decimal,
    exact_sum,
    fold_rare_values,
    is_caller_controlled,
    transform,
)
from cloudzero_provider.dimensions import resolve
from cloudzero_provider.pipeline.common import DEFAULT_MAX_VALUES_PER_HOUR, MONTH_ROW_LIMIT
from cloudzero_provider.staging import WindowStage
from cloudzero_provider.windows import Window, parse_hour

log = logging.getLogger(__name__)

# -- transform --------------------------------------------------------------------------------------------


def transform_window(
    window: Window, stage: WindowStage, *, max_values_per_hour: int | None = DEFAULT_MAX_VALUES_PER_HOUR
) -> dict[str, Any]:
    """``extract.jsonl`` -> validated ``cbf.jsonl``, reconciled per hour against PostgreSQL's own totals.

    ``transform.json`` records each hour's rows, cost and tokens; the upload checks ``cbf.jsonl`` against them
    and writes them into the hour's manifest. Values LLM callers choose (``end_user``, request tags) are capped
    at ``max_values_per_hour`` distinct values per hour, the rest folded into ``(other)`` with their cost; rows
    of exactly zero cost are not sent (both counted in the result).
    """
    extract = stage.read_json("extract.json")
    dims = resolve(extract["dimensions"])
    cost: dict[str, Decimal] = {}
    tokens: dict[str, int] = {}
    rows: dict[str, int] = {}
    folded: dict[str, dict[str, int]] = {}
    zero_cost = 0

    def capped_rows() -> Iterator[dict[str, Any]]:
        staged = stage.read_jsonl("extract.jsonl")
        capped = [d.name for d in dims if is_caller_controlled(d.name)]
        if not capped or max_values_per_hour is None:
            yield from staged
            return
        for hour, group in groupby(staged, key=lambda r: r["hour"]):  # the extract streams hour by hour
            hour_rows, hour_folded = fold_rare_values(list(group), capped, max_values_per_hour)
            if hour_folded:
                folded[hour] = hour_folded
            yield from hour_rows

    def cbf_rows() -> Iterator[dict[str, str]]:
        nonlocal zero_cost
        for row in transform(capped_rows(), dims):
            hour = row["time/usage_start"]
            if row["cost/cost"] == "0":
                zero_cost += 1  # adds nothing to CloudZero: not sent, counted
                continue
            cost[hour] = EXACT.add(cost.get(hour, Decimal(0)), Decimal(row["cost/cost"]))
            tokens[hour] = tokens.get(hour, 0) + int(row["usage/amount"])
            rows[hour] = rows.get(hour, 0) + 1
            yield row

    stage.remove("transform.json")
    try:
        written = stage.write_jsonl("cbf.jsonl", cbf_rows())
    except CBFError as exc:
        stage.remove("cbf.jsonl")
        raise AirflowFailException(f"Window {window}: {exc}") from None
    mismatches = []
    for hour in sorted(set(cost) | set(extract["hours"])):
        source = Decimal(extract["hours"].get(hour, {}).get("spend", "0"))
        if cost.get(hour, Decimal(0)) != source:
            mismatches.append(
                f"hour {hour}: CBF cost/cost sums to {exact_decimal(cost.get(hour, Decimal(0)))} but "
                f"SUM(spend::numeric) of its source rows is {exact_decimal(source)}"
            )
    if mismatches:
        stage.remove("cbf.jsonl")
        raise AirflowFailException(
            f"Window {window} does not reconcile, nothing will be uploaded: " + "; ".join(mismatches)
        )
    total = exact_decimal(exact_sum(cost.values()))
    hours = {h: {"rows": rows[h], "cost": exact_decimal(cost[h]), "tokens": tokens[h]} for h in sorted(rows)}
    if folded:
        log.warning(
            "Window %s: more than %d distinct caller-chosen values in an hour; the rest were folded into %s with "
            "their cost: %s",
            window,
            max_values_per_hour,
            OTHER,
            "; ".join(
                f"{h}: {', '.join(f'{n} {k}' for k, n in f.items())}" for h, f in sorted(folded.items())
            ),
        )
    projection = _month_projection(hours)
    stage.write_json(
        "transform.json",
        {
            "rows": written,
            "cost": total,
            "hours": hours,
            "extracted_at": extract["extracted_at"],
            "folded": folded,
            "zero_cost_rows": zero_cost,
            "month_projection": projection,
            "max_values_per_hour": max_values_per_hour,
        },
    )
    log.info(
        "Transformed %s: %d CBF rows over %d hour(s), cost %s USD, %d tokens -- reconciled exactly with the source",
        window,
        written,
        len(hours),
        total,
        sum(tokens.values()),
    )
    return {
        "window": window.label,
        "path": str(stage.path("cbf.jsonl")),
        "rows": written,
        "cost": total,
        "tokens": sum(tokens.values()),
        "hours": len(hours),
        "max_values_per_hour": max_values_per_hour,
        "folded_values": sum(n for f in folded.values() for n in f.values()),
        "zero_cost_rows": zero_cost,
        **({"month_projection": projection} if projection else {}),
    }


def _month_projection(hours: Mapping[str, Mapping[str, Any]]) -> int | None:
    """Rows a month would reach at the busiest hour's rate, when that crosses CloudZero's per-stream limit."""
    if not hours:
        return None
    busiest = max(int(fig["rows"]) for fig in hours.values())
    first = parse_hour(min(hours))
    days = (first.replace(month=first.month % 12 + 1, year=first.year + first.month // 12, day=1)
            - first.replace(day=1)).days  # fmt: skip
    projected = busiest * 24 * days
    if projected <= MONTH_ROW_LIMIT:
        return None
    log.warning(
        "At this window's busiest hour (%d CBF rows) a month would reach %d rows, over CloudZero's %d rows per "
        "stream and month: drop a high-cardinality dimension or lower max_values_per_hour",
        busiest,
        projected,
        MONTH_ROW_LIMIT,
    )
    return projected
