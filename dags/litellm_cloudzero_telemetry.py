"""Airflow DAG litellm_cloudzero_telemetry: LiteLLM spend as a CloudZero unit-cost metric, per UTC day.

Follows the AnyCost export's Asset events. Configured by environment variables; see cloudzero_provider.settings.
"""

from cloudzero_provider.ready_dags import build_telemetry_dag

dag = build_telemetry_dag()
