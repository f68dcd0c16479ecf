"""Upload a staged window of CBF rows to CloudZero AnyCost Stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.drops import DEFAULT_MAX_REQUEST_BYTES
from cloudzero_provider.operators.base import CloudZeroBaseOperator, attempt_salt, emit_hour_events
from cloudzero_provider.pipeline import (
    check_dry_run_limit,
    dry_run_window,
    extract_window,
    transform_window,
    upload_window,
)
from cloudzero_provider.windows import Window

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context


def as_bool(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def as_limit(value: Any) -> int | None:
    return int(value) if value not in (None, "", "None") else None


class AnyCostUploadOperator(CloudZeroBaseOperator):
    """
    Send the window's CBF rows to a CloudZero AnyCost Stream connection and write a manifest per hour.

    Whole hours go with ``replace_hourly``, so re-running a window replaces and never double-counts; an hour too
    large for one request goes as a ``replace_hourly`` chunk followed by ``sum`` chunks, and any retry restarts
    it from its first chunk. Run uploads through a one-slot pool per CloudZero connection: CloudZero forbids
    concurrent requests to one stream.

    :param dry_run: Send nothing; write the exact request bodies to ``requests/`` and return what would be sent
        (records, total cost, total tokens, accounts, services). (templated)
    :param limit: Dry run only: preview the first N records. A real export always sends whole hours. (templated)
    :param max_request_bytes: Upper bound of one request's exact body (CloudZero's limit is 5 MB).
    :param hour_asset: Asset that gets one event per exported hour, through the AssetAlias in ``outlets``.
    :param origin: The source of the rows (``spend_logs`` or a daily rollup, as given to the extract): a UTC day
        of a stream belongs to one source, and an upload never writes into a day another source owns.
    :param take_over: Switch the window's days to ``origin``, clearing the other source's hours. (templated)
    :param skip_unchanged: Do not send an hour again whose manifest records exactly these rows as exported, so a
        retry or a repeated range redoes only what CloudZero does not hold yet.

    Hours the extract isolated as failed (``isolate_hours``) are not sent: every other hour is, then the task
    fails naming each failed hour and why.
    """

    # ``dry_run`` is stored as ``dry_run_only``: BaseOperator already has a ``dry_run()`` method.
    template_fields: Sequence[str] = (
        *CloudZeroBaseOperator.template_fields,
        "dry_run_only",
        "limit",
        "take_over",
    )
    ui_color = "#e9f7ef"

    def __init__(
        self,
        *,
        dry_run: bool | str = False,
        limit: int | str | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        hour_asset: Asset | None = None,
        skip_unchanged: bool = False,
        origin: str = "spend_logs",
        take_over: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.skip_unchanged = skip_unchanged
        self.origin = origin
        self.take_over = take_over
        self.dry_run_only = dry_run
        self.limit = limit
        self.max_request_bytes = max_request_bytes
        self.hour_asset = hour_asset

    def execute(self, context: Context) -> dict[str, Any]:
        window = self.window(context)
        dry_run, limit = as_bool(self.dry_run_only), as_limit(self.limit)
        check_dry_run_limit(dry_run, limit)
        if dry_run:
            return dry_run_window(window, self.stage, limit=limit, max_request_bytes=self.max_request_bytes)
        result = upload_window(
            self.cloudzero_hook,
            window,
            self.stage(window),
            self.target.manifests,
            max_request_bytes=self.max_request_bytes,
            salt=attempt_salt(context),
            skip_unchanged=self.skip_unchanged,
            origin=self.origin,
            take_over=as_bool(self.take_over),
        )
        ti = context.get("ti")
        if result["failed_hours"] and getattr(ti, "try_number", 1) > 1:
            result = self._retry_failed_hours(window, result, attempt_salt(context))
        emit_hour_events(self.outlets, context, result["hours"], {"window": window.label}, self.hour_asset)
        if result["failed_hours"]:
            failed = result["failed_hours"]
            raise AirflowFailException(
                f"{window}: exported {len(result['hours'])} hour(s), {len(result['unchanged'])} already held; "
                f"{len(failed)} hour(s) failed and were not sent: "
                + "; ".join(f"{hour}: {why}" for hour, why in failed.items())
                + ". Fix the rows (or use on_invalid=quarantine), then clear this task: it reads those hours "
                "again from the source and sends only what CloudZero does not hold yet."
            )
        return result

    def _retry_failed_hours(self, window: Window, result: dict[str, Any], salt: str) -> dict[str, Any]:
        """A retry or a clear of this task: read the hours the extract isolated again from the source, one by
        one, and send those that are sound now (the rest of the window is already in CloudZero)."""
        window_stage = self.stage(window)
        extract = window_stage.read_json("extract.json")
        recorded = window_stage.read_json("transform.json")
        still: dict[str, str] = {}
        for label in result["failed_hours"]:
            hour_window = Window.hour(label)
            stage = self.stage(hour_window, area="retry")
            try:
                extract_window(self.litellm_hook, hour_window, stage, dimensions=extract["dimensions"],
                               source=extract["source"], on_invalid="fail")  # fmt: skip
                transform_window(hour_window, stage, max_values_per_hour=recorded.get("max_values_per_hour"))
                sent = upload_window(
                    self.cloudzero_hook, hour_window, stage, self.target.manifests,
                    max_request_bytes=self.max_request_bytes, salt=salt + "/retry", origin=self.origin,
                )  # fmt: skip
            except AirflowFailException as exc:
                self.log.warning("%s still cannot be exported: %s", label, exc)
                still[label] = str(exc)
                continue
            self.log.info("%s is sound now and was exported (%s USD)", label, sent["cost"])
            result["hours"] = sorted({*result["hours"], *sent["hours"]})
        return {**result, "failed_hours": still, "retried": sorted(set(result["failed_hours"]) - set(still))}
