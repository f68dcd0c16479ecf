"""Extract one window of LiteLLM spend, aggregated in PostgreSQL, into the window's staging folder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloudzero_provider.operators.base import ExportStepOperator
from cloudzero_provider.pipeline.extract import extract_window

if TYPE_CHECKING:
    from airflow.sdk import Context


class LiteLLMSpendExtractOperator(ExportStepOperator):
    """
    Aggregate a window of LiteLLM spend inside PostgreSQL and stage it for the CBF transform.

    One SQL statement groups the window's ``LiteLLM_SpendLogs`` rows by hour and the options' ``dimensions``
    (spend summed as ``numeric``) and also returns PostgreSQL's per-hour totals, which the transform reconciles
    against. Invalid rows (spend NULL/NaN/infinite/negative, negative tokens) fail the window with a message naming
    them, or are kept in ``quarantine.jsonl`` under the options' ``on_invalid="quarantine"``. Returns a small
    summary (path, rows, requests, tokens, spend) for XCom.

    A daily rollup is read a statement per day, pipelined in one snapshot, and its CBF rows are built as it is read
    (the transform's own build, with the options' caps), while PostgreSQL aggregates the next day: the transform
    then takes them as built, for as long as ``extract.jsonl`` holds the bytes they were built from.

    :param source: ``spend_logs`` (hourly) or ``daily_team`` / ``daily_user`` / ``daily_tag`` (LiteLLM's daily
        rollups).
    :param isolate_hours: With ``on_invalid="fail"``, fail only the hours holding invalid rows instead of the
        whole window: the upload sends the others, then fails naming them (the range DAG's chunks do this).

    The shared arguments (connections, staging, schema, window, options) are those of
    :class:`~cloudzero_provider.operators.base.ExportStepOperator`.
    """

    ui_color = "#e8f4fd"

    def __init__(self, *, source: str = "spend_logs", isolate_hours: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.isolate_hours = isolate_hours

    def execute(self, context: Context) -> dict[str, Any]:
        window = self.window(context)
        return extract_window(
            self.litellm_hook,
            window,
            self.stage(window),
            options=self.checked_options(),
            source=self.source,
            isolate_hours=self.isolate_hours,
        )
