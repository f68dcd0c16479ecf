"""Extract one window of LiteLLM spend, aggregated in PostgreSQL, into the window's staging folder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cloudzero_provider.operators.base import CloudZeroBaseOperator
from cloudzero_provider.pipeline import extract_window

if TYPE_CHECKING:
    from airflow.sdk import Context


def dimension_list(value: Sequence[str] | str | None) -> list[str] | None:
    """Dimensions as given to an operator: a list, or a comma-separated string (what a templated param gives)."""
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text in ("", "None"):
            return None
        return [d.strip() for d in text.split(",") if d.strip()]
    return list(value)


class LiteLLMSpendExtractOperator(CloudZeroBaseOperator):
    """
    Aggregate a window of LiteLLM spend inside PostgreSQL and stage it for the CBF transform.

    One SQL statement groups the window's ``LiteLLM_SpendLogs`` rows by hour and ``dimensions`` (spend summed
    as ``numeric``) and also returns PostgreSQL's per-hour totals, which the transform reconciles against.
    Returns a small summary (path, rows, requests, tokens, spend) for XCom.

    :param dimensions: Dimension names (see ``cloudzero_provider.dimensions``), as a list or a comma-separated
        string; ``None`` for the default set. (templated)
    :param source: ``spend_logs`` (hourly) or ``daily_team`` / ``daily_user`` (LiteLLM's daily rollups).
    :param on_invalid: ``fail`` (default): invalid rows (spend NULL/NaN/infinite/negative, negative tokens)
        fail the window with a message naming them; ``quarantine``: export the valid rows and write the
        invalid ones to ``quarantine.jsonl`` beside the staging data. (templated)
    :param isolate_hours: With ``on_invalid="fail"``, fail only the hours holding invalid rows instead of the
        whole window: the upload sends the others, then fails naming them (the range DAG's chunks do this).

    The shared arguments (connections, staging root, schema, window) are those of
    :class:`~cloudzero_provider.operators.base.CloudZeroBaseOperator`.
    """

    template_fields: Sequence[str] = (*CloudZeroBaseOperator.template_fields, "dimensions", "on_invalid")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        dimensions: Sequence[str] | str | None = None,
        source: str = "spend_logs",
        on_invalid: str = "fail",
        isolate_hours: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dimensions = dimensions
        self.source = source
        self.on_invalid = on_invalid
        self.isolate_hours = isolate_hours

    def execute(self, context: Context) -> dict[str, Any]:
        window = self.window(context)
        return extract_window(
            self.litellm_hook,
            window,
            self.stage(window),
            dimensions=dimension_list(self.dimensions),
            source=self.source,
            on_invalid=self.on_invalid,
            isolate_hours=self.isolate_hours,
        )
