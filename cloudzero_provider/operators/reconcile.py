"""Reconciliation: prove CloudZero holds what the source says, hour by hour, and repair every hour that differs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from cloudzero_provider.cbf import exact_decimal, exact_sum
from cloudzero_provider.operators.base import ExportStepOperator, attempt_of
from cloudzero_provider.pipeline.reexport import reexport_hours
from cloudzero_provider.pipeline.upload import clear_hours
from cloudzero_provider.readback import ReadBackError, held_by_hour
from cloudzero_provider.verdicts import (
    CLEARED,
    FOREIGN,
    FOREIGN_KEPT,
    MATCHES,
    PURGED,
    REPAIRED,
    HourCheck,
    decide,
)
from cloudzero_provider.windows import (
    Window,
    day_label,
    day_start,
    floor_hour,
    hour_label,
    iso_hour,
    iso_instant,
    month_label,
    utc_now,
)

if TYPE_CHECKING:
    from airflow.sdk import Context


class ReconcileOperator(ExportStepOperator):
    """
    For every hour of the window compare three things -- the source now (``SUM(spend::numeric)``, requests),
    the manifest (what this exporter sent) and CloudZero's own state read back through the API (the month's
    billing drop, summed per hour) -- and repair each hour that differs, from the source, through the same
    extract -> transform -> upload steps (:func:`~cloudzero_provider.pipeline.reexport.reexport_hours`): stale or
    lost hours are exported again, hours this exporter sent whose source rows were deleted are cleared to exactly
    0. A second run with nothing to repair sends nothing.

    Purge-safe by default: an hour that may have lost its rows to LiteLLM's retention -- older than the oldest
    spend-log row the source still holds, in a day the spend logs no longer hold while the daily rollup still counts
    spend, or older than ``retention_days`` -- is never lowered; its verdict is "purged at source". Cost another
    writer put into an hour without source spend is removed only with ``remove_foreign``; otherwise the verdict
    says "foreign data kept". Where CloudZero answers 404 for a month, the manifests stand in for its state, and the
    result says so. Days owned by the daily-rollup export are left alone. Every hour is tried; the task fails at
    the end naming each hour it could not repair and why.

    :param retention_days: LiteLLM's ``maximum_spend_logs_retention_period`` in days, if known: every hour older
        than that is treated as possibly purged too (0 or None: only the database's own evidence). (templated)
    :param remove_foreign: Clear hours holding cost this exporter never sent when the source holds none.
        (templated)

    Repaired hours emit the export's Asset event through the :attr:`ExportTarget.alias` in ``outlets``.
    """

    template_fields: Sequence[str] = (*ExportStepOperator.template_fields, "retention_days", "remove_foreign")
    ui_color = "#e8daef"

    def __init__(
        self, *, retention_days: int | str | None = None, remove_foreign: bool | str = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.retention_days = retention_days
        self.remove_foreign = remove_foreign

    def _purge_evidence(
        self, window: Window, source: dict[datetime, tuple[int, str]]
    ) -> Callable[[datetime], bool]:
        """Which hours may have lost rows to LiteLLM's retention: those before (and the one holding) the oldest
        spend-log row the source still holds; every hour of a day whose spend logs hold nothing while the daily
        rollup still counts spend; and, with ``retention_days``, every hour older than that."""
        oldest = self.litellm_hook.oldest_spend_log()
        edge = floor_hour(oldest) if oldest is not None else None
        days_with_rows = {day_start(h) for h in source}
        gone_days: set[datetime] = set()
        for day in window.each_day():
            if day.start in days_with_rows:
                continue
            try:
                if Decimal(self.litellm_hook.daily_spend(day)) > 0:
                    gone_days.add(day.start)
            except AirflowFailException:  # no rollup table (a very old LiteLLM): no evidence either way
                pass
        days = int(self.retention_days or 0)
        retained_from = floor_hour(utc_now()) - timedelta(days=days) if days > 0 else None
        self.log.info(
            "Purge guard: oldest spend-log row %s; days gone from spend logs but counted by the daily rollup: %s%s",
            iso_hour(oldest) if oldest else "none (the table is empty)", [day_label(d) for d in sorted(gone_days)],
            f"; retention {days} day(s): hours before {iso_hour(retained_from)}" if retained_from else "",
        )  # fmt: skip

        def may_be_purged(hour: datetime) -> bool:
            return (
                edge is None
                or hour <= edge
                or day_start(hour) in gone_days
                or (retained_from is not None and hour < retained_from)
            )

        return may_be_purged

    def _cloudzero_state(self, window: Window) -> tuple[dict[datetime, Decimal] | None, str, dict[str, str]]:
        """CloudZero's cost per hour over the window's months (None where no month can be read: 404), how it was
        read, and the months whose answer could not be read, with why."""
        held: dict[datetime, Decimal] = {}
        months = sorted({month_label(h) for h in window.hour_starts()})
        missing, unreadable = [], {}
        for month in months:
            rows = self.cloudzero_hook.iter_billing_drop(month)  # streamed: a month is never held whole
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
        options = self.checked_options()
        manifests = self.target.manifests
        source = self.litellm_hook.hour_spend(window)
        may_be_purged = self._purge_evidence(window, source)
        remove_foreign = str(self.remove_foreign).strip().lower() in ("true", "1", "yes")
        held, basis, unreadable = self._cloudzero_state(window)
        here = self.cloudzero_hook.connection_id
        days = [d.start for d in window.each_day()]
        # one listing, one read per manifest (the whole days: who owns a day is decided over all its hours)
        records = manifests.get_many(h for d in window.each_day() for h in d.hour_starts())
        owners = manifests.day_owners(days, held=records)
        checks: list[HourCheck] = []
        failures: list[str] = list(unreadable.values())
        for hour in window.hour_starts():
            if month_label(hour) in unreadable:
                continue  # what CloudZero holds is unknown: nothing is decided, the task fails naming the month
            manifest = records.get(hour)
            requests, spend = source.get(hour, (0, "0"))
            if held is not None:
                now_held = held.get(hour, Decimal(0))
            else:  # what the manifest says this connection acknowledged
                now_held = manifest.held_on(here) if manifest else Decimal(0)
            checks.append(decide(hour, source=Decimal(spend), requests=requests, held=now_held, manifest=manifest,
                                 owner=owners[day_start(hour)], may_be_purged=may_be_purged(hour),
                                 remove_foreign=remove_foreign, connection_id=here))  # fmt: skip
        attempt = attempt_of(context).for_pass("reconcile")
        retryable = False
        by_hour = {c.hour: c for c in checks}
        to_export = [c.hour for c in checks if c.action == "export"]
        outcome = reexport_hours(
            self.litellm_hook, self.cloudzero_hook, manifests, to_export,
            stage_of=lambda w: self.stage(w, area="reconcile"), options=options, attempt=attempt,
            why=lambda h: f"source {by_hour[h].source} USD, CloudZero {by_hour[h].held} USD -> {by_hour[h].status}",
            lower_purged=True,  # its own purge guard chose these hours
        )  # fmt: skip
        done = [by_hour[h] for h in outcome.done]
        failures += [outcome.failure_lines()] if outcome.failed else []
        retryable = outcome.retryable
        for check in (c for c in checks if c.action == "clear"):
            self.log.warning("Reconciling %s: source %s USD, CloudZero %s USD -> %s", hour_label(check.hour),
                             check.source, check.held, check.status)  # fmt: skip
            try:
                clear_hours(self.cloudzero_hook, [check.hour], manifests, attempt=attempt)
            except AirflowException as exc:
                retryable = retryable or not isinstance(exc, AirflowFailException)
                failures.append(f"{hour_label(check.hour)}: {exc}")
                self.log.error("Could not reconcile %s: %s", hour_label(check.hour), exc)
                continue
            done.append(check)
        done.sort(key=lambda c: c.hour)
        # The verdict goes where the ledger looks: the hours this stream has a record of, with when and by which
        # task attempt it was reached (the ledger links it).
        noted = {
            "basis": basis,
            "run": attempt.key,
            "at": iso_instant(utc_now()),
            "decided_by": attempt.as_record(),
        }
        for check in checks:
            if check.action != "none" or check.hour in records:
                manifests.note_reconcile(check.hour, {**check.as_dict(), **noted})
        self.emit_hour_events(context, [c.hour for c in done], {"window": window.label, "reconciled": True})
        counts = {
            s: sum(1 for c in checks if c.status == s)
            for s in (MATCHES, REPAIRED, CLEARED, FOREIGN, FOREIGN_KEPT, PURGED)
        }
        moved = exact_decimal(exact_sum(c.moved for c in done))
        summary = {
            "window": window.label,
            "basis": basis,
            "hours_checked": len(checks),
            **counts,
            "hours_changed": [hour_label(c.hour) for c in done],
            "purged_at_source": [hour_label(c.hour) for c in checks if c.status == PURGED],
            "foreign_kept": [hour_label(c.hour) for c in checks if c.status == FOREIGN_KEPT],
            "usd_moved": moved,
        }
        self.log.info(
            "Reconciled %s (%s): %d hour(s) checked, %d match, %d repaired, %d cleared, %d with foreign data "
            "removed, %d with foreign data kept (remove_foreign is off), %d purged at source; %s USD moved",
            window, basis, len(checks), counts[MATCHES], counts[REPAIRED], counts[CLEARED], counts[FOREIGN],
            counts[FOREIGN_KEPT], counts[PURGED], moved,
        )  # fmt: skip
        if failures:
            message = (
                f"Reconciled {len(done)} hour(s) but could not repair or read {len(failures)}: "
                + "; ".join(failures)
            )
            if outcome.retry_after:
                from cloudzero_provider.hooks.cloudzero import CloudZeroTransientError

                raise CloudZeroTransientError(message, retry_after=outcome.retry_after)
            raise (AirflowException if retryable else AirflowFailException)(message)
        return summary
