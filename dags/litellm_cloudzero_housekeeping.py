"""Airflow DAG litellm_cloudzero_housekeeping: delete staged data past its retention, keep every manifest.

Configured by the provider options [cloudzero] staging_retention_days and report_retention_days; see the DAG's docs.
"""

from cloudzero_provider.ready_dags import build_housekeeping_dag

dag = build_housekeeping_dag()
