"""What the ready DAGs share: ids, default arguments (connections, options, retries), the wiring of the tasks that
send to CloudZero, the extract -> transform -> upload chain of a window, per-run params, docs."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param

from cloudzero_provider.notify import Channels, failure_callback
from cloudzero_provider.options import ExportOptions
from cloudzero_provider.retries import retry_policy_args
from cloudzero_provider.settings import ExportSettings
from cloudzero_provider.target import ExportTarget
from cloudzero_provider.windows import Window, floor_hour, iso_hour, iso_instant, parse_instant

HOURLY_DAG_ID = "litellm_cloudzero_hourly"
RANGE_DAG_ID = "litellm_cloudzero_range"
TELEMETRY_DAG_ID = "litellm_cloudzero_telemetry"
REPORT_DAG_ID = "litellm_cloudzero_daily_report"
DAILY_ROLLUP_DAG_ID = "litellm_cloudzero_daily_rollup"
RECONCILE_DAG_ID = "litellm_cloudzero_reconcile"
HOUSEKEEPING_DAG_ID = "litellm_cloudzero_housekeeping"
WATCH_DAG_ID = "litellm_cloudzero_watch"
MAX_RANGE_HOURS = 24 * 366
MAX_SETTLE_MINUTES = 24 * 60
MAX_CHUNK_HOURS = 168
# Every DAG that sends to a stream shares its one-slot pool. By Airflow's default "downstream" rule the hourly
# upload weighed 2 and a range chunk's upload 1, and among equals a manual run (no logical date) sorted after every
# scheduled one: a history import waited behind a whole catchup. With absolute weights an import or a repair
# (range, daily rollup, reconciliation) takes the pool as soon as the request in flight is done, and scheduled
# hours still go oldest first whenever nothing of it waits.
SCHEDULED_PRIORITY = 1
IMPORT_PRIORITY = 10


# Per-run choices: trigger-form params whose defaults are the settings; rendered into the operators' options.
DIMENSIONS_PARAM = "{{ params.dimensions }}"
ON_INVALID_PARAM = "{{ params.on_invalid }}"
# A mapped chunk's label in the grid, e.g. 2026-11-01 for a whole day.
CHUNK_LABEL = "{{ task.window_start | cz_window(task.window_end) }}"


def export_target(settings: ExportSettings) -> ExportTarget:
    """The export target of the settings' CloudZero connection: its Asset and alias, its staging folder."""
    return ExportTarget(settings.cloudzero_conn_id, settings.staging_uri)


def export_options(settings: ExportSettings, *, per_run: bool = True) -> ExportOptions:
    """The export's options from the settings; with ``per_run`` the dimensions and invalid-row policy come from the
    run's trigger params (whose defaults are the settings)."""
    return ExportOptions(
        dimensions=DIMENSIONS_PARAM if per_run else settings.dimensions,
        on_invalid=ON_INVALID_PARAM if per_run else settings.on_invalid,
        max_values_per_hour=settings.max_values_per_hour,
        max_request_bytes=settings.max_request_bytes,
        max_rows_per_hour=settings.max_rows_per_hour,
    )


def default_args(
    settings: ExportSettings, *, options: ExportOptions | None = None, priority: int = SCHEDULED_PRIORITY
) -> dict[str, Any]:
    """
    What every task of a ready DAG shares; Airflow passes each key only to operators that take it.

    :param priority: The tasks' absolute priority weight: :data:`IMPORT_PRIORITY` for the DAGs that import or
        repair history, so their uploads go ahead of scheduled hours waiting for the same pool.
    """
    return {
        "owner": "finops",
        "litellm_conn_id": settings.litellm_conn_id,
        "cloudzero_conn_id": settings.cloudzero_conn_id,
        "db_schema": settings.db_schema,
        "options": options or export_options(settings),
        "retries": settings.retries,
        "retry_delay": timedelta(seconds=settings.retry_delay_seconds),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=1),
        "priority_weight": priority,
        "weight_rule": "absolute",
        # A task that failed after its retries tells the notifier settings' channels (none set: nothing sent).
        "on_failure_callback": failure_callback(Channels.from_settings(settings)),
        **retry_policy_args(),
    }


def sending(settings: ExportSettings) -> dict[str, Any]:
    """Arguments of every task that sends to the stream: the one-slot pool (CloudZero forbids concurrent requests
    to one stream) and the alias through which it announces each exported hour on the target's Asset."""
    return {"pool": settings.pool, "outlets": [export_target(settings).alias]}


