"""The ledger app in process, on Airflow's real metadata DB (SQLite here): who may see which stream, the DAG tab,
the downloads, what it shows for daily-rollup days, runs in flight and hostile values."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from cloudzero_provider.manifests import Attempt, Manifest, SourceTotals
from cloudzero_provider.target import ExportTarget

H = datetime(2025, 3, 10, tzinfo=timezone.utc)  # an hour no DAG test of this suite runs
URL = "/ledger?start=2025-03-10T00:00:00Z&end=2025-03-10T03:00:00Z"
HOURLY, RANGE = "litellm_cloudzero_hourly", "litellm_cloudzero_range"
ROUTES = ("/ledger", "/ledger.csv", "/ledger.json")


@pytest.fixture
def target(tmp_path, monkeypatch) -> ExportTarget:
    monkeypatch.setenv("AIRFLOW__CLOUDZERO__STAGING_URI", str(tmp_path))
    monkeypatch.setenv("CLOUDZERO_EXPORT_START", "2025-03-01T00:00:00Z")
    for var in ("CLOUDZERO_CONN_ID", "CLOUDZERO_DAILY_TAG_CONN_ID", "CLOUDZERO_SETTLE_MINUTES"):
        monkeypatch.delenv(var, raising=False)
    return ExportTarget("cloudzero_default")


@pytest.fixture
def client(airflow_db, monkeypatch):
    """A client of the ledger app; ``client(authenticated=True)`` stands in for Airflow's auth manager saying yes
    to everything (who may see what is checked below with a real auth manager and against a real api-server in
    the deployment tests). Overrides are undone after each test."""
    from cloudzero_provider.plugins.ledger_app import ACCESS_DEPENDENCIES, app

    monkeypatch.setattr(app, "dependency_overrides", {})

    def make(authenticated: bool) -> TestClient:
        app.dependency_overrides.clear()
        if authenticated:
            for dependency in ACCESS_DEPENDENCIES:
                app.dependency_overrides[dependency] = lambda: None
        return TestClient(app)

    return make


@pytest.fixture
def runs(airflow_db):
    """Add hourly runs to Airflow's metadata DB (``runs(hour, state)``); removed after the test."""
    from airflow.models.dagrun import DagRun
    from airflow.settings import Session

    added: list[str] = []

    def add(hour: datetime, state: str, dag_id: str = HOURLY) -> str:
        run_id = f"scheduled__{hour.isoformat()}"
        with Session() as session:  # type: ignore[misc]
            session.add(DagRun(dag_id=dag_id, run_id=run_id, logical_date=hour, run_after=hour + timedelta(hours=1),
                               data_interval=(hour, hour + timedelta(hours=1)), state=state, run_type="scheduled"))  # fmt: skip
            session.commit()
        added.append(run_id)
        return run_id

    yield add
    with Session() as session:  # type: ignore[misc]
        session.query(DagRun).filter(DagRun.run_id.in_(added)).delete(synchronize_session=False)
        session.commit()


def test_anonymous_requests_get_no_figures(target, client):
    target.manifests.write_exported(Manifest(H, rows=3, cost="12.5", sent_at=H), late_correction=False)
    paths = [*(f"{r}?start=2025-03-10T00:00:00Z&end=2025-03-10T03:00:00Z" for r in ROUTES),
             *(f"{r}?dag_id={RANGE}" for r in ROUTES), "/reports/cloudzero_default/2026-11-01/report.html"]  # fmt: skip
    for path in paths:
        response = client(authenticated=False).get(path)
        assert response.status_code == 401 and "12.5" not in response.text, path


@pytest.fixture
def one_dag_reader(airflow_db, monkeypatch):
    """Airflow's SimpleAuthManager, allowed to read one DAG only (as a FAB or Keycloak role may be), and a token
    of its viewer: the app's own dependencies decide, through Airflow's ``requires_access_dag``."""
    from airflow.api_fastapi.app import _AuthManagerState
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    class OneDagAuthManager(SimpleAuthManager):
        def is_authorized_dag(self, *, method, user, access_entity=None, details=None):  # type: ignore[override]
            return method == "GET" and details is not None and details.id == RANGE

    manager = OneDagAuthManager()
    monkeypatch.setattr(_AuthManagerState, "instance", manager)
    return manager.generate_jwt(SimpleAuthManagerUser(username="finops", role="viewer"))


