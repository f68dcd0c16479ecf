"""The ready DAGs, one module each, built from settings (see :mod:`cloudzero_provider.settings`).

``dags/`` in the repository holds one small file per DAG that calls its builder.
"""

from __future__ import annotations

from cloudzero_provider.ready_dags.common import (
    DAILY_ROLLUP_DAG_ID,
    HOURLY_DAG_ID,
    MAX_RANGE_HOURS,
    RANGE_DAG_ID,
    RECONCILE_DAG_ID,
    REPORT_DAG_ID,
    TELEMETRY_DAG_ID,
)
from cloudzero_provider.ready_dags.daily_rollup import DAILY_DIMENSIONS, build_daily_rollup_dag, rollup_days
from cloudzero_provider.ready_dags.hourly import build_hourly_dag
from cloudzero_provider.ready_dags.housekeeping import build_housekeeping_dag, build_watch_dag
from cloudzero_provider.ready_dags.range import build_range_dag, plan_chunks, range_hours, range_window
from cloudzero_provider.ready_dags.reconcile import build_reconcile_dag
from cloudzero_provider.ready_dags.report import alert_notifiers, build_report_dag
from cloudzero_provider.ready_dags.telemetry import build_telemetry_dag

__all__ = [
    "DAILY_DIMENSIONS",
    "DAILY_ROLLUP_DAG_ID",
    "HOURLY_DAG_ID",
    "MAX_RANGE_HOURS",
    "RANGE_DAG_ID",
    "RECONCILE_DAG_ID",
    "REPORT_DAG_ID",
    "TELEMETRY_DAG_ID",
    "alert_notifiers",
    "build_daily_rollup_dag",
    "build_hourly_dag",
    "build_housekeeping_dag",
    "build_range_dag",
    "build_reconcile_dag",
    "build_report_dag",
    "build_telemetry_dag",
    "build_watch_dag",
    "plan_chunks",
    "range_hours",
    "range_window",
    "rollup_days",
]
