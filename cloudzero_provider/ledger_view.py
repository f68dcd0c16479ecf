"""The ledger's view of a stream: what each hour's status means, the figures, the chart, the page and the
downloads. Pure: it imports nothing from Airflow and does no I/O (manifests arrive read and typed, runs as
:class:`RunInfo`).

Each status means one thing (:data:`STATUS_MEANING`); each hour links to the Airflow run or task instance that
decided it (an Airflow UI path, see :func:`ti_path`). Every value that reaches the page is escaped, every CSV cell
passes :func:`report_figures.csv_cell`, every text from a manifest is cut to :data:`MAX_TEXT` characters.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from cloudzero_provider.cbf import EXACT, exact_decimal
from cloudzero_provider.report_figures import csv_cell
from cloudzero_provider.windows import HOUR, day_label, day_start, iso_hour, iso_instant, parse_instant

if TYPE_CHECKING:
    from cloudzero_provider.manifests import Manifest

BEFORE_START = "before the export start"
NO_SPEND = "no spend"
NOT_YET_DUE = "not yet due"
LATE = "late"
RUNNING = "running"
EXPORTED = "exported"
LATE_CORRECTED = "late-corrected"
REPAIRED = "repaired"
PURGED = "purged at source"
FAILED = "failed"
DAILY_ROW = "daily rollup"
IN_DAILY = "in daily rollup"

STATUS_MEANING: dict[str, str] = {
    BEFORE_START: "before CLOUDZERO_EXPORT_START: the hourly export never runs for it",
    NO_SPEND: "checked: the source held no spend, nothing was sent",
    NOT_YET_DUE: "its run is not due yet (the hour has not ended, or its settle minutes have not passed)",
    LATE: "due, but no record and no run in flight: its run is overdue",
    RUNNING: "its run is queued or running",
    EXPORTED: "CloudZero acknowledged the hour's rows",
    LATE_CORRECTED: "exported, then exported again because rows landed late",
    REPAIRED: "reconciliation found CloudZero differing and re-exported or cleared the hour",
    PURGED: "the source lost the hour to LiteLLM's retention; CloudZero keeps its history",
    FAILED: "the last attempt failed; the reason says why, the link opens the attempt",
    DAILY_ROW: "the day's rows from LiteLLM's daily rollup, at 00:00",
    IN_DAILY: "counted in its day's daily-rollup rows at 00:00",
}
# Statuses that count as "waiting" on the headline: due, not in CloudZero, nothing failed yet.
WAITING = (LATE, RUNNING)
HELD = (EXPORTED, LATE_CORRECTED, REPAIRED, PURGED, NO_SPEND, DAILY_ROW, IN_DAILY)
IN_FLIGHT = ("queued", "running")
REPAIR_VERDICTS = ("repaired", "cleared", "foreign data removed")
PURGED_VERDICT = "purged at source"
MAX_TEXT = 2000  # characters of a reason or verdict shown; manifests may be hand-edited
SHORT_TEXT = 140
CENT = Decimal("0.01")


# -- inputs ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """One DAG run from Airflow's metadata DB: the export's run for an hour (or a day)."""

    dag_id: str
    run_id: str
    state: str

    @property
    def in_flight(self) -> bool:
        return self.state in IN_FLIGHT


@dataclass(frozen=True)
class Link:
    """An Airflow UI path (``/dags/...``, relative to Airflow's base URL) and what it names."""

    path: str
    label: str


def _seg(value: Any) -> str:
    """One path segment, percent-encoded; a segment of dots too, so a browser never reads it as ``..``."""
    text = quote(str(value), safe="")
    return text.replace(".", "%2E") if text.strip(".") == "" else text


def dag_path(dag_id: str) -> Link:
    return Link(f"/dags/{_seg(dag_id)}", dag_id)


def run_path(run: RunInfo) -> Link:
    return Link(
        f"/dags/{_seg(run.dag_id)}/runs/{_seg(run.run_id)}", f"{run.dag_id} / {run.run_id} ({run.state})"
    )


def ti_path(record: Mapping[str, Any] | None) -> Link | None:
    """The task instance a manifest's ``decided_by`` names (:meth:`Attempt.as_record`), as Airflow's UI routes
    it: ``/dags/<dag>/runs/<run>/tasks/<task>[/mapped/<index>]``, each segment percent-encoded. None when the
    record does not name a DAG run's task (an operator run outside a DAG)."""
    if not isinstance(record, Mapping):
        return None
    dag, run, task = (str(record.get(k) or "")[:500] for k in ("dag_id", "run_id", "task_id"))
    if not dag or not task or not run or run == "adhoc":
        return None
    try:
        index = int(record.get("map_index", -1))
    except (TypeError, ValueError):
        index = -1
    try:
        attempt = int(record.get("try_number") or 0)
    except (TypeError, ValueError):
        attempt = 0
    path = f"/dags/{_seg(dag)}/runs/{_seg(run)}/tasks/{_seg(task)}"
    label = f"{dag} / {run} / {task}"
    if index >= 0:
        path += f"/mapped/{index}"
        label += f" [{index}]"
    if attempt:
        label += f", try {attempt}"
    pass_name = str(record.get("pass") or "")[:100]
    if pass_name:
        label += f" ({pass_name} pass)"
    return Link(path, label)


def _text(value: Any) -> str:
    return str(value)[:MAX_TEXT] if value is not None else ""


def _decimal(value: Any) -> Decimal | None:
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError, TypeError):
        return None
    return number if number.is_finite() else None


