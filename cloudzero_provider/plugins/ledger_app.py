"""The ledger's FastAPI app, served by the API server under ``/cloudzero`` (see :mod:`.ledger`).

Airflow mounts a plugin's FastAPI app without any authentication, so the app requires a logged-in user for every
route, and each route checks Airflow's DAG permission itself: the ledger and its downloads against the DAG asked
for (``dag_id``, the DAG tab's; without it the hourly export DAG), the reports against the hourly export DAG.
Pages are served with a strict Content-Security-Policy; every value is escaped, every CSV cell neutralised.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, get_user, requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from cloudzero_provider.ledger_view import (
    LedgerPage,
    ledger_csv,
    ledger_json,
    not_an_export_dag_page,
    render_page,
)
from cloudzero_provider.plugins.ledger import EXPORT_DAG_ID
from cloudzero_provider.plugins.ledger_data import (
    EXPORT_DAGS,
    REPORT_NAME_RE,
    latest_reports,
    read_runs,
    read_stream,
    streams_of,
)
from cloudzero_provider.ready_dags.common import RECONCILE_DAG_ID
from cloudzero_provider.settings import ExportSettings
from cloudzero_provider.target import ExportTarget
from cloudzero_provider.windows import HOUR, floor_hour, hour_of, iso_hour, utc_now

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

MAX_LEDGER_HOURS = 31 * 24
DEFAULT_HOURS = 48
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)
DAG_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,250}")  # Airflow's own rule for DAG ids
# frame-ancestors, form-action and base-uri do not fall back to default-src: each is closed explicitly. Framing
# stays allowed for Airflow's own pages (same origin), which show the ledger in a DAG tab.
PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'; form-action 'none'; "
    "base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": PAGE_POLICY,
    "X-Frame-Options": "SAMEORIGIN",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def ledger_access(request: Request, user: GetUserDep) -> None:
    """Airflow's own check: the caller may read the DAG whose ledger is asked for -- ``dag_id`` (the DAG tab),
    else the hourly export DAG. Starlette and FastAPI both take the last of repeated ``dag_id`` values, so the
    DAG checked is the DAG shown."""
    dag_id = request.query_params.get("dag_id") or EXPORT_DAG_ID
    requires_access_dag("GET", param_dag_id=dag_id)(request, user)


LEDGER_ACCESS = ledger_access
REPORT_ACCESS = requires_access_dag("GET", param_dag_id=EXPORT_DAG_ID)
# Every dependency that decides who sees figures: tests of what the pages show replace them all.
ACCESS_DEPENDENCIES = (get_user, LEDGER_ACCESS, REPORT_ACCESS)

# No interactive docs or schema: they would answer anonymous requests (FastAPI serves them outside the app's
# dependencies), and the ledger has no API to document.
app = FastAPI(
    title="CloudZero export ledger",
    dependencies=[Depends(get_user)],
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


def _hour(name: str, value: str | None) -> datetime | None:
    """An hour from a query parameter; 400 naming the parameter for anything that is not a date-time from 2000
    to 2100."""
    if not value:
        return None
    try:
        hour = hour_of(value[:40])
    except (ValueError, OverflowError):
        raise HTTPException(400, f"{name} must be an ISO-8601 date-time") from None
    if not EARLIEST <= hour < LATEST:
        raise HTTPException(400, f"{name} must lie between 2000 and 2100")
    return hour


def _target(stream: str) -> ExportTarget:
    try:
        return ExportTarget(stream)
    except ValueError:
        raise HTTPException(400, "invalid stream name") from None


def _settings() -> ExportSettings:
    try:
        return ExportSettings.from_env()
    except ValueError as exc:
        raise HTTPException(500, f"the export's settings are invalid: {exc}") from None


def _page(body: str) -> HTMLResponse:
    return HTMLResponse(body, headers=SECURITY_HEADERS)


def _view(
    session: Session,
    stream: str | None,
    start: str | None,
    end: str | None,
    dag_id: str | None,
    tab: str | None,
) -> LedgerPage | str:
    """The page's content, or the DAG id when the DAG asked for exports nothing."""
    if dag_id is not None and not DAG_ID_RE.fullmatch(dag_id):
        raise HTTPException(400, "invalid dag_id")
    settings = _settings()
    streams = streams_of(dag_id, settings)
    if dag_id is not None and not streams:
        return dag_id
    stream = stream or streams[0]
    _target(stream)
    if dag_id is not None and stream not in streams:
        raise HTTPException(400, f"{dag_id} does not export to the stream {stream}")
    now = utc_now()
    end_h = _hour("end", end) or floor_hour(now) + HOUR
    start_h = _hour("start", start) or end_h - timedelta(hours=DEFAULT_HOURS)
    if not start_h < end_h or end_h - start_h > timedelta(hours=MAX_LEDGER_HOURS):
        raise HTTPException(400, "start must be before end, at most 31 days apart")
    query = {"stream": stream, **({"dag_id": dag_id} if dag_id else {}), **({"tab": "1"} if tab else {})}
    page = LedgerPage(stream, start_h, end_h, now, [], [], query=query, dag_id=dag_id or "", embedded=bool(tab),
                      reconcile_dag=RECONCILE_DAG_ID)  # fmt: skip
    runs = read_runs(session, start_h, end_h)

    def around(s: datetime, e: datetime) -> str:
        return "?" + urlencode({**query, "start": iso_hour(s), "end": iso_hour(e)})

    shown = [stream, *(s for s in streams if s != stream)]
    for name in shown:
        ledger = read_stream(name, start_h, end_h, settings=settings, runs=runs, now=now, newest_query=around)
        if name == stream:
            page.hours = ledger.hours
        page.headlines.append(ledger.headline)
    page.streams = list(dict.fromkeys([*streams, stream]))
    page.reports = [
        (name, f"reports/{stream}/{name}/report.html") for name in latest_reports(ExportTarget(stream))
    ]
    return page


