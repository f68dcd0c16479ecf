"""``litellm_cloudzero_reconcile``: CloudZero proved equal to the source, hour by hour."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable

from cloudzero_provider.notify import Channels, reconciliation_notice, send
from cloudzero_provider.ready_dags.common import (
    COMMON_DOC,
    IMPORT_PRIORITY,
    RANGE_DAG_ID,
    RECONCILE_DAG_ID,
    choice_params,
    default_args,
    manual_window,
    sending,
)
from cloudzero_provider.sensors.settle import SettledSensor
from cloudzero_provider.settings import ExportSettings


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
to repair sends nothing. Days the daily-rollup export owns are left alone. **Purge-safe by default**: an hour that
may have lost its rows to LiteLLM's retention (older than the oldest spend-log row the source holds, in a day the
spend logs no longer hold while the daily rollup counts spend, or older than `CLOUDZERO_RECONCILE_RETENTION_DAYS`
when set) is reported as "purged at source", never lowered; cost another writer put into an hour without source
spend is removed only with the `remove_foreign` param (else "foreign data kept"). Each hour's verdict (matches / repaired / cleared / purged at
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
        default_args=default_args(settings, priority=IMPORT_PRIORITY),
        params={
            "start": Param(None, type=["null", "string"], format="date-time", title="Start (manual runs)"),
            "end": Param(
                None, type=["null", "string"], format="date-time", title="End, exclusive (manual runs)"
            ),
            "remove_foreign": Param(
                False,
                type="boolean",
                title="Remove other writers' cost",
                description="Clear hours that hold cost this exporter never sent while the source holds none "
                "(another writer to the stream). Off: such hours are reported and left as they are.",
            ),
            **choice_params(settings),
        },
        doc_md=doc,
        tags=["cloudzero", "litellm", "finops", "reconcile"],
    ) as dag:

        @task(retries=0)
        def check_window(params: dict[str, Any] | None = None) -> str | None:
            """A manual window is checked before anything waits: whole hours, at most a year, already ended."""
            from airflow.sdk import timezone

            params = params or {}
            if not params.get("start") and not params.get("end"):
                return None
            return manual_window(params.get("start"), params.get("end"), now=timezone.utcnow(),
                                 what="reconciliation").label  # fmt: skip

        settle = SettledSensor(
            task_id="settle",
            target_time="{{ (params.end or data_interval_end) if params.start else data_interval_end.add(hours=2) }}",
        )
        reconcile = ReconcileOperator(
            task_id="reconcile",
            window_start="{{ params.start or data_interval_start }}",
            window_end="{{ params.end or data_interval_end }}",
            retention_days=settings.reconcile_retention_days,
            remove_foreign="{{ params.remove_foreign }}",
            **sending(settings),
        )

        @task(retries=1)
        def tell_about_changes(ti: Any = None, **context: Any) -> bool:
            """A human hears of hours repaired, cleared, purged at the source or holding another writer's cost."""
            notice = reconciliation_notice(ti.xcom_pull(task_ids="reconcile") if ti is not None else None)
            if notice is None:
                return False
            return send(Channels.from_settings(settings), notice, {**context, "ti": ti}) > 0

        check_window() >> settle >> reconcile >> tell_about_changes()
    return dag
