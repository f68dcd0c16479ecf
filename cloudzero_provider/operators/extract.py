"""Extract one window of LiteLLM spend, aggregated in PostgreSQL, into the window's staging folder."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.cbf import exact_decimal, exact_sum
from cloudzero_provider.dimensions import names, resolve
from cloudzero_provider.hooks.litellm import AggregateRow, HourTotal, LiteLLMSpendHook
from cloudzero_provider.operators._window import resolve_window
from cloudzero_provider.staging import WindowStage

INVALID_POLICIES = ("fail", "quarantine")


def describe_invalid(hours: dict[str, HourTotal], table: str) -> str:
    parts = []
    for hour, ht in sorted(hours.items()):
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(ht.invalid.items()))
        parts.append(f"hour {hour}: {reasons} (e.g. {', '.join(map(str, ht.invalid_samples))})")
    total = sum(sum(ht.invalid.values()) for ht in hours.values())
    return f"{total} invalid {table} row(s) -- " + "; ".join(parts)


class LiteLLMSpendExtractOperator(BaseOperator):
    """
    Aggregate a window of LiteLLM spend inside PostgreSQL and stage it for the CBF transform.

    One SQL statement groups the window's ``LiteLLM_SpendLogs`` rows by hour and ``dimensions`` (spend summed
    as ``numeric``) and also returns PostgreSQL's per-hour totals, which the transform reconciles against.
    Returns a small summary (path, rows, requests, tokens, spend) for XCom.

    :param litellm_conn_id: Connection to the LiteLLM database.
    :param window_start: Start of the window (ISO-8601, hour-aligned, UTC); default: the data interval.
    :param window_end: End of the window (exclusive); default: one hour after ``window_start``.
    :param dimensions: Dimension names (see ``cloudzero_provider.dimensions``); ``None`` for the default set.
    :param source: ``spend_logs`` (hourly) or ``daily_team`` / ``daily_user`` (LiteLLM's daily rollups).
    :param on_invalid: ``fail`` (default): invalid rows (spend NULL/NaN/infinite/negative, negative tokens)
        fail the window with a message naming them; ``quarantine``: export the valid rows and write the
        invalid ones to ``quarantine.jsonl`` beside the staging data.
    :param staging_uri: Staging root (local folder or object-storage URI); default ``CLOUDZERO_STAGING_URI``
        or ``$AIRFLOW_HOME/cloudzero-staging``.
    :param stream: Sub-folder of the staging root, one per AnyCost connection.
    :param db_schema: PostgreSQL schema of LiteLLM's tables.
    """

    template_fields: Sequence[str] = ("window_start", "window_end", "dimensions", "on_invalid", "staging_uri")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        litellm_conn_id: str = LiteLLMSpendHook.default_conn_name,
        window_start: Any = None,
        window_end: Any = None,
        dimensions: list[str] | None = None,
        source: str = "spend_logs",
        on_invalid: str = "fail",
        staging_uri: str | None = None,
        stream: str = "default",
        db_schema: str = "public",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.litellm_conn_id = litellm_conn_id
        self.window_start = window_start
        self.window_end = window_end
        self.dimensions = dimensions
        self.source = source
        self.on_invalid = on_invalid
        self.staging_uri = staging_uri
        self.stream = stream
        self.db_schema = db_schema

    def execute(self, context: Any) -> dict[str, Any]:
        window = resolve_window(self.window_start, self.window_end, context)
        try:
            dims = resolve(self.dimensions)
        except ValueError as exc:
            raise AirflowFailException(f"Invalid dimensions: {exc}") from None
        if self.on_invalid not in INVALID_POLICIES:
            raise AirflowFailException(
                f"on_invalid must be one of {INVALID_POLICIES}, got {self.on_invalid!r}"
            )
        if self.source not in ("spend_logs", "daily_team", "daily_user"):
            raise AirflowFailException(
                f"source must be spend_logs, daily_team or daily_user, got {self.source!r}"
            )
        hook = LiteLLMSpendHook(postgres_conn_id=self.litellm_conn_id, db_schema=self.db_schema)
        stage = WindowStage(self.staging_uri, window, self.stream)
        stage.remove("extract.json")  # a failed re-run must not leave the previous run's summary behind
        hours: dict[str, HourTotal] = {}

        def rows() -> Iterator[dict[str, Any]]:
            for item in hook.aggregate(window, dims, self.source):  # type: ignore[arg-type]
                if isinstance(item, AggregateRow):
                    yield {"hour": item.hour, "dims": item.dims, **item.totals.as_dict()}
                else:
                    hours[item.hour] = item

        try:
            row_count = stage.write_jsonl("extract.jsonl", rows())
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        table = "LiteLLM_SpendLogs" if self.source == "spend_logs" else self.source
        bad_hours = {h: ht for h, ht in hours.items() if ht.invalid}
        invalid_rows = sum(sum(ht.invalid.values()) for ht in bad_hours.values())
        quarantine = None
        if bad_hours and self.on_invalid == "fail":
            raise AirflowFailException(
                f"Window {window}: {describe_invalid(bad_hours, table)}. Nothing was exported. Fix these rows in "
                "the LiteLLM database, or set on_invalid='quarantine' to export the valid rows and keep the "
                "invalid ones in quarantine.jsonl."
            )
        if bad_hours:
            written = stage.write_jsonl("quarantine.jsonl", hook.invalid_rows(window, self.source))  # type: ignore[arg-type]
            quarantine = str(stage.path("quarantine.jsonl"))
            self.log.warning(
                "Window %s: quarantined %d row(s) in %s -- %s", window, written, quarantine,
                describe_invalid(bad_hours, table),
            )  # fmt: skip
        else:
            stage.remove("quarantine.jsonl")
        requests = sum(ht.totals.requests for ht in hours.values())
        tokens = sum(ht.totals.total_tokens for ht in hours.values())
        spend = exact_decimal(exact_sum(ht.totals.spend for ht in hours.values()))
        stage.write_json(
            "extract.json",
            {
                "window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
                "source": self.source,
                "dimensions": names(dims),
                "rows": row_count,
                "hours": {
                    h: {**ht.totals.as_dict(), "invalid": ht.invalid, "invalid_samples": ht.invalid_samples}
                    for h, ht in sorted(hours.items())
                },
                "invalid_rows": invalid_rows,
                "quarantine": quarantine,
            },
        )
        self.log.info(
            "Extracted %s from %s: %d rows over %d hour(s), %d requests, %d tokens, spend %s USD, "
            "%d invalid row(s)%s",
            window, table, row_count, len(hours), requests, tokens, spend, invalid_rows,
            f" quarantined in {quarantine}" if quarantine else "",
        )  # fmt: skip
        return {
            "window": window.label,
            "path": str(stage.path("extract.jsonl")),
            "rows": row_count,
            "requests": requests,
            "tokens": tokens,
            "spend": spend,
            "invalid_rows": invalid_rows,
            "quarantine": quarantine,
        }
