"""``litellm_cloudzero_daily_rollup``: LiteLLM's daily rollups for proxies without spend logs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.manifests import ManifestStore
from cloudzero_provider.options import ExportOptions
from cloudzero_provider.ready_dags.common import (
    COMMON_DOC,
    DAILY_ROLLUP_DAG_ID,
    IMPORT_PRIORITY,
    MAX_RANGE_HOURS,
    MAX_SETTLE_MINUTES,
    RANGE_DAG_ID,
    chunk_group,
    default_args,
    staging_area,
    template_filters,
)
from cloudzero_provider.sensors.settle import SettledSensor
from cloudzero_provider.settings import ExportSettings
from cloudzero_provider.target import ExportTarget
from cloudzero_provider.windows import DAY, Window, day_start, iso_hour, iso_instant, parse_instant

# Days before a scheduled run's day that it may read again for late rows.
MAX_LOOKBACK_DAYS = 7
# Consecutive days a manual run maps as one chunk (its own extract, transform and upload): an import of a month is
# a few task groups, not thirty. The transform holds one day's rows at a time, so this bounds no memory; it bounds
# how much one failed task leaves to retry.
DEFAULT_CHUNK_DAYS = 7
MAX_CHUNK_DAYS = 31

DAILY_DIMENSIONS = {
    "team": ("team_id", "api_key_alias", "model", "model_group", "provider"),
    "user": ("user", "api_key_alias", "model", "model_group", "provider"),
}


def rollup_days(
    params: dict[str, Any], interval_start: Any, interval_end: Any, *, now: datetime | None = None
) -> list[dict[str, str]]:
    """The UTC days a daily-rollup run exports: ``start``/``end`` params, else the run's data interval; days that
    have not ended by ``now`` are refused (LiteLLM is still adding to them)."""
    start, end = params.get("start"), params.get("end")
    if bool(start) != bool(end):
        raise AirflowFailException("Give both params start and end (whole UTC days), or neither.")
    try:
        window = Window.of(start, end) if start else Window.of(interval_start, interval_end)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise AirflowFailException(f"Invalid days: {exc}. Give start and end at 00:00 UTC.") from None
    if not window.is_day_aligned:
        raise AirflowFailException(
            f"The daily rollup exports whole UTC days; {window} is not (use 00:00 UTC)."
        )
    if window.hours > MAX_RANGE_HOURS:
        raise AirflowFailException(
            f"At most {MAX_RANGE_HOURS // 24} days per run; {window} has {window.hours // 24}."
        )
    if now is not None and window.end > now:
        raise AirflowFailException(
            f"{window} has not ended yet (now {iso_instant(now)}): LiteLLM is still adding to its rollups. "
            "Export days once they are over."
        )
    return [{"window_start": iso_hour(d.start), "window_end": iso_hour(d.end)} for d in window.each_day()]


def days_to_look_at_again(
    first_day: datetime, lookback_days: int, manifests: ManifestStore, origin: str, *, not_before: datetime
) -> list[dict[str, str]]:
    """Of the ``lookback_days`` days before ``first_day``, those this stream's ``origin`` exported or that no source
    holds (a day empty at its run): a scheduled run reads them again, since rows can land after their run (only
    days whose rows changed are sent). A day another source owns now is left alone. Never a day before
    ``not_before`` (the export's start)."""
    days = [d for d in (first_day - DAY * n for n in range(lookback_days, 0, -1)) if d >= not_before]
    owners = manifests.day_owners(days)
    return [
        {"window_start": iso_hour(d), "window_end": iso_hour(d + DAY)}
        for d in days
        if owners[d] in (origin, None)
    ]


def chunk_days(
    days: list[dict[str, str]],
    owners: dict[datetime, str | None],
    origin: str,
    *,
    max_days: int,
    take_over: bool = False,
) -> list[dict[str, str]]:
    """Consecutive days of a manual run joined into chunks of at most ``max_days`` days. A day another source owns
    in this stream (``owners``, :meth:`ManifestStore.day_owners`) stays a chunk of its own unless ``take_over``: its
    refusal fails that day alone, and the days around it are sent, as when every day was its own chunk."""
    if max_days < 1:
        raise ValueError(f"max_days must be at least 1, got {max_days}")
    chunks: list[Window] = []
    joinable = False  # whether the last chunk may take the next day
    for item in days:
        day = Window.of(item["window_start"], item["window_end"])
        ours = take_over or owners.get(day.start) in (origin, None)
        last = chunks[-1] if chunks else None
        if (
            ours
            and joinable
            and last is not None
            and last.end == day.start
            and last.hours + 24 <= max_days * 24
        ):
            chunks[-1] = Window(last.start, day.end)
        else:
            chunks.append(day)
        joinable = ours
    return [{"window_start": iso_hour(c.start), "window_end": iso_hour(c.end)} for c in chunks]


def build_daily_rollup_dag(settings: ExportSettings | None = None) -> DAG:
    settings = settings or ExportSettings.from_env()
    if settings.daily_source not in DAILY_DIMENSIONS:
        raise ValueError(f"CLOUDZERO_DAILY_SOURCE must be team or user, got {settings.daily_source!r}")
    if settings.daily_tag_conn_id and settings.daily_tag_conn_id == settings.cloudzero_conn_id:
        raise ValueError(
            f"CLOUDZERO_DAILY_TAG_CONN_ID is {settings.daily_tag_conn_id!r}, the export's own connection "
            "(CLOUDZERO_CONN_ID): the tag table counts a request once per tag, so its rows need a stream of their "
            "own. Set it to a second cloudzero connection whose AnyCost connection is another stream."
        )
    if settings.daily_tag_conn_id:
        from cloudzero_provider.dimensions import resolve

        try:  # here, not in every run's tag_day tasks while the team stream carries on
            resolve([f"tag:{settings.daily_tag_prefix}"])
        except ValueError as exc:
            raise ValueError(f"CLOUDZERO_DAILY_TAG_PREFIX: {exc}") from None
    source = f"daily_{settings.daily_source}"
    dimensions = settings.daily_dimensions or list(DAILY_DIMENSIONS[settings.daily_source])
    doc = f"""
# LiteLLM daily rollups -> CloudZero, one row set per UTC day

For proxies that run with `disable_spend_logs: true` or a short `maximum_spend_logs_retention_period`: their
`LiteLLM_SpendLogs` is empty or truncated, and only LiteLLM's daily rollups hold the spend. Each run exports the
UTC day before it (`CronDataIntervalTimetable("0 0 * * *")`, catchup), `settle_minutes` after the day ends
(`settle`: LiteLLM writes its rollups in batches and counts a request on the day it started), from
`{ {"team": "LiteLLM_DailyTeamSpend", "user": "LiteLLM_DailyUserSpend"}[settings.daily_source] }` (setting
`CLOUDZERO_DAILY_SOURCE`; the team and user tables count the same requests, so never both): one aggregate
statement, CBF rows stamped at the day's 00:00 UTC, reconciled exactly against the table's
`SUM(spend::numeric)` for the day, sent with `replace_hourly` through the one-slot pool `{settings.pool}`, a
manifest per day, an Asset event per day. Manual runs: `start`/`end` (whole UTC days that have ended),
`dry_run`, `settle_minutes`, `chunk_days` (consecutive days mapped as one chunk, default {DEFAULT_CHUNK_DAYS}: an
import of a month is a few task groups; a day another source owns stays a chunk of its own). A scheduled run also reads again the `late_lookback_days` (default 1) days before it
that it exported, and sends one only when its rows changed; a row later still is sent by running its day again.

**One owner per day and stream.** A day that the hourly export (spend logs) already sent to this CloudZero stream is
refused here, naming the day; the hourly export likewise skips days this DAG owns. To switch a day from hourly to
daily data, trigger this DAG for it with `take_over` (its hourly rows are cleared to 0 as the daily rows land);
to switch back, trigger `{RANGE_DAG_ID}` for it with `take_over`.

Dimensions: `{", ".join(dimensions)}` (setting `CLOUDZERO_DAILY_DIMENSIONS`).
{"" if not settings.daily_tag_conn_id else f"Request tags `{settings.daily_tag_prefix}:<value>` go from LiteLLM_DailyTagSpend to their own stream, connection `{settings.daily_tag_conn_id}` (group `tag_day`)."}
{COMMON_DOC}
**Settings**:

{settings.table()}
"""
    with DAG(
        dag_id=DAILY_ROLLUP_DAG_ID,
        schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
        start_date=settings.start_date,
        catchup=True,
        max_active_runs=2,
        default_args=default_args(settings, priority=IMPORT_PRIORITY),
        user_defined_filters=template_filters(),
        params={
            "start": Param(
                None, type=["null", "string"], format="date-time", title="First day (manual runs)"
            ),
            "end": Param(None, type=["null", "string"], format="date-time", title="Day after the last one"),
            "dry_run": Param(
                False, type="boolean", title="Dry run", description="Write the bodies; send nothing."
            ),
            "late_lookback_days": Param(
                1,
                type="integer",
                minimum=0,
                maximum=MAX_LOOKBACK_DAYS,
                title="Days to look at again (scheduled runs)",
                description="Days before a scheduled run's day that this DAG exported, or that were empty at their "
                "run, read again for rows that landed after it; only days whose rows changed are sent.",
            ),
            "settle_minutes": Param(
                settings.settle_minutes,
                type="integer",
                minimum=0,
                maximum=MAX_SETTLE_MINUTES,
                title="Settle minutes",
                description="Minutes after the last day ends before reading it: LiteLLM writes its rollups in "
                "batches, and counts a request on the day it started (at most a day).",
            ),
            "chunk_days": Param(
                DEFAULT_CHUNK_DAYS,
                type="integer",
                minimum=1,
                maximum=MAX_CHUNK_DAYS,
                title="Days per chunk (manual runs)",
                description="Consecutive days read, transformed and sent as one chunk (1: a chunk per day). A day "
                "another source owns in this stream stays a chunk of its own.",
            ),
            "take_over": Param(
                False,
                type="boolean",
                title="Take the days over from the hourly export",
                description="Clear the hourly data these days hold in the stream, and send the daily rollup.",
            ),
        },
        doc_md=doc,
        tags=["cloudzero", "litellm", "finops", "daily"],
    ) as dag:

        def planned(
            params: dict[str, Any] | None, interval: tuple[Any, Any], conn_id: str, origin: str
        ) -> list[dict[str, str]]:
            from cloudzero_provider.windows import utc_now

            params = params or {}
            days = rollup_days(params, *interval, now=utc_now())
            manifests = ExportTarget(conn_id, settings.staging_uri).manifests  # reads nothing until asked
            if params.get("start"):  # a manual run: an import, its consecutive days in chunks
                max_days = int(params.get("chunk_days") or DEFAULT_CHUNK_DAYS)
                take_over = bool(params.get("take_over"))
                owners = (
                    {}  # every day joins (take_over), or none does: nothing to read
                    if take_over or max_days == 1
                    else manifests.day_owners(parse_instant(d["window_start"]) for d in days)
                )
                return chunk_days(days, owners, origin, max_days=max_days, take_over=take_over)
            lookback = int(params.get("late_lookback_days") or 0)
            if lookback:
                first = parse_instant(days[0]["window_start"])
                start = day_start(settings.start_date)
                days = days_to_look_at_again(first, lookback, manifests, origin, not_before=start) + days
            return days

        @task(retries=0)
        def plan_days(
            params: dict[str, Any] | None = None,
            data_interval_start: Any = None,
            data_interval_end: Any = None,
        ) -> list[dict[str, str]]:
            interval = (data_interval_start, data_interval_end)
            return planned(params, interval, settings.cloudzero_conn_id, source)

        @task(retries=0)
        def plan_tag_days(
            params: dict[str, Any] | None = None,
            data_interval_start: Any = None,
            data_interval_end: Any = None,
        ) -> list[dict[str, str]]:
            interval = (data_interval_start, data_interval_end)
            days = planned(params, interval, str(settings.daily_tag_conn_id), "daily_tag")
            if not (params or {}).get("dry_run"):  # a dry run sends nothing, to either stream
                check_separate_streams(settings.cloudzero_conn_id, str(settings.daily_tag_conn_id))
            return days

        # A day's rows share one "hour" (00:00): each cap is a day's worth of the hourly one (0 stays "no cap").
        options = ExportOptions(dimensions=dimensions, on_invalid=settings.on_invalid,
                                max_values_per_hour=settings.max_values_per_hour * 24,
                                max_request_bytes=settings.max_request_bytes,
                                max_rows_per_hour=settings.max_rows_per_hour * 24)  # fmt: skip
        upload = {"dry_run": "{{ params.dry_run }}", "skip_unchanged": True}
        days = plan_days()
        # Rows of a day keep landing after midnight (LiteLLM's batched writes, requests still running): wait.
        settle = SettledSensor(
            task_id="settle",
            target_time="{{ (params.end or data_interval_end) | cz_settled(params.settle_minutes) }}",
        )
        days >> settle
        # isolate_hours: a chunk holds several days, and a day with invalid rows fails alone (as when each day was a
        # chunk) while the others are sent; a clear of the upload reads that day again.
        settle >> chunk_group(
            settings, "day", area=staging_area("daily"), options=options,
            extract={"source": source, "isolate_hours": True},
            upload={**upload, "origin": source, "take_over": "{{ params.take_over }}"},
        ).expand_kwargs(days)  # fmt: skip
        if settings.daily_tag_conn_id:
            # Apart from the team stream's tasks: a tag connection's trouble fails the tag stream alone.
            tag_days = plan_tag_days()
            # Its own stream: its hours are not the export's, so it announces none on the export's Asset.
            settle >> chunk_group(
                settings, "tag_day", area=staging_area("daily-tag"), cloudzero_conn_id=settings.daily_tag_conn_id,
                options=options.but(dimensions=[f"tag:{settings.daily_tag_prefix}", "model", "provider"]),
                extract={"source": "daily_tag", "isolate_hours": True},
                upload={**upload, "origin": "daily_tag", "outlets": []},
            ).expand_kwargs(tag_days)  # fmt: skip
    return dag


def check_separate_streams(export_conn_id: str, tag_conn_id: str) -> None:
    """Refuse a tag stream that is the export's own AnyCost stream under another Airflow connection: both send
    ``replace_hourly`` at each day's 00:00, so the last one to send would erase the other's rows."""
    from cloudzero_provider.hooks.cloudzero import CloudZeroHook

    export, tags = CloudZeroHook(export_conn_id), CloudZeroHook(tag_conn_id)
    if (export.settings.base_url, export.connection_id) == (tags.settings.base_url, tags.connection_id):
        raise AirflowFailException(
            f"Airflow connections {export_conn_id!r} (CLOUDZERO_CONN_ID) and {tag_conn_id!r} "
            f"(CLOUDZERO_DAILY_TAG_CONN_ID) name the same AnyCost connection: each day's tag rows would replace "
            'its team or user rows, or the other way round. Give the tag connection\'s extra "connection_id" a '
            "stream of its own. Nothing was exported."
        )
