"""Reconciliation: prove CloudZero holds what the source says, hour by hour, and repair every hour that differs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from cloudzero_provider.cbf import exact_decimal, exact_sum
from cloudzero_provider.drops import DEFAULT_MAX_REQUEST_BYTES
from cloudzero_provider.operators.base import CloudZeroBaseOperator, attempt_salt, emit_hour_events
from cloudzero_provider.operators.extract import dimension_list
from cloudzero_provider.pipeline import (
    DEFAULT_MAX_VALUES_PER_HOUR,
    clear_hours,
    day_owner,
    extract_window,
    transform_window,
    upload_window,
)
from cloudzero_provider.readback import ReadBackError, held_by_hour
from cloudzero_provider.reconcile import CLEARED, FOREIGN, MATCHES, PURGED, REPAIRED, HourCheck, decide
from cloudzero_provider.windows import Window, hour_label, iso_hour, month_label

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context


class ReconcileOperator(CloudZeroBaseOperator):
    """
    For every hour of the window compare three things -- the source now (``SUM(spend::numeric)``, requests),
    the manifest (what this exporter sent) and CloudZero's own state read back through the API (the month's
    billing drop, summed per hour) -- and repair each hour that differs, from the source, through the same
    extract -> transform -> upload steps: stale or lost hours are exported again, hours whose source is empty are
    cleared to exactly 0, other writers' rows are replaced. A second run with nothing to repair sends nothing.

    Where CloudZero answers 404 for a month, the manifests stand in for its state, and the result says so.
    Days owned by the daily-rollup export are left alone; hours older than ``retention_days`` whose source rows
    are gone are reported as purged at source, never lowered. Every hour is tried; the task fails at the end
    naming each hour it could not repair and why.

    :param retention_days: LiteLLM's ``maximum_spend_logs_retention_period`` in days (0 or None: no guard).
        (templated)
    :param dimensions: As given to the export. (templated)
    :param on_invalid: As given to the export. (templated)
    :param max_request_bytes: As given to the upload.
    :param max_values_per_hour: As given to the transform.
    :param hour_asset: Asset that gets one event per repaired hour, through the AssetAlias in ``outlets``.
    """

    template_fields: Sequence[str] = (
        *CloudZeroBaseOperator.template_fields,
        "retention_days",
        "dimensions",
        "on_invalid",
    )
    ui_color = "#e8daef"

    def __init__(
        self,
        *,
        retention_days: int | str | None = None,
        dimensions: Sequence[str] | str | None = None,
        on_invalid: str = "fail",
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_values_per_hour: int | None = DEFAULT_MAX_VALUES_PER_HOUR,
        hour_asset: Asset | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.retention_days = retention_days
        self.dimensions = dimensions
        self.on_invalid = on_invalid
        self.max_request_bytes = max_request_bytes
        self.max_values_per_hour = max_values_per_hour
        self.hour_asset = hour_asset

    def _cloudzero_state(self, window: Window) -> tuple[dict[datetime, Decimal] | None, str, dict[str, str]]:
        """CloudZero's cost per hour over the window's months (None where no month can be read: 404), how it was
        read, and the months whose answer could not be read, with why."""
        held: dict[datetime, Decimal] = {}
        months = sorted({month_label(h) for h in window.hour_starts()})
        missing, unreadable = [], {}
        for month in months:
            rows = self.cloudzero_hook.get_billing_drop(month)
            if rows is None:
                missing.append(month)
                continue
            try:
                held.update(held_by_hour(rows, month))
            except ReadBackError as exc:
                unreadable[month] = str(exc)
        if missing and len(missing) == len(months):
            return (
                None,
                f"CloudZero answered 404 for {missing}: compared with the manifests instead",
                unreadable,
            )
        note = f"; CloudZero holds no drop for {missing} (404)" if missing else ""
        return held, "read back from CloudZero (GET billing_drops/{month})" + note, unreadable

    def execute(self, context: Context) -> dict[str, Any]:
        window = self.window(context)
        days = int(self.retention_days or 0)
        floor = datetime.now(window.start.tzinfo) - timedelta(days=days) if days > 0 else None
        manifests = self.target.manifests
        source = self.litellm_hook.hour_spend(window)
        held, basis, unreadable = self._cloudzero_state(window)
        owners = {d.start: day_owner(manifests, d.start) for d in window.each_day()}
        checks: list[HourCheck] = []
        failures: list[str] = list(unreadable.values())
        for hour in window.hour_starts():
            if month_label(hour) in unreadable:
                continue  # what CloudZero holds is unknown: nothing is decided, the task fails naming the month
            key = iso_hour(hour)
            manifest = manifests.get(hour)
            requests, spend = source.get(key, (0, "0"))
            if held is not None:
                now_held = held.get(hour, Decimal(0))
            else:
                now_held = (
                    Decimal(str(manifest.get("cost", "0")))
                    if manifest and manifest.get("drop_ids")
                    else Decimal(0)
                )
            checks.append(
                decide(
                    hour,
                    source=Decimal(spend),
                    requests=requests,
                    held=now_held,
                    manifest=manifest,
                    owner=owners[hour.replace(hour=0)],
                    retention_floor=floor,
                )
            )
        salt = attempt_salt(context) + "/reconcile"
        retryable = False
        done: list[HourCheck] = []
        for check in checks:
            if check.action == "none":
                continue
            hour_window = Window.hour(check.hour)
            self.log.warning("Reconciling %s: source %s USD, CloudZero %s USD -> %s", hour_window.label,
                             check.source, check.held, check.status)  # fmt: skip
            try:
                if check.action == "clear":
                    clear_hours(self.cloudzero_hook, [check.hour], manifests, salt=salt)
                else:
                    stage = self.stage(hour_window, area="reconcile")
                    extract_window(self.litellm_hook, hour_window, stage,
                                   dimensions=dimension_list(self.dimensions), on_invalid=self.on_invalid)  # fmt: skip
                    transform_window(hour_window, stage, max_values_per_hour=self.max_values_per_hour or None)
                    upload_window(self.cloudzero_hook, hour_window, stage, manifests,
                                  max_request_bytes=self.max_request_bytes, salt=salt, late_correction=True)  # fmt: skip
            except AirflowException as exc:
                retryable = retryable or not isinstance(exc, AirflowFailException)
                failures.append(f"{hour_window.label}: {exc}")
                self.log.error("Could not reconcile %s: %s", hour_window.label, exc)
                continue
            done.append(check)
        for check in checks:  # the verdict goes where the ledger looks: the hours this stream has a record of
            if check.action != "none" or manifests.get(check.hour) is not None:
                manifests.note(check.hour, "reconcile", {**check.as_dict(), "basis": basis, "run": salt})
        emit_hour_events(self.outlets, context, [hour_label(c.hour) for c in done], {"window": window.label,
                         "reconciled": True}, self.hour_asset)  # fmt: skip
        counts = {
            s: sum(1 for c in checks if c.status == s) for s in (MATCHES, REPAIRED, CLEARED, FOREIGN, PURGED)
        }
        moved = exact_decimal(exact_sum(c.moved for c in done))
        summary = {
            "window": window.label,
            "basis": basis,
            "hours_checked": len(checks),
            **counts,
            "hours_changed": [hour_label(c.hour) for c in done],
            "purged_at_source": [hour_label(c.hour) for c in checks if c.status == PURGED],
            "usd_moved": moved,
        }
        self.log.info(
            "Reconciled %s (%s): %d hour(s) checked, %d match, %d repaired, %d cleared, %d with foreign data "
            "removed, %d purged at source; %s USD moved",
            window, basis, len(checks), counts[MATCHES], counts[REPAIRED], counts[CLEARED], counts[FOREIGN],
            counts[PURGED], moved,
        )  # fmt: skip
        if failures:
            raise (AirflowException if retryable else AirflowFailException)(
                f"Reconciled {len(done)} hour(s) but could not repair or read {len(failures)}: "
                + "; ".join(failures)
            )
        return summary
