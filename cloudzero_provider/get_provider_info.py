"""Provider metadata read by Airflow's ProvidersManager.

Kept free of imports so that ``airflow providers list`` and the UI's connection form stay fast.
"""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-cloudzero",
        "name": "CloudZero",
        "description": "Export LiteLLM spend to CloudZero AnyCost Stream, hour by hour, and CloudZero unit-cost telemetry.",
        # Newest first; the first entry is the installed distribution's version (a test holds them equal).
        "versions": ["0.2.0", "0.1.0"],
        "integrations": [
            {
                "integration-name": "CloudZero",
                "external-doc-url": "https://docs.cloudzero.com/reference/anycost-stream",
                "tags": ["service"],
            },
            {
                "integration-name": "LiteLLM",
                "external-doc-url": "https://docs.litellm.ai/docs/proxy/cost_tracking",
                "tags": ["software"],
            },
        ],
        "hooks": [
            {"integration-name": "CloudZero", "python-modules": ["cloudzero_provider.hooks.cloudzero"]},
            {"integration-name": "LiteLLM", "python-modules": ["cloudzero_provider.hooks.litellm"]},
        ],
        "operators": [
            {
                "integration-name": "CloudZero",
                "python-modules": [
                    "cloudzero_provider.operators.base",
                    "cloudzero_provider.operators.extract",
                    "cloudzero_provider.operators.transform",
                    "cloudzero_provider.operators.upload",
                    "cloudzero_provider.operators.late_data",
                    "cloudzero_provider.operators.report",
                    "cloudzero_provider.operators.telemetry",
                    "cloudzero_provider.operators.reconcile",
                    "cloudzero_provider.operators.housekeeping",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "CloudZero",
                "python-modules": ["cloudzero_provider.sensors.export", "cloudzero_provider.sensors.settle"],
            }
        ],
        "config": {
            "cloudzero": {
                "description": "Settings of the CloudZero provider shared by workers, the DAG processor and the "
                "API server's ledger page.\n",
                "options": {
                    "staging_uri": {
                        "description": "Where window files, per-hour manifests and reports live: a local folder "
                        "or an object-storage URI (s3://bucket/prefix, gs://...). Empty: "
                        "$AIRFLOW_HOME/cloudzero-staging. Use object storage when tasks run on several machines.\n",
                        "version_added": "0.2.0",
                        "type": "string",
                        "example": "s3://finops-bucket/cloudzero-staging",
                        "default": "",
                    },
                    "staging_retention_days": {
                        "description": "Days the staged data of an hour or a run is kept before the housekeeping DAG "
                        "deletes it (manifests are always kept). A positive whole number.\n",
                        "version_added": "0.2.0",
                        "type": "integer",
                        "example": "30",
                        "default": "30",
                    },
                    "report_retention_days": {
                        "description": "Days the daily reports are kept before the housekeeping DAG deletes them. "
                        "A positive whole number.\n",
                        "version_added": "0.2.0",
                        "type": "integer",
                        "example": "400",
                        "default": "400",
                    },
                },
            }
        },
        "connection-types": [
            {
                "connection-type": "cloudzero",
                "hook-class-name": "cloudzero_provider.hooks.cloudzero.CloudZeroHook",
                "hook-name": "CloudZero",
                "ui-field-behaviour": {
                    "hidden-fields": ["login", "port", "schema"],
                    "relabeling": {"host": "API base URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://api.cloudzero.com (leave empty for the default)",
                        "password": "CloudZero API key (sent bare, not as a Bearer token)",
                    },
                },
                "conn-fields": {
                    "connection_id": {
                        "label": "AnyCost connection ID",
                        "description": "The AnyCost Stream connection that receives the billing drops "
                        "(LiteLLM's CLOUDZERO_CONNECTION_ID).",
                        "schema": {"type": ["string", "null"]},
                    },
                    "metric_name": {
                        "label": "Unit metric name",
                        "description": "Telemetry metric for unit-cost records (LiteLLM's CLOUDZERO_METRIC_NAME). "
                        "Optional: only the telemetry export uses it.",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            }
        ],
    }
