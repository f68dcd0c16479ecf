"""An Airflow UI page: the export ledger, hour by hour, from the manifests; and the latest spend reports.

Registered through the ``airflow.plugins`` entry point: the page is served by the API server at
``/cloudzero/ledger`` and linked from the UI's Browse menu as "CloudZero ledger".
"""

from __future__ import annotations

import html
import os
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

from cloudzero_provider.manifests import ManifestStore
from cloudzero_provider.staging import staging_root

SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
STATUS_LABEL = {"exported": "exported", "sending": "failed", "failed": "failed"}


def hour_status(manifest: dict[str, Any] | None) -> str:
    """exported | late-corrected | failed | not yet."""
    if manifest is None:
        return "not yet"
    status = STATUS_LABEL.get(str(manifest.get("status")), "failed")
    if status == "exported" and int(manifest.get("late_corrections", 0)) > 0:
        return "late-corrected"
    return status


def ledger_rows(stream: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    store = ManifestStore(staging_root(os.environ.get("CLOUDZERO_STAGING_URI")) / stream)
    rows, hour = [], start
    while hour < end:
        key = hour.strftime("%Y-%m-%dT%H:00:00Z")
        manifest = store.get(key)
        rows.append({
            "hour": key,
            "status": hour_status(manifest),
            "rows": (manifest or {}).get("rows", ""),
            "source_cost": (manifest or {}).get("source", {}).get("spend", ""),
            "sent_cost": (manifest or {}).get("cost", ""),
            "drops": len((manifest or {}).get("drop_ids", []) or []),
            "sent_at": (manifest or {}).get("sent_at", ""),
        })  # fmt: skip
        hour += timedelta(hours=1)
    return rows


def _reports(stream: str) -> list[str]:
    folder = staging_root(os.environ.get("CLOUDZERO_STAGING_URI")) / stream / "reports"
    if not folder.exists():
        return []
    return sorted((p.name for p in folder.iterdir() if (p / "report.html").exists()), reverse=True)


app = FastAPI(title="CloudZero export ledger")


def _hour(value: str | None, default: datetime) -> datetime:
    if not value:
        return default
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(400, f"{value!r} is not an ISO-8601 date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


@app.get("/ledger", response_class=HTMLResponse)
def ledger(
    stream: str = Query("cloudzero_default", description="Staging stream: the CloudZero connection id"),
    start: str | None = Query(None, description="First hour (ISO-8601); default: 48 hours ago"),
    end: str | None = Query(None, description="End hour, exclusive (ISO-8601); default: this hour"),
) -> str:
    if not SAFE_NAME.match(stream):
        raise HTTPException(400, "invalid stream name")
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    end_h = _hour(end, now)
    start_h = _hour(start, end_h - timedelta(hours=48))
    if not start_h < end_h or end_h - start_h > timedelta(days=31):
        raise HTTPException(400, "start must be before end, at most 31 days apart")
    rows = ledger_rows(stream, start_h, end_h)
    counts = {
        s: sum(1 for r in rows if r["status"] == s)
        for s in ("exported", "late-corrected", "failed", "not yet")
    }
    reports = _reports(stream)
    links = (
        "".join(
            f'<li><a href="reports/{html.escape(stream)}/{html.escape(name)}/report.html">{html.escape(name)}</a></li>'
            for name in reports[:7]
        )
        or "<li>No report yet.</li>"
    )
    body = "".join(
        f'<tr class="st-{r["status"].replace(" ", "-")}"><td>{r["hour"]}</td><td>{r["status"]}</td><td>{r["rows"]}</td>'
        f"<td>{r['source_cost']}</td><td>{r['sent_cost']}</td><td>{r['drops']}</td><td>{html.escape(str(r['sent_at']))}</td></tr>"
        for r in reversed(rows)
    )
    summary = " &middot; ".join(
        f'<span id="count-{k.replace(" ", "-")}">{v} {k}</span>' for k, v in counts.items()
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>CloudZero export ledger</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#1b2631}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #d5d8dc;padding:4px 8px}} th{{background:#eaf2f8}} .st-exported td:nth-child(2){{color:#1e8449}}
.st-late-corrected td:nth-child(2){{color:#b9770e}} .st-failed td:nth-child(2){{color:#c0392b;font-weight:600}}
.st-not-yet td:nth-child(2){{color:#7f8c8d}}</style></head><body>
<h1>CloudZero export ledger &mdash; {html.escape(stream)}</h1>
<p>{start_h:%Y-%m-%d %H:00} to {end_h:%Y-%m-%d %H:00} UTC: {summary}</p>
<h2>Latest reports</h2><ul id="reports">{links}</ul>
<table id="ledger"><thead><tr><th>hour (UTC)</th><th>status</th><th>CBF rows</th><th>cost at source (USD)</th>
<th>cost sent (USD)</th><th>drops</th><th>sent at</th></tr></thead><tbody>{body}</tbody></table>
</body></html>"""


@app.get("/reports/{stream}/{name}/report.html", response_class=HTMLResponse)
def report(stream: str, name: str) -> str:
    if not SAFE_NAME.match(stream) or not SAFE_NAME.match(name):
        raise HTTPException(400, "invalid report name")
    path = staging_root(os.environ.get("CLOUDZERO_STAGING_URI")) / stream / "reports" / name / "report.html"
    if not path.exists():
        raise HTTPException(404, f"no report {name}")
    return str(path.read_text(encoding="utf-8"))


class CloudZeroLedgerPlugin(AirflowPlugin):
    name = "cloudzero_ledger"
    fastapi_apps = [{"app": app, "url_prefix": "/cloudzero", "name": "CloudZero export ledger"}]  # noqa: RUF012 -- the AirflowPlugin interface
    external_views = [  # noqa: RUF012 -- the AirflowPlugin interface
        {"name": "CloudZero ledger", "href": "/cloudzero/ledger", "destination": "nav", "category": "browse"}
    ]
