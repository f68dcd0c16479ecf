"""Airflow DAG litellm_cloudzero_watch: tell a human when the export lags more than CLOUDZERO_MAX_LAG_HOURS.

Configured by environment variables; see cloudzero_provider.settings and the DAG's docs in the UI.
"""

from cloudzero_provider.ready_dags import build_watch_dag

dag = build_watch_dag()
