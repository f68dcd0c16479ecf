"""``litellm_cloudzero_telemetry``: LLM spend as a CloudZero unit-cost metric, following the export."""

from __future__ import annotations

from airflow.sdk import DAG, Param

from cloudzero_provider.operators.telemetry import UnitCostTelemetryOperator
from cloudzero_provider.ready_dags.common import (
    TELEMETRY_DAG_ID,
    default_args,
    export_target,
)
from cloudzero_provider.settings import ExportSettings


def build_telemetry_dag(settings: ExportSettings | None = None) -> DAG:
    settings = settings or ExportSettings.from_env()
    asset = export_target(settings).asset
    doc = f"""
# LiteLLM spend -> CloudZero unit-cost telemetry

Runs whenever the AnyCost export emits hour events on `{asset.uri}` -- from the hourly DAG (so catchup and
backfills flow through), its late-data pass and the range DAG -- and (re)sends every UTC day those hours touch:
one record per day and combination of up to 5 dimensions (`associated_cost` keys `custom:model`,
`custom:user_id`, `custom:team_id`, `custom:org_id`, `custom:end_user_id`, LiteLLM's names), value = cost,
requests or tokens. Records go with `replace`, so sending a day again never double-counts: each export refreshes
the day so far and the hour before midnight finalises it; a record sent before that the day no longer holds (an
`end_user` since folded into `(other)`) is deleted, from what the staging target's `telemetry/` folder kept. Records whose value is not > 0 are skipped and counted.
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
        default_args=default_args(settings),
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
            window_start="{{ params.start or '' }}",
            window_end="{{ params.end or '' }}",
        )
    return dag
