"""The ledger's FastAPI app, served by the API server under ``/cloudzero`` (see :mod:`.ledger`).

Airflow mounts a plugin's FastAPI app without any authentication, so every route here depends on Airflow's own
security dependency: the caller must be logged in and allowed to read the export DAG. Pages are served with a
strict Content-Security-Policy; every value is escaped.
"""

from __future__ import annotations

import html
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

from cloudzero_provider.plugins.ledger import (
    EXPORT_DAG_ID,
    REPORT_NAME_RE,
    latest_reports,
    ledger_rows,
)
from cloudzero_provider.target import ExportTarget
from cloudzero_provider.windows import floor_hour, hour_of

MAX_LEDGER_HOURS = 31 * 24
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)
# frame-ancestors, form-action and base-uri do not fall back to default-src: each is closed explicitly. Framing
# stays allowed for Airflow's own pages (same origin), which may show the ledger in a tab.
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


def _read_access() -> Any:
    """Airflow's own dependency: an authenticated user allowed to read the export DAG."""
    try:
        from airflow.api_fastapi.core_api.security import requires_access_dag
    except ImportError:  # outside an API server install; the app cannot be served then anyway

        def refuse() -> None:
            raise HTTPException(503, "Airflow's API security module is not available")

        return refuse
    return requires_access_dag("GET", param_dag_id=EXPORT_DAG_ID)


LEDGER_ACCESS = _read_access()


# No interactive docs or schema: they would answer anonymous requests (FastAPI serves them outside the app's
# dependencies), and the ledger has no API to document.
app = FastAPI(
    title="CloudZero export ledger",
    dependencies=[Depends(LEDGER_ACCESS)],
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


def _page(body: str) -> HTMLResponse:
    return HTMLResponse(body, headers=SECURITY_HEADERS)


@app.get("/ledger", response_class=HTMLResponse)
def ledger(
    stream: str = Query("cloudzero_default", description="Export target: the CloudZero connection id"),
    start: str | None = Query(None, description="First hour (ISO-8601); default: 48 hours ago"),
    end: str | None = Query(None, description="End hour, exclusive (ISO-8601); default: this hour"),
) -> HTMLResponse:
    target = _target(stream)
    end_h = _hour("end", end) or floor_hour(datetime.now(timezone.utc))
    start_h = _hour("start", start) or end_h - timedelta(hours=48)
    if not start_h < end_h or end_h - start_h > timedelta(hours=MAX_LEDGER_HOURS):
        raise HTTPException(400, "start must be before end, at most 31 days apart")
    rows = ledger_rows(target, start_h, end_h)
    counts = {
        s: sum(1 for r in rows if r["status"] == s)
        for s in ("exported", "late-corrected", "failed", "not yet")
    }
    daily = sum(1 for r in rows if r["status"].startswith("daily"))
    if daily:
        counts["daily-rollup days"] = daily
    e = html.escape
    links = (
        "".join(
            f'<li><a href="reports/{e(stream)}/{e(name)}/report.html">{e(name)}</a></li>'
            for name in latest_reports(target)
        )
        or "<li>No report yet.</li>"
    )
    body = "".join(
        f'<tr class="st-{e(r["status"].replace(" ", "-"))}"><td>{e(r["hour"])}</td><td>{e(r["status"])}</td>'
        f"<td>{e(str(r['rows']))}</td><td>{e(str(r['source_cost']))}</td><td>{e(str(r['sent_cost']))}</td>"
        f"<td>{e(str(r['drops']))}</td><td>{e(str(r['sent_at']))}</td><td>{e(str(r['reconciled']))}</td></tr>"
        for r in reversed(rows)
    )
    summary = " &middot; ".join(
        f'<span id="count-{k.replace(" ", "-")}">{v} {k}</span>' for k, v in counts.items()
    )
    return _page(f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>CloudZero export ledger</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#1b2631}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #d5d8dc;padding:4px 8px}} th{{background:#eaf2f8}} .st-exported td:nth-child(2){{color:#1e8449}}
.st-late-corrected td:nth-child(2){{color:#b9770e}} .st-failed td:nth-child(2){{color:#c0392b;font-weight:600}}
.st-not-yet td:nth-child(2){{color:#7f8c8d}} tr[class^="st-daily"] td:nth-child(2),.st-in-daily-rollup td:nth-child(2){{color:#2874a6}}</style></head><body>
<h1>CloudZero export ledger &mdash; {e(stream)}</h1>
<p>{start_h:%Y-%m-%d %H:00} to {end_h:%Y-%m-%d %H:00} UTC: {summary}</p>
<h2>Latest reports</h2><ul id="reports">{links}</ul>
<table id="ledger"><thead><tr><th>hour (UTC)</th><th>status</th><th>CBF rows</th><th>cost at source (USD)</th>
<th>cost sent (USD)</th><th>drops</th><th>sent at</th><th>last reconciliation</th></tr></thead><tbody>{body}</tbody></table>
</body></html>""")  # fmt: skip


@app.get("/reports/{stream}/{name}/report.html", response_class=HTMLResponse)
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
