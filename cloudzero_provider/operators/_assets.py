"""Asset events: one per exported hour, so other DAGs (telemetry, your own) can follow the export."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, AssetAlias


def emit_hour_events(
    outlets: list[Any], context: Any, hours: list[str], extra: dict[str, Any], asset: Asset | None
) -> None:
    """
    One ordinary event per exported hour on ``asset`` (the hour in the event's extra, ``hour``), emitted through
    the task's AssetAlias outlets.

    Not partition keys: Airflow queues only partition-aware DAGs for partitioned events, so a DAG scheduled on
    the plain Asset -- the telemetry DAG, or one of yours -- would never run.
    """
    events = context.get("outlet_events") if hasattr(context, "get") else None
    if not hours or events is None or asset is None:
        return
    for outlet in outlets:
        if isinstance(outlet, AssetAlias):
            for hour in hours:
                events[outlet].add(asset, extra={**extra, "hour": hour})
