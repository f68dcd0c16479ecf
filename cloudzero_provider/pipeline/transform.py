"""Transform: staged aggregate rows -> validated CBF rows, reconciled exactly with the source per hour; and the
integrity check of staged CBF rows against what the transform recorded, which the upload runs before sending."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider import __version__
from cloudzero_provider.cbf import EXACT, OTHER, CBFError, exact_decimal
from cloudzero_provider.dimensions import resolve
from cloudzero_provider.drops import content_digest, read_cbf_line, serialize_row
from cloudzero_provider.options import DEFAULT_MAX_ROWS_PER_HOUR, DEFAULT_MAX_VALUES_PER_HOUR
from cloudzero_provider.pipeline.cbf_build import (
    CBFBuild,
    HourFigures,
    NotReconciled,
    builds_as_read,
    record_digest,
)
from cloudzero_provider.pipeline.common import MONTH_ROW_LIMIT
from cloudzero_provider.pipeline.extract import ExtractSummary, read_extract, staged_groups
from cloudzero_provider.staging import WindowStage
from cloudzero_provider.windows import Window, hour_of, iso_hour, iso_instant, parse_hour, parse_instant

log = logging.getLogger(__name__)


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
    take_built: bool = True,
) -> dict[str, Any]:
    """``extract.jsonl`` -> validated ``cbf.jsonl``, reconciled per hour against PostgreSQL's own totals.

    Works hour by hour (the extract streams its rows in hour order), so memory holds one hour's aggregated rows,
    never a window's; :class:`~cloudzero_provider.pipeline.cbf_build.CBFBuild` says what is capped, folded and left
    out. ``transform.json`` records each hour's rows, cost and tokens; the upload checks ``cbf.jsonl`` against them
    and writes them into the hour's manifest.

    The extract of a daily rollup builds the rows as it reads (the same build, a day at a time). With ``take_built``
    they are taken as built when they are what this call would build (see :func:`_built_by_extract`); otherwise,
    and always without ``take_built`` (the upload's rebuild of a torn file), they are built here.
    """
    extract = read_extract(stage)
    taken = take_built and builds_as_read(extract.source)
    if taken and (record := _built_by_extract(stage, extract, max_values_per_hour, max_rows_per_hour)):
        log.info(
            "Window %s: taking the CBF rows the extract built as it read (the stage is as it left it)", window
        )
        _warn(window, record)
        return _outcome(window, stage, record)
    build = CBFBuild(resolve(extract.dimensions), max_values_per_hour=max_values_per_hour,
                     max_rows_per_hour=max_rows_per_hour)  # fmt: skip

    def cbf_rows() -> Iterator[bytes]:
        # The extract wrote an hour's rows together (in hour order): their figures are summed once they are written.
        for hour, items, lines in staged_groups(stage):
            yield from build.hour_lines(hour, items, lines)

    stage.remove("transform.json")
    try:
        written = stage.write_lines("cbf.jsonl", cbf_rows())
    except CBFError as exc:
        stage.remove("cbf.jsonl")
        raise AirflowFailException(f"Window {window}: {exc}") from None
    try:
        record = build.record(written, extract.spends(), extracted_at=extract.extracted_at)
    except NotReconciled as exc:
        stage.remove("cbf.jsonl")
        raise AirflowFailException(
            f"Window {window} does not reconcile, nothing will be uploaded: {exc}"
        ) from None
    _warn(window, record)
    stage.write_json("transform.json", record)
    return _outcome(window, stage, record)


def _built_by_extract(
    stage: WindowStage, extract: ExtractSummary, values_cap: int | None, rows_cap: int | None
) -> dict[str, Any] | None:
    """``transform.json`` when the extract wrote it with the rows it built, unchanged since, and they are what this
    transform would build: from the ``extract.jsonl`` and ``extract.json`` there now (their bytes, dimensions,
    ``extracted_at`` and totals), into the ``cbf.jsonl`` there now, by this version of the provider, with these
    caps."""
    try:
        record = stage.read_json("transform.json")
        source = record.get("built_from") if isinstance(record, dict) else None
        if not (
            isinstance(source, dict)
            and source.get("provider_version") == __version__
            and source.get("record_sha256") == record_digest(record)
            and source.get("dimensions") == extract.dimensions
            and record.get("extracted_at") == iso_instant(extract.extracted_at)
            and record.get("max_values_per_hour") == values_cap
            and record.get("max_rows_per_hour") == rows_cap
            and _reconciles(record, extract)
            and stage.digest("extract.jsonl") == source.get("extract_sha256")
            and stage.digest("cbf.jsonl") == source.get("cbf_sha256")
        ):
            return None
    except (FileNotFoundError, ValueError, TypeError, KeyError, AttributeError, ArithmeticError):
        return None  # no record, or not one the extract wrote: built here
    return cast(dict[str, Any], record)


def _reconciles(record: Mapping[str, Any], extract: ExtractSummary) -> bool:
    """Whether each hour's cost in ``record`` is PostgreSQL's total of that hour in ``extract.json``, as the build
    checked (a summary edited since is caught here, and named by the build)."""
    costs = {parse_hour(h): Decimal(str(f["cost"])) for h, f in record["hours"].items()}
    return all(costs.get(h, Decimal(0)) == Decimal(extract.spend(h)) for h in set(costs) | set(extract.hours))


def _warn(window: Window, record: Mapping[str, Any]) -> None:
    """What ``transform.json`` records that a user must hear of: values and groups folded, a month over the limit."""
    hours = record["hours"]
    folded, row_capped, projection = record["folded"], record["row_capped"], record.get("month_projection")
    if folded:
        log.warning(
            "Window %s: more than %d distinct caller-chosen values in an hour; the rest were folded into %s with "
            "their cost: %s",
            window, record["max_values_per_hour"], OTHER,
            "; ".join(f"{h}: {', '.join(f'{n} {k}' for k, n in f.items())}" for h, f in sorted(folded.items())),
        )  # fmt: skip
    if row_capped:
        log.warning(
            "Window %s: more than %d CBF rows in an hour; its smallest groups were summed into one %s row with their "
            "exact cost: %s",
            window, record["max_rows_per_hour"], OTHER,
            "; ".join(f"{h}: {n} group(s)" for h, n in sorted(row_capped.items())),
        )  # fmt: skip
    if projection:
        log.warning(
            "At this window's busiest hour (%d CBF rows) a month would reach %d rows, over CloudZero's %d rows per "
            "stream and month: drop a high-cardinality dimension or lower max_values_per_hour",
            max(int(f["rows"]) for f in hours.values()), projection, MONTH_ROW_LIMIT,
        )  # fmt: skip


def _outcome(window: Window, stage: WindowStage, record: Mapping[str, Any]) -> dict[str, Any]:
    """The transform's last log line and XCom summary of what ``transform.json`` records."""
    hours = record["hours"]
    tokens = sum(int(f["tokens"]) for f in hours.values())
    folded, row_capped, projection = record["folded"], record["row_capped"], record.get("month_projection")
    log.info(
        "Transformed %s: %d CBF rows over %d hour(s), cost %s USD, %d tokens -- reconciled exactly with the source",
        window, record["rows"], len(hours), record["cost"], tokens,
    )  # fmt: skip
    return {
        "window": window.label,
        "path": str(stage.path("cbf.jsonl")),
        "rows": record["rows"],
        "cost": record["cost"],
        "tokens": tokens,
        "hours": len(hours),
        "max_values_per_hour": record["max_values_per_hour"],
        "folded_values": sum(n for f in folded.values() for n in f.values()),
        "max_rows_per_hour": record["max_rows_per_hour"],
        "groups_folded_by_row_cap": sum(row_capped.values()),
        "zero_cost_rows": record["zero_cost_rows"],
        **({"month_projection": projection} if projection else {}),
    }


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
                             max_rows_per_hour=recorded.max_rows_per_hour, take_built=False)  # fmt: skip
    raise AirflowFailException(f"Window {window}: refusing to send CBF rows that do not match the transform: "
                               + "; ".join(problems))  # fmt: skip