def test_a_user_who_may_read_one_export_dag_sees_its_stream_and_nothing_else(target, client, one_dag_reader):
    target.manifests.write_exported(Manifest(H, rows=3, cost="12.5", sent_at=H), late_correction=False)
    http = client(authenticated=False)
    auth = {"Authorization": f"Bearer {one_dag_reader}"}
    window = "start=2025-03-10T00:00:00Z&end=2025-03-10T03:00:00Z"
    for route in ROUTES:
        allowed = http.get(f"{route}?dag_id={RANGE}&{window}", headers=auth)
        assert allowed.status_code == 200 and "12.5" in allowed.text, route
        for query in ("", f"?dag_id={HOURLY}", f"?dag_id={RANGE}&dag_id={HOURLY}"):
            refused = http.get(f"{route}{query}", headers=auth)
            assert refused.status_code == 403 and "12.5" not in refused.text, (route, query)
    both = http.get(f"/ledger?dag_id={HOURLY}&dag_id={RANGE}&{window}", headers=auth)
    assert both.status_code == 200 and "(the stream of litellm_cloudzero_range)" in both.text, (
        "the last one counts"
    )
    other = http.get(f"/ledger?dag_id={RANGE}&stream=cz_other", headers=auth)
    assert (
        other.status_code == 400
        and other.json()["detail"] == f"{RANGE} does not export to the stream cz_other"
    )
    report = http.get("/reports/cloudzero_default/2026-11-01/report.html", headers=auth)
    assert report.status_code == 403, "reports stay with the hourly export DAG's readers"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
def test_no_docs_or_schema_routes_answer_anyone(target, client, path):
    for authenticated in (False, True):
        response = client(authenticated=authenticated).get(path)
        assert response.status_code in (401, 404), (path, response.status_code)
        assert "openapi" not in response.text.lower() and "swagger" not in response.text.lower()


def test_every_route_checks_a_dag_permission():
    """The app itself only requires a login: each route must add its DAG check, or anyone logged in reads it."""
    from fastapi.routing import APIRoute

    from cloudzero_provider.plugins.ledger_app import LEDGER_ACCESS, REPORT_ACCESS, app

    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert {r.path for r in routes} == {*ROUTES, "/reports/{stream}/{name}/report.html"}
    for route in routes:
        checks = {d.call for d in route.dependant.dependencies}
        assert checks & {LEDGER_ACCESS, REPORT_ACCESS}, route.path


def test_pages_and_downloads_carry_the_full_security_policy(target, client):
    from cloudzero_provider.plugins.ledger_app import PAGE_POLICY

    folder = target.reports_dir / "2026-11-01"
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<html><body><script>alert(1)</script>ok</body></html>")
    for route in ROUTES:
        response = client(authenticated=True).get(URL.replace("/ledger", route))
        assert response.status_code == 200
        assert (
            response.headers["content-security-policy"]
            == PAGE_POLICY
            == (
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'; "
                "form-action 'none'; base-uri 'none'"
            )
        )
        assert response.headers["x-frame-options"] == "SAMEORIGIN"
        assert response.headers["x-content-type-options"] == "nosniff"
    page = client(authenticated=True).get(URL).text
    assert '<li><a href="reports/cloudzero_default/2026-11-01/report.html">2026-11-01</a></li>' in page
    report = client(authenticated=True).get("/reports/cloudzero_default/2026-11-01/report.html")
    assert report.status_code == 200 and "ok" in report.text
    assert report.headers["content-security-policy"] == f"sandbox; {PAGE_POLICY}"
    assert report.headers["content-disposition"] == 'inline; filename="cloudzero-report-2026-11-01.html"'
    assert report.headers["x-frame-options"] == "SAMEORIGIN"
    assert report.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("start=0001-01-01T00:00:00Z", "start"),
        ("end=0001-01-01T05:00:00Z", "end"),
        ("start=9999-12-31T22:00:00Z&end=9999-12-31T23:59:00Z", "end"),
        ("start=9999-12-31T23:00:00Z&end=2026-11-01T00:00:00Z", "start"),
        ("end=1999-12-31T00:00:00Z", "end"),
        ("start=not-a-date", "start"),
        ("end=" + "9" * 5000, "end"),
    ],
)
def test_dates_out_of_range_get_400_naming_the_parameter(target, client, query, name):
    for route in ROUTES:
        response = client(authenticated=True).get(f"{route}?{query}")
        assert response.status_code == 400, response.text
        assert response.json()["detail"].startswith(f"{name} must")


