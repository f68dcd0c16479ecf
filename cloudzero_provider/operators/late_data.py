"""The late-data pass: re-check recent hours against their manifests and re-export what changed or never went."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from cloudzero_provider.drops import DEFAULT_MAX_REQUEST_BYTES
from cloudzero_provider.operators.base import CloudZeroBaseOperator, attempt_salt, emit_hour_events
from cloudzero_provider.operators.extract import dimension_list
from cloudzero_provider.pipeline import (
    DEFAULT_MAX_VALUES_PER_HOUR,
    extract_window,
    transform_window,
    upload_window,
)
from cloudzero_provider.windows import Window, iso_hour, parse_instant

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context


class LateDataOperator(CloudZeroBaseOperator):
    """
    Spend-log rows land late (streaming requests, proxy flush delays, database outages). For the
    ``lookback_hours`` hours before this run's window, compare LiteLLM's current per-hour totals (valid requests
    and ``SUM(spend::numeric)``) with the totals each hour's manifest recorded at export, and re-export every
    hour that changed, every hour whose last upload stopped part-way, and every hour that has spend at the
    source but was never exported (its own run failed). Every hour is tried; the task fails at the end naming
    each hour that could not be corrected and why.

    :param lookback_hours: How many hours before the window to re-check. (templated)
    :param dimensions: As given to the extract. (templated)
    :param on_invalid: As given to the extract. (templated)
    :param max_request_bytes: As given to the upload.
    :param hour_asset: Asset that gets one event per re-exported hour, through the AssetAlias in ``outlets``.
    :param max_values_per_hour: As given to the transform.
    :param not_before: No hour before this instant is exported for never having been (the DAG's start: an hour
        before it was not asked for). (templated)
    """

    template_fields: Sequence[str] = (
        *CloudZeroBaseOperator.template_fields,
        "lookback_hours",
        "dimensions",
        "on_invalid",
        "not_before",
    )
    ui_color = "#f4ecf7"

    def __init__(
        self,
        *,
        lookback_hours: int | str = 3,
        dimensions: Sequence[str] | str | None = None,
        on_invalid: str = "fail",
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        hour_asset: Asset | None = None,
        not_before: Any = None,
        max_values_per_hour: int | None = DEFAULT_MAX_VALUES_PER_HOUR,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_values_per_hour = max_values_per_hour
        self.not_before = not_before
        self.lookback_hours = lookback_hours
        self.dimensions = dimensions
        self.on_invalid = on_invalid
        self.max_request_bytes = max_request_bytes
        self.hour_asset = hour_asset

    def _run_in_flight(self, context: Context, hour: datetime) -> bool:
        """Whether this DAG's own run for ``hour`` (logical date = the hour's start) is still queued or running."""
        ti = context.get("ti")
        if ti is None or not hasattr(ti, "get_dr_count"):
            return False
        try:
            count = ti.get_dr_count(dag_id=ti.dag_id, logical_dates=[hour], states=["queued", "running"])
        except Exception as exc:  # an older API server: be conservative, the hour's own run may still send it
            self.log.warning("Cannot tell whether the run for %s is in flight (%s); leaving it", hour, exc)
            return True
        return bool(count)

    def _changed(self, checked: Window, context: Context) -> list[tuple[Window, str]]:
        current = self.litellm_hook.hour_spend(checked)
        floor = parse_instant(self.not_before, what="not_before") if self.not_before else None
        manifests = self.target.manifests
        changed = []
        for hour_window in checked.each_hour():
            manifest = manifests.get(hour_window.start)
            requests, spend = current.get(iso_hour(hour_window.start), (0, "0"))
            if manifest is None:
                if not requests or (floor and hour_window.start < floor):
                    continue
                if self._run_in_flight(context, hour_window.start):
                    self.log.info(
                        "%s has spend and no export yet; its own run is still in flight", hour_window.label
                    )
                    continue
                if requests:
                    changed.append((hour_window, f"never exported, yet the source holds {requests} requests / "
                                                 f"{spend} USD (its own run failed?)"))  # fmt: skip
                continue
            recorded = manifest.get("source", {})
            if manifest.get("status") != "exported":
                why = manifest.get("unreadable") or f"its last upload ended {manifest.get('status')}"
                changed.append((hour_window, why))
            elif (requests, spend) != (recorded.get("requests"), recorded.get("spend")):
                changed.append((hour_window, f"source now {requests} requests / {spend} USD, exported "
                                             f"{recorded.get('requests')} / {recorded.get('spend')}"))  # fmt: skip
        return changed

    def execute(self, context: Context) -> dict[str, Any]:
        window = self.window(context)
        lookback = int(self.lookback_hours)
        if lookback <= 0:
            return {"checked": [], "corrected": []}
        checked = Window(window.start - timedelta(hours=lookback), window.start)
        labels = [h.label for h in checked.each_hour()]
        changed = self._changed(checked, context)
        if not changed:
            self.log.info("Late-data pass over %s: every hour with spend is exported and unchanged", checked)
            return {"checked": labels, "corrected": []}
        corrected: list[str] = []
        failures: list[str] = []
        retryable = False
        salt = attempt_salt(context) + "/late"
        for hour_window, why in changed:
            self.log.warning("Late data in %s: %s -- re-exporting the hour", hour_window.label, why)
            stage = self.stage(hour_window, area="late")
            try:
                extract_window(self.litellm_hook, hour_window, stage, dimensions=dimension_list(self.dimensions),
                               on_invalid=self.on_invalid)  # fmt: skip
                transform_window(hour_window, stage, max_values_per_hour=self.max_values_per_hour or None)
                result = upload_window(self.cloudzero_hook, hour_window, stage, self.target.manifests,
                                       max_request_bytes=self.max_request_bytes, salt=salt,
                                       late_correction=True)  # fmt: skip
            except AirflowException as exc:
                retryable = retryable or not isinstance(exc, AirflowFailException)
                failures.append(f"{hour_window.label}: {exc}")
                self.log.error("Could not correct %s: %s", hour_window.label, exc)
                continue
            corrected.extend(result["hours"])
        emit_hour_events(self.outlets, context, corrected, {"window": window.label, "late_correction": True},
                         self.hour_asset)  # fmt: skip
        if failures:
            message = (f"Late-data pass corrected {len(corrected)} hour(s) {corrected} but could not correct "
                       f"{len(failures)}: " + "; ".join(failures))  # fmt: skip
            raise (AirflowException if retryable else AirflowFailException)(message)
        return {"checked": labels, "corrected": corrected}
