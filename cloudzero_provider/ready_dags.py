"""The ready DAGs: ``litellm_cloudzero_hourly`` (scheduled, catchup, late data), ``litellm_cloudzero_range``
(manual, any date range, dry run), ``litellm_cloudzero_telemetry`` (follows the export's Asset events) and
``litellm_cloudzero_daily_report``. ``dags/`` in the repository holds one small file per DAG that builds it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, AssetAlias, Param, task, task_group
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.callbacks import mark_hours_failed
from cloudzero_provider.operators.extract import LiteLLMSpendExtractOperator
from cloudzero_provider.operators.late_data import LateDataOperator
from cloudzero_provider.operators.report import SpendReportOperator, SpendThresholdCheckOperator
from cloudzero_provider.operators.telemetry import UnitCostTelemetryOperator
from cloudzero_provider.operators.transform import CBFTransformOperator
from cloudzero_provider.operators.upload import AnyCostUploadOperator
from cloudzero_provider.pipeline import check_dry_run_limit
from cloudzero_provider.sensors.export import ExportedDaySensor
from cloudzero_provider.sensors.settle import SettledSensor
from cloudzero_provider.settings import ExportSettings
from cloudzero_provider.windows import Window, hour_label, iso_hour

HOURLY_DAG_ID = "litellm_cloudzero_hourly"
RANGE_DAG_ID = "litellm_cloudzero_range"
TELEMETRY_DAG_ID = "litellm_cloudzero_telemetry"
REPORT_DAG_ID = "litellm_cloudzero_daily_report"
DAILY_ROLLUP_DAG_ID = "litellm_cloudzero_daily_rollup"
RECONCILE_DAG_ID = "litellm_cloudzero_reconcile"
MAX_RANGE_HOURS = 24 * 366


def hours_asset(settings: ExportSettings) -> Asset:
    """One event per exported hour (``extra["hour"]`` = ``2026-11-01T13:00:00Z``): schedule other DAGs on it."""
    return Asset(name=f"litellm_cloudzero_hours__{settings.cloudzero_conn_id}",
                 uri=f"cloudzero://anycost/{settings.cloudzero_conn_id}/litellm-hours")  # fmt: skip


def hours_alias(settings: ExportSettings) -> AssetAlias:
    """The outlet through which upload tasks emit several events (one per hour) on :func:`hours_asset`."""
    return AssetAlias(name=f"litellm_cloudzero_hours_alias__{settings.cloudzero_conn_id}")


def _default_args(settings: ExportSettings) -> dict[str, Any]:
    return {
        "owner": "finops",
        "litellm_conn_id": settings.litellm_conn_id,
        "cloudzero_conn_id": settings.cloudzero_conn_id,
        "db_schema": settings.db_schema,
        "retries": settings.retries,
        "retry_delay": timedelta(seconds=settings.retry_delay_seconds),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=1),
    }


# Per-run choices: trigger-form params whose defaults are the settings; rendered into the operators' fields.
DIMENSIONS_PARAM = "{{ params.dimensions }}"
ON_INVALID_PARAM = "{{ params.on_invalid }}"


def _choice_params(settings: ExportSettings) -> dict[str, Param]:
    from cloudzero_provider.dimensions import DEFAULT_DIMENSIONS

    return {
        "dimensions": Param(
            ",".join(settings.dimensions if settings.dimensions is not None else DEFAULT_DIMENSIONS),
            type="string",
            title="Dimensions",
            description="Comma-separated grouping dimensions for this run (tag:<prefix> for request tags).",
        ),
        "on_invalid": Param(
            settings.on_invalid,
            type="string",
            enum=["fail", "quarantine"],
            title="Invalid rows",
            description="fail: stop the window; quarantine: export the valid rows, keep the invalid ones aside.",
        ),
    }


COMMON_DOC = """
**Before the first run** create the upload pool, once: `airflow pools set cloudzero_anycost 1 "AnyCost uploads, one
at a time"` (or Admin -> Pools; the name is the `CLOUDZERO_POOL` setting). Without it Airflow never schedules the
upload tasks: they stay "scheduled" with no log, and the scheduler's log says the pool does not exist.

