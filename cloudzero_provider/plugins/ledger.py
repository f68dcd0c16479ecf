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

from cloudzero_provider.manifests import DAILY_ORIGINS, Manifest
from cloudzero_provider.staging import listing
from cloudzero_provider.target import TARGET_NAME_RE, ExportTarget
from cloudzero_provider.windows import Window, day_start, iso_hour, iso_instant

EXPORT_DAG_ID = "litellm_cloudzero_hourly"
REPORT_NAME_RE = TARGET_NAME_RE  # a day (2026-11-01) or a window label; never "." or ".."
STATUS_LABEL = {"exported": "exported", "sending": "failed", "failed": "failed"}


def hour_status(manifest: Manifest | None) -> str:
    """exported | late-corrected | failed | not yet (``ledger_rows`` adds the daily-rollup states)."""
    if manifest is None:
        return "not yet"
    status = STATUS_LABEL.get(manifest.status, "failed")
    if status == "exported" and manifest.late_corrections > 0:
        return "late-corrected"
    return status


def ledger_rows(target: ExportTarget, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """One row per hour of ``[start, end)``; who owns each day is the pipeline's own answer
    (:meth:`ManifestStore.day_owner`)."""
    rows, hour = [], start
    store = target.manifests
    window = Window(start, end)
    days = [d.start for d in window.each_day()]
    # one listing, one read per manifest that exists (the days' first and last hours may lie outside the window)
    records = store.get_many(h for d in days for h in Window(d, d + timedelta(days=1)).hour_starts())
    owners = store.day_owners(days, held=records)
    while hour < end:
        manifest = records.get(hour)
        day = day_start(hour)
        if day not in owners:
            owners[day] = store.day_owner(day)
        owner = owners[day] if owners[day] in DAILY_ORIGINS else None
        status = hour_status(manifest)
        if owner and (manifest is None or manifest.origin == owner or manifest.cleared):
            status = f"daily ({owner})" if hour == day else "in daily rollup"
        sent = manifest is not None and manifest.sent_at is not None
        rows.append({
            "hour": iso_hour(hour),
            "status": status,
            "rows": manifest.rows if sent and manifest else "",
            "source_cost": manifest.source.spend if manifest and manifest.source else "",
            "sent_cost": manifest.cost if sent and manifest else "",
            "drops": len(manifest.drop_ids) if manifest else 0,
            "sent_at": iso_instant(manifest.sent_at) if manifest and manifest.sent_at else "",
            "reconciled": str((manifest.reconcile or {}).get("status", "")) if manifest else "",
        })  # fmt: skip
        hour += timedelta(hours=1)
    return rows


def latest_reports(target: ExportTarget, limit: int = 7) -> list[str]:
    folder = target.reports_dir
    names = sorted((n for n in listing(folder) if REPORT_NAME_RE.fullmatch(n)), reverse=True)
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
