"""An Airflow UI page: the export ledger, hour by hour, from the manifests; and the latest spend reports.

Registered through the ``airflow.plugins`` entry point: the page is served by the API server at
``/cloudzero/ledger``, linked from the UI's Browse menu as "CloudZero ledger" (opened on a page of its own) and
shown as a "CloudZero ledger" tab on every DAG's page (an external view with a DAG destination, in the UI's
iframe): for an export DAG the tab shows its stream, for any other DAG it says that the DAG exports nothing.

The routes live in :mod:`.ledger_app`, imported only when the API server asks for the plugin's app. Airflow
mounts a plugin's FastAPI app without any authentication, so every route there depends on Airflow's own
security dependencies: the caller must be logged in (the UI's ``_token`` cookie or an ``Authorization: Bearer``
token from ``POST /auth/token``) and allowed to read the DAG whose ledger is asked for (``dag_id``; without it
the hourly export DAG ``litellm_cloudzero_hourly``) -- the same permission that shows its runs, logs and XComs,
which hold the same figures. Anyone else gets 401/403 and no figures. Pages are served with a strict
Content-Security-Policy; every value is escaped.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

EXPORT_DAG_ID = "litellm_cloudzero_hourly"
# The DAG tab's route in the UI (/dags/<dag>/plugin/<route>). Not "cloudzero-ledger": the UI finds a view by
# `url_route`, or else by its name lower-cased with a dash, and the Browse entry's name gives that slug.
LEDGER_TAB_ROUTE = "cloudzero-export-ledger"


class CloudZeroLedgerPlugin(AirflowPlugin):
    """The ledger page. Its FastAPI app is built on first use (only the API server asks for it): every task
    process loads the installed plugins, and should not pay for importing FastAPI and the page each time."""

    name = "cloudzero_ledger"
    external_views = [  # noqa: RUF012 -- the AirflowPlugin interface
        # Browse -> CloudZero ledger: no url_route, so the UI opens it in a browser tab of its own, where its
        # links to runs and task instances open at full size.
        {"name": "CloudZero ledger", "href": "/cloudzero/ledger", "destination": "nav", "category": "browse"},
        # A tab on every DAG page (the UI offers no per-DAG filter); the UI fills {DAG_ID}. Relative, so it
        # follows [api] base_url.
        {
            "name": "CloudZero ledger",
            "href": "cloudzero/ledger?dag_id={DAG_ID}&tab=1",
            "destination": "dag",
            "url_route": LEDGER_TAB_ROUTE,
        },
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        from cloudzero_provider.plugins.ledger_app import app

        return [{"app": app, "url_prefix": "/cloudzero", "name": "CloudZero export ledger"}]