**What each run does.** `extract` aggregates the window's `LiteLLM_SpendLogs` inside PostgreSQL (one statement,
spend summed as `numeric`); `transform` turns it into CloudZero Billing Format rows and reconciles every hour to
the source's `SUM(spend::numeric)` exactly; `upload` sends whole hours with `replace_hourly` (re-runs replace,
never double-count) through the one-slot pool, and writes a manifest per hour. XComs are small summaries;
data stays in the staging folder.

**Per-run choices** (trigger form): `dimensions` (comma-separated) and `on_invalid` (`fail` or `quarantine`);
their defaults are the settings below.

**When a task fails**, its log's last line says why and what to do. Errors a retry cannot fix (bad API key,
invalid rows under `on_invalid=fail`, a window that does not reconcile) fail without retrying; CloudZero
outages are retried in the task (429/5xx/timeouts) and then by Airflow with exponential backoff.
"""


def build_hourly_dag(settings: ExportSettings | None = None) -> DAG:
    settings = settings or ExportSettings.from_env()
    doc = f"""
# LiteLLM -> CloudZero, every hour

Exports the hour `[data_interval_start, data_interval_end)` (UTC) of LiteLLM spend to CloudZero AnyCost.
Scheduled with `CronDataIntervalTimetable("0 * * * *", timezone="UTC")` and `catchup=True`: after a pause, every
missed hour runs. Backfill any period with `airflow backfill create --dag-id {HOURLY_DAG_ID} --from-date
2026-11-01T00:00:00+00:00 --to-date 2026-11-02T00:00:00+00:00 --reprocess-behavior completed` or in the UI
(Trigger -> Backfill); for a one-off range or a dry run use `{RANGE_DAG_ID}`.