def test_daily_rollup_days_show_as_such_and_values_are_escaped(target, client):
    target.manifests.write_exported(
        Manifest(H, rows=2, cost="7", origin="daily_team", source=SourceTotals(1, "7"), sent_at=H,
                 reconcile={"status": "<b>7</b>"}),
        late_correction=False,
    )  # fmt: skip
    response = client(authenticated=True).get(URL)
    assert response.status_code == 200
    assert '<td class="st">daily rollup</td>' in response.text
    assert response.text.count('<td class="st">in daily rollup</td>') == 2
    assert "&lt;b&gt;7&lt;/b&gt;" in response.text and "<b>7</b>" not in response.text
    assert '<span id="count-daily-rollup">1 daily rollup</span>' in response.text


@pytest.mark.parametrize("name", ["..", ".", "a/b", "x" * 300, "cloudzero_default\n", "a b", "..\n"])
def test_stream_names_that_could_leave_the_staging_root_are_refused(target, client, name):
    for route in ROUTES:
        response = client(authenticated=True).get(route, params={"stream": name})
        assert response.status_code == 400 and response.json()["detail"] == "invalid stream name"


@pytest.mark.parametrize("name", ["x" * 300, "a b", "~", "a/b", "<script>", "dag\n"])
def test_dag_ids_airflow_could_not_hold_are_refused(target, client, name):
    for route in ROUTES:
        response = client(authenticated=True).get(route, params={"dag_id": name})
        assert response.status_code == 400 and response.json()["detail"] == "invalid dag_id"


@pytest.mark.parametrize("name", ["..", ".", "x" * 300, "2026-11-01\n", "a b", "..\n"])
def test_report_names_that_could_leave_the_reports_folder_are_refused(target, client, name):
    """A report that exists under a name the guard refuses: the guard, not a missing file, answers."""
    from urllib.parse import quote

    (target.reports_dir / "2026-11-01").mkdir(parents=True)
    (target.reports_dir / "2026-11-01" / "report.html").write_text("secret figures")
    (target.dir / "report.html").write_text("secret figures")  # what ".." would reach
    if name.strip() in (".", ".."):  # HTTP clients collapse dot segments, even encoded: ask the route itself
        from fastapi import HTTPException

        from cloudzero_provider.plugins.ledger_app import report

        with pytest.raises(HTTPException) as info:
            report("cloudzero_default", name)
        assert (info.value.status_code, info.value.detail) == (400, "invalid report name")
        with pytest.raises(HTTPException) as info:
            report(name, "2026-11-01")
        assert (info.value.status_code, info.value.detail) == (400, "invalid stream name")
        return
    response = client(authenticated=True).get(
        f"/reports/cloudzero_default/{quote(name, safe='')}/report.html"
    )
    assert response.status_code == 400 and response.json()["detail"] == "invalid report name"
    assert "secret figures" not in response.text
    response = client(authenticated=True).get(f"/reports/{quote(name, safe='')}/2026-11-01/report.html")
    assert response.status_code == 400 and response.json()["detail"] == "invalid stream name"


def test_an_unreadable_manifest_shows_failed_with_why(target, client):
    target.manifests.dir.mkdir(parents=True)
    target.manifests.path(H).write_text('{"hour": "2025-03-10T00:00:00Z", "stat')
    response = client(authenticated=True).get(URL)
    assert response.status_code == 200 and '<span id="count-failed">1 failed</span>' in response.text
    assert "2025-03-10T00Z.json: " in response.text, "the reason names the file"
    manifest = target.manifests.get(H)
    assert manifest is not None and manifest.status == "failed" and manifest.unreadable


