"""Upload a staged window of CBF rows to CloudZero AnyCost Stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Asset, BaseOperator

from cloudzero_provider.drops import DEFAULT_MAX_REQUEST_BYTES
from cloudzero_provider.hooks.cloudzero import CloudZeroHook
from cloudzero_provider.operators._assets import emit_hour_events
from cloudzero_provider.operators._window import resolve_window
from cloudzero_provider.pipeline import upload_window
from cloudzero_provider.staging import WindowStage


def attempt_salt(context: Any) -> str:
    """Names this attempt (run id and try number) for idempotency keys: stable across in-task retries only."""
    ti = context.get("ti") if hasattr(context, "get") else None
    run_id = context.get("run_id", "adhoc") if hasattr(context, "get") else "adhoc"
    return f"{run_id}/{getattr(ti, 'map_index', -1)}/{getattr(ti, 'try_number', 0)}"


class AnyCostUploadOperator(BaseOperator):
    """
    Send the window's CBF rows to a CloudZero AnyCost Stream connection and write a manifest per hour.

    Whole hours go with ``replace_hourly``, so re-running a window replaces and never double-counts; an hour too
    large for one request goes as a ``replace_hourly`` chunk followed by ``sum`` chunks, and any retry restarts
    it from its first chunk. Run uploads through a one-slot pool per CloudZero connection: CloudZero forbids
    concurrent requests to one stream.

    :param cloudzero_conn_id: The ``cloudzero`` connection.
    :param window_start: Start of the window; default: the data interval.
    :param window_end: End of the window; default: one hour after ``window_start``.
    :param staging_uri: Staging root, as given to the extract.
    :param stream: Staging sub-folder, as given to the extract.
    :param dry_run: Send nothing; write the exact request bodies to ``requests/`` and return what would be sent
        (records, total cost, total tokens, accounts, services).
    :param limit: Dry run only: preview the first N records. A real export always sends whole hours.
    :param max_request_bytes: Upper bound of one request's exact body (CloudZero's limit is 5 MB).
    :param hour_asset: Asset that gets one event per exported hour, through the AssetAlias in ``outlets``.
    """

    # ``dry_run`` is stored as ``dry_run_only``: BaseOperator already has a ``dry_run()`` method.
    template_fields: Sequence[str] = ("window_start", "window_end", "staging_uri", "dry_run_only", "limit")
    ui_color = "#e9f7ef"

    def __init__(
        self,
        *,
        cloudzero_conn_id: str = CloudZeroHook.default_conn_name,
        window_start: Any = None,
        window_end: Any = None,
        staging_uri: str | None = None,
        stream: str = "cloudzero_default",
        dry_run: bool | str = False,
        limit: int | str | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        hour_asset: Asset | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cloudzero_conn_id = cloudzero_conn_id
        self.window_start = window_start
        self.window_end = window_end
        self.staging_uri = staging_uri
        self.stream = stream
        self.dry_run_only = dry_run
        self.limit = limit
        self.max_request_bytes = max_request_bytes
        self.hour_asset = hour_asset

    def execute(self, context: Any) -> dict[str, Any]:
        window = resolve_window(self.window_start, self.window_end, context)
        dry_run = str(self.dry_run_only).lower() in ("true", "1", "yes")
        limit = int(self.limit) if self.limit not in (None, "", "None") else None
        hook = None if dry_run else CloudZeroHook(self.cloudzero_conn_id)
        result = upload_window(
            hook, window, WindowStage(self.staging_uri, window, self.stream), dry_run=dry_run, limit=limit,
            max_request_bytes=self.max_request_bytes, salt=attempt_salt(context), log=self.log,
        )  # fmt: skip
        if not dry_run:
            emit_hour_events(
                self.outlets, context, result["hours"], {"window": window.label}, self.hour_asset
            )
        return result