**Tasks.** `settle` waits until `settle_minutes` after the hour ends, since spend-log rows land late: for an
hour long past (catchup, backfill) it succeeds at once, for the live hour it defers (no worker slot held). Then
extract -> transform -> upload. `late_data` then re-checks the previous `late_lookback_hours` hours against
their manifests and re-exports any hour whose source totals changed, whose upload stopped part-way, or that has
spend but was never exported (its own run failed).
Each exported hour emits an event on the Asset `{hours_asset(settings).uri}` (the hour in the event's extra `hour`).
{COMMON_DOC}
**Params.** `settle_minutes` (this run's wait), `late_lookback_hours` (this run's late-data window).

**Settings** (environment variables read when the DAG is parsed):

{settings.table()}
"""
    with DAG(
        dag_id=HOURLY_DAG_ID,
        schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
        start_date=settings.start_date,
        catchup=True,
        max_active_runs=settings.max_active_runs,
        default_args={
            **_default_args(settings),
            "on_failure_callback": mark_hours_failed(settings.cloudzero_conn_id, settings.staging_uri),
        },
        params={
            "settle_minutes": Param(
                settings.settle_minutes,
                type="integer",
                minimum=0,
                description="Minutes after the hour ends before extracting it.",
            ),
            "late_lookback_hours": Param(
                settings.late_lookback_hours,
                type="integer",
                minimum=0,
                maximum=168,
                description="Hours before this run's hour to re-check for late rows.",
            ),
            **_choice_params(settings),
        },
        doc_md=doc,
        tags=["cloudzero", "litellm", "finops"],
    ) as dag:
        settle = SettledSensor(
            task_id="settle", target_time="{{ data_interval_end.add(minutes=params.settle_minutes | int) }}"
        )
        extract = LiteLLMSpendExtractOperator(
            task_id="extract", dimensions=DIMENSIONS_PARAM, on_invalid=ON_INVALID_PARAM
        )
        transform = CBFTransformOperator(
            task_id="transform", max_values_per_hour=settings.max_values_per_hour
        )
        upload = AnyCostUploadOperator(
            task_id="upload",
            max_request_bytes=settings.max_request_bytes,
            pool=settings.pool,
            outlets=[hours_alias(settings)],
            hour_asset=hours_asset(settings),
        )
        late_data = LateDataOperator(
            task_id="late_data",
            lookback_hours="{{ params.late_lookback_hours }}",
            dimensions=DIMENSIONS_PARAM,
            on_invalid=ON_INVALID_PARAM,
            max_request_bytes=settings.max_request_bytes,
            not_before=settings.start_date.isoformat(),
            max_values_per_hour=settings.max_values_per_hour,
            pool=settings.pool,
            outlets=[hours_alias(settings)],
            hour_asset=hours_asset(settings),
        )
        settle >> extract >> transform >> upload >> late_data
    return dag


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
    window: Window, chunk_hours: int, requests_by_hour: dict[str, int], exported: set[datetime]
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """
    The chunks of a range worth mapping, and a summary of the range.

    A chunk is mapped when it holds spend-log rows, or when an hour of it was exported before (it may have
    changed to nothing since, and must be looked at again); empty time costs nothing.
    """
    chunks, mapped_hours, requests = [], 0, 0
    for chunk in window.chunks(chunk_hours):
        held = sum(requests_by_hour.get(iso_hour(h), 0) for h in chunk.hour_starts())
        if held or any(h in exported for h in chunk.hour_starts()):
            chunks.append({"window_start": iso_hour(chunk.start), "window_end": iso_hour(chunk.end)})
            mapped_hours += chunk.hours
            requests += held
    summary = {
        "range": window.label,
        "hours": window.hours,
        "hours_with_spend": sum(1 for h in window.hour_starts() if requests_by_hour.get(iso_hour(h))),
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
- `chunk_hours`: hours per mapped chunk (default 24).
- `take_over`: switch days the daily-rollup export owns in this stream back to hourly data (their 00:00 daily
  rows are replaced or cleared to 0). Without it such days are skipped with a warning.
- `dry_run`: send nothing; write the exact request bodies of each hour beside its staging data
  (`<hour>/requests/`) and return what would be sent: records, total cost, total tokens, accounts, services.
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
        default_args=_default_args(settings),
        user_defined_filters={"cz_window": lambda start, end: Window.of(start, end).display},
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
                maximum=744,
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
            **_choice_params(settings),
        },
        doc_md=doc,
        tags=["cloudzero", "litellm", "finops"],
    ) as dag:

        @task(retries=0)
        def plan(params: dict[str, Any] | None = None, ti: Any = None) -> list[dict[str, str]]:
            import logging

            from cloudzero_provider.hooks.litellm import LiteLLMSpendHook
            from cloudzero_provider.target import ExportTarget

            params = params or {}
            check_dry_run_limit(bool(params.get("dry_run")), params.get("limit"))
            window = range_window(params.get("start"), params.get("end"))
            hook = LiteLLMSpendHook(postgres_conn_id=settings.litellm_conn_id, db_schema=settings.db_schema)
            exported = {h for h in ExportTarget(settings.cloudzero_conn_id).manifests.hours()
                        if window.start <= h < window.end}  # fmt: skip
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

        label = "{{ task.window_start | cz_window(task.window_end) }}"  # e.g. 2026-11-01 for a whole day

        @task_group(group_id="chunk")
        def export_chunk(window_start: str, window_end: str) -> None:
            extract = LiteLLMSpendExtractOperator(
                task_id="extract",
                window_start=window_start,
                window_end=window_end,
                dimensions=DIMENSIONS_PARAM,
                on_invalid=ON_INVALID_PARAM,
                isolate_hours=True,
                map_index_template=label,
            )
            transform = CBFTransformOperator(
                task_id="transform",
                window_start=window_start,
                window_end=window_end,
                map_index_template=label,
            )
            upload = AnyCostUploadOperator(
                task_id="upload",
                window_start=window_start,
                window_end=window_end,
                dry_run="{{ params.dry_run }}",
                limit="{{ params.limit }}",
                max_request_bytes=settings.max_request_bytes,
                skip_unchanged=True,
                take_over="{{ params.take_over }}",
                pool=settings.pool,
                outlets=[hours_alias(settings)],
                hour_asset=hours_asset(settings),
                map_index_template=label,
            )
            extract >> transform >> upload

        export_chunk.expand_kwargs(plan())
    return dag


def build_telemetry_dag(settings: ExportSettings | None = None) -> DAG:
    settings = settings or ExportSettings.from_env()
    asset = hours_asset(settings)
    doc = f"""
# LiteLLM spend -> CloudZero unit-cost telemetry

Runs whenever the AnyCost export emits hour events on `{asset.uri}` -- from the hourly DAG (so catchup and
backfills flow through), its late-data pass and the range DAG -- and (re)sends every UTC day those hours touch:
one record per day and combination of up to 5 dimensions (`associated_cost` keys `custom:model`,
`custom:user_id`, `custom:team_id`, `custom:org_id`, `custom:end_user_id`, LiteLLM's names), value = cost,
requests or tokens. Records go with `replace`, so sending a day again never double-counts: each export refreshes
the day so far and the hour before midnight finalises it. Records whose value is not > 0 are skipped and counted.
At most 100 records per second and 5 MB per request.

Trigger manually with `start` and `end` to (re)send a date range. With no metric name configured the task is
skipped and says how to turn telemetry on.

**Settings**:

{settings.table()}
"""
    with DAG(
        dag_id=TELEMETRY_DAG_ID,
        schedule=[asset],
        start_date=settings.start_date,
        catchup=False,
        max_active_runs=1,
        default_args=_default_args(settings),
        params={
            "start": Param(None, type=["null", "string"], format="date-time", title="Start (manual runs)"),
            "end": Param(None, type=["null", "string"], format="date-time", title="End (manual runs)"),
        },
        doc_md=doc,
        tags=["cloudzero", "litellm", "finops", "unit-cost"],
    ) as dag:
        UnitCostTelemetryOperator(
            task_id="send_telemetry",
            metric_name=settings.telemetry_metric,
            value=settings.telemetry_value,
            dimensions=settings.telemetry_dimensions,
            start="{{ params.start or '' }}",
            end="{{ params.end or '' }}",
        )
    return dag


def alert_notifiers(settings: ExportSettings) -> list[Any]:
    """Airflow notifiers for breaches: SmtpNotifier and, when its provider is installed, SlackNotifier."""
    notifiers: list[Any] = []
    day = "{{ data_interval_start.strftime('%Y-%m-%d') }}"  # ds would be the interval's end in Airflow 3
    # Breach names come from LLM callers: each channel gets the list escaped for its own markup (see
    # SpendLimitsBreached); any other failure of the task shows as plain, escaped text.
    html_list = "{{ exception.html if exception.html is defined else (exception | string | e) }}"
    slack_list = "{{ exception.slack if exception.slack is defined else (exception | string | e) }}"
    if settings.alert_email:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        notifiers.append(
            SmtpNotifier(
                to=settings.alert_email,
                subject=f"LiteLLM spend limit crossed ({day})",
                html_content=f"<p>LiteLLM spend limits crossed on {day}:</p>{html_list}",
            )
        )
    if settings.alert_slack_conn_id:
        try:
            from airflow.providers.slack.notifications.slack import SlackNotifier
        except ImportError as exc:
            raise ImportError(
                "CLOUDZERO_ALERT_SLACK_CONN_ID is set but apache-airflow-providers-slack is not installed"
            ) from exc
        notifiers.append(
            SlackNotifier(
                slack_conn_id=settings.alert_slack_conn_id,
                channel=settings.alert_slack_channel,
                text=f"LiteLLM spend limits crossed on {day}:\n{slack_list}",
            )
        )
    return notifiers


def build_report_dag(settings: ExportSettings | None = None) -> DAG:
    settings = settings or ExportSettings.from_env()
    doc = f"""
# LiteLLM daily spend report and limits

For each UTC day (`catchup=True`): `wait_for_export` waits (rescheduling, no worker slot held) until every hour
of the day that has spend has been exported -- the same hours the hourly export's Asset events announce -- then
`report` writes, from the same PostgreSQL aggregate as the export, spend by team, customer, API key alias,
internal user, model and request tag (each with a per-model breakdown), daily totals and cost per 1,000 tokens per
model: `report.json`, one CSV per grouping and a self-contained `report.html` with charts, in
`<staging>/{settings.cloudzero_conn_id}/reports/<day>/`. The export ledger page (Browse -> CloudZero ledger) links the latest reports.

`check_limits` (only when `CLOUDZERO_ALERT_LIMITS` is set) fails listing every breach -- a day's spend strictly
over a limit -- and calls the configured notifiers (SmtpNotifier, SlackNotifier). No breach, no noise.

**Settings**:

{settings.table()}
"""
    with DAG(
        dag_id=REPORT_DAG_ID,
        schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
        start_date=settings.start_date,
        catchup=True,
        max_active_runs=2,
        default_args=_default_args(settings),
        doc_md=doc,
        tags=["cloudzero", "litellm", "finops", "report"],
    ) as dag:
        # Rescheduling, not deferring: a poke that finds everything exported succeeds in the same process, and
        # a wait hands the slot back for poke_interval (minutes), far from the resume race of a deferral.
        wait_for_export = ExportedDaySensor(
            task_id="wait_for_export",
            mode="reschedule",
            poke_interval=300,
            timeout=6 * 3600,
        )
        report = SpendReportOperator(task_id="report", tag_prefixes=settings.report_tag_prefixes)
        wait_for_export >> report
        if settings.alert_limits:
            check_limits = SpendThresholdCheckOperator(
                task_id="check_limits",
                limits=settings.alert_limits,
                retries=0,
                on_failure_callback=alert_notifiers(settings) or None,
            )
            report >> check_limits
    return dag


DAILY_DIMENSIONS = {
    "team": ("team_id", "api_key_alias", "model", "model_group", "provider"),
    "user": ("user", "api_key_alias", "model", "model_group", "provider"),
}


def rollup_days(params: dict[str, Any], interval_start: Any, interval_end: Any) -> list[dict[str, str]]:
    """The UTC days a daily-rollup run exports: ``start``/``end`` params, else the run's data interval."""
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
    return [{"window_start": iso_hour(d.start), "window_end": iso_hour(d.end)} for d in window.each_day()]


def build_daily_rollup_dag(settings: ExportSettings | None = None) -> DAG:
    settings = settings or ExportSettings.from_env()
    if settings.daily_source not in DAILY_DIMENSIONS:
        raise ValueError(f"CLOUDZERO_DAILY_SOURCE must be team or user, got {settings.daily_source!r}")
    source = f"daily_{settings.daily_source}"
    dimensions = settings.daily_dimensions or list(DAILY_DIMENSIONS[settings.daily_source])
    doc = f"""
# LiteLLM daily rollups -> CloudZero, one row set per UTC day

For proxies that run with `disable_spend_logs: true` or a short `maximum_spend_logs_retention_period`: their
`LiteLLM_SpendLogs` is empty or truncated, and only LiteLLM's daily rollups hold the spend. Each run exports the
UTC day before it (`CronDataIntervalTimetable("0 0 * * *")`, catchup) from
`{ {"team": "LiteLLM_DailyTeamSpend", "user": "LiteLLM_DailyUserSpend"}[settings.daily_source] }` (setting
`CLOUDZERO_DAILY_SOURCE`; the team and user tables count the same requests, so never both): one aggregate
statement, CBF rows stamped at the day's 00:00 UTC, reconciled exactly against the table's
`SUM(spend::numeric)` for the day, sent with `replace_hourly` through the one-slot pool `{settings.pool}`, a
manifest per day, an Asset event per day. Manual runs: `start`/`end` (whole UTC days), `dry_run`.

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
        default_args=_default_args(settings),
        user_defined_filters={"cz_window": lambda start, end: Window.of(start, end).display},
        params={
            "start": Param(
                None, type=["null", "string"], format="date-time", title="First day (manual runs)"
            ),
            "end": Param(None, type=["null", "string"], format="date-time", title="Day after the last one"),
            "dry_run": Param(
                False, type="boolean", title="Dry run", description="Write the bodies; send nothing."
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

        @task(retries=0)
        def plan_days(
            params: dict[str, Any] | None = None,
            data_interval_start: Any = None,
            data_interval_end: Any = None,
        ) -> list[dict[str, str]]:
            return rollup_days(params or {}, data_interval_start, data_interval_end)

        label = "{{ task.window_start | cz_window(task.window_end) }}"

        @task_group(group_id="day")
        def export_day(window_start: str, window_end: str) -> None:
            extract = LiteLLMSpendExtractOperator(
                task_id="extract",
                window_start=window_start,
                window_end=window_end,
                source=source,
                dimensions=dimensions,
                on_invalid=settings.on_invalid,
                map_index_template=label,
            )
            transform = CBFTransformOperator(
                task_id="transform",
                window_start=window_start,
                window_end=window_end,
                map_index_template=label,
            )
            upload = AnyCostUploadOperator(
                task_id="upload",
                window_start=window_start,
                window_end=window_end,
                dry_run="{{ params.dry_run }}",
                origin=source,
                take_over="{{ params.take_over }}",
                skip_unchanged=True,
                max_request_bytes=settings.max_request_bytes,
                pool=settings.pool,
                outlets=[hours_alias(settings)],
                hour_asset=hours_asset(settings),
                map_index_template=label,
            )
            extract >> transform >> upload

        days = plan_days()
        export_day.expand_kwargs(days)
        if settings.daily_tag_conn_id:

            @task_group(group_id="tag_day")
            def export_tag_day(window_start: str, window_end: str) -> None:
                kw: dict[str, Any] = {
                    "window_start": window_start,
                    "window_end": window_end,
                    "cloudzero_conn_id": settings.daily_tag_conn_id,
                    "map_index_template": label,
                }
                extract = LiteLLMSpendExtractOperator(
                    task_id="extract",
                    source="daily_tag",
                    dimensions=[f"tag:{settings.daily_tag_prefix}", "model", "provider"],
                    on_invalid=settings.on_invalid,
                    **kw,
                )
                transform = CBFTransformOperator(task_id="transform", **kw)
                upload = AnyCostUploadOperator(
                    task_id="upload",
                    dry_run="{{ params.dry_run }}",
                    origin="daily_tag",
                    skip_unchanged=True,
                    max_request_bytes=settings.max_request_bytes,
                    pool=settings.pool,
                    **kw,
                )
                extract >> transform >> upload

            export_tag_day.expand_kwargs(days)
    return dag


def build_reconcile_dag(settings: ExportSettings | None = None) -> DAG:
    from cloudzero_provider.operators.reconcile import ReconcileOperator

    settings = settings or ExportSettings.from_env()
    doc = f"""
# Reconcile CloudZero with the source, hour by hour

Each run checks the UTC day before it (`CronDataIntervalTimetable("0 0 * * *")`, catchup), two hours after the day
ends so the day's hourly runs are done (`settle`: deferred for the live day, at once for days long past); manual
runs take `start` / `end` like `{RANGE_DAG_ID}` (`airflow dags test {RECONCILE_DAG_ID} --conf '{{"start": ...,
"end": ...}}'`). For every hour it compares the source now (`SUM(spend::numeric)`, requests), the manifest and
CloudZero's own state read back (`GET .../billing_drops/{{month}}`, summed per hour; the manifests stand in where
CloudZero answers 404), and repairs each hour that differs through the same extract -> transform -> upload steps
and the same pool `{settings.pool}`: hours CloudZero lost or never got (rows later than every late pass),
hours whose source became empty (cleared to exactly 0), hours another writer touched. A second run with nothing
to repair sends nothing. Days the daily-rollup export owns are left alone; with
`CLOUDZERO_RECONCILE_RETENTION_DAYS` set to LiteLLM's retention, an hour older than that whose rows are gone is
reported as "purged at source", never lowered. Each hour's verdict (matches / repaired / cleared / purged at
source / foreign data removed) goes into its manifest and the ledger; the XCom and log summarise the day (hours
checked, repaired, USD moved); a repaired hour emits the export's Asset event.
{COMMON_DOC}
**Settings**:

