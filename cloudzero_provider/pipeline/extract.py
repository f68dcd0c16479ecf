"""Extract: one window of LiteLLM spend aggregated in PostgreSQL into the window's stage, and its typed reader."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.cbf import exact_decimal, exact_sum
from cloudzero_provider.dimensions import Dimension, names, resolve
from cloudzero_provider.hooks.litellm import HourTotal, LiteLLMSpendHook, Source
from cloudzero_provider.json_lines import decode_line
from cloudzero_provider.options import ExportOptions
from cloudzero_provider.pipeline.cbf_build import CBFBuild, builds_as_read, built_from
from cloudzero_provider.pipeline.common import SOURCES, describe_invalid
from cloudzero_provider.staged_group import StagedGroup, read_group
from cloudzero_provider.staging import StreamedFile, WindowStage
from cloudzero_provider.windows import (
    Window,
    day_label,
    iso_hour,
    iso_instant,
    may_be_purged,
    parse_hour,
    parse_instant,
    utc_now,
)

log = logging.getLogger(__name__)


@dataclass
class ExtractSummary:
    """What ``extract.json`` records of a window: when, from which source and dimensions, and per hour
    PostgreSQL's own totals (``requests``, ``spend`` ...) and invalid rows."""

    extracted_at: datetime
    source: str
    dimensions: list[str]
    rows: int
    hours: dict[datetime, dict[str, Any]] = field(default_factory=dict)
    failed_hours: dict[datetime, str] = field(default_factory=dict)
    # When the oldest spend-log row the source held after the read started (None: it held none), and whether the
    # extract looked: what LiteLLM's retention purged lies at or before it.
    oldest_spend_log: datetime | None = None
    oldest_checked: bool = False

    def may_be_purged(self, hour: datetime) -> bool:
        """Whether LiteLLM's retention may have purged rows of ``hour``: it starts at or before the hour of the
        oldest spend-log row left (every hour, when none is left). ``False`` when the extract did not look."""
        if not self.oldest_checked:
            return False
        return may_be_purged(hour, self.oldest_spend_log)

    def requests(self, hour: datetime) -> int:
        return int(self.hours.get(hour, {}).get("requests", 0))

    def spend(self, hour: datetime) -> str:
        return str(self.hours.get(hour, {}).get("spend", "0"))

    def spends(self) -> dict[datetime, str]:
        """PostgreSQL's ``SUM(spend::numeric)`` of each extracted hour's valid rows, which its CBF rows must equal."""
        return {hour: self.spend(hour) for hour in self.hours}


def read_extract(stage: WindowStage) -> ExtractSummary:
    """``extract.json`` of a stage, its hours as datetimes."""
    raw = stage.read_json("extract.json")
    return ExtractSummary(
        extracted_at=parse_instant(raw["extracted_at"], what="extracted_at"),
        source=raw["source"],
        dimensions=list(raw["dimensions"]),
        rows=int(raw["rows"]),
        hours={parse_hour(h): figures for h, figures in raw["hours"].items()},
        failed_hours={parse_hour(h): why for h, why in (raw.get("failed_hours") or {}).items()},
        oldest_spend_log=parse_instant(raw["oldest_spend_log"], what="oldest_spend_log")
        if raw.get("oldest_spend_log")
        else None,
        oldest_checked="oldest_spend_log" in raw,
    )


def staged_groups(
    stage: WindowStage,
) -> Iterator[tuple[datetime, list[StagedGroup | dict[str, Any]], list[bytes]]]:
    """The lines of ``extract.jsonl`` hour by hour as the extract streamed them (:func:`groups_by_hour`)."""
    return groups_by_hour(stage.read_lines("extract.jsonl"))


def groups_by_hour(
    staged: Iterable[bytes],
) -> Iterator[tuple[datetime, list[StagedGroup | dict[str, Any]], list[bytes]]]:
    """Staged group lines hour by hour (memory holds one hour's): each hour's items and its lines. A line of the
    usual form is its :class:`~cloudzero_provider.staged_group.StagedGroup`; any other is the row it decodes to
    (``json_lines.decode_line``), its ``hour`` a datetime; blank lines are skipped. An hour's text is parsed once,
    and refused (``ValueError``) when it names no hour."""
    hours: dict[Any, datetime] = {}  # an hour's lines share one text: it is parsed once
    current: datetime | None = None
    items: list[StagedGroup | dict[str, Any]] = []
    lines: list[bytes] = []
    for line in staged:
        found = read_group(line)
        item: StagedGroup | dict[str, Any]
        row = None
        if found is not None:
            item, text = found, found.hour
        else:
            if not line.strip():
                continue
            item = row = decode_line(line)
            text = row["hour"]
        hour = hours.get(text) or hours.setdefault(text, parse_hour(text, what="staged row hour"))
        if row is not None:
            row["hour"] = hour
        if hour is not current and hour != current:
            if items:
                yield cast(datetime, current), items, lines
            current, items, lines = hour, [], []
        items.append(item)
        lines.append(line)
    if items:
        yield cast(datetime, current), items, lines