QUERY = {
    "stream": Query(None, description="Export target: the CloudZero connection id; default: the DAG's (or the export's) stream"),
    "start": Query(None, description="First hour (ISO-8601); default: 48 hours before end"),
    "end": Query(None, description="End hour, exclusive (ISO-8601); default: the end of the current hour"),
    "dag_id": Query(None, description="The DAG whose stream to show (the DAG tab)"),
    "tab": Query(None, description="Set by the DAG tab: the page is shown inside the UI's iframe"),
}  # fmt: skip


@app.get("/ledger", response_class=HTMLResponse, dependencies=[Depends(LEDGER_ACCESS)])
def ledger(
    session: SessionDep,
    stream: str | None = QUERY["stream"],
    start: str | None = QUERY["start"],
    end: str | None = QUERY["end"],
    dag_id: str | None = QUERY["dag_id"],
    tab: str | None = QUERY["tab"],
) -> HTMLResponse:
    view = _view(session, stream, start, end, dag_id, tab)
    if isinstance(view, str):
        return _page(not_an_export_dag_page(view, EXPORT_DAGS))
    return _page(render_page(view))


def _data(view: LedgerPage | str) -> LedgerPage:
    if isinstance(view, str):
        raise HTTPException(404, f"{view} does not export to CloudZero: it has no ledger")
    return view


def _file_name(page: LedgerPage, ext: str) -> str:
    return f"cloudzero-ledger-{page.stream}-{page.start:%Y%m%dT%H}-{page.end:%Y%m%dT%H}.{ext}"


@app.get("/ledger.csv", dependencies=[Depends(LEDGER_ACCESS)])
def ledger_csv_download(
    session: SessionDep,
    stream: str | None = QUERY["stream"],
    start: str | None = QUERY["start"],
    end: str | None = QUERY["end"],
    dag_id: str | None = QUERY["dag_id"],
    tab: str | None = QUERY["tab"],
) -> Response:
    page = _data(_view(session, stream, start, end, dag_id, tab))
    return Response(
        ledger_csv(page),
        media_type="text/csv; charset=utf-8",
        headers={
            **SECURITY_HEADERS,
            "Content-Disposition": f'attachment; filename="{_file_name(page, "csv")}"',
        },
    )


@app.get("/ledger.json", dependencies=[Depends(LEDGER_ACCESS)])
def ledger_json_download(
    session: SessionDep,
    stream: str | None = QUERY["stream"],
    start: str | None = QUERY["start"],
    end: str | None = QUERY["end"],
    dag_id: str | None = QUERY["dag_id"],
    tab: str | None = QUERY["tab"],
) -> Response:
    page = _data(_view(session, stream, start, end, dag_id, tab))
    return Response(
        ledger_json(page),
        media_type="application/json",
        headers={**SECURITY_HEADERS, "Content-Disposition": f'inline; filename="{_file_name(page, "json")}"'},
    )


@app.get("/reports/{stream}/{name}/report.html", response_class=HTMLResponse,
         dependencies=[Depends(REPORT_ACCESS)])  # fmt: skip
def report(stream: str, name: str) -> HTMLResponse:
    target = _target(stream)
    if not REPORT_NAME_RE.fullmatch(name):
        raise HTTPException(400, "invalid report name")
    path = target.reports_dir / name / "report.html"
    if not path.exists():
        raise HTTPException(404, "no such report")
    # The report is a file from staging, served under Airflow's origin: sandboxed (an opaque origin, no scripts,
    # forms or navigation of Airflow's pages), whatever it holds.
    return HTMLResponse(
        str(path.read_text(encoding="utf-8")),
        headers={
            **SECURITY_HEADERS,
            "Content-Security-Policy": f"sandbox; {PAGE_POLICY}",
            "Content-Disposition": f'inline; filename="cloudzero-report-{name}.html"',
        },
    )
