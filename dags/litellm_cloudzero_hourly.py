"""Airflow DAG litellm_cloudzero_hourly: LiteLLM spend -> CloudZero AnyCost, every hour, with catchup.

Configured by environment variables; see cloudzero_provider.settings and the DAG's docs in the UI.
"""

from cloudzero_provider.ready_dags import build_hourly_dag

dag = build_hourly_dag()
