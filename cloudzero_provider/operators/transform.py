"""Transform a staged window into validated CBF rows, reconciled exactly with the source."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloudzero_provider.operators.base import ExportStepOperator
from cloudzero_provider.pipeline.transform import transform_window

if TYPE_CHECKING:
    from airflow.sdk import Context


class CBFTransformOperator(ExportStepOperator):
    """
    Turn the window's aggregated spend (``extract.jsonl``) into CBF rows (``cbf.jsonl``).

    Every row is validated against CloudZero's OpenAPI patterns. The task then reconciles: for every hour, the
    sum of ``cost/cost`` must equal PostgreSQL's ``SUM(spend::numeric)`` of that hour's source rows exactly, or
    it fails naming the hour and both figures. It reads the stage of the same export target and window as the
    extract (same ``cloudzero_conn_id``, ``staging_uri``, ``staging_area`` and window arguments). Values LLM
    callers choose are capped at the options' ``max_values_per_hour`` per hour, the rest folded into ``(other)``.
    Rows the extract of a daily rollup built as it read are taken as built when they were built from the
    ``extract.jsonl`` there now, with these caps, and still reconcile with ``extract.json``.
    """

    ui_color = "#fdf3e8"

    def execute(self, context: Context) -> dict[str, Any]:
        window = self.window(context)
        return transform_window(window, self.stage(window), max_values_per_hour=self.options.value_cap,
                                max_rows_per_hour=self.options.row_cap)  # fmt: skip
