"""An Airflow UI page: the export ledger, hour by hour, from the manifests; and the latest spend reports.

Registered through the ``airflow.plugins`` entry point: the page is served by the API server at
``/cloudzero/ledger`` and linked from the UI's Browse menu as "CloudZero ledger".

The routes live in :mod:`.ledger_app`, imported only when the API server asks for the plugin's app. Airflow
mounts a plugin's FastAPI app without any authentication, so every route there depends on Airflow's own
security dependency: the caller must be logged in (the UI's ``_token`` cookie or an ``Authorization: Bearer``
token from ``POST /auth/token``) and allowed to read the export DAG ``litellm_cloudzero_hourly`` -- the same
permission that shows its runs, logs and XComs, which hold the same figures. Anyone else gets 401/403 and no
figures. Pages are served with a strict Content-Security-Policy; every value is escaped.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from cloudzero_provider.target import TARGET_NAME_RE, ExportTarget
from cloudzero_provider.windows import iso_hour

EXPORT_DAG_ID = "litellm_cloudzero_hourly"
REPORT_NAME_RE = TARGET_NAME_RE  # a day (2026-11-01) or a window label; never "." or ".."
STATUS_LABEL = {"exported": "exported", "sending": "failed", "failed": "failed"}


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


def latest_reports(target: ExportTarget, limit: int = 7) -> list[str]:
    folder = target.reports_dir
    if not folder.exists():
        return []
    names = sorted((p.name for p in folder.iterdir() if REPORT_NAME_RE.fullmatch(p.name)), reverse=True)
    return [name for name in names[: limit * 4] if (folder / name / "report.html").exists()][:limit]


class CloudZeroLedgerPlugin(AirflowPlugin):
    """The ledger page. Its FastAPI app is built on first use (only the API server asks for it): every task
    process loads the installed plugins, and should not pay for importing FastAPI and the page each time."""

    name = "cloudzero_ledger"
    external_views = [  # noqa: RUF012 -- the AirflowPlugin interface
        {"name": "CloudZero ledger", "href": "/cloudzero/ledger", "destination": "nav", "category": "browse"}
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        from cloudzero_provider.plugins.ledger_app import app

        return [{"app": app, "url_prefix": "/cloudzero", "name": "CloudZero export ledger"}]
