"""Settings of the ready DAGs, read from environment variables when the DAG file is parsed.

Every setting has a default; set the variable on the scheduler, DAG processor and workers alike (the compose
stack's ``.env`` does). Per-run choices (the range DAG's dates, dry run, limit, and the dimensions and invalid-row
policy of one run) are trigger-form params whose defaults come from here.
"""

from __future__ import annotations

import json
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Union, get_args, get_origin, get_type_hints

from cloudzero_provider.drops import DEFAULT_MAX_REQUEST_BYTES
from cloudzero_provider.windows import parse_instant

# Spend-log rows a range chunk aims for: a few seconds of work per task, far from any memory limit (extract,
# transform and upload stream hour by hour).
DEFAULT_RANGE_CHUNK_ROWS = 2_000_000

# name -> (environment variable, description); the DAGs' doc_md is generated from this table.
SETTINGS: dict[str, tuple[str, str]] = {
    "litellm_conn_id": (
        "LITELLM_CONN_ID",
        "Airflow connection to the LiteLLM PostgreSQL database (default `litellm_db`).",
    ),
    "cloudzero_conn_id": (
        "CLOUDZERO_CONN_ID",
        "Airflow `cloudzero` connection (default `cloudzero_default`).",
    ),
    "start_date": (
        "CLOUDZERO_EXPORT_START",
        "First hour the hourly DAG exports, ISO-8601 UTC (default `2026-11-01T00:00:00Z`). Catchup runs every hour since.",
    ),
    "settle_minutes": (
        "CLOUDZERO_SETTLE_MINUTES",
        "Minutes to wait after an hour ends before extracting it, because spend-log rows land late (default 10).",
    ),
    "late_lookback_hours": (
        "CLOUDZERO_LATE_LOOKBACK_HOURS",
        "Hours before each run's hour that its late-data pass re-checks (default 3; 0 turns it off).",
    ),
    "dimensions": (
        "CLOUDZERO_DIMENSIONS",
        "Comma-separated grouping dimensions; `tag:<prefix>` for request tags (default: team_id, team_alias, organization_id, user, model, model_group, provider).",
    ),
    "on_invalid": (
        "CLOUDZERO_ON_INVALID",
        "`fail` (default) or `quarantine` for spend-log rows with NULL/NaN/infinite/negative spend or negative tokens.",
    ),
    "max_values_per_hour": (
        "CLOUDZERO_MAX_VALUES_PER_HOUR",
        "Distinct values per hour of a dimension LLM callers choose (end_user, tag:*) before the rest are folded into `(other)`, cost and all (default 1000; 0: no cap).",
    ),
    "max_rows_per_hour": (
        "CLOUDZERO_MAX_ROWS_PER_HOUR",
        "CBF rows an hour keeps across all dimensions before its smallest groups are summed into one `(other)` row with their exact cost (default 5000; 0: no cap).",
    ),
    "staging_uri": (
        "CLOUDZERO_STAGING_URI",
        "Where window files and manifests live: a local folder or s3://, gs:// ... (default `$AIRFLOW_HOME/cloudzero-staging`). Prefer the provider option `[cloudzero] staging_uri` (`AIRFLOW__CLOUDZERO__STAGING_URI`), which the API server's ledger page reads too; this variable is its older spelling. Use object storage with several workers.",
    ),
    "pool": (
        "CLOUDZERO_POOL",
        "One-slot Airflow pool that serialises uploads to the AnyCost stream (default `cloudzero_anycost`).",
    ),
    "max_active_runs": (
        "CLOUDZERO_MAX_ACTIVE_RUNS",
        "Hourly runs in flight at once, e.g. during catchup (default 4).",
    ),
    "retries": (
        "CLOUDZERO_TASK_RETRIES",
        "Airflow retries per task, with exponential backoff up to 30 minutes (default 4).",
    ),
    "retry_delay_seconds": (
        "CLOUDZERO_RETRY_DELAY_SECONDS",
        "First retry delay in seconds, doubled at each retry (default 60).",
    ),
    "max_request_bytes": (
        "CLOUDZERO_MAX_REQUEST_BYTES",
        "Largest exact request body sent to AnyCost (default 4000000, below CloudZero's 5 MB).",
    ),
    "range_chunk_rows": (
        "CLOUDZERO_RANGE_CHUNK_ROWS",
        "Spend-log rows the range DAG aims for per mapped chunk: consecutive hours are joined until a chunk holds this many, within the trigger form's `chunk_hours` (default 2000000; a denser hour is a chunk of its own).",
    ),
    "db_schema": ("LITELLM_DB_SCHEMA", "PostgreSQL schema of LiteLLM's tables (default `public`)."),
    "report_tag_prefixes": (
        "CLOUDZERO_REPORT_TAG_PREFIXES",
        "Comma-separated request-tag prefixes the daily report groups by (e.g. `taskName`).",
    ),
    "alert_limits": (
        "CLOUDZERO_ALERT_LIMITS",
        'JSON of USD-per-day limits: `daily_total`, `team`, `user`, `customer`, `model` (e.g. `{"daily_total": 500, "team": 100}`); empty: no check.',
    ),
    "alert_email": (
        "CLOUDZERO_ALERT_EMAIL",
        "Comma-separated addresses told of breaches by SmtpNotifier (the `smtp_default` connection).",
    ),
    "alert_slack_conn_id": (
        "CLOUDZERO_ALERT_SLACK_CONN_ID",
        "Slack connection for SlackNotifier (needs apache-airflow-providers-slack).",
    ),
    "alert_slack_channel": (
        "CLOUDZERO_ALERT_SLACK_CHANNEL",
        "Slack channel for breaches (default `#finops`).",
    ),
    "reconcile_retention_days": (
        "CLOUDZERO_RECONCILE_RETENTION_DAYS",
        "LiteLLM's `maximum_spend_logs_retention_period` in days, if you know it. Without it the reconciliation already never lowers an hour older than the oldest spend-log row the source still holds (or a day whose spend logs are gone while the daily rollup holds spend): those are `purged at source`. With it, every hour older than this many days is treated so too (default 0: only the evidence in the database).",
    ),
    "max_lag_hours": (
        "CLOUDZERO_MAX_LAG_HOURS",
        "The newest exported hour may lag this many hours behind now before the lag alert fires and the ledger shows red (default 6).",
    ),
    "daily_source": (
        "CLOUDZERO_DAILY_SOURCE",
        "Rollup table of the daily-rollup DAG: `team` (LiteLLM_DailyTeamSpend, default) or `user` (LiteLLM_DailyUserSpend); never both, they count the same requests.",
    ),
    "daily_dimensions": (
        "CLOUDZERO_DAILY_DIMENSIONS",
        "Dimensions of the daily-rollup export, among team_id (team table) or user (user table), api_key, api_key_alias, model, model_group, provider (default: all of them).",
    ),
    "daily_tag_conn_id": (
        "CLOUDZERO_DAILY_TAG_CONN_ID",
        "Opt-in: a second `cloudzero` connection (its own AnyCost stream) that the daily-rollup DAG fills from LiteLLM_DailyTagSpend, spend per request tag. A separate stream because the tag table counts a request once per tag.",
    ),
    "daily_tag_prefix": (
        "CLOUDZERO_DAILY_TAG_PREFIX",
        "The request-tag prefix of that stream, e.g. `taskName` for `taskName:<value>` tags (default `taskName`).",
    ),
    "telemetry_metric": (
        "CLOUDZERO_TELEMETRY_METRIC",
        "Unit-cost metric for the telemetry DAG (LiteLLM's CLOUDZERO_METRIC_NAME); empty: the connection's extra `metric_name`, else telemetry is off.",
    ),
    "telemetry_value": (
        "CLOUDZERO_TELEMETRY_VALUE",
        "What a telemetry record's value is: `cost` (default), `requests` or `tokens`.",
    ),
    "telemetry_dimensions": (
        "CLOUDZERO_TELEMETRY_DIMENSIONS",
        "Up to 5 of model, user, team_id, organization_id, end_user (default all five).",
    ),
}


