"""The late-data pass: re-check recent hours against their manifests and re-export what changed or never went."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from cloudzero_provider.operators.base import ExportStepOperator, attempt_of
from cloudzero_provider.pipeline.reexport import reexport_hours
from cloudzero_provider.windows import Window, floor_hour, hour_label, may_be_purged, parse_instant

if TYPE_CHECKING:
    from airflow.sdk import Context


class LateDataOperator(ExportStepOperator):
    """
    Spend-log rows land late (streaming requests, proxy flush delays, database outages). For the
    ``lookback_hours`` hours before this run's window, compare LiteLLM's current per-hour totals (valid requests
    and ``SUM(spend::numeric)``) with the totals each hour's manifest recorded at export, and re-export every
    hour that changed, every hour whose last upload stopped part-way, and every hour that has spend at the
    source but was never exported (its own run failed). Every hour is tried; the task fails at the end naming
    each hour that could not be corrected and why.

    :param lookback_hours: How many hours before the window to re-check. (templated)
    :param not_before: No hour before this instant is exported for never having been (the DAG's start: an hour
        before it was not asked for). (templated)
    """

    template_fields: Sequence[str] = (*ExportStepOperator.template_fields, "lookback_hours", "not_before")
    ui_color = "#f4ecf7"

    def __init__(self, *, lookback_hours: int | str = 3, not_before: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lookback_hours = lookback_hours
        self.not_before = not_before

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

    def _changed(self, checked: Window, context: Context) -> dict[datetime, str]:
        """The hours of ``checked`` to export again, with why."""
        current = self.litellm_hook.hour_spend(checked)
        # After the read: LiteLLM's retention may have purged rows at or before the oldest one left (every hour,
        # when none is left); an hour there that now holds less keeps what was exported.
        oldest = self.litellm_hook.oldest_spend_log()
        edge = floor_hour(oldest) if oldest is not None else None
        floor = parse_instant(self.not_before, what="not_before") if self.not_before else None
        held = self.target.manifests.get_many(checked.hour_starts())  # one listing, one read per manifest
        changed: dict[datetime, str] = {}
        for hour in checked.hour_starts():
            manifest = held.get(hour)
            requests, spend = current.get(hour, (0, "0"))
            if manifest is None:
                if not requests or (floor and hour < floor):
                    continue
                if self._run_in_flight(context, hour):
                    self.log.info(
                        "%s has spend and no export yet; its own run is still in flight", hour_label(hour)
                    )
                    continue
                changed[hour] = (f"never exported, yet the source holds {requests} requests / {spend} USD (its own "
                                 "run failed?)")  # fmt: skip
                continue
            recorded = manifest.source
            if not manifest.exported:
                changed[hour] = manifest.unreadable or f"its last upload ended {manifest.status}"
            elif recorded is None or (requests, spend) != (recorded.requests, recorded.spend):
                was = f"{recorded.requests} / {recorded.spend}" if recorded else "unknown totals"
                if (
                    recorded is not None
                    and Decimal(spend) < Decimal(recorded.spend)
                    and may_be_purged(hour, oldest)
                ):
                    self.log.warning(
                        "%s: source now %s requests / %s USD, exported %s -- at or before the oldest spend-log row "
                        "left (%s): LiteLLM's retention may have purged its rows, so CloudZero keeps what was "
                        "exported (reconciliation decides such hours)", hour_label(hour), requests, spend, was,
                        hour_label(edge) if edge else "none left",
                    )  # fmt: skip
                    continue
                changed[hour] = f"source now {requests} requests / {spend} USD, exported {was}"
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
        outcome = reexport_hours(
            self.litellm_hook, self.cloudzero_hook, self.target.manifests, sorted(changed),
            stage_of=lambda w: self.stage(w, area="late"), options=self.checked_options(),
            attempt=attempt_of(context).for_pass("late"), why=lambda h: f"late data: {changed[h]}",
        )  # fmt: skip
        corrected = sorted(outcome.done)
        self.emit_hour_events(context, corrected, {"window": window.label, "late_correction": True})
        if outcome.failed:
            raise outcome.error(
                f"Late-data pass corrected {len(corrected)} hour(s) {[hour_label(h) for h in corrected]} but could "
                f"not correct {len(outcome.failed)}: " + outcome.failure_lines()
            )
        return {"checked": labels, "corrected": [hour_label(h) for h in corrected]}
