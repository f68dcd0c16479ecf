"""An Airflow UI page: the export ledger, hour by hour, from the manifests; and the latest spend reports.

Registered through the ``airflow.plugins`` entry point: the page is served by the API server at
``/cloudzero/ledger`` and linked from the UI's Browse menu as "CloudZero ledger".

Airflow mounts a plugin's FastAPI app without any authentication, so every route here depends on Airflow's own
security dependency: the caller must be logged in (the UI's ``_token`` cookie or an ``Authorization: Bearer``
token from ``POST /auth/token``) and allowed to read the export DAG ``litellm_cloudzero_hourly`` -- the same
permission that shows its runs, logs and XComs, which hold the same figures. Anyone else gets 401/403 and no
figures. Pages are served with a strict Content-Security-Policy; every value is escaped.
"""

from __future__ import annotations

import html
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

from cloudzero_provider.target import TARGET_NAME_RE, ExportTarget
from cloudzero_provider.windows import floor_hour, iso_hour

EXPORT_DAG_ID = "litellm_cloudzero_hourly"
REPORT_NAME_RE = TARGET_NAME_RE  # a day (2026-11-01) or a window label; never "." or ".."
STATUS_LABEL = {"exported": "exported", "sending": "failed", "failed": "failed"}
MAX_LEDGER_HOURS = 31 * 24
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
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


def hour_status(manifest: dict[str, Any] | None) -> str:
    """exported | late-corrected | failed | not yet (``ledger_rows`` adds the daily-rollup states)."""
    if manifest is None:
        return "not yet"
    status = STATUS_LABEL.get(str(manifest.get("status")), "failed")
    if status == "exported" and int(manifest.get("late_corrections", 0) or 0) > 0:
        return "late-corrected"
    return status


def ledger_rows(target: ExportTarget, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """One row per hour of ``[start, end)``, each manifest read once."""
    rows, hour = [], start
    daily_days: dict[datetime, str | None] = {}
    while hour < end:
        manifest = target.manifests.get(hour) or None
        m = manifest or {}
        day = hour.replace(hour=0)
        if day not in daily_days:  # the daily-rollup export owns a day through its 00:00 manifest
            first = manifest if hour == day else target.manifests.get(day)
            origin = str((first or {}).get("origin", ""))
            daily_days[day] = origin if origin.startswith("daily") else None
        status = hour_status(manifest)
        if daily_days[day] and (
            manifest is None or manifest.get("origin") == daily_days[day] or manifest.get("cleared")
        ):
            status = f"daily ({daily_days[day]})" if hour == day else "in daily rollup"
        rows.append({
            "hour": iso_hour(hour),
            "status": status,
            "rows": m.get("rows", ""),
            "source_cost": (m.get("source") or {}).get("spend", "") if isinstance(m.get("source"), dict) else "",
            "sent_cost": m.get("cost", ""),
            "drops": len(m.get("drop_ids") or []) if isinstance(m.get("drop_ids"), list) else 0,
            "sent_at": m.get("sent_at", ""),
            "reconciled": (m.get("reconcile") or {}).get("status", "") if isinstance(m.get("reconcile"), dict) else "",
        })  # fmt: skip
        hour += timedelta(hours=1)
    return rows


def _reports(target: ExportTarget, limit: int = 7) -> list[str]:
    folder = target.reports_dir
    if not folder.exists():
        return []
    names = sorted((p.name for p in folder.iterdir() if REPORT_NAME_RE.match(p.name)), reverse=True)
    return [name for name in names[: limit * 4] if (folder / name / "report.html").exists()][:limit]


app = FastAPI(title="CloudZero export ledger", dependencies=[Depends(LEDGER_ACCESS)])


def _hour(value: str | None, default: datetime) -> datetime:
    if not value:
        return default
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(400, "start and end must be ISO-8601 date-times") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return floor_hour(parsed)


def _target(stream: str) -> ExportTarget:
    if not TARGET_NAME_RE.match(stream):
        raise HTTPException(400, "invalid stream name")
    return ExportTarget(stream)


def _page(body: str) -> HTMLResponse:
    return HTMLResponse(body, headers=SECURITY_HEADERS)


@app.get("/ledger", response_class=HTMLResponse)
def ledger(
    stream: str = Query("cloudzero_default", description="Export target: the CloudZero connection id"),
    start: str | None = Query(None, description="First hour (ISO-8601); default: 48 hours ago"),
    end: str | None = Query(None, description="End hour, exclusive (ISO-8601); default: this hour"),
) -> HTMLResponse:
    target = _target(stream)
    now = floor_hour(datetime.now(timezone.utc))
    end_h = _hour(end, now)
    start_h = _hour(start, end_h - timedelta(hours=48))
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
            for name in _reports(target)
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
    if not REPORT_NAME_RE.match(name):
        raise HTTPException(400, "invalid report name")
    path = target.reports_dir / name / "report.html"
    if not path.exists():
        raise HTTPException(404, "no such report")
    return _page(str(path.read_text(encoding="utf-8")))


class CloudZeroLedgerPlugin(AirflowPlugin):
    name = "cloudzero_ledger"
    fastapi_apps = [{"app": app, "url_prefix": "/cloudzero", "name": "CloudZero export ledger"}]  # noqa: RUF012 -- the AirflowPlugin interface
    external_views = [  # noqa: RUF012 -- the AirflowPlugin interface
        {"name": "CloudZero ledger", "href": "/cloudzero/ledger", "destination": "nav", "category": "browse"}
    ]
