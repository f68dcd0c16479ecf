"""Extract one window of LiteLLM spend, aggregated in PostgreSQL, into the window's staging folder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from cloudzero_provider.hooks.litellm import LiteLLMSpendHook
from cloudzero_provider.operators._window import resolve_window
from cloudzero_provider.pipeline import extract_window
from cloudzero_provider.staging import WindowStage


class LiteLLMSpendExtractOperator(BaseOperator):
    """
    Aggregate a window of LiteLLM spend inside PostgreSQL and stage it for the CBF transform.

    One SQL statement groups the window's ``LiteLLM_SpendLogs`` rows by hour and ``dimensions`` (spend summed
    as ``numeric``) and also returns PostgreSQL's per-hour totals, which the transform reconciles against.
    Returns a small summary (path, rows, requests, tokens, spend) for XCom.

    :param litellm_conn_id: Connection to the LiteLLM database.
    :param window_start: Start of the window (ISO-8601, hour-aligned, UTC); default: the data interval.
    :param window_end: End of the window (exclusive); default: one hour after ``window_start``.
    :param dimensions: Dimension names (see ``cloudzero_provider.dimensions``); ``None`` for the default set.
    :param source: ``spend_logs`` (hourly) or ``daily_team`` / ``daily_user`` (LiteLLM's daily rollups).
    :param on_invalid: ``fail`` (default): invalid rows (spend NULL/NaN/infinite/negative, negative tokens)
        fail the window with a message naming them; ``quarantine``: export the valid rows and write the
        invalid ones to ``quarantine.jsonl`` beside the staging data.
    :param staging_uri: Staging root (local folder or object-storage URI); default ``CLOUDZERO_STAGING_URI``
        or ``$AIRFLOW_HOME/cloudzero-staging``.
    :param stream: Staging sub-folder; by convention the CloudZero connection id the data goes to.
    :param db_schema: PostgreSQL schema of LiteLLM's tables.
    """

    template_fields: Sequence[str] = ("window_start", "window_end", "dimensions", "on_invalid", "staging_uri")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        litellm_conn_id: str = LiteLLMSpendHook.default_conn_name,
        window_start: Any = None,
        window_end: Any = None,
        dimensions: list[str] | None = None,
        source: str = "spend_logs",
        on_invalid: str = "fail",
        staging_uri: str | None = None,
        stream: str = "cloudzero_default",
        db_schema: str = "public",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.litellm_conn_id = litellm_conn_id
        self.window_start = window_start
        self.window_end = window_end
        self.dimensions = dimensions
        self.source = source
        self.on_invalid = on_invalid
        self.staging_uri = staging_uri
        self.stream = stream
        self.db_schema = db_schema

    def execute(self, context: Any) -> dict[str, Any]:
        window = resolve_window(self.window_start, self.window_end, context)
        hook = LiteLLMSpendHook(postgres_conn_id=self.litellm_conn_id, db_schema=self.db_schema)
        stage = WindowStage(self.staging_uri, window, self.stream)
        return extract_window(
            hook, window, stage, dimensions=self.dimensions, source=self.source, on_invalid=self.on_invalid,
            log=self.log,
        )  # fmt: skip
