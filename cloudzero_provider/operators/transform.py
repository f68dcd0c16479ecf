"""Transform a staged window into validated CBF rows, reconciled to the cent -- and far below it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.cbf import EXACT, CBFError, exact_decimal, exact_sum, transform
from cloudzero_provider.dimensions import resolve
from cloudzero_provider.operators._window import resolve_window
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
        stream: str = "default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.window_start = window_start
        self.window_end = window_end
        self.staging_uri = staging_uri
        self.stream = stream

    def execute(self, context: Any) -> dict[str, Any]:
        window = resolve_window(self.window_start, self.window_end, context)
        stage = WindowStage(self.staging_uri, window, self.stream)
        extract = stage.read_json("extract.json")
        dims = resolve(extract["dimensions"])
        cost: dict[str, Decimal] = defaultdict(Decimal)
        tokens: dict[str, int] = defaultdict(int)
        rows: dict[str, int] = defaultdict(int)

        def cbf_rows() -> Iterator[dict[str, str]]:
            for row in transform(stage.read_jsonl("extract.jsonl"), dims):
                hour = row["time/usage_start"]
                cost[hour] = EXACT.add(cost[hour], Decimal(row["cost/cost"]))
                tokens[hour] += int(row["usage/amount"])
                rows[hour] += 1
                yield row

        try:
            written = stage.write_jsonl("cbf.jsonl", cbf_rows())
        except CBFError as exc:
            stage.remove("cbf.jsonl")
            raise AirflowFailException(f"Window {window}: {exc}") from None
        mismatches = []
        for hour in sorted(set(cost) | set(extract["hours"])):
            source = Decimal(extract["hours"].get(hour, {}).get("spend", "0"))
            if cost.get(hour, Decimal(0)) != source:
                mismatches.append(
                    f"hour {hour}: CBF cost/cost sums to {exact_decimal(cost.get(hour, Decimal(0)))} but "
                    f"SUM(spend::numeric) of its source rows is {exact_decimal(source)}"
                )
        if mismatches:
            stage.remove("cbf.jsonl")
            raise AirflowFailException(
                f"Window {window} does not reconcile, nothing will be uploaded: " + "; ".join(mismatches)
            )
        total = exact_decimal(exact_sum(cost.values()))
        hours = {
            h: {"rows": rows[h], "cost": exact_decimal(cost[h]), "tokens": tokens[h]} for h in sorted(rows)
        }
        stage.write_json("transform.json", {"rows": written, "cost": total, "hours": hours})
        self.log.info(
            "Transformed %s: %d CBF rows over %d hour(s), cost %s USD, %d tokens -- reconciled exactly with "
            "the source", window, written, len(hours), total, sum(tokens.values()),
        )  # fmt: skip
        return {
            "window": window.label,
            "path": str(stage.path("cbf.jsonl")),
            "rows": written,
            "cost": total,
            "tokens": sum(tokens.values()),
            "hours": len(hours),
        }
