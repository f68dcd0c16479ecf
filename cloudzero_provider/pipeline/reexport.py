"""The one re-export recipe: hours read again from the source, each alone, through extract -> transform -> upload.

A retried or cleared upload (the hours its extract isolated), the late-data pass (hours whose source moved) and
reconciliation (hours CloudZero holds wrong) all call :func:`reexport_hours`; every hour is tried, and the outcome
says what was done, what failed and whether a retry can help, so each caller only decides what to tell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from cloudzero_provider.hooks.cloudzero import CloudZeroHook, CloudZeroTransientError
from cloudzero_provider.hooks.litellm import LiteLLMSpendHook
from cloudzero_provider.manifests import DAILY_ORIGINS, SPEND_LOGS, Attempt, ManifestStore
from cloudzero_provider.options import ExportOptions
from cloudzero_provider.pipeline.extract import extract_window
from cloudzero_provider.pipeline.transform import transform_window
from cloudzero_provider.pipeline.upload import upload_window
from cloudzero_provider.staging import WindowStage
from cloudzero_provider.windows import Window, hour_label

log = logging.getLogger(__name__)


@dataclass
class ReexportOutcome:
    """What a re-export did.

    :param done: Hours CloudZero acknowledged, with the cost sent (exact decimal string).
    :param failed: Hours that could not be re-exported, with why.
    :param retryable: Whether some failure may pass on a retry (CloudZero unavailable, not bad data).
    :param retry_after: The longest wait CloudZero asked for, if any (see :class:`RetryAfterPolicy`).
    """

    done: dict[datetime, str] = field(default_factory=dict)
    failed: dict[datetime, str] = field(default_factory=dict)
    retryable: bool = False
    retry_after: float | None = None

    def failure_lines(self) -> str:
        """``<hour>: <why>`` of every failed hour, oldest first."""
        return "; ".join(f"{hour_label(h)}: {why}" for h, why in sorted(self.failed.items()))

    def error(self, message: str) -> AirflowException:
        """The exception to fail with: one that makes Airflow wait what CloudZero asked, a retry when one can
        help, else ``AirflowFailException``."""
        if self.retry_after:
            return CloudZeroTransientError(message, retry_after=self.retry_after)
        return (AirflowException if self.retryable else AirflowFailException)(message)


def reexport_hours(
    litellm: LiteLLMSpendHook,
    cloudzero: CloudZeroHook,
    manifests: ManifestStore,
    hours: Sequence[datetime],
    *,
    stage_of: Callable[[Window], WindowStage],
    options: ExportOptions,
    attempt: Attempt,
    source: str = SPEND_LOGS,
    late_correction: bool = True,
    why: Callable[[datetime], str] | None = None,
    lower_purged: bool = False,
) -> ReexportOutcome:
    """
    Export each hour again from the source, alone: extract, transform, upload. Every hour is tried. With a daily
    rollup ``source`` each hour is a day's 00:00, read again as its whole day.

    :param stage_of: Where an hour is staged (a pass's own area, so it never shares files with another run).
    :param options: The export's options (dimensions, invalid-row policy, value cap, request size).
    :param attempt: The task attempt, named in idempotency keys and manifests.
    :param why: Why each hour is re-exported, for the log.
    :param lower_purged: Lower hours LiteLLM's retention may have purged too (see :func:`upload_window`): for a
        caller that decided with its own purge guard (reconciliation).
    """
    outcome = ReexportOutcome()
    for hour in hours:
        # A daily rollup's rows sit at its day's 00:00 and are read a whole day at a time.
        window = Window.day(hour) if source in DAILY_ORIGINS else Window.hour(hour)
        if why is not None:
            log.warning("Re-exporting %s: %s", window.label, why(hour))
        stage = stage_of(window)
        try:
            extract_window(litellm, window, stage, options=options, source=source)
            transform_window(
                window, stage, max_values_per_hour=options.value_cap, max_rows_per_hour=options.row_cap
            )
            result = upload_window(cloudzero, window, stage, manifests, max_request_bytes=options.max_request_bytes,
                                   attempt=attempt, late_correction=late_correction, origin=source,
                                   lower_purged=lower_purged)  # fmt: skip
        except AirflowException as exc:
            outcome.retryable = outcome.retryable or not isinstance(exc, AirflowFailException)
            wait = getattr(exc, "retry_after", None)
            if wait:
                outcome.retry_after = max(outcome.retry_after or 0.0, float(wait))
            outcome.failed[hour] = str(exc)
            log.error("Could not re-export %s: %s", window.label, exc)
            continue
        if result.hours:
            outcome.done[hour] = result.cost
    return outcome