def test_runs_in_airflow_tell_running_from_late_and_a_failed_hour_links_its_task(target, client, runs):
    """Hour 0 failed (its reason, its task instance), hour 1 has its run in flight, hour 2 is overdue with no run."""
    attempt = Attempt(HOURLY, "scheduled__2025-03-10T00:00:00+00:00", "transform", -1, 3)
    target.manifests.mark(H, status="failed", attempt=attempt, reason="task transform failed: spend is NaN")
    running = runs(H + timedelta(hours=1), "running")
    response = client(authenticated=True).get(URL)
    text = response.text
    assert (
        '<tr class="st-failed" id="h-2025-03-10T00">' in text
        and "task transform failed: spend is NaN" in text
    )
    assert ('href="../dags/litellm_cloudzero_hourly/runs/scheduled__2025-03-10T00%3A00%3A00%2B00%3A00/tasks/transform"'
            in text)  # fmt: skip
    assert '<tr class="st-running" id="h-2025-03-10T01">' in text
    assert (
        f'href="../dags/litellm_cloudzero_hourly/runs/{running.replace(":", "%3A").replace("+", "%2B")}"'
        in text
    )
    assert '<tr class="st-late" id="h-2025-03-10T02">' in text
    data = client(authenticated=True).get(URL.replace("/ledger", "/ledger.json")).json()
    assert [h["status"] for h in data["hours"]] == ["failed", "running", "late"]
    assert data["headline"][0]["hours_failed"] == 1 and data["headline"][0]["hours_waiting"] == 2


def test_the_dag_tab_shows_the_dags_stream_or_says_it_exports_nothing(target, client, monkeypatch):
    monkeypatch.setenv("CLOUDZERO_DAILY_TAG_CONN_ID", "cz_tags")
    target.manifests.write_exported(
        Manifest(H, rows=3, cost="12.5", sent_at=H, drop_ids=["d"]), late_correction=False
    )
    http = client(authenticated=True)
    window = "start=2025-03-10T00:00:00Z&end=2025-03-10T03:00:00Z"
    hourly = http.get(f"/ledger?dag_id={HOURLY}&tab=1&{window}").text
    assert "CloudZero ledger &mdash; cloudzero_default" in hourly and "Links open inside this tab" in hourly
    assert 'id="headline-cz_tags"' not in hourly, "the hourly DAG sends nothing to the tag stream"
    assert (
        "ledger.csv?stream=cloudzero_default&amp;dag_id=litellm_cloudzero_hourly&amp;tab=1&amp;start="
        in hourly
    )
    daily = http.get(f"/ledger?dag_id=litellm_cloudzero_daily_rollup&{window}").text
    assert 'id="headline-cloudzero_default"' in daily and 'id="headline-cz_tags"' in daily
    tags = http.get(f"/ledger?dag_id=litellm_cloudzero_daily_rollup&stream=cz_tags&{window}")
    assert tags.status_code == 200 and "CloudZero ledger &mdash; cz_tags" in tags.text
    other = http.get("/ledger?dag_id=some_etl_dag&tab=1")
    assert other.status_code == 200 and "some_etl_dag does not export to CloudZero" in other.text
    assert "12.5" not in other.text
    for route in ("/ledger.csv", "/ledger.json"):
        refused = http.get(f"{route}?dag_id=some_etl_dag")
        assert refused.status_code == 404 and "does not export to CloudZero" in refused.json()["detail"]