# Whole-number settings and the values they may take: a value outside fails when the DAG file is parsed, naming
# the variable, instead of stalling a schedule (a settle wait of days) or a worker (a huge request).
BOUNDS: dict[str, tuple[int, int]] = {
    "settle_minutes": (0, 24 * 60),
    "late_lookback_hours": (0, 168),
    "max_values_per_hour": (0, 100_000),
    "max_rows_per_hour": (0, 1_000_000),
    "max_active_runs": (1, 64),
    "retries": (0, 20),
    "retry_delay_seconds": (1, 24 * 3600),
    "max_request_bytes": (16_384, 5_000_000),
    "reconcile_retention_days": (0, 3650),
    "max_lag_hours": (1, 720),
    "range_chunk_rows": (1, 1_000_000_000),
}


def _convert(raw: str, kind: Any, var: str) -> object:
    """One environment value as the field's type: ``int``, ``datetime``, ``list[str]``, ``dict`` or ``str``."""
    if get_origin(kind) in (Union, types.UnionType):  # ``X | None``: convert as X
        kind = next(a for a in get_args(kind) if a is not type(None))
    if kind is int:
        return int(raw)
    if kind is datetime:
        return parse_instant(raw, what=var)
    if get_origin(kind) is list:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if get_origin(kind) is dict:
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object")
        return value
    return raw


