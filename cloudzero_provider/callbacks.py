"""Task callbacks of the ready DAGs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def mark_hours_failed(cloudzero_conn_id: str, staging_uri: str | None = None) -> Callable[[Any], None]:
    """
    An ``on_failure_callback`` that records the run's hours as ``failed`` in their manifests (unless they are
    already exported), so the ledger page shows a run that failed before sending anything as failed, not as
    "not yet", and the next run's late-data pass knows to export it.
    """

    def callback(context: Any) -> None:
        from cloudzero_provider.operators.base import attempt_of
        from cloudzero_provider.target import ExportTarget
        from cloudzero_provider.windows import Window

        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        if not start or not end or start == end:
            return
        try:
            window = Window.of(start, end)
            manifests = ExportTarget(cloudzero_conn_id, staging_uri).manifests
            ti = context.get("ti")
            reason = f"task {getattr(ti, 'task_id', '?')} failed: {context.get('exception') or 'see its log'}"
            for hour in window.hour_starts():
                # Checked at the moment of writing, under the manifest's compare-and-swap: an hour another run
                # (or this run's own upload) exported meanwhile is never flipped to failed.
                manifests.mark_failed_unless_exported(hour, attempt=attempt_of(context), reason=reason)
        except Exception:  # a callback must never hide the task's own failure
            log.exception("Could not record the failed hours of %s", context.get("run_id"))

    return callback
