"""Wait until an hour has settled (its late spend-log rows have landed), deferring only when there is a wait."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
from airflow.sdk import timezone

from cloudzero_provider.windows import parse_instant

if TYPE_CHECKING:
    from airflow.sdk import Context


class SettledSensor(DateTimeSensorAsync):
    """
    Succeed once ``target_time`` has passed: at once when it already has, deferred (no worker slot held) when
    it lies ahead.

    Why not plain ``DateTimeSensorAsync``: it always defers, and for a target already past the trigger fires at
    once, so the task resumes in a new process while the scheduler may still be handling the first one's exit;
    under a real scheduler that race marks a healthy run failed (seen in catchup, about 1 run in 20). Checking
    first means an hour long past -- every catchup and backfill run -- never defers at all. When it does defer,
    the trigger ends the task itself (``end_from_trigger``), so no second worker process is started either.

    :param target_time: The moment after which the task succeeds. (templated)
    """

    def __init__(self, *, end_from_trigger: bool = True, **kwargs: Any) -> None:
        super().__init__(end_from_trigger=end_from_trigger, **kwargs)

    def execute(self, context: Context) -> None:  # type: ignore[override]
        moment = parse_instant(self.target_time, what="target_time")
        now = timezone.utcnow()
        if now >= moment:
            self.log.info("Target time %s has passed (now %s): nothing to wait for", moment, now)
            return None
        self.log.info("Waiting until %s (deferred; no worker slot is held)", moment)
        super().execute(context)
