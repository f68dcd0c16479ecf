"""Spend reports (CSV, JSON, HTML with charts) and threshold checks, from the same aggregate as the export."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.dimensions import resolve
from cloudzero_provider.hooks.litellm import AggregateRow
from cloudzero_provider.json_lines import decode_lines
from cloudzero_provider.operators.base import CloudZeroStagingOperator
from cloudzero_provider.report_figures import (
    REPORT_DIMENSIONS,
    build_report,
    check_limits,
    report_csv,
    report_html,
)
from cloudzero_provider.staging import write_atomically, write_lines_atomically

if TYPE_CHECKING:
    from airflow.sdk import Context

TREND_DAYS = 14


class SpendReportOperator(CloudZeroStagingOperator):
    """
    Write a spend report for a window (by default the run's day): by team, customer, API key alias, internal
    user, model and request tag, each with a per-model breakdown, daily totals and cost per 1,000 tokens per
    model, as ``report.json``, one CSV per grouping and a self-contained ``report.html`` with charts, in
    ``<staging>/<cloudzero conn id>/reports/<day>/``. Figures come from the same PostgreSQL aggregate as the
    export.

    :param tag_prefixes: Request-tag prefixes to report on (``taskName`` for ``taskName:...`` tags).
    """

    ui_color = "#eafaf1"

    def __init__(self, *, tag_prefixes: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tag_prefixes = tag_prefixes

    def execute(self, context: Context) -> dict[str, Any]:
        window = self.window(context)
        prefixes = list(self.tag_prefixes or [])
        try:
            dims = resolve(REPORT_DIMENSIONS + [f"tag:{p}" for p in prefixes])
        except ValueError as exc:
            raise AirflowFailException(f"Invalid tag prefix: {exc}") from None
        folder = self.target.report_dir(window)
        folder.mkdir(parents=True, exist_ok=True)
        # Streamed to the file and read back: memory never holds the day's groups (their number is the callers').
        aggregate = folder / "aggregate.jsonl"
        write_lines_atomically(
            aggregate,
            (
                (json.dumps(r.as_dict()) + "\n").encode("utf-8")
                for r in self.litellm_hook.aggregate(window, dims)
                if isinstance(r, AggregateRow)
            ),
        )
        with aggregate.open("rb") as fh:
            report = build_report(
                (AggregateRow.from_staged(row).as_row() for row in decode_lines(fh)), tag_prefixes=prefixes
            )
        write_atomically(folder / "report.json", json.dumps(report, indent=1).encode("utf-8"))
        for grouping in report["groups"]:
            write_atomically(
                folder / f"by_{grouping.replace(':', '_')}.csv", report_csv(report, grouping).encode("utf-8")
            )
        trend = self._trend(folder, report)
        title = f"LiteLLM spend {folder.name}"
        write_atomically(
            folder / "report.html", report_html(report, title=title, trend=trend).encode("utf-8")
        )
        totals = report["totals"]
        self.log.info(
            "Report %s: spend %s USD, %d requests, %d tokens, %d teams, %d customers -> %s",
            folder.name, totals["spend"], totals["requests"], totals["tokens"], len(report["groups"]["team"]),
            len(report["groups"]["customer"]), folder / "report.html",
        )  # fmt: skip
        return {"report": folder.name, **totals, "html": str(folder / "report.html")}

    @staticmethod
    def _trend(folder: Any, report: dict[str, Any]) -> list[tuple[str, Decimal]]:
        """This report's days plus the daily totals of the previous reports beside it."""
        points = {d["day"]: Decimal(d["spend"]) for d in report["days"]}
        siblings = sorted((p for p in folder.parent.iterdir() if p.name != folder.name), key=lambda p: p.name)
        for sibling in siblings[-TREND_DAYS:]:
            path = sibling / "report.json"
            if path.exists():
                for day in json.loads(path.read_text(encoding="utf-8"))["days"]:
                    points.setdefault(day["day"], Decimal(day["spend"]))
        return sorted(points.items())[-TREND_DAYS:]


class SpendLimitsBreached(AirflowFailException):
    """Limits were crossed. Carries the breach list rendered for each alert channel (``html``, ``slack``), names
    escaped for that channel and the list capped, for notifier templates: ``{{ exception.html }}``."""

    def __init__(self, breaches: list[Any]) -> None:
        from cloudzero_provider import alerts

        self.breaches = breaches
        self.html = alerts.as_html(breaches)
        self.slack = alerts.as_slack(breaches)
        super().__init__(
            f"{len(breaches)} spend limit breach(es): "
            + alerts.as_text(breaches, cap=None).replace("\n", "; ")
        )


class SpendThresholdCheckOperator(CloudZeroStagingOperator):
    """
    Fail, listing every breach, when a day's spend is over a limit: ``daily_total`` and per ``team``, ``user``,
    ``customer`` or ``model``, in USD per day. At the limit is not a breach. Attach notifiers
    (``SmtpNotifier``, ``SlackNotifier``) with ``on_failure_callback`` to be told; no breach, no noise.

    Reads the ``aggregate.jsonl`` the report task of the same export target and window wrote.

    :param limits: e.g. ``{"daily_total": 500, "team": 100, "customer": 25}``.
    """

    ui_color = "#fdedec"

    def __init__(self, *, limits: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limits = limits

    def execute(self, context: Context) -> dict[str, Any]:
        window = self.window(context)
        path = self.target.report_dir(window) / "aggregate.jsonl"
        if not path.exists():
            raise AirflowFailException(f"{path} does not exist: run the report task for {window} first")
        rows = [
            AggregateRow.from_staged(json.loads(line)).as_row()
            for line in path.read_text(encoding="utf-8").splitlines()
            if line
        ]
        try:
            breaches = check_limits(rows, self.limits)
        except ValueError as exc:
            raise AirflowFailException(f"Spend limits: {exc}") from None
        if breaches:
            raise SpendLimitsBreached(breaches)
        self.log.info("No spend limit crossed in %s (limits %s)", window, self.limits)
        return {"breaches": 0, "limits": self.limits}
