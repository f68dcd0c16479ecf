"""``litellm_cloudzero_range``: any date range on demand, in chunks sized by the rows they hold, with dry run."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.pipeline.common import check_dry_run_limit
from cloudzero_provider.ready_dags.common import (
    COMMON_DOC,
    HOURLY_DAG_ID,
    IMPORT_PRIORITY,
    MAX_CHUNK_HOURS,
    MAX_RANGE_HOURS,
    RANGE_DAG_ID,
    choice_params,
    chunk_group,
    default_args,
    export_target,
    staging_area,
    template_filters,
)
from cloudzero_provider.settings import DEFAULT_RANGE_CHUNK_ROWS, ExportSettings
from cloudzero_provider.windows import Window, hour_label, iso_hour


def range_window(start: Any, end: Any, *, take_over: bool = False) -> Window:
    """The window ``[start, end)`` of a range run (whole UTC days with ``take_over``); a clear error for anything
    else."""
    if not start or not end:
        raise AirflowFailException(
            "Give both params: start and end (ISO-8601, hour-aligned; UTC or with offset)."
        )
    try:
        window = Window.of(start, end)
    except ValueError as exc:
        raise AirflowFailException(f"Invalid range: {exc}") from None
    if window.hours > MAX_RANGE_HOURS:
        raise AirflowFailException(
            f"The range has {window.hours} hours; split it into runs of at most {MAX_RANGE_HOURS} hours, or use "
            f"`airflow backfill create --dag-id {HOURLY_DAG_ID}`."
        )
    if take_over and not window.is_day_aligned:
        raise AirflowFailException(
            f"take_over switches whole UTC days, and {window} covers part of one: its daily rows at 00:00 count the "
            "whole day. Give start and end at 00:00 UTC."
        )
    return window


def range_hours(start: Any, end: Any) -> list[str]:
    """The hours of ``[start, end)`` as labels (``2026-11-01T13Z``, what the grid shows)."""
    return [hour_label(h) for h in range_window(start, end).hour_starts()]


def _rows_of(piece: Window, requests_by_hour: dict[datetime, int]) -> int:
    return sum(requests_by_hour.get(h, 0) for h in piece.hour_starts())


def _split_by_rows(piece: Window, chunk_rows: int, requests_by_hour: dict[datetime, int]) -> list[Window]:
    """The piece as it is when it holds at most ``chunk_rows`` rows, else cut into runs of whole hours of at most
    ``chunk_rows`` rows each (an hour holding more is a run of its own)."""
    if _rows_of(piece, requests_by_hour) <= chunk_rows:
        return [piece]
    parts: list[Window] = []
    start, held = piece.start, 0
    for hour in piece.hour_starts():
        rows = requests_by_hour.get(hour, 0)
        if hour > start and held + rows > chunk_rows:
            parts.append(Window(start, hour))
            start, held = hour, 0
        held += rows
    parts.append(Window(start, piece.end))
    return parts


def plan_chunks(
    window: Window,
    chunk_hours: int,
    requests_by_hour: dict[datetime, int],
    exported: set[datetime],
    *,
    chunk_rows: int = DEFAULT_RANGE_CHUNK_ROWS,
    whole_days: bool = False,
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """
    The chunks of a range worth mapping, sized by the spend-log rows they hold, and a summary of the range.

    The range is cut at UTC midnights (or into ``chunk_hours``-aligned pieces of a day when ``chunk_hours`` is
    shorter); a piece holding more than ``chunk_rows`` rows is cut further into runs of whole hours. Consecutive
    pieces are then joined into one chunk while it stays within ``chunk_rows`` rows and ``chunk_hours`` hours, so
    a sparse month is a few chunks and a dense one many bounded ones; only an hour holding more than
    ``chunk_rows`` rows on its own makes a chunk that holds more. A piece is mapped when it holds spend-log rows,
    or when an hour of it was exported before (it may have changed to nothing since, and must be looked at
    again); empty time costs nothing, and a chunk never spans it. With ``whole_days`` (``take_over``: a day
    switches owner in one upload, its 00:00 with the rest) no day is ever cut, whatever it holds.
    """
    if chunk_hours < 1 or chunk_rows < 1:
        raise ValueError(f"chunk_hours and chunk_rows must be at least 1, got {chunk_hours} and {chunk_rows}")
    chunks: list[Window] = []
    current: Window | None = None
    current_rows, skipped = 0, 0
    for piece in window.chunks(24 if whole_days else min(chunk_hours, 24)):
        for part in [piece] if whole_days else _split_by_rows(piece, chunk_rows, requests_by_hour):
            rows = _rows_of(part, requests_by_hour)
            if not rows and not any(h in exported for h in part.hour_starts()):
                skipped += 1
                if current is not None:
                    chunks.append(current)
                current = None
            elif (
                current is not None
                and current.end == part.start
                and current.hours + part.hours <= chunk_hours
                and current_rows + rows <= chunk_rows
            ):
                current, current_rows = Window(current.start, part.end), current_rows + rows
            else:
                if current is not None:
                    chunks.append(current)
                current, current_rows = part, rows
    if current is not None:
        chunks.append(current)
    summary = {
        "range": window.label,
        "hours": window.hours,
        "hours_with_spend": sum(1 for h in window.hour_starts() if requests_by_hour.get(h)),
        "chunk_hours": chunk_hours,
        "chunk_rows": chunk_rows,
        "chunks": len(chunks),
        "chunks_skipped_empty": skipped,
        "hours_in_chunks": sum(c.hours for c in chunks),
        "requests": sum(_rows_of(c, requests_by_hour) for c in chunks),
        "largest_chunk_requests": max((_rows_of(c, requests_by_hour) for c in chunks), default=0),
    }
    return [{"window_start": iso_hour(c.start), "window_end": iso_hour(c.end)} for c in chunks], summary


def build_range_dag(settings: ExportSettings | None = None) -> DAG:
    settings = settings or ExportSettings.from_env()
    doc = f"""