def test_downloads_are_the_window_exact_and_neutralised(target, client):
    attempt = Attempt(RANGE, "manual__x", "chunk.upload", 0, 1)
    target.manifests.mark(H, status="failed", attempt=attempt, reason='=HYPERLINK("http://evil")')
    target.manifests.write_exported(
        Manifest(H + timedelta(hours=1), rows=2, cost="0.000000000001", source=SourceTotals(1, "0.000000000001"),
                 sent_at=H, drop_ids=["d"]), late_correction=False)  # fmt: skip
    response = client(authenticated=True).get(URL.replace("/ledger", "/ledger.csv"))
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == (
        'attachment; filename="cloudzero-ledger-cloudzero_default-20250310T00-20250310T03.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["status"] for r in rows] == ["failed", "exported", "late"]
    assert rows[0]["detail"] == '\'=HYPERLINK("http://evil")'
    assert (
        rows[0]["airflow_path"] == "/dags/litellm_cloudzero_range/runs/manual__x/tasks/chunk.upload/mapped/0"
    )
    assert rows[1]["sent_usd"] == "0.000000000001" and rows[1]["source_usd"] == "0.000000000001"
    page = client(authenticated=True).get(URL).text
    assert 'title="0.000000000001 USD (exact)">&lt;0.01</td>' in page


def test_the_plugin_builds_its_app_only_when_the_api_server_asks():
    """Every task process loads the installed plugins: loading ours must not import FastAPI and the page."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cloudzero_provider.plugins.ledger import CloudZeroLedgerPlugin\n"
        "print('=>', 'fastapi' in sys.modules, 'cloudzero_provider.ledger_view' in sys.modules)\n"
        "apps = CloudZeroLedgerPlugin().fastapi_apps\n"
        "print('=>', 'fastapi' in sys.modules, apps[0]['url_prefix'], type(apps[0]['app']).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    said = [line for line in out.splitlines() if line.startswith("=> ")]  # Airflow may log to stdout too
    assert said == ["=> False False", "=> True /cloudzero FastAPI"]


def test_the_plugin_offers_a_dag_tab_the_ui_can_route():
    """Airflow 3.3's UI shows a DAG tab only for an external view with destination "dag" and a url_route, fills
    {DAG_ID} in its href, and finds a view by url_route or else by its name as a slug: the two must not meet."""
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    from cloudzero_provider.plugins.ledger import CloudZeroLedgerPlugin

    views = [ExternalViewResponse.model_validate(v) for v in CloudZeroLedgerPlugin.external_views]
    nav, tab = views
    assert (nav.destination, nav.url_route, nav.category) == ("nav", None, "browse")
    assert tab.destination == "dag" and tab.url_route and not tab.url_route.startswith("/")
    assert tab.href == "cloudzero/ledger?dag_id={DAG_ID}&tab=1"
    slugs = [v.url_route or v.name.lower().replace(" ", "-", 1) for v in views]
    assert len(set(slugs)) == 2, slugs


def test_the_headline_finds_the_newest_hour_and_the_last_reconciliation_outside_the_window(target, client):
    """Opened without parameters (the last 48 hours) a year after the last export: the headline still names the
    newest hour held, how far behind that is, links the hours around it, and the reconciliation of the day before."""
    verdict = {"status": "matches", "source": "1", "held": "1", "run": "scheduled__x/-1/1/reconcile",
               "at": "2025-03-10T02:05:00.000Z",
               "decided_by": {"dag_id": "litellm_cloudzero_reconcile", "run_id": "scheduled__x", "task_id": "reconcile",
                              "map_index": -1, "try_number": 1, "pass": "reconcile"}}  # fmt: skip
    for offset in range(4):
        hour = H - timedelta(hours=offset + 2)
        target.manifests.write_exported(Manifest(hour, rows=1, cost="1", sent_at=hour, drop_ids=["d"],
                                                 reconcile=verdict), late_correction=False)  # fmt: skip
    target.manifests.write_exported(
        Manifest(H, rows=1, cost="2", sent_at=H, drop_ids=["d"]), late_correction=False
    )
    target.manifests.mark(H + timedelta(hours=1), status="failed", attempt=Attempt(), reason="boom")
    page = client(authenticated=True).get("/ledger").text
    assert '<section class="headline behind" id="headline-cloudzero_default">' in page
    assert "newest hour in CloudZero: <b>2025-03-10 00:00 UTC</b>" in page, (
        "a failed hour after it is not held"
    )
    assert (
        'href="?stream=cloudzero_default&amp;start=2025-03-08T13%3A00%3A00Z&amp;end=2025-03-10T13%3A00%3A00Z"'
        in page
    )
    assert (
        'last reconciliation: <a href="../dags/litellm_cloudzero_reconcile/runs/scheduled__x/tasks/reconcile"'
        in page
    )
    assert "2025-03-10 02:05 UTC</a> &mdash; 4 matches" in page
    data = client(authenticated=True).get("/ledger.json").json()
    assert data["headline"][0]["newest_hour_held"] == "2025-03-10T00:00:00Z" and data["headline"][0]["behind"]
    assert data["headline"][0]["last_reconciliation"]["verdicts"] == {"matches": 4}
    assert len(data["hours"]) == 48 and {h["status"] for h in data["hours"]} <= {"late", "not yet due"}