def extract_window(
    hook: LiteLLMSpendHook,
    window: Window,
    stage: WindowStage,
    *,
    options: ExportOptions,
    source: str = "spend_logs",
    isolate_hours: bool = False,
) -> dict[str, Any]:
    """
    Aggregate the window in PostgreSQL into ``extract.jsonl`` + ``extract.json``; returns the XCom summary.

    Invalid source rows under ``on_invalid="fail"`` fail the whole window, unless ``isolate_hours``: then each
    hour holding them is recorded in ``failed_hours`` (with the reason), the upload sends every other hour and
    fails at the end naming them.
    """
    try:
        options.checked()
        dims: list[Dimension] = resolve(options.dimension_names())
    except ValueError as exc:
        raise AirflowFailException(str(exc)) from None
    if source not in SOURCES:
        raise AirflowFailException(f"source must be one of {SOURCES}, got {source!r}")
    src: Source = source  # type: ignore[assignment]
    stage.remove("extract.json")  # a failed re-run must not leave the previous run's summary behind
    extracted_at = utc_now()
    hours: dict[datetime, HourTotal] = {}

    def lines() -> Iterator[bytes]:
        for item in hook.staged_lines(window, dims, src):
            if isinstance(item, HourTotal):
                hours[item.hour] = item
            else:
                yield item

    # A daily rollup is read a day at a time: its CBF rows are built as it is read (see BuiltAsRead).
    built = (
        BuiltAsRead(
            stage, CBFBuild(dims, max_values_per_hour=options.value_cap, max_rows_per_hour=options.row_cap)
        )
        if builds_as_read(source)
        else None
    )
    try:
        try:
            if built is None:
                row_count = stage.write_lines("extract.jsonl", lines())
            else:
                row_count, extract_digest = _write_and_build(stage, lines(), built)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        summary = _summarize(stage, window, hook, hours, row_count, options=options, source=source,
                             isolate_hours=isolate_hours, extracted_at=extracted_at, dims=dims)  # fmt: skip
        if built is not None:
            built.place(window, extract_digest)
    finally:
        if built is not None:
            built.drop()  # unless placed: a failed extract leaves no rows built from it
    return summary


def _write_and_build(stage: WindowStage, lines: Iterator[bytes], built: BuiltAsRead) -> tuple[int, str]:
    """``extract.jsonl`` written from ``lines`` an hour at a time, each hour's CBF rows built as it is written: the
    lines written and their SHA-256."""
    digest = hashlib.sha256()
    count = 0
    with stage.streamed("extract.jsonl") as out:
        for hour, items, hour_lines in groups_by_hour(lines):
            data = b"".join(hour_lines)
            out.write(data)
            digest.update(data)
            count += len(hour_lines)
            built.hour(hour, items, hour_lines)
    return count, digest.hexdigest()


class BuiltAsRead:
    """The CBF rows of a window built as its extract is read, an hour (a rollup's day) at a time, with the
    transform's own build: ``cbf.jsonl`` and a ``transform.json`` that says what they were built from, for the
    transform to take (:func:`~cloudzero_provider.pipeline.transform.transform_window`). Best effort: a row that
    cannot be CBF, rows that do not reconcile or a failed write leave nothing built, and the transform builds the
    rows itself (and names what is wrong)."""

    def __init__(self, stage: WindowStage, build: CBFBuild) -> None:
        self.stage = stage
        self.build = build
        self.file: StreamedFile | None = stage.streamed("cbf.jsonl")
        self.digest = hashlib.sha256()

    def hour(self, hour: datetime, items: list[Any], lines: list[bytes]) -> None:
        if self.file is None:
            return
        try:
            data = b"".join(self.build.hour_lines(hour, items, lines))
            self.file.write(data)
            self.digest.update(data)
        except Exception as exc:
            self._give_up(exc)

    def place(self, window: Window, extract_digest: str) -> None:
        """``cbf.jsonl``, then its ``transform.json``, once the rows reconcile with what ``extract.json`` records."""
        if self.file is None:
            return
        try:
            extract = read_extract(self.stage)
            record = self.build.record(
                sum(self.build.rows.values()),
                extract.spends(),
                extracted_at=extract.extracted_at,
                built_from=built_from(extract_digest, self.digest.hexdigest(), extract.dimensions),
            )
            # The rows before their record: a record never describes other rows.
            self.stage.remove("transform.json")
            self.file.place()
            self.stage.write_json("transform.json", record)
        except Exception as exc:
            self._give_up(exc)
        else:
            log.info(
                "Window %s: %d CBF rows built as it was read, for the transform to take",
                window,
                record["rows"],
            )

    def drop(self) -> None:
        if self.file is not None:
            self.file.drop()

    def _give_up(self, exc: Exception) -> None:
        log.info("CBF rows not built as the extract reads (the transform builds them): %s", exc)
        self.drop()
        self.file = None