def _instant(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return parse_instant(str(value)[:64])
    except (ValueError, OverflowError):
        return None


# -- one hour -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The last reconciliation's verdict on an hour, as its manifest records it."""

    status: str
    at: datetime | None
    run: str
    link: Link | None
    source: Decimal | None
    held: Decimal | None

    @classmethod
    def of(cls, record: Any) -> Verdict | None:
        if not isinstance(record, Mapping) or not record.get("status"):
            return None
        return cls(
            status=_text(record.get("status"))[:100],
            at=_instant(record.get("at")),
            run=_text(record.get("run"))[:500],
            link=ti_path(record.get("decided_by")),
            source=_decimal(record.get("source")),
            held=_decimal(record.get("held")),
        )

    @property
    def differed(self) -> bool:
        return self.source is not None and self.held is not None and self.source != self.held


@dataclass(frozen=True)
class LedgerHour:
    """One hour of a stream, as the ledger shows it."""

    hour: datetime
    status: str
    detail: str = ""
    link: Link | None = None
    rows: int | None = None
    source: Decimal | None = None
    sent: Decimal | None = None
    drops: int = 0
    sent_at: datetime | None = None
    verdict: Verdict | None = None

    @property
    def differs(self) -> bool:
        """Source and sent disagree: in the record itself, or when the last reconciliation compared them."""
        own = self.source is not None and self.sent is not None and self.source != self.sent
        return own or (self.verdict is not None and self.verdict.differed)

    def as_json(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "hour": iso_hour(self.hour),
            "status": self.status,
            "detail": self.detail,
            "rows": self.rows,
            "source_usd": None if self.source is None else exact_decimal(self.source),
            "sent_usd": None if self.sent is None else exact_decimal(self.sent),
            "differs": self.differs,
            "drops": self.drops,
            "sent_at": iso_instant(self.sent_at) if self.sent_at else None,
            "airflow_path": self.link.path if self.link else None,
            "reconciliation": None if v is None else {
                "status": v.status,
                "at": iso_instant(v.at) if v.at else None,
                "source_usd": None if v.source is None else exact_decimal(v.source),
                "held_usd": None if v.held is None else exact_decimal(v.held),
                "airflow_path": v.link.path if v.link else None,
            },
        }  # fmt: skip


def classify(
    hour: datetime,
    manifest: Manifest | None,
    run: RunInfo | None,
    *,
    now: datetime,
    export_start: datetime,
    due_at: datetime,
    daily_owner: str | None = None,
    day_manifest: Manifest | None = None,
    schedule_dag: str = "",
    daily_stream: bool = False,
) -> LedgerHour:
    """
    The status of one hour, each meaning one thing (:data:`STATUS_MEANING`), with the link to what decided it.

    :param manifest: The hour's record, or None. :param run: The export's run for the hour (its data interval
        starts at the hour; for a daily stream, the day), or None.
    :param due_at: When the hour's run is due: its end plus the settle minutes (a daily stream: the day's end).
    :param daily_owner: The daily-rollup origin that owns the hour's day in this stream, if one does.
    :param day_manifest: The record of the day's 00:00 (where a daily-rollup export writes the day).
    :param schedule_dag: The DAG whose runs export the hour: a late hour links to it.
    :param daily_stream: The stream gets only daily rows (the request-tag stream): a day its daily-rollup run read
        whole and found empty leaves no record (a daily record would claim the day), so its run's success says so.
    """
    figures = _figures(manifest)
    verdict = Verdict.of(manifest.reconcile) if manifest is not None else None
    if daily_owner and (manifest is None or manifest.origin == daily_owner or manifest.cleared):
        first = hour == day_start(hour)
        decider = day_manifest.decided_by if day_manifest is not None else None
        return LedgerHour(hour, DAILY_ROW if first else IN_DAILY, f"day owned by {daily_owner}",
                          ti_path(decider), verdict=verdict, **(figures if first else {}))  # fmt: skip
    if manifest is not None:
        decided = ti_path(manifest.decided_by) or (run_path(run) if run else None)
        if not manifest.exported:
            if run is not None and run.in_flight:
                why = _text(manifest.reason or manifest.unreadable)
                detail = f"run {run.state}" + (f"; the last attempt failed: {why}" if why else "")
                return LedgerHour(hour, RUNNING, detail, run_path(run), verdict=verdict, **figures)
            reason = _text(manifest.reason or manifest.unreadable) or (
                "the upload stopped part-way (status sending)" if manifest.status == "sending"
                else "no reason recorded"
            )  # fmt: skip
            return LedgerHour(hour, FAILED, reason, decided, verdict=verdict, **figures)
        if verdict is not None and verdict.status == PURGED_VERDICT:
            return LedgerHour(hour, PURGED, _verdict_detail(verdict), verdict.link or decided, verdict=verdict,
                              **figures)  # fmt: skip
        if verdict is not None and verdict.status in REPAIR_VERDICTS:
            return LedgerHour(hour, REPAIRED, _verdict_detail(verdict), verdict.link or decided,
                              verdict=verdict, **figures)  # fmt: skip
        # A verdict that found a difference and changed nothing (another writer's cost kept) is said, not hidden.
        said = _verdict_detail(verdict) if verdict is not None and verdict.differed else ""
        if manifest.empty and not manifest.was_sent:
            return LedgerHour(hour, NO_SPEND, said, decided, verdict=verdict, **figures)
        if manifest.late_corrections > 0:
            detail = f"corrected {manifest.late_corrections} time(s) after its first export"
            return LedgerHour(hour, LATE_CORRECTED, "; ".join(filter(None, [detail, said])), decided,
                              verdict=verdict, **figures)  # fmt: skip
        return LedgerHour(hour, EXPORTED, said, decided, verdict=verdict, **figures)
    if hour < export_start:
        return LedgerHour(hour, BEFORE_START)
    if run is not None and run.in_flight:
        return LedgerHour(hour, RUNNING, f"run {run.state}", run_path(run))
    if now < due_at:
        return LedgerHour(hour, NOT_YET_DUE, f"due at {due_at:%Y-%m-%d %H:%M} UTC")
    if run is not None and daily_stream and run.state == "success" and day_manifest is None:
        return LedgerHour(
            hour, NO_SPEND, "its daily-rollup run read the day and found no rows", run_path(run)
        )
    if run is not None:
        return LedgerHour(hour, LATE, f"its run ended {run.state} without a record", run_path(run))
    return LedgerHour(hour, LATE, f"due since {due_at:%Y-%m-%d %H:%M} UTC, no run yet",
                      dag_path(schedule_dag) if schedule_dag else None)  # fmt: skip


def _figures(manifest: Manifest | None) -> dict[str, Any]:
    if manifest is None or manifest.unreadable:
        return {}
    sent = manifest.exported or manifest.was_sent
    return {
        "rows": manifest.rows if manifest.was_sent else 0 if manifest.exported else None,
        "source": _decimal(manifest.source.spend) if manifest.source is not None else None,
        "sent": _decimal(manifest.cost) if sent else None,
        "drops": len(manifest.drop_ids),
        "sent_at": manifest.sent_at,
    }


def _verdict_detail(verdict: Verdict) -> str:
    detail = verdict.status
    if verdict.source is not None and verdict.held is not None:
        detail += f": source {money(verdict.source)} USD, CloudZero held {money(verdict.held)} USD"
    return detail


# -- figures --------------------------------------------------------------------------------------------


def money(value: Decimal | None) -> str:
    """An amount to the cent with thousands separators (``12,388.33``); ``<0.01`` for a non-zero amount under
    half a cent, so a tiny cost never reads as nothing; ``""`` for none."""
    if value is None:
        return ""
    if value != 0 and abs(value) < Decimal("0.005"):
        return "<0.01" if value > 0 else ">-0.01"
    return f"{value.quantize(CENT, rounding=ROUND_HALF_UP):,.2f}"


def span(delta: timedelta) -> str:
    """``45 min``, ``3 h 10 min``, ``31 days 4 h``: a lag as a reader says it."""
    minutes = max(0, int(delta.total_seconds() // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} day{'s' if days != 1 else ''} {hours} h"
    if hours:
        return f"{hours} h {mins} min"
    return f"{mins} min"


def _sum(values: Sequence[Decimal]) -> Decimal:
    total = Decimal(0)
    for v in values:
        total = EXACT.add(total, v)
    return total


@dataclass(frozen=True)
class DayTotal:
    day: datetime
    source: Decimal
    sent: Decimal
    hours: int  # hours of the day in the window
    held: int  # of which CloudZero holds (or that hold no spend)
    failed: int

    @property
    def differs(self) -> bool:
        return self.source != self.sent

    def as_json(self) -> dict[str, Any]:
        return {"day": day_label(self.day), "source_usd": exact_decimal(self.source),
                "sent_usd": exact_decimal(self.sent), "differs": self.differs, "hours": self.hours,
                "hours_held": self.held, "hours_failed": self.failed}  # fmt: skip


def day_totals(hours: Sequence[LedgerHour]) -> list[DayTotal]:
    """Per UTC day of the window: the source's and the sent totals of the hours with a record, exact."""
    days: dict[datetime, list[LedgerHour]] = {}
    for h in hours:
        days.setdefault(day_start(h.hour), []).append(h)
    return [
        DayTotal(
            day,
            _sum([h.source for h in items if h.source is not None]),
            _sum([h.sent for h in items if h.sent is not None]),
            len(items),
            sum(1 for h in items if h.status in HELD),
            sum(1 for h in items if h.status == FAILED),
        )
        for day, items in sorted(days.items())
    ]


@dataclass(frozen=True)
class ReconcileRun:
    """The last reconciliation that left verdicts on this stream's hours: when, by which attempt, and what it
    found on the hours read."""

    at: datetime | None
    run: str
    link: Link | None
    counts: dict[str, int]

    def summary(self) -> str:
        return ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))


def last_reconciliation(verdicts: Sequence[tuple[datetime, Verdict]]) -> ReconcileRun | None:
    """The reconciliation run with the latest verdict time (hours as the tie-break for records without one)."""
    if not verdicts:
        return None
    runs: dict[str, list[tuple[datetime, Verdict]]] = {}
    for hour, verdict in verdicts:
        runs.setdefault(verdict.run or f"(unnamed {verdict.at})", []).append((hour, verdict))

    def moment(items: list[tuple[datetime, Verdict]]) -> tuple[datetime, datetime]:
        at = max((v.at for _, v in items if v.at), default=datetime.min.replace(tzinfo=items[0][0].tzinfo))
        return at, max(h for h, _ in items)

    key, items = max(runs.items(), key=lambda kv: moment(kv[1]))
    counts: dict[str, int] = {}
    for _, verdict in items:
        counts[verdict.status] = counts.get(verdict.status, 0) + 1
    at = max((v.at for _, v in items if v.at), default=None)
    link = next((v.link for _, v in items if v.link), None)
    return ReconcileRun(at, key, link, counts)


@dataclass(frozen=True)
class Headline:
    """Is CloudZero current? One stream's answer."""

    stream: str
    now: datetime
    newest_held: datetime | None  # the newest hour CloudZero holds (or that was checked and held no spend)
    max_lag_hours: int
    failed: int  # in the window
    waiting: int  # late or running, in the window
    reconciliation: ReconcileRun | None
    newest_path: str = ""  # the page's query for the window around the newest held hour

    @property
    def lag(self) -> timedelta | None:
        if self.newest_held is None:
            return None
        return max(timedelta(0), self.now - (self.newest_held + HOUR))

    @property
    def behind(self) -> bool:
        """Red: nothing held, or the lag past CLOUDZERO_MAX_LAG_HOURS (the lag alert's setting)."""
        lag = self.lag
        return lag is None or lag > timedelta(hours=self.max_lag_hours)

    def as_json(self) -> dict[str, Any]:
        r = self.reconciliation
        return {
            "stream": self.stream,
            "now": iso_instant(self.now),
            "newest_hour_held": iso_hour(self.newest_held) if self.newest_held else None,
            "lag_hours": None if self.lag is None else round(self.lag.total_seconds() / 3600, 2),
            "max_lag_hours": self.max_lag_hours,
            "behind": self.behind,
            "hours_failed": self.failed,
            "hours_waiting": self.waiting,
            "last_reconciliation": None if r is None else {
                "at": iso_instant(r.at) if r.at else None, "run": r.run, "verdicts": r.counts,
                "airflow_path": r.link.path if r.link else None,
            },
        }  # fmt: skip


def headline(
    stream: str,
    hours: Sequence[LedgerHour],
    *,
    now: datetime,
    newest_held: datetime | None,
    max_lag_hours: int,
    verdicts: Sequence[tuple[datetime, Verdict]] = (),
    newest_path: str = "",
) -> Headline:
    return Headline(
        stream, now, newest_held, max_lag_hours,
        failed=sum(1 for h in hours if h.status == FAILED),
        waiting=sum(1 for h in hours if h.status in WAITING),
        reconciliation=last_reconciliation(verdicts), newest_path=newest_path,
    )  # fmt: skip


# -- the page -------------------------------------------------------------------------------------------


@dataclass
class LedgerPage:
    """Everything the page shows; built by the app from what it read, rendered by :func:`render_page`."""

    stream: str
    start: datetime
    end: datetime
    now: datetime
    hours: list[LedgerHour]
    headlines: list[Headline]
    query: dict[str, str] = field(default_factory=dict)  # what keeps the view: stream, dag_id, tab
    streams: list[str] = field(default_factory=list)  # the streams a reader may switch to
    reports: list[tuple[str, str]] = field(default_factory=list)  # (name, href)
    dag_id: str = ""
    embedded: bool = False
    reconcile_dag: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "window": {"start": iso_hour(self.start), "end": iso_hour(self.end)},
            "generated_at": iso_instant(self.now),
            "dag_id": self.dag_id or None,
            "headline": [h.as_json() for h in self.headlines],
            "days": [d.as_json() for d in day_totals(self.hours)],
            "hours": [h.as_json() for h in self.hours],
        }


