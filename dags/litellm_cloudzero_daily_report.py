"""Airflow DAG litellm_cloudzero_daily_report: daily LiteLLM spend report, charts and limit alerts.

Configured by environment variables; see cloudzero_provider.settings and the DAG's docs in the UI.
"""

from cloudzero_provider.ready_dags import build_report_dag

dag = build_report_dag()
