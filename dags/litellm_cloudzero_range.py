"""Airflow DAG litellm_cloudzero_range: export any date range of LiteLLM spend to CloudZero, with dry run.

Configured by environment variables; see cloudzero_provider.settings and the DAG's docs in the UI.
"""

from cloudzero_provider.ready_dags import build_range_dag

dag = build_range_dag()
