"""Is the export current? A cheap check of the newest exported hour against now, told once per episode."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cloudzero_provider.notify import Channels, lag_notice, send
from cloudzero_provider.operators.base import CloudZeroStagingOperator
from cloudzero_provider.staging import write_atomically
from cloudzero_provider.windows import HOUR, floor_hour, iso_hour, iso_instant, utc_now

if TYPE_CHECKING:
    from airflow.sdk import Context

LOOK_BACK = 24 * 400  # manifests looked at, newest first, to find the newest exported hour


class ExportLagCheckOperator(CloudZeroStagingOperator):
    """
    Tell a human when the newest hour the export holds lags more than ``max_lag_hours`` behind now: once when
    the export falls behind, again only after it caught up and fell behind anew (the state is kept in
    ``<target>/alerts/lag.json``). One listing of the manifests and a read of the newest ones; no sensor.

    :param max_lag_hours: Hours the newest exported hour may lag. (templated)
    :param channels: Where the notice goes (no channels: the check only logs).
    """

    template_fields: Sequence[str] = (*CloudZeroStagingOperator.template_fields, "max_lag_hours")
    ui_color = "#fef5e7"

    def __init__(
        self, *, max_lag_hours: int | str = 6, channels: Channels | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.max_lag_hours = max_lag_hours
        self.channels = channels or Channels()

    def execute(self, context: Context) -> dict[str, Any]:
        now = utc_now()
        newest = self.target.manifests.newest_held(LOOK_BACK)
        lag = (now - (newest + HOUR)) if newest else None
        limit = timedelta(hours=int(self.max_lag_hours))
        lagging = lag is None or lag > limit
        state_path = self.target.dir / "alerts" / "lag.json"
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            state = {}
        told = False
        lag_hours = lag.total_seconds() / 3600 if lag is not None else float("inf")
        if lagging and not state.get("lagging"):
            told = send(self.channels, lag_notice(self.cloudzero_conn_id, iso_hour(newest) if newest else None,
                                                  lag_hours, int(self.max_lag_hours)), context) > 0  # fmt: skip
        if lagging != bool(state.get("lagging")):
            write_atomically(state_path, json.dumps({"lagging": lagging, "since": iso_instant(now),
                                                     "newest": iso_hour(newest) if newest else None}).encode())  # fmt: skip
        self.log.info("Newest exported hour %s; lag %.1f h (limit %s h)%s", iso_hour(newest) if newest else "none",
                      lag_hours, self.max_lag_hours, "; told" if told else "")  # fmt: skip
        return {
            "newest": iso_hour(newest) if newest else None,
            "lag_hours": None if lag is None else round(lag_hours, 2),
            "lagging": lagging,
            "told": told,
            "checked_at": iso_hour(floor_hour(now)),
        }
