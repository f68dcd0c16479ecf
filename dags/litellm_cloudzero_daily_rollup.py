"""Airflow DAG litellm_cloudzero_daily_rollup: LiteLLM's daily rollups -> CloudZero AnyCost, one UTC day per run.

For proxies with spend logs disabled or purged. Configured by environment variables; see
cloudzero_provider.settings and the DAG's docs in the UI.
"""

from cloudzero_provider.ready_dags import build_daily_rollup_dag

dag = build_daily_rollup_dag()
