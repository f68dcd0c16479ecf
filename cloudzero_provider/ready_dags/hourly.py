"""``litellm_cloudzero_hourly``: every hour, with catchup, a settle wait and a late-data pass."""

from __future__ import annotations

from airflow.sdk import DAG, Param
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable

from cloudzero_provider.callbacks import mark_hours_failed
from cloudzero_provider.notify import Channels, failure_callback
from cloudzero_provider.operators.late_data import LateDataOperator
from cloudzero_provider.ready_dags.common import (
    COMMON_DOC,
    HOURLY_DAG_ID,
    MAX_SETTLE_MINUTES,
    RANGE_DAG_ID,
    choice_params,
    default_args,
    export_chain,
    export_target,
    sending,
)
from cloudzero_provider.sensors.settle import SettledSensor
from cloudzero_provider.settings import ExportSettings


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
Each exported hour emits an event on the Asset `{export_target(settings).asset.uri}` (the hour in the event's extra
`hour`).
{COMMON_DOC}
**Params.** `settle_minutes` (this run's wait, at most 1440), `late_lookback_hours` (this run's late-data window, at
most 168). A value outside is refused when the run is triggered.

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
            **default_args(settings),
            "on_failure_callback": [
                mark_hours_failed(settings.cloudzero_conn_id, settings.staging_uri),
                failure_callback(Channels.from_settings(settings)),
            ],
        },
        params={
            "settle_minutes": Param(
                settings.settle_minutes,
                type="integer",
                minimum=0,
                maximum=MAX_SETTLE_MINUTES,
                description="Minutes after the hour ends before extracting it (at most a day).",
            ),
            "late_lookback_hours": Param(
                settings.late_lookback_hours,
                type="integer",
                minimum=0,
                maximum=168,
                description="Hours before this run's hour to re-check for late rows.",
            ),
            **choice_params(settings),
        },
        doc_md=doc,
        tags=["cloudzero", "litellm", "finops"],
    ) as dag:
        settle = SettledSensor(
            task_id="settle", target_time="{{ data_interval_end.add(minutes=params.settle_minutes | int) }}"
        )
        extract, _, upload = export_chain(settings)
        late_data = LateDataOperator(
            task_id="late_data",
            lookback_hours="{{ params.late_lookback_hours }}",
            not_before=settings.start_date.isoformat(),
            **sending(settings),
        )
        settle >> extract
        upload >> late_data
    return dag
