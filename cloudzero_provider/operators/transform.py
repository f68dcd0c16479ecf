"""Transform a staged window into validated CBF rows, reconciled exactly with the source."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloudzero_provider.operators.base import CloudZeroBaseOperator
from cloudzero_provider.pipeline import DEFAULT_MAX_VALUES_PER_HOUR, transform_window

if TYPE_CHECKING:
    from airflow.sdk import Context


class CBFTransformOperator(CloudZeroBaseOperator):
    """
    Turn the window's aggregated spend (``extract.jsonl``) into CBF rows (``cbf.jsonl``).

    Every row is validated against CloudZero's OpenAPI patterns. The task then reconciles: for every hour, the
    sum of ``cost/cost`` must equal PostgreSQL's ``SUM(spend::numeric)`` of that hour's source rows exactly, or
    it fails naming the hour and both figures. It reads the stage of the same export target and window as the
    extract (same ``cloudzero_conn_id``, ``staging_uri``, ``staging_area`` and window arguments).

    :param max_values_per_hour: Distinct values per hour of a dimension an LLM caller chooses (``end_user``,
        request tags) before the rest are folded into ``(other)``, cost and all; 0 or ``None``: no cap.
    """

    ui_color = "#fdf3e8"

    def __init__(
        self, *, max_values_per_hour: int | None = DEFAULT_MAX_VALUES_PER_HOUR, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.max_values_per_hour = max_values_per_hour

    def execute(self, context: Context) -> dict[str, Any]:
        window = self.window(context)
        return transform_window(
            window, self.stage(window), max_values_per_hour=self.max_values_per_hour or None
        )
