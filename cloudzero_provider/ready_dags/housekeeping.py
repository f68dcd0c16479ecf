"""``litellm_cloudzero_housekeeping``: staging kept bounded, daily."""

from __future__ import annotations

from airflow.sdk import DAG
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable

from cloudzero_provider.notify import Channels
from cloudzero_provider.operators.housekeeping import StagingHousekeepingOperator
from cloudzero_provider.operators.lag import ExportLagCheckOperator
from cloudzero_provider.ready_dags.common import (
    HOURLY_DAG_ID,
    HOUSEKEEPING_DAG_ID,
    RECONCILE_DAG_ID,
    WATCH_DAG_ID,
    default_args,
    export_target,
)
from cloudzero_provider.settings import ExportSettings


def retention_option(name: str, default: int) -> int:
    """A ``[cloudzero]`` retention option in days; anything but a positive whole number fails the DAG's parse,
    naming the option."""
    from airflow.providers.common.compat.sdk import conf

    raw = conf.get("cloudzero", name, fallback=str(default))
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"[cloudzero] {name} (AIRFLOW__CLOUDZERO__{name.upper()}) must be a positive whole number of days, "
            f"got {raw!r}"
        )
    return value


def build_housekeeping_dag(settings: ExportSettings | None = None) -> DAG:
    settings = settings or ExportSettings.from_env()
    retention = retention_option("staging_retention_days", 30)
    reports = retention_option("report_retention_days", 400)
    targets = [
        settings.cloudzero_conn_id,
        *([settings.daily_tag_conn_id] if settings.daily_tag_conn_id else []),
    ]
    doc = f"""
# Housekeeping of the CloudZero staging folders

Every day, for the export targets {", ".join(f"`{t}`" for t in targets)} under
`{export_target(settings).dir}`: deletes the staged data of hours and runs older than **{retention} days**
(`[cloudzero] staging_retention_days`, `AIRFLOW__CLOUDZERO__STAGING_RETENTION_DAYS`), counted back from the run's
data interval -- per-hour and per-run data files (`extract.jsonl`, `cbf.jsonl`, `quarantine.jsonl` ...), dry-run
bodies, the late pass's, reconciliation's and retries' leftovers, and temporary files a killed writer left. It keeps
every manifest (they are the ledger), and keeps reports for **{reports} days** (`[cloudzero]
report_retention_days`); their raw `aggregate.jsonl` (caller-chosen names) goes with the staged data. It never
touches what a run in flight may still read: the stage of an hour whose hourly run is queued or running, the area
of a range or daily-rollup run that is, the late or reconciliation area while such a pass runs. Its XCom and log
say what was removed per area (files, bytes). Run it again after an interruption: deleting is idempotent.
The late pass, reconciliation and the ledger work from the manifests and re-read the source where they need data.
"""
    with DAG(
        dag_id=HOUSEKEEPING_DAG_ID,
        schedule=CronDataIntervalTimetable("0 1 * * *", timezone="UTC"),
        start_date=settings.start_date,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(settings),
        doc_md=doc,
        tags=["cloudzero", "litellm", "housekeeping"],
    ) as dag:
        StagingHousekeepingOperator(
            task_id="housekeeping",
            retention_days=retention,
            report_retention_days=reports,
            more_conn_ids=targets[1:],
            staging_uri=settings.staging_uri,
            hourly_dag_id=HOURLY_DAG_ID,
            pass_tasks={"late": (HOURLY_DAG_ID, "late_data"), "reconcile": (RECONCILE_DAG_ID, "reconcile")},
            retries=1,
        )
    return dag


def build_watch_dag(settings: ExportSettings | None = None) -> DAG:
    settings = settings or ExportSettings.from_env()
    doc = f"""
# Is the export current?

Every hour (no catchup: only now matters), one cheap task looks at the newest hour the export of
`{settings.cloudzero_conn_id}` holds. When it lags more than **{settings.max_lag_hours} hours** behind now
(`CLOUDZERO_MAX_LAG_HOURS`), the notifier channels (`CLOUDZERO_ALERT_EMAIL`, `CLOUDZERO_ALERT_SLACK_CONN_ID`) are
told once; again only after the export caught up and fell behind anew. No channel configured: it only logs.
"""
    with DAG(
        dag_id=WATCH_DAG_ID,
        schedule=CronDataIntervalTimetable("20 * * * *", timezone="UTC"),
        start_date=settings.start_date,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(settings),
        doc_md=doc,
        tags=["cloudzero", "litellm", "alerts"],
    ) as dag:
        ExportLagCheckOperator(
            task_id="check_lag",
            max_lag_hours=settings.max_lag_hours,
            channels=Channels.from_settings(settings),
            staging_uri=settings.staging_uri,
            retries=0,
            on_failure_callback=None,
        )
    return dag
