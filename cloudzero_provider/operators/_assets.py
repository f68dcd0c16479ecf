"""Asset events: one per exported hour, so other DAGs (reports, telemetry) can follow the export."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset


def emit_hour_events(outlets: list[Any], context: Any, hours: list[str], extra: dict[str, Any]) -> None:
    """Attach the exported hours as partition keys: Airflow records one event per hour on each Asset outlet."""
    events = context.get("outlet_events") if hasattr(context, "get") else None
    if not hours or events is None:
        return
    for outlet in outlets:
        if isinstance(outlet, Asset):
            accessor = events[outlet]
            accessor.add_partitions(hours)
            accessor.extra = extra
