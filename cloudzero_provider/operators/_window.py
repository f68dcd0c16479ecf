"""Resolve the window a task works on: explicit arguments first, then the run's data interval."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.windows import Window


def resolve_window(start: Any, end: Any, context: Any) -> Window:
    """
    The task's window ``[start, end)``.

    :param start: Explicit start (ISO-8601 string or datetime), or ``None`` to use the data interval.
    :param end: Explicit end; with a start and no end, the window is the one hour from ``start``.
    :param context: The task context, for ``data_interval_start`` / ``data_interval_end``.
    """
    try:
        if start:
            return Window.of(start, end) if end else Window.hour(start)
        interval_start = context.get("data_interval_start")
        interval_end = context.get("data_interval_end")
        if interval_start is None or interval_end is None or interval_start == interval_end:
            raise AirflowFailException(
                "No window to work on: this run has no data interval (a manual run without a logical date, or a "
                "zero-length interval from a cron schedule) and no window_start was given. Trigger the "
                "litellm_cloudzero_range DAG with start and end, or schedule with CronDataIntervalTimetable."
            )
        return Window.of(interval_start, interval_end)
    except ValueError as exc:
        raise AirflowFailException(f"Invalid window: {exc}") from None
