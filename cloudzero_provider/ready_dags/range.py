"""``litellm_cloudzero_range``: any date range on demand, in day-sized chunks, with dry run."""

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
from cloudzero_provider.settings import ExportSettings
from cloudzero_provider.windows import Window, hour_label, iso_hour


def range_window(start: Any, end: Any) -> Window:
    """The window ``[start, end)`` of a range run; a clear error for anything else."""
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
    return window


def range_hours(start: Any, end: Any) -> list[str]:
    """The hours of ``[start, end)`` as labels (``2026-11-01T13Z``, what the grid shows)."""
    return [hour_label(h) for h in range_window(start, end).hour_starts()]


def plan_chunks(
    window: Window, chunk_hours: int, requests_by_hour: dict[datetime, int], exported: set[datetime]
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """
    The chunks of a range worth mapping, and a summary of the range.

    A chunk is mapped when it holds spend-log rows, or when an hour of it was exported before (it may have
    changed to nothing since, and must be looked at again); empty time costs nothing.
    """
    chunks, mapped_hours, requests = [], 0, 0
    for chunk in window.chunks(chunk_hours):
        held = sum(requests_by_hour.get(h, 0) for h in chunk.hour_starts())
        if held or any(h in exported for h in chunk.hour_starts()):
            chunks.append({"window_start": iso_hour(chunk.start), "window_end": iso_hour(chunk.end)})
            mapped_hours += chunk.hours
            requests += held
    summary = {
        "range": window.label,
        "hours": window.hours,
        "hours_with_spend": sum(1 for h in window.hour_starts() if requests_by_hour.get(h)),
        "chunk_hours": chunk_hours,
        "chunks": len(chunks),
        "chunks_skipped_empty": len(window.chunks(chunk_hours)) - len(chunks),
        "hours_in_chunks": mapped_hours,
        "requests": requests,
    }
    return chunks, summary


def build_range_dag(settings: ExportSettings | None = None) -> DAG:
    settings = settings or ExportSettings.from_env()
    doc = f"""
# LiteLLM -> CloudZero, any date range, on demand

Trigger with the form (or `airflow dags trigger {RANGE_DAG_ID} --conf '{{"start": "2026-11-01T00:00:00Z",
"end": "2026-11-02T00:00:00Z"}}'`, or `airflow dags test {RANGE_DAG_ID} --conf '...'`).

`plan` counts the range's spend-log rows per hour in one query over the `"startTime"` index and maps one
extract -> transform -> upload chain per **chunk** of `chunk_hours` hours (a UTC day by default, labelled
`2026-11-01` in the grid) that holds spend or was exported before; empty time is not mapped at all. Each chunk
is one aggregate statement (grouped by hour in PostgreSQL, streamed), one transform, and an upload that sends
whole hours with `replace_hourly` through the one-slot pool `{settings.pool}`, logging hours done and requests
per second. A bad hour does not stop its chunk: every other hour is exported, then the upload fails naming each
bad hour and why. Its retry, or a clear of the chunk after fixing the rows, sends only the hours CloudZero does
not hold yet (the manifests know which). The ledger page (Browse -> CloudZero ledger) shows the hours fill in.

**Params.**
- `start`, `end`: ISO-8601 date-times aligned to the hour; a time zone offset is converted to UTC. `end` is
  exclusive. At most {MAX_RANGE_HOURS} hours per run.
- `chunk_hours`: hours per mapped chunk (default 24, at most 168).
- `take_over`: switch days the daily-rollup export owns in this stream back to hourly data (their 00:00 daily
  rows are replaced or cleared to 0). Without it such days are skipped with a warning.
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
                24,
                type="integer",
                minimum=1,
                maximum=MAX_CHUNK_HOURS,
                title="Hours per chunk",
                description="Each mapped task exports this many hours (a UTC day by default).",
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
                description="Replace the daily rollup these days hold in the stream with hourly data from spend logs.",
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
            window = range_window(params.get("start"), params.get("end"))
            hook = LiteLLMSpendHook(postgres_conn_id=settings.litellm_conn_id, db_schema=settings.db_schema)
            exported = {
                h for h in export_target(settings).manifests.hours() if window.start <= h < window.end
            }
            chunks, summary = plan_chunks(window, int(params.get("chunk_hours") or 24), hook.hour_counts(window),
                                          exported)  # fmt: skip
            logging.getLogger(__name__).info(
                "Range %s: %d hour(s), %d with spend, %d request(s); %d chunk(s) of up to %d hour(s) to export, "
                "%d empty chunk(s) skipped",
                window, summary["hours"], summary["hours_with_spend"], summary["requests"], summary["chunks"],
                summary["chunk_hours"], summary["chunks_skipped_empty"],
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
                    "take_over": "{{ params.take_over }}"},
        )  # fmt: skip
        export_chunk.expand_kwargs(plan())
    return dag