def ledger_json(page: LedgerPage) -> str:
    return json.dumps(page.as_json(), indent=1, ensure_ascii=True)


CSV_COLUMNS = ["hour", "status", "detail", "rows", "source_usd", "sent_usd", "differs", "drops", "sent_at",
               "reconciliation", "reconciled_at", "airflow_path"]  # fmt: skip


def ledger_csv(page: LedgerPage) -> str:
    """The window's hours as CSV, exact amounts; no cell starts a formula (:func:`csv_cell`)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for h in page.hours:
        j = h.as_json()
        verdict = j["reconciliation"] or {}
        row = [j["hour"], j["status"], j["detail"], "" if j["rows"] is None else j["rows"], j["source_usd"] or "",
               j["sent_usd"] or "", "yes" if j["differs"] else "", j["drops"], j["sent_at"] or "",
               verdict.get("status", ""), verdict.get("at") or "", j["airflow_path"] or ""]  # fmt: skip
        writer.writerow([csv_cell(v) for v in row])
    return buf.getvalue()


e = html.escape


def _amount_cell(value: Decimal | None, extra: str = "") -> str:
    if value is None:
        return f'<td class="num{extra}"></td>'
    exact = exact_decimal(value)
    return f'<td class="num{extra}" title="{e(exact)} USD (exact)">{e(money(value))}</td>'


def _link(link: Link | None, text: str) -> str:
    """A link to an Airflow page, relative to this page (``/cloudzero/ledger``), so it follows Airflow's base
    URL; inside the DAG tab it opens in the tab (the UI's sandbox blocks ``_top`` and ``_blank``)."""
    if link is None:
        return e(text)
    return f'<a href="..{e(link.path)}" title="{e(link.label)}">{e(text)}</a>'


def _long_text(text: str) -> str:
    if len(text) <= SHORT_TEXT:
        return e(text)
    return f"<details><summary>{e(text[:SHORT_TEXT])}&hellip;</summary>{e(text)}</details>"


def _css_class(status: str) -> str:
    return "st-" + "".join(c if c.isalnum() else "-" for c in status)[:40]


def _query(page: LedgerPage, **changes: str) -> str:
    return "?" + urlencode({**page.query, **changes})


def _window_query(page: LedgerPage, start: datetime, end: datetime) -> str:
    return _query(page, start=iso_hour(start), end=iso_hour(end))


def hourly_chart(hours: Sequence[LedgerHour], *, width: int = 960, height: int = 180) -> str:
    """The window's cost per hour as inline SVG: a bar per hour of what was sent, a mark where the source
    differs, a red tick under a failed hour and a grey one under a late hour; each bar's tooltip holds the hour,
    its status and the exact amounts."""
    if not hours:
        return (
            '<figure id="chart-hourly"><figcaption>Cost per hour (USD)</figcaption><p>No hours.</p></figure>'
        )
    pad_l, pad_b, pad_t = 70, 28, 12
    plot_w, plot_h = width - pad_l - 10, height - pad_b - pad_t
    top = max([h.sent or Decimal(0) for h in hours] + [h.source or Decimal(0) for h in hours])
    top = top if top > 0 else Decimal(1)
    step = plot_w / len(hours)
    bar_w = max(step * 0.8, 0.6)
    base = pad_t + plot_h
    parts = [
        f'<svg id="chart-hourly-svg" width="{width}" height="{height}" role="img" '
        f'aria-label="Cost per hour (USD)" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{pad_l}" y1="{base}" x2="{width - 10}" y2="{base}" stroke="#aab7b8"></line>',
        f'<text x="{pad_l - 6}" y="{pad_t + 10}" font-size="11" text-anchor="end">{e(money(top))}</text>',
        f'<text x="{pad_l - 6}" y="{base}" font-size="11" text-anchor="end">0</text>',
    ]
    for i, h in enumerate(hours):
        x = pad_l + i * step
        tip = f"{iso_hour(h.hour)} {h.status}" + (f" ({h.detail[:SHORT_TEXT]})" if h.detail else "")
        if h.sent is not None:
            tip += f"; sent {exact_decimal(h.sent)} USD"
        if h.source is not None:
            tip += f"; source {exact_decimal(h.source)} USD"
        sent_h = float((h.sent or Decimal(0)) / top) * plot_h
        color = "#c0392b" if h.status == FAILED else "#2e86c1"
        parts.append(
            f'<rect x="{x:.2f}" y="{base - sent_h:.2f}" width="{bar_w:.2f}" height="{max(sent_h, 0):.2f}" '
            f'fill="{color}"><title>{e(tip)}</title></rect>'
        )
        if h.differs and h.source is not None:
            y = base - float(h.source / top) * plot_h
            parts.append(f'<rect x="{x:.2f}" y="{y - 1:.2f}" width="{max(bar_w, 2):.2f}" height="3" '
                         f'fill="#e67e22"><title>{e(tip)}</title></rect>')  # fmt: skip
        if h.status in (FAILED, LATE, RUNNING):
            tick = {"failed": "#c0392b", "late": "#7f8c8d", "running": "#8e44ad"}[h.status]
            parts.append(f'<rect x="{x:.2f}" y="{base + 2}" width="{max(bar_w, 2):.2f}" height="5" '
                         f'fill="{tick}"><title>{e(tip)}</title></rect>')  # fmt: skip
        if h.hour.hour == 0 or i == 0:
            parts.append(f'<text x="{x:.2f}" y="{height - 4}" font-size="11">{e(f"{h.hour:%m-%d}")}</text>')
    parts.append("</svg>")
    return ('<figure id="chart-hourly"><figcaption>Cost per hour (USD): bars sent to CloudZero, orange marks '
            "the source where it differs; ticks below: red failed, grey late, purple running</figcaption>"
            + "".join(parts) + "</figure>")  # fmt: skip


def _headline_html(h: Headline, page: LedgerPage) -> str:
    cls = "headline behind" if h.behind else "headline current"
    if h.newest_held is None:
        held = "CloudZero holds no hour of this stream yet"
        lag = '<b class="lag">no export yet</b>'
    else:
        assert h.lag is not None
        held = f"newest hour in CloudZero: <b>{h.newest_held:%Y-%m-%d %H:00} UTC</b>"
        lag = (f'<b class="lag">{e(span(h.lag))} behind</b> (alert over {h.max_lag_hours} h, '
               "CLOUDZERO_MAX_LAG_HOURS)")  # fmt: skip
        if h.newest_path:
            held += f' &middot; <a href="{e(h.newest_path)}">show the hours around it</a>'
    r = h.reconciliation
    if r is None:
        hint = "no reconciliation recorded on the hours read"
        if page.reconcile_dag:
            hint += (f": run {_link(dag_path(page.reconcile_dag), page.reconcile_dag)} (daily, with catchup) "
                     "to prove CloudZero still equals the source")  # fmt: skip
        rec = f'<span class="hint">{hint}</span>'
    else:
        when = f"{r.at:%Y-%m-%d %H:%M} UTC" if r.at else "time not recorded"
        rec = f"last reconciliation: {_link(r.link, when)} &mdash; {e(r.summary())}"
    return (
        f'<section class="{cls}" id="headline-{e(h.stream)}"><h2>{e(h.stream)}: {lag}</h2>'
        f'<p>{held}</p><p><span class="{"bad" if h.failed else ""}">{h.failed} hour(s) failed</span>'
        f" &middot; {h.waiting} waiting (late or running) in this window</p><p>{rec}</p></section>"
    )


STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:20px;color:#1b2631}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:0 0 4px} h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #d5d8dc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eaf2f8} #ledger td:first-child,#ledger td:last-child,#days td:first-child{white-space:nowrap} td.st a{color:inherit}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.diff{background:#fdebd0;font-weight:600} .headline{display:inline-block;vertical-align:top;border-left:6px solid;padding:6px 14px;margin:0 16px 10px 0;background:#f8f9f9}
.headline p{margin:3px 0} .behind{border-color:#c0392b} .behind .lag{color:#c0392b} .current{border-color:#1e8449} .current .lag{color:#1e8449}
.bad{color:#c0392b;font-weight:600} .hint{color:#b9770e} nav a{margin-right:14px} .note{color:#566573;font-size:12px}
details summary{cursor:pointer} figure{margin:8px 0} figcaption{font-size:12px;color:#566573}
.st-exported td.st,.st-no-spend td.st{color:#1e8449} .st-late-corrected td.st,.st-repaired td.st{color:#b9770e}
.st-failed td.st{color:#c0392b;font-weight:600} .st-late td.st{color:#7f8c8d;font-weight:600} .st-running td.st{color:#8e44ad}
.st-not-yet-due td.st,.st-before-the-export-start td.st{color:#95a5a6} .st-purged-at-source td.st{color:#6c3483}
.st-daily-rollup td.st,.st-in-daily-rollup td.st{color:#2874a6} dl{font-size:12px;columns:2} dt{font-weight:600} dd{margin:0 0 4px 0}"""


def render_page(page: LedgerPage) -> str:
    """The ledger page: headline per stream, per-day totals, the hourly chart, the hours with their statuses and
    links, downloads. Self-contained (inline CSS and SVG, no script); every value escaped."""
    counts: dict[str, int] = {}
    for h in page.hours:
        counts[h.status] = counts.get(h.status, 0) + 1
    summary = " &middot; ".join(
        f'<span id="count-{_css_class(s)[3:]}">{n} {e(s)}</span>' for s, n in counts.items()
    )
    width = page.end - page.start
    now_end = page.now.replace(minute=0, second=0, microsecond=0) + HOUR
    nav = (
        f'<nav><a href="{e(_window_query(page, page.start - width, page.start))}">&larr; earlier</a>'
        f'<a href="{e(_window_query(page, page.end, page.end + width))}">later &rarr;</a>'
        f'<a href="{e(_window_query(page, now_end - width, now_end))}">up to now</a>'
        f'<a id="download-csv" href="ledger.csv{e(_window_query(page, page.start, page.end))}">CSV</a>'
        f'<a id="download-json" href="ledger.json{e(_window_query(page, page.start, page.end))}">JSON</a></nav>'
    )
    switch = ""
    if len(page.streams) > 1:
        switch = "<p>Streams: " + " ".join(
            f"<b>{e(s)}</b>" if s == page.stream else f'<a href="{e(_query(page, stream=s))}">{e(s)}</a>'
            for s in page.streams
        ) + "</p>"  # fmt: skip
    days = "".join(
        f"<tr><td>{day_label(d.day)}</td>{_amount_cell(d.source)}"
        f"{_amount_cell(d.sent, ' diff' if d.differs else '')}"
        f'<td class="num">{d.held}/{d.hours}</td><td class="num{" bad" if d.failed else ""}">{d.failed}</td></tr>'
        for d in day_totals(page.hours)
    )
    rows = []
    for h in reversed(page.hours):
        diff = " diff" if h.differs else ""
        v = h.verdict
        if v is None:
            rec = ""
        else:
            when = f" {v.at:%Y-%m-%d %H:%M}" if v.at else ""
            rec = _link(v.link, f"{v.status}{when}")
        rows.append(
            f'<tr class="{_css_class(h.status)}" id="h-{h.hour:%Y-%m-%dT%H}"><td>{h.hour:%Y-%m-%d %H:00}</td>'
            f'<td class="st">{_link(h.link, h.status)}</td><td>{_long_text(h.detail)}</td>'
            f'<td class="num">{"" if h.rows is None else h.rows}</td>{_amount_cell(h.source)}'
            f'{_amount_cell(h.sent, diff)}<td class="num">{h.drops or ""}</td>'
            f"<td>{f'{h.sent_at:%Y-%m-%d %H:%M:%S}' if h.sent_at else ''}</td><td>{rec}</td></tr>"
        )
    reports = "".join(f'<li><a href="{e(href)}">{e(name)}</a></li>' for name, href in page.reports)
    in_tab = (
        '<p class="note">Links open inside this tab; Browse &rarr; CloudZero ledger opens the ledger on a page '
        "of its own.</p>"
        if page.embedded
        else ""
    )
    legend = "".join(f"<dt>{e(s)}</dt><dd>{e(m)}</dd>" for s, m in STATUS_MEANING.items())
    title = f"CloudZero ledger &mdash; {e(page.stream)}"
    if page.dag_id:
        title += f' <span class="note">(the stream of {e(page.dag_id)})</span>'
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>CloudZero export ledger</title>
<style>{STYLE}</style></head><body>
<h1>{title}</h1>
<div id="headlines">{"".join(_headline_html(h, page) for h in page.headlines)}</div>
{switch}<p id="window">{page.start:%Y-%m-%d %H:00} to {page.end:%Y-%m-%d %H:00} UTC ({len(page.hours)} hours): {summary}</p>
{nav}{in_tab}
{hourly_chart(page.hours)}
<h3>Per day</h3>
<table id="days"><thead><tr><th>day (UTC)</th><th>source (USD)</th><th>sent to CloudZero (USD)</th><th>hours held</th><th>failed</th></tr></thead><tbody>{days}</tbody></table>
<h3>Hours</h3>
<table id="ledger"><thead><tr><th>hour (UTC)</th><th>status</th><th>why</th><th>CBF rows</th><th>source (USD)</th>
<th>sent (USD)</th><th>drops</th><th>sent at (UTC)</th><th>last reconciliation</th></tr></thead><tbody>{"".join(rows)}</tbody></table>
<p class="note">Amounts to the cent; hover for the exact value, or download the CSV or JSON. Highlighted: source and sent disagree.</p>
<h3>Statuses</h3><dl id="legend">{legend}</dl>
<h3>Latest reports</h3><ul id="reports">{reports or "<li>No report yet.</li>"}</ul>
</body></html>"""  # fmt: skip


def not_an_export_dag_page(dag_id: str, export_dags: Sequence[str]) -> str:
    names = ", ".join(e(d) for d in export_dags)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>CloudZero export ledger</title>
<style>{STYLE}</style></head><body><h1>CloudZero ledger</h1>
<p id="not-export">{e(dag_id)} does not export to CloudZero, so it has no ledger. The ledger tab shows the stream
of the export DAGs: {names}.</p></body></html>"""