{settings.table()}
"""
    with DAG(
        dag_id=RECONCILE_DAG_ID,
        schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
        start_date=settings.start_date,
        catchup=True,
        max_active_runs=1,
        default_args=_default_args(settings),
        params={
            "start": Param(None, type=["null", "string"], format="date-time", title="Start (manual runs)"),
            "end": Param(
                None, type=["null", "string"], format="date-time", title="End, exclusive (manual runs)"
            ),
            **_choice_params(settings),
        },
        doc_md=doc,
        tags=["cloudzero", "litellm", "finops", "reconcile"],
    ) as dag:
        settle = SettledSensor(
            task_id="settle",
            target_time="{{ (params.end or data_interval_end) if params.start else data_interval_end.add(hours=2) }}",
        )
        reconcile = ReconcileOperator(
            task_id="reconcile",
            window_start="{{ params.start or data_interval_start }}",
            window_end="{{ params.end or data_interval_end }}",
            retention_days=settings.reconcile_retention_days,
            dimensions=DIMENSIONS_PARAM,
            on_invalid=ON_INVALID_PARAM,
            max_request_bytes=settings.max_request_bytes,
            max_values_per_hour=settings.max_values_per_hour,
            pool=settings.pool,
            outlets=[hours_alias(settings)],
            hour_asset=hours_asset(settings),
        )
        settle >> reconcile
    return dag
