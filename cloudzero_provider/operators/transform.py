"""Transform a staged window into validated CBF rows, reconciled exactly with the source."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from cloudzero_provider.operators._window import resolve_window
from cloudzero_provider.pipeline import transform_window
from cloudzero_provider.staging import WindowStage


class CBFTransformOperator(BaseOperator):
    """
    Turn the window's aggregated spend (``extract.jsonl``) into CBF rows (``cbf.jsonl``).

    Every row is validated against CloudZero's OpenAPI patterns. The task then reconciles: for every hour, the
    sum of ``cost/cost`` must equal PostgreSQL's ``SUM(spend::numeric)`` of that hour's source rows exactly, or
    it fails naming the hour and both figures.

    :param window_start: Start of the window; default: the data interval.
    :param window_end: End of the window; default: one hour after ``window_start``.
    :param staging_uri: Staging root, as given to the extract.
    :param stream: Staging sub-folder, as given to the extract.
    """

    template_fields: Sequence[str] = ("window_start", "window_end", "staging_uri")
    ui_color = "#fdf3e8"

    def __init__(
        self,
        *,
        window_start: Any = None,
        window_end: Any = None,
        staging_uri: str | None = None,
        stream: str = "cloudzero_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.window_start = window_start
        self.window_end = window_end
        self.staging_uri = staging_uri
        self.stream = stream

    def execute(self, context: Any) -> dict[str, Any]:
        window = resolve_window(self.window_start, self.window_end, context)
        return transform_window(window, WindowStage(self.staging_uri, window, self.stream), log=self.log)