# LiteLLM -> CloudZero, any date range, on demand

Trigger with the form (or `airflow dags trigger {RANGE_DAG_ID} --conf '{{"start": "2026-11-01T00:00:00Z",
"end": "2026-11-02T00:00:00Z"}}'`, or `airflow dags test {RANGE_DAG_ID} --conf '...'`).

`plan` counts the range's spend-log rows per hour in one query over the `"startTime"` index and maps one
extract -> transform -> upload chain per **chunk**. A chunk joins consecutive UTC days until it holds
{settings.range_chunk_rows:,} spend-log rows (`CLOUDZERO_RANGE_CHUNK_ROWS`), never more than `chunk_hours` hours
(default {MAX_CHUNK_HOURS}); a day holding more is cut into runs of whole hours. So a sparse month is a few task
instances, a dense one many, each bounded (memory stays flat anyway: every step streams hour by hour). The grid
labels a chunk by its window (`2026-11-01` for one whole day). Only time that holds spend or was exported before
is mapped; empty time is not mapped at all, and no chunk spans it. Each chunk
is one aggregate statement (grouped by hour in PostgreSQL, streamed), one transform, and an upload that sends
whole hours with `replace_hourly` through the one-slot pool `{settings.pool}`, logging hours done and requests
per second. A bad hour does not stop its chunk: every other hour is exported, then the upload fails naming each
bad hour and why. Its retry, or a clear of the chunk after fixing the rows, sends only the hours CloudZero does
not hold yet (the manifests know which). The ledger page (Browse -> CloudZero ledger) shows the hours fill in.

**Params.**
- `start`, `end`: ISO-8601 date-times aligned to the hour; a time zone offset is converted to UTC. `end` is
  exclusive. At most {MAX_RANGE_HOURS} hours per run.
- `chunk_hours`: the most hours one mapped chunk may span (default and maximum {MAX_CHUNK_HOURS}; with `24` no
  chunk spans two days).
- `take_over`: switch days the daily-rollup export owns in this stream back to hourly data (their 00:00 daily
  rows are replaced or cleared to 0). Whole UTC days only (`start` and `end` at 00:00), and each day goes in one
  chunk, its 00:00 with the rest, however many rows it holds. Without it such days are skipped with a warning.
- `lower_purged` (destructive, off by default): an hour at or before the oldest spend-log row left may have been
  purged by LiteLLM's retention, so a run over history past the retention never lowers what it exported before
  (nor clears it to 0): the upload lists such hours under `kept_purged`. Turn it on only for rows deleted on
  purpose.
- `dry_run`: send nothing; write the exact request bodies of each hour beside its staging data
  (`range-dry-run-<run>/<hour>/requests/`) and return what would be sent: records, total cost, total tokens,
  accounts, services.
