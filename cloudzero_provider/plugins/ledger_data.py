"""What the ledger reads, in the API server: a stream's manifests over a window, the newest hour it holds, the
last reconciliation's verdicts, and the export DAGs' runs of the window from Airflow's metadata DB (one bounded
query per view). The decisions are :mod:`cloudzero_provider.ledger_view`'s.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cloudzero_provider.ledger_view import (
    Headline,
    LedgerHour,
    RunInfo,
    Verdict,
    classify,
    headline,
)
from cloudzero_provider.manifests import DAILY_ORIGINS, Manifest
from cloudzero_provider.ready_dags.common import (
    DAILY_ROLLUP_DAG_ID,
    HOURLY_DAG_ID,
    RANGE_DAG_ID,
    RECONCILE_DAG_ID,
)
from cloudzero_provider.staging import listing
from cloudzero_provider.target import TARGET_NAME_RE, ExportTarget
from cloudzero_provider.windows import DAY, HOUR, Window, day_start, parse_instant

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from cloudzero_provider.settings import ExportSettings

REPORT_NAME_RE = TARGET_NAME_RE  # a day (2026-11-01) or a window label; never "." or ".."
# The DAGs that export to CloudZero, in the order the page names them; each shows its stream(s) in its tab.
EXPORT_DAGS = (HOURLY_DAG_ID, RANGE_DAG_ID, DAILY_ROLLUP_DAG_ID, RECONCILE_DAG_ID)
RUN_DAGS = (HOURLY_DAG_ID, DAILY_ROLLUP_DAG_ID)  # whose runs are scheduled per hour / per day
VERDICT_LOOKBACK = timedelta(
    days=7
)  # before the newest held hour, where the last reconciliation is looked for


def streams_of(dag_id: str | None, settings: ExportSettings) -> list[str]:
    """The streams (CloudZero connection ids) a DAG exports to; with no DAG, every configured stream. Every
    export DAG sends to ``CLOUDZERO_CONN_ID``; the daily-rollup DAG also fills ``CLOUDZERO_DAILY_TAG_CONN_ID``."""
    tag = [settings.daily_tag_conn_id] if settings.daily_tag_conn_id else []
    if dag_id is None:
        return list(dict.fromkeys([settings.cloudzero_conn_id, *tag]))
    if dag_id not in EXPORT_DAGS:
        return []
    if dag_id == DAILY_ROLLUP_DAG_ID:
        return list(dict.fromkeys([settings.cloudzero_conn_id, *tag]))
    return [settings.cloudzero_conn_id]


def is_daily_stream(stream: str, settings: ExportSettings) -> bool:
    """The request-tag stream gets only daily rows (from the daily-rollup DAG), never hourly ones."""
    return (
        bool(settings.daily_tag_conn_id)
        and stream == settings.daily_tag_conn_id != settings.cloudzero_conn_id
    )


def read_runs(session: Session, start: datetime, end: datetime) -> dict[tuple[str, datetime], RunInfo]:
    """``(dag id, interval start) -> run`` of the hourly and daily-rollup DAGs whose data interval starts in the
    window (a daily run from the day before the window's start on): one query, at most a few rows per hour.
    Where several runs share an interval (a manual run beside a scheduled one), the one in flight wins, else the
    newest."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    limit = 4 * int((end - start) / HOUR) + 200
    query = (
        select(
            DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.data_interval_start, DagRun.data_interval_end
        )
        .where(
            DagRun.dag_id.in_(RUN_DAGS),
            DagRun.data_interval_start >= start - DAY,
            DagRun.data_interval_start < end,
        )
        .order_by(DagRun.id)
        .limit(limit)
    )
    runs: dict[tuple[str, datetime], RunInfo] = {}
    for dag_id, run_id, state, interval_start, interval_end in session.execute(query):
        if interval_start is None or interval_end is None:
            continue
        length = HOUR if dag_id == HOURLY_DAG_ID else DAY
        if interval_end - interval_start != length:
            continue
        key = (str(dag_id), parse_instant(interval_start))
        current = runs.get(key)
        if current is None or not current.in_flight:
            runs[key] = RunInfo(str(dag_id), str(run_id), str(state or ""))
    return runs


@dataclass
class StreamLedger:
    stream: str
    hours: list[LedgerHour]
    headline: Headline


class _Reader:
    """A stream's manifests, listed once and each read at most once per view."""

    def __init__(self, target: ExportTarget) -> None:
        self.store = target.manifests
        self.listed = sorted(self.store.hours())
        self._present = set(self.listed)
        self._cache: dict[datetime, Manifest | None] = {}

    def prefetch(self, start: datetime, end: datetime) -> None:
        """Read the manifests listed in ``[start, end)`` together (concurrent GETs on object storage)."""
        i, wanted = bisect_left(self.listed, start), []
        while i < len(self.listed) and self.listed[i] < end:
            if self.listed[i] not in self._cache:
                wanted.append(self.listed[i])
            i += 1
        got = self.store.read_listed(wanted)
        for hour in wanted:
            self._cache[hour] = got.get(hour)

    def get(self, hour: datetime) -> Manifest | None:
        if hour not in self._present:
            return None
        if hour not in self._cache:
            self._cache[hour] = self.store.get(hour)
        return self._cache[hour]

    def day_owner(self, day: datetime) -> str | None:
        """:meth:`ManifestStore.day_owner` from the manifests listed and read here: no request of its own."""
        if not self.any_in(day, day + DAY):
            return None
        held = {h: m for h in Window.day(day).hour_starts() if (m := self.get(h)) is not None}
        return self.store.day_owners([day], held=held)[day]

    def newest_held(self) -> datetime | None:
        return self.store.newest_held(hours=self.listed, read=self.get)

    def any_in(self, start: datetime, end: datetime) -> bool:
        """Whether any hour of ``[start, end)`` has a manifest (without reading one)."""
        i = bisect_left(self.listed, start)
        return i < len(self.listed) and self.listed[i] < end


def read_stream(
    stream: str,
    start: datetime,
    end: datetime,
    *,
    settings: ExportSettings,
    runs: dict[tuple[str, datetime], RunInfo],
    now: datetime,
    newest_query: Any = None,
) -> StreamLedger:
    """One stream's hours of ``[start, end)`` classified, and its headline.

    :param newest_query: ``(start, end) -> page query`` for the link to the hours around the newest held hour.
    """
    reader = _Reader(ExportTarget(stream))
    reader.prefetch(day_start(start), day_start(end - HOUR) + DAY)  # the window's whole days: owners too
    daily = is_daily_stream(stream, settings)
    settle = timedelta(minutes=settings.settle_minutes)
    owners: dict[datetime, str | None] = {}
    hours: list[LedgerHour] = []
    hour = start
    while hour < end:
        day = day_start(hour)
        if day not in owners:
            owner = reader.day_owner(day)
            owners[day] = owner if owner in DAILY_ORIGINS else None
        if daily:
            run, due = runs.get((DAILY_ROLLUP_DAG_ID, day)), day + DAY
        else:
            run, due = runs.get((HOURLY_DAG_ID, hour)), hour + HOUR + settle
        hours.append(
            classify(
                hour,
                reader.get(hour),
                run,
                now=now,
                export_start=settings.start_date,
                due_at=due,
                daily_owner=owners[day],
                day_manifest=reader.get(day),
                schedule_dag=DAILY_ROLLUP_DAG_ID if daily else HOURLY_DAG_ID,
                daily_stream=daily,
            )
        )
        hour += HOUR
    newest = reader.newest_held()  # the lag alert's answer too
    verdicts = [(h.hour, h.verdict) for h in hours if h.verdict is not None]
    if newest is not None:
        for h in reader.listed:
            if newest - VERDICT_LOOKBACK <= h <= newest and not start <= h < end:
                manifest = reader.get(h)
                verdict = Verdict.of(manifest.reconcile) if manifest is not None else None
                if verdict is not None:
                    verdicts.append((h, verdict))
    path = ""
    if newest is not None and newest_query is not None and not start <= newest < end:
        path = newest_query(newest - 35 * HOUR, newest + 13 * HOUR)
    return StreamLedger(
        stream,
        hours,
        headline(
            stream,
            hours,
            now=now,
            newest_held=newest,
            max_lag_hours=settings.max_lag_hours,
            verdicts=verdicts,
            newest_path=path,
        ),
    )


def latest_reports(target: ExportTarget, limit: int = 7) -> list[str]:
    folder = target.reports_dir
    names = sorted((n for n in listing(folder) if REPORT_NAME_RE.fullmatch(n)), reverse=True)
    return [name for name in names[: limit * 4] if (folder / name / "report.html").exists()][:limit]