@dataclass(frozen=True)
class ExportSettings:
    litellm_conn_id: str = "litellm_db"
    cloudzero_conn_id: str = "cloudzero_default"
    start_date: datetime = field(default_factory=lambda: parse_instant("2026-11-01T00:00:00Z"))
    settle_minutes: int = 10
    late_lookback_hours: int = 3
    dimensions: list[str] | None = None
    on_invalid: str = "fail"
    max_values_per_hour: int = 1000
    max_rows_per_hour: int = 5000
    staging_uri: str | None = None
    pool: str = "cloudzero_anycost"
    max_active_runs: int = 4
    retries: int = 4
    retry_delay_seconds: int = 60
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    range_chunk_rows: int = DEFAULT_RANGE_CHUNK_ROWS
    db_schema: str = "public"
    report_tag_prefixes: list[str] | None = None
    alert_limits: dict[str, float] | None = None
    alert_email: list[str] | None = None
    alert_slack_conn_id: str | None = None
    alert_slack_channel: str = "#finops"
    reconcile_retention_days: int = 0
    max_lag_hours: int = 6
    daily_source: str = "team"
    daily_dimensions: list[str] | None = None
    daily_tag_conn_id: str | None = None
    daily_tag_prefix: str = "taskName"
    telemetry_metric: str | None = None
    telemetry_value: str = "cost"
    telemetry_dimensions: list[str] | None = None

    def __post_init__(self) -> None:
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(
                    f"setting {name} ({SETTINGS[name][0]}) must be a whole number from {low} to {high}, got {value!r}"
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ExportSettings:
        """Settings from environment variables; each value converted by its field's type."""
        env = os.environ if env is None else env
        hints = get_type_hints(cls)
        values: dict[str, object] = {}
        for name, (var, _) in SETTINGS.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[name] = _convert(raw.strip(), hints[name], var)
            except ValueError as exc:
                raise ValueError(f"environment variable {var}={raw!r}: {exc}") from None
        return cls(**values)  # type: ignore[arg-type]

    def table(self) -> str:
        """A Markdown table of every setting, its variable and its current value, for ``doc_md``."""
        lines = ["| setting | environment variable | now | meaning |", "|---|---|---|---|"]
        for name, (var, text) in SETTINGS.items():
            lines.append(f"| {name} | `{var}` | `{getattr(self, name)}` | {text} |")
        return "\n".join(lines)