def _summarize(
    stage: WindowStage,
    window: Window,
    hook: LiteLLMSpendHook,
    hours: dict[datetime, HourTotal],
    row_count: int,
    *,
    options: ExportOptions,
    source: str,
    isolate_hours: bool,
    extracted_at: datetime,
    dims: list[Dimension],
) -> dict[str, Any]:
    """Invalid rows handled by the options' policy, ``extract.json`` written; the XCom summary."""
    src: Source = source  # type: ignore[assignment]
    table = "LiteLLM_SpendLogs" if source == "spend_logs" else source
    bad_hours = {h: ht for h, ht in hours.items() if ht.invalid}
    invalid_rows = sum(sum(ht.invalid.values()) for ht in bad_hours.values())
    quarantine = None
    failed_hours: dict[datetime, str] = {}
    if bad_hours and options.on_invalid == "fail" and isolate_hours:
        failed_hours = {h: describe_invalid({h: ht}, table) for h, ht in sorted(bad_hours.items())}
        log.error("Window %s: %d hour(s) hold invalid rows and will not be exported: %s", window,
                  len(failed_hours), "; ".join(failed_hours.values()))  # fmt: skip
    elif bad_hours and options.on_invalid == "fail":
        raise AirflowFailException(
            f"Window {window}: {describe_invalid(bad_hours, table)}. Nothing was exported. Fix these rows in "
            "the LiteLLM database, or set on_invalid='quarantine' to export the valid rows and keep the "
            "invalid ones in quarantine.jsonl."
        )
    if bad_hours and options.on_invalid == "quarantine":
        written = stage.write_jsonl("quarantine.jsonl", hook.invalid_rows(window, src, dims))
        quarantine = str(stage.path("quarantine.jsonl"))
        log.warning("Window %s: quarantined %d row(s) in %s -- %s", window, written, quarantine,
                    describe_invalid(bad_hours, table))  # fmt: skip
    else:
        stage.remove("quarantine.jsonl")
    # After the read: a purge between the two can only move the edge later, guarding more hours, never fewer.
    oldest = {"oldest_spend_log": _iso_or_none(hook.oldest_spend_log())} if source == "spend_logs" else {}
    requests = sum(ht.totals.requests for ht in hours.values())
    tokens = sum(ht.totals.total_tokens for ht in hours.values())
    spend = exact_decimal(exact_sum(ht.totals.spend for ht in hours.values()))
    stage.write_json(
        "extract.json",
        {
            "window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
            "extracted_at": iso_instant(extracted_at),
            "source": source,
            "dimensions": names(dims),
            "rows": row_count,
            "hours": {
                iso_hour(h): {
                    **ht.totals.as_dict(),
                    "invalid": ht.invalid,
                    "invalid_samples": ht.invalid_samples,
                }
                for h, ht in sorted(hours.items())
            },
            "invalid_rows": invalid_rows,
            "quarantine": quarantine,
            "failed_hours": {iso_hour(h): why for h, why in failed_hours.items()},
            **oldest,
        },
    )
    hint = _spend_logs_look_off(hook, window) if source == "spend_logs" and not hours else None
    log.info(
        "Extracted %s from %s: %d rows over %d hour(s), %d requests, %d tokens, spend %s USD, %d invalid row(s)%s",
        window, table, row_count, len(hours), requests, tokens, spend, invalid_rows,
        f" quarantined in {quarantine}" if quarantine else "",
    )  # fmt: skip
    return {
        "window": window.label,
        "path": str(stage.path("extract.jsonl")),
        "rows": row_count,
        "requests": requests,
        "tokens": tokens,
        "spend": spend,
        "invalid_rows": invalid_rows,
        "quarantine": quarantine,
        "failed_hours": sorted(iso_hour(h) for h in failed_hours),
        **({"hint": hint} if hint else {}),
    }


def _iso_or_none(instant: datetime | None) -> str | None:
    return iso_instant(instant) if instant is not None else None


def _spend_logs_look_off(hook: LiteLLMSpendHook, window: Window) -> str | None:
    """A hint when spend logs hold nothing for the window while the daily rollup has spend for its days."""
    days = list(window.each_day())
    try:
        spend = Decimal(hook.daily_spend(Window(days[0].start, days[-1].end)))
    except AirflowFailException:  # no rollup table (a very old LiteLLM): nothing to compare with
        return None
    if spend <= 0:
        return None
    text = (
        f"spend logs look disabled or purged for {', '.join(day_label(d.start) for d in days)}: "
        f"LiteLLM_SpendLogs holds nothing for {window} while LiteLLM_DailyTeamSpend holds {exact_decimal(spend)} "
        "USD for the day -- use litellm_cloudzero_daily_rollup"
    )
    log.warning("%s", text)
    return text
