"""Airflow's retry of a task that CloudZero asked to wait: never earlier than its ``Retry-After``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

try:  # Airflow 3.3 and later; before it, Airflow's own exponential backoff applies
    from airflow.sdk.definitions.retry_policy import RetryDecision, RetryPolicy
except ImportError:  # pragma: no cover - older Airflow
    RetryPolicy = None  # type: ignore[assignment,misc]


def retry_after_of(exception: BaseException) -> float | None:
    """The wait CloudZero asked for that the failed task could not honour itself, if any."""
    value = getattr(exception, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


if RetryPolicy is not None:

    class RetryAfterPolicy(RetryPolicy):
        """
        When a task fails because CloudZero asked for a longer wait (``429`` with ``Retry-After``) than the hook
        may wait inside the task, Airflow's next try starts after that wait instead of the task's own
        ``retry_delay``. Every other failure keeps the task's retry settings. The retry count is unchanged.
        """

        def evaluate(
            self, exception: BaseException, try_number: int, max_tries: int, context: Any = None
        ) -> RetryDecision:
            wait = retry_after_of(exception)
            if wait is None:
                return RetryDecision.default()
            return RetryDecision.retry(
                delay=timedelta(seconds=wait),
                reason=f"CloudZero asked to wait {wait:.0f} s (Retry-After); the next try waits that long",
            )

        def serialize(self) -> dict[str, Any]:
            return {"__type": "RetryAfterPolicy"}

        @classmethod
        def deserialize(cls, data: dict[str, Any]) -> RetryAfterPolicy:
            return cls()


def retry_policy_args() -> dict[str, Any]:
    """``default_args`` that install :class:`RetryAfterPolicy` where this Airflow has retry policies."""
    return {"retry_policy": RetryAfterPolicy()} if RetryPolicy is not None else {}
