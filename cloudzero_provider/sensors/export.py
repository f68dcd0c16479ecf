"""Wait until every hour of a window that has spend has been exported to CloudZero."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.sensor import BaseSensorOperator

from cloudzero_provider.operators.base import (
    DEFAULT_CLOUDZERO_CONN_ID,
    DEFAULT_LITELLM_CONN_ID,
    resolve_window,
)
from cloudzero_provider.target import ExportTarget
from cloudzero_provider.windows import hour_label, parse_hour

if TYPE_CHECKING:
    from airflow.sdk import Context


class ExportedDaySensor(BaseSensorOperator):
    """
    Succeed when every hour of the run's data interval with valid spend in LiteLLM has an ``exported``
    manifest recording the same source totals -- i.e. when CloudZero holds exactly what the report will show.

    :param litellm_conn_id: Connection to the LiteLLM database. (templated)
    :param cloudzero_conn_id: The ``cloudzero`` connection whose export target holds the manifests. (templated)
    :param staging_uri: Staging root of the export. (templated)
    :param db_schema: PostgreSQL schema of LiteLLM's tables. (templated)
    """

    template_fields: Sequence[str] = ("litellm_conn_id", "cloudzero_conn_id", "staging_uri", "db_schema")

    def __init__(
        self,
        *,
        litellm_conn_id: str = DEFAULT_LITELLM_CONN_ID,
        cloudzero_conn_id: str = DEFAULT_CLOUDZERO_CONN_ID,
        staging_uri: str | None = None,
        db_schema: str = "public",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.litellm_conn_id = litellm_conn_id
        self.cloudzero_conn_id = cloudzero_conn_id
        self.staging_uri = staging_uri
        self.db_schema = db_schema

    def poke(self, context: Context) -> bool:
        from cloudzero_provider.hooks.litellm import LiteLLMSpendHook

        window = resolve_window(None, None, context)
        hook = LiteLLMSpendHook(postgres_conn_id=self.litellm_conn_id, db_schema=self.db_schema)
        hours = hook.hour_spend(window)
        store = ExportTarget(self.cloudzero_conn_id, self.staging_uri or None).manifests
        pending = []
        for hour, (requests, spend) in sorted(hours.items()):
            manifest = store.get(parse_hour(hour)) or {}
            source = manifest.get("source", {})
            if manifest.get("status") != "exported" or (source.get("requests"), source.get("spend")) != (
                requests,
                spend,
            ):
                pending.append(hour_label(parse_hour(hour)))
        if pending:
            self.log.info("Waiting for %d hour(s) of %s to be exported: %s", len(pending), window, pending)
            return False
        self.log.info("All %d hour(s) with spend in %s are exported", len(hours), window)
        return True
