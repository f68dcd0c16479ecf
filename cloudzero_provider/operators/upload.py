"""Upload a staged window of CBF rows to CloudZero AnyCost Stream."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.manifests import Attempt
from cloudzero_provider.operators.base import ExportStepOperator, attempt_of
from cloudzero_provider.pipeline.common import check_dry_run_limit
from cloudzero_provider.pipeline.dry_run import dry_run_window
from cloudzero_provider.pipeline.extract import read_extract
from cloudzero_provider.pipeline.reexport import reexport_hours
from cloudzero_provider.pipeline.transform import read_transform
from cloudzero_provider.pipeline.upload import UploadResult, upload_window
from cloudzero_provider.windows import Window, hour_label

if TYPE_CHECKING:
    from airflow.sdk import Context


def as_bool(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def as_limit(value: Any) -> int | None:
    return int(value) if value not in (None, "", "None") else None


class AnyCostUploadOperator(ExportStepOperator):
    """
    Send the window's CBF rows to a CloudZero AnyCost Stream connection and write a manifest per hour.

    Whole hours go with ``replace_hourly``, so re-running a window replaces and never double-counts; an hour too
    large for one request goes as a ``replace_hourly`` chunk followed by ``sum`` chunks, and any retry restarts
    it from its first chunk. Run uploads through a one-slot pool per CloudZero connection: CloudZero forbids
    concurrent requests to one stream. Each exported hour emits an event on the target's Asset through the
    :attr:`ExportTarget.alias` in ``outlets``.

    :param dry_run: Send nothing; write the exact request bodies to ``requests/`` and return what would be sent
        (records, total cost, total tokens, accounts, services). (templated)
    :param limit: Dry run only: preview the first N records. A real export always sends whole hours. (templated)
    :param origin: The source of the rows (``spend_logs`` or a daily rollup, as given to the extract): a UTC day
        of a stream belongs to one source, and an upload never writes into a day another source owns.
    :param take_over: Switch the window's days to ``origin``, clearing the other source's hours. (templated)
    :param skip_unchanged: Do not send an hour again whose manifest records exactly these rows as exported to this
        AnyCost connection, so a retry or a repeated range redoes only what CloudZero does not hold yet.
    :param lower_purged: Send spend-log hours at or before the oldest spend-log row left even where that lowers
        what was exported before (rows deleted on purpose). Off (the default): such hours may have been purged by
        LiteLLM's retention, and CloudZero keeps them as they are (``kept_purged``). (templated)

    Hours the extract isolated as failed (``isolate_hours``) are not sent: every other hour is, then the task
    fails naming each failed hour and why.
    """

    # ``dry_run`` is stored as ``dry_run_only``: BaseOperator already has a ``dry_run()`` method.
    template_fields: Sequence[str] = (
        *ExportStepOperator.template_fields,
        "dry_run_only",
        "limit",
        "take_over",
        "lower_purged",
    )
    ui_color = "#e9f7ef"

    def __init__(
        self,
        *,
        dry_run: bool | str = False,
        limit: int | str | None = None,
        skip_unchanged: bool = False,
        origin: str = "spend_logs",
        take_over: bool | str = False,
        lower_purged: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.skip_unchanged = skip_unchanged
        self.origin = origin
        self.take_over = take_over
        self.lower_purged = lower_purged
        self.dry_run_only = dry_run
        self.limit = limit

    def execute(self, context: Context) -> dict[str, Any]:
        window = self.window(context)
        options = self.checked_options()
        dry_run, limit = as_bool(self.dry_run_only), as_limit(self.limit)
        check_dry_run_limit(dry_run, limit)
        if dry_run:
            return dry_run_window(
                window, self.stage, limit=limit, max_request_bytes=options.max_request_bytes
            )
        result = upload_window(
            self.cloudzero_hook,
            window,
            self.stage(window),
            self.target.manifests,
            max_request_bytes=options.max_request_bytes,
            attempt=attempt_of(context),
            skip_unchanged=self.skip_unchanged,
            origin=self.origin,
            take_over=as_bool(self.take_over),
            lower_purged=as_bool(self.lower_purged),
        )
        ti = context.get("ti")
        retried: list[datetime] = []
        if result.failed_hours and getattr(ti, "try_number", 1) > 1:
            retried = self._retry_failed_hours(window, result, attempt_of(context))
        self.emit_hour_events(context, result.hours, {"window": window.label})
        summary = result.as_xcom()
        if result.failed_hours or retried:
            summary["retried"] = [hour_label(h) for h in retried]
        if result.failed_hours:
            failed = summary["failed_hours"]
            raise AirflowFailException(
                f"{window}: exported {len(result.hours)} hour(s), {len(result.unchanged)} already held; "
                f"{len(failed)} hour(s) failed and were not sent: "
                + "; ".join(f"{hour}: {why}" for hour, why in failed.items())
                + ". Fix the rows (or use on_invalid=quarantine), then clear this task: it reads those hours "
                "again from the source and sends only what CloudZero does not hold yet."
            )
        return summary

    def _retry_failed_hours(self, window: Window, result: UploadResult, attempt: Attempt) -> list[datetime]:
        """A retry or a clear of this task: read the hours the extract isolated again from the source, one by
        one, and send those that are sound now (the rest of the window is already in CloudZero). Updates
        ``result`` in place; returns the hours sent now."""
        stage = self.stage(window)
        extract, recorded = read_extract(stage), read_transform(stage)
        options = self.options.but(dimensions=extract.dimensions, on_invalid="fail",
                                   max_values_per_hour=recorded.max_values_per_hour,
                                   max_rows_per_hour=recorded.max_rows_per_hour)  # fmt: skip
        outcome = reexport_hours(
            self.litellm_hook, self.cloudzero_hook, self.target.manifests, sorted(result.failed_hours),
            stage_of=lambda w: self.stage(w, area="retry"), options=options, attempt=attempt.for_pass("retry"),
            source=extract.source, late_correction=False,
        )  # fmt: skip
        for hour, cost in outcome.done.items():
            self.log.info("%s is sound now and was exported (%s USD)", hour_label(hour), cost)
        for hour, why in outcome.failed.items():
            self.log.warning("%s still cannot be exported: %s", hour_label(hour), why)
        result.hours = sorted({*result.hours, *outcome.done})
        result.failed_hours = dict(sorted(outcome.failed.items()))
        return sorted(outcome.done)