- `limit`: dry run only -- preview the first N records of each hour. A real export always sends whole hours,
  because `replace_hourly` with part of an hour would erase the rest of that hour in CloudZero.
{COMMON_DOC}
**Settings** (environment variables read when the DAG is parsed):

{settings.table()}
"""
    with DAG(
        dag_id=RANGE_DAG_ID,
        schedule=None,
        start_date=settings.start_date,
        catchup=False,
        max_active_runs=2,
        default_args=default_args(settings, priority=IMPORT_PRIORITY),
        user_defined_filters=template_filters(),
        params={
            "start": Param(
                None,
                type=["null", "string"],
                format="date-time",
                title="Start (inclusive)",
                description="First hour to export, e.g. 2026-11-01T00:00:00Z",
            ),
            "end": Param(
                None,
                type=["null", "string"],
                format="date-time",
                title="End (exclusive)",
                description="Hour after the last one to export, e.g. 2026-11-02T00:00:00Z",
            ),
            "chunk_hours": Param(
                MAX_CHUNK_HOURS,
                type="integer",
                minimum=1,
                maximum=MAX_CHUNK_HOURS,
                title="Most hours per chunk",
                description=f"A mapped chunk joins whole days (and hours of a dense day) until it holds "
                f"{settings.range_chunk_rows:,} spend-log rows (CLOUDZERO_RANGE_CHUNK_ROWS), never more than this "
                "many hours.",
            ),
            "dry_run": Param(
                False,
                type="boolean",
                title="Dry run",
                description="Write the request bodies and a summary; send nothing.",
            ),
            "take_over": Param(
                False,
                type="boolean",
                title="Take days over from the daily-rollup export",
                description="Replace the daily rollup these days hold in the stream with hourly data from spend logs "
                "(whole UTC days: start and end at 00:00).",
            ),
            "lower_purged": Param(
                False,
                type="boolean",
                title="Lower hours whose rows are gone (destructive)",
                description="Send hours at or before the oldest spend-log row left even when that lowers what "
                "CloudZero holds. Off: such hours may have been purged by LiteLLM's retention and keep their "
                "exported cost. Only for rows deleted on purpose.",
            ),
            "limit": Param(
                None,
                type=["null", "integer"],
                minimum=1,
                title="Limit (dry run only)",
                description="Preview only the first N records of each hour.",
            ),
            **choice_params(settings),
        },
        doc_md=doc,
        tags=["cloudzero", "litellm", "finops"],
    ) as dag:

        @task(retries=0)
        def plan(params: dict[str, Any] | None = None, ti: Any = None) -> list[dict[str, str]]:
            import logging

            from cloudzero_provider.hooks.litellm import LiteLLMSpendHook

            params = params or {}
            check_dry_run_limit(bool(params.get("dry_run")), params.get("limit"))
            take_over = str(params.get("take_over")).strip().lower() == "true"
            window = range_window(params.get("start"), params.get("end"), take_over=take_over)
            hook = LiteLLMSpendHook(postgres_conn_id=settings.litellm_conn_id, db_schema=settings.db_schema)
            exported = {
                h for h in export_target(settings).manifests.hours() if window.start <= h < window.end
            }
            chunk_hours = int(params.get("chunk_hours") or MAX_CHUNK_HOURS)
            chunks, summary = plan_chunks(window, chunk_hours, hook.hour_counts(window), exported,
                                          chunk_rows=settings.range_chunk_rows, whole_days=take_over)  # fmt: skip
            logging.getLogger(__name__).info(
                "Range %s: %d hour(s), %d with spend, %d request(s); %d chunk(s) of up to %d hour(s) and %d "
                "request(s) to export (the largest %d), %d empty piece(s) skipped",
                window, summary["hours"], summary["hours_with_spend"], summary["requests"], summary["chunks"],
                summary["chunk_hours"], summary["chunk_rows"], summary["largest_chunk_requests"],
                summary["chunks_skipped_empty"],
            )  # fmt: skip
            if ti is not None:
                ti.xcom_push(key="summary", value=summary)
            return chunks

        export_chunk = chunk_group(
            settings,
            "chunk",
            area=staging_area("range"),
            extract={"isolate_hours": True},
            upload={"dry_run": "{{ params.dry_run }}", "limit": "{{ params.limit }}", "skip_unchanged": True,
                    "take_over": "{{ params.take_over }}", "lower_purged": "{{ params.lower_purged }}"},
        )  # fmt: skip
        export_chunk.expand_kwargs(plan())
    return dag