def export_chain(
    settings: ExportSettings,
    *,
    window: tuple[Any, Any] | None = None,
    area: str | None = None,
    extract: dict[str, Any] | None = None,
    upload: dict[str, Any] | None = None,
    **common: Any,
) -> tuple[Any, Any, Any]:
    """
    The extract -> transform -> upload chain of one window, the shape every ready DAG exports with.

    :param window: ``(window_start, window_end)`` of a mapped chunk; default: the run's data interval.
    :param area: The run's staging area (see :func:`staging_area`); default: the hourly stages.
    :param extract: Arguments of the extract only (``source``, ``isolate_hours``).
    :param upload: Arguments of the upload only (``dry_run``, ``take_over``, ``skip_unchanged`` ...).
    :param common: Arguments of all three (``cloudzero_conn_id``, ``options``, ``map_index_template`` ...).
    """
    from cloudzero_provider.operators.extract import LiteLLMSpendExtractOperator
    from cloudzero_provider.operators.transform import CBFTransformOperator
    from cloudzero_provider.operators.upload import AnyCostUploadOperator

    if window is not None:
        common = {"window_start": window[0], "window_end": window[1], **common}
    if area is not None:
        common = {"staging_area": area, **common}
    first = LiteLLMSpendExtractOperator(task_id="extract", **(extract or {}), **common)
    second = CBFTransformOperator(task_id="transform", **common)
    third = AnyCostUploadOperator(task_id="upload", **{**sending(settings), **(upload or {})}, **common)
    first >> second >> third
    return first, second, third


def chunk_group(settings: ExportSettings, group_id: str, **chain: Any) -> Any:
    """A task group of :func:`export_chain` for one mapped chunk, to ``expand_kwargs`` with the plan's
    ``{"window_start", "window_end"}`` items; each task labelled by its chunk in the grid."""
    from airflow.sdk import task_group

    @task_group(group_id=group_id)
    def chunk(window_start: str, window_end: str) -> None:
        export_chain(settings, window=(window_start, window_end), map_index_template=CHUNK_LABEL, **chain)

    return chunk


def staging_area(name: str) -> str:
    """The staging area of one run of a DAG that re-exports hours (``range-<run>``, ``range-dry-run-<run>``): its
    stages never share a folder with the hourly runs, another DAG, a dry run, or another run of the same DAG
    working on the same hours at the same moment. A retry or a clear is the same run, so it finds its files."""
    return f"{{{{ ('{name}-dry-run' if params.dry_run else '{name}') ~ '-' ~ (run_id | cz_run) }}}}"


def run_digest(run_id: Any) -> str:
    """The ``cz_run`` template filter: a short, folder-safe name for a DAG run id (which holds ``:`` and ``+``)."""
    return hashlib.sha256(str(run_id).encode("utf-8")).hexdigest()[:12]


def template_filters() -> dict[str, Any]:
    """The Jinja filters of the DAGs that map chunks: ``cz_window`` (grid labels), ``cz_run`` (staging areas) and
    ``cz_settled`` (a settle wait's end)."""
    return {"cz_window": window_display, "cz_run": run_digest, "cz_settled": settled_at}


def choice_params(settings: ExportSettings) -> dict[str, Param]:
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


def manual_window(start: Any, end: Any, *, now: datetime, what: str) -> Window:
    """
    The window of a manual run (``start`` / ``end`` params), refused before anything waits or reads when it is
    not whole hours, longer than a year, or reaches past the current hour.

    :param now: The moment the run checks against (the hours it may cover have ended by then).
    :param what: The DAG's name for the window, for messages ("reconciliation", "telemetry").
    """
    from airflow.sdk.exceptions import AirflowFailException

    if bool(start) != bool(end):
        raise AirflowFailException(f"Give both params start and end for a manual {what}, or neither.")
    try:
        window = Window.of(start, end)
    except ValueError as exc:
        raise AirflowFailException(f"Invalid {what} window: {exc}") from None
    if window.hours > MAX_RANGE_HOURS:
        raise AirflowFailException(
            f"The {what} window {window} has {window.hours} hours; at most {MAX_RANGE_HOURS} (a year) per run."
        )
    current = floor_hour(now)
    if window.end > current:
        raise AirflowFailException(
            f"The {what} window {window} ends after the current hour {iso_hour(current)}: only hours that have "
            f"ended can be checked. Give an end at or before {iso_hour(current)}."
        )
    return window


def settled_at(end: Any, minutes: Any) -> str:
    """The ``cz_settled`` template filter: ``minutes`` after ``end`` (a date-time or its ISO-8601 text), the moment
    a settle wait ends, as ISO-8601 UTC."""
    return iso_instant(parse_instant(end, what="end") + timedelta(minutes=int(minutes)))


def window_display(start: Any, end: Any) -> str:
    """The ``cz_window`` template filter: a mapped chunk's label in the grid (``2026-11-01`` for a whole day)."""
    return Window.of(start, end).display
