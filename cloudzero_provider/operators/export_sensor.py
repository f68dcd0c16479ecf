"""Wait until every hour of a window that has spend has been exported to CloudZero."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk.bases.sensor import BaseSensorOperator

from cloudzero_provider.hooks.litellm import LiteLLMSpendHook
from cloudzero_provider.manifests import ManifestStore
from cloudzero_provider.operators._window import resolve_window
from cloudzero_provider.staging import staging_root


class ExportedDaySensor(BaseSensorOperator):
    """
    Succeed when every hour of the window with valid spend in LiteLLM has an ``exported`` manifest recording the
    same source totals -- i.e. when CloudZero holds exactly what the report will show.

    :param litellm_conn_id: Connection to the LiteLLM database.
    :param staging_uri: Staging root of the export.
    :param stream: Staging sub-folder: the CloudZero connection id.
    """

    template_fields: Sequence[str] = ("staging_uri",)

    def __init__(
        self,
        *,
        litellm_conn_id: str = LiteLLMSpendHook.default_conn_name,
        staging_uri: str | None = None,
        stream: str = "cloudzero_default",
        db_schema: str = "public",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.litellm_conn_id = litellm_conn_id
        self.staging_uri = staging_uri
        self.stream = stream
        self.db_schema = db_schema

    def poke(self, context: Any) -> bool:
        window = resolve_window(None, None, context)
        hours = LiteLLMSpendHook(postgres_conn_id=self.litellm_conn_id, db_schema=self.db_schema).hour_spend(
            window
        )
        store = ManifestStore(staging_root(self.staging_uri) / self.stream)
        pending = []
        for hour, (requests, spend) in sorted(hours.items()):
            manifest = store.get(hour) or {}
            source = manifest.get("source", {})
            if manifest.get("status") != "exported" or (source.get("requests"), source.get("spend")) != (
                requests,
                spend,
            ):
                pending.append(hour[:13] + "Z")
        if pending:
            self.log.info("Waiting for %d hour(s) of %s to be exported: %s", len(pending), window, pending)
            return False
        self.log.info("All %d hour(s) with spend in %s are exported", len(hours), window)
        return True
