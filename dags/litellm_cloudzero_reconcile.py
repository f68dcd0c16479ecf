"""Airflow DAG litellm_cloudzero_reconcile: prove CloudZero equals the source, hour by hour, and repair any drift.

Configured by environment variables; see cloudzero_provider.settings and the DAG's docs in the UI.
"""

from cloudzero_provider.ready_dags import build_reconcile_dag

dag = build_reconcile_dag()
