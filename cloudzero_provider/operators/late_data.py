"""The late-data pass: re-check recently exported hours against their manifests and re-export what changed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, BaseOperator

from cloudzero_provider.drops import DEFAULT_MAX_REQUEST_BYTES
from cloudzero_provider.hooks.cloudzero import CloudZeroHook
from cloudzero_provider.hooks.litellm import LiteLLMSpendHook
from cloudzero_provider.manifests import ManifestStore
from cloudzero_provider.operators._assets import emit_hour_events
from cloudzero_provider.operators._window import resolve_window
from cloudzero_provider.operators.upload import attempt_salt
from cloudzero_provider.pipeline import extract_window, transform_window, upload_window
from cloudzero_provider.staging import WindowStage, staging_root
from cloudzero_provider.windows import Window


class LateDataOperator(BaseOperator):
    """
    Spend-log rows land late (streaming requests, proxy flush delays, database outages). For the
    ``lookback_hours`` hours before this run's window, compare LiteLLM's current per-hour totals (valid requests
    and ``SUM(spend::numeric)``) with the totals each hour's manifest recorded at export, and re-export every
    hour that changed -- and every hour whose last upload stopped part-way. Hours never exported are left to
    their own runs.

    :param lookback_hours: How many hours before the window to re-check.
    :param dimensions: As given to the extract.
    :param on_invalid: As given to the extract.
    :param hour_asset: Asset that gets one event per re-exported hour, through the AssetAlias in ``outlets``.
    """

    template_fields: Sequence[str] = (
        "window_start",
        "window_end",
        "staging_uri",
        "lookback_hours",
        "dimensions",
    )
    ui_color = "#f4ecf7"

    def __init__(
        self,
        *,
        litellm_conn_id: str = LiteLLMSpendHook.default_conn_name,
        cloudzero_conn_id: str = CloudZeroHook.default_conn_name,
        window_start: Any = None,
        window_end: Any = None,
        lookback_hours: int | str = 3,
        dimensions: list[str] | None = None,
        on_invalid: str = "fail",
        staging_uri: str | None = None,
        stream: str = "cloudzero_default",
        db_schema: str = "public",
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        hour_asset: Asset | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.litellm_conn_id = litellm_conn_id
        self.cloudzero_conn_id = cloudzero_conn_id
        self.window_start = window_start
        self.window_end = window_end
        self.lookback_hours = lookback_hours
        self.dimensions = dimensions
        self.on_invalid = on_invalid
        self.staging_uri = staging_uri
        self.stream = stream
        self.db_schema = db_schema
        self.max_request_bytes = max_request_bytes
        self.hour_asset = hour_asset

    def execute(self, context: Any) -> dict[str, Any]:
        window = resolve_window(self.window_start, self.window_end, context)
        lookback = int(self.lookback_hours)
        if lookback <= 0:
            return {"checked": [], "corrected": []}
        checked = Window(window.start - timedelta(hours=lookback), window.start)
        db = LiteLLMSpendHook(postgres_conn_id=self.litellm_conn_id, db_schema=self.db_schema)
        manifests = ManifestStore(staging_root(self.staging_uri) / self.stream)
        current = db.hour_spend(checked)
        changed = []
        for hour_window in checked.each_hour():
            hour = hour_window.start.strftime("%Y-%m-%dT%H:00:00Z")
            manifest = manifests.get(hour)
            if manifest is None:
                continue
            requests, spend = current.get(hour, (0, "0"))
            recorded = manifest.get("source", {})
            if manifest.get("status") != "exported":
                changed.append((hour_window, f"its last upload ended {manifest.get('status')}"))
            elif (requests, spend) != (recorded.get("requests"), recorded.get("spend")):
                changed.append((hour_window, f"source now {requests} requests / {spend} USD, exported "
                                             f"{recorded.get('requests')} / {recorded.get('spend')}"))  # fmt: skip
        if not changed:
            self.log.info(
                "Late-data pass over %s: all exported hours still match their source totals", checked
            )
            return {"checked": [h.label for h in checked.each_hour()], "corrected": []}
        cz = CloudZeroHook(self.cloudzero_conn_id)
        corrected = []
        for hour_window, why in changed:
            self.log.warning("Late data in %s: %s -- re-exporting the hour", hour_window.label, why)
            stage = WindowStage(self.staging_uri, hour_window, self.stream)
            extract_window(db, hour_window, stage, dimensions=self.dimensions, source="spend_logs",
                           on_invalid=self.on_invalid, log=self.log)  # fmt: skip
            transform_window(hour_window, stage, log=self.log)
            result = upload_window(cz, hour_window, stage, max_request_bytes=self.max_request_bytes,
                                   salt=attempt_salt(context) + "/late", log=self.log, late_correction=True)  # fmt: skip
            corrected.extend(result["hours"])
        emit_hour_events(
            self.outlets,
            context,
            corrected,
            {"window": window.label, "late_correction": True},
            self.hour_asset,
        )
        return {"checked": [h.label for h in checked.each_hour()], "corrected": corrected}
