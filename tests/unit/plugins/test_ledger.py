"""The ledger page in process: who may see it, what it shows for daily-rollup days, and hostile values."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient

from cloudzero_provider.manifests import Manifest, SourceTotals
from cloudzero_provider.target import ExportTarget

H = datetime(2026, 11, 1, tzinfo=timezone.utc)
URL = "/ledger?start=2026-11-01T00:00:00Z&end=2026-11-01T03:00:00Z"


@pytest.fixture
def target(tmp_path, monkeypatch) -> ExportTarget:
    monkeypatch.setenv("AIRFLOW__CLOUDZERO__STAGING_URI", str(tmp_path))
    return ExportTarget("cloudzero_default")


@pytest.fixture
def client(monkeypatch):
    """A client of the ledger app; ``client(authenticated=True)`` stands in for Airflow's auth manager saying yes
    (who may see the pages is proven against a real api-server in the deployment tests). Overrides are undone
    after each test."""
    from cloudzero_provider.plugins.ledger_app import LEDGER_ACCESS, app

    monkeypatch.setattr(app, "dependency_overrides", {})

    def make(authenticated: bool) -> TestClient:
        app.dependency_overrides.clear()
        if authenticated:
            app.dependency_overrides[LEDGER_ACCESS] = lambda: None
        return TestClient(app)

    return make


def test_anonymous_requests_get_no_figures(target, client):
    target.manifests.write_exported(Manifest(H, rows=3, cost="12.5", sent_at=H), late_correction=False)
    for path in (URL, "/reports/cloudzero_default/2026-11-01/report.html"):
        response = client(authenticated=False).get(path)
        assert response.status_code == 401 and "12.5" not in response.text


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
def test_no_docs_or_schema_routes_answer_anyone(target, client, path):
    for authenticated in (False, True):
        response = client(authenticated=authenticated).get(path)
        assert response.status_code in (401, 404), (path, response.status_code)
        assert "openapi" not in response.text.lower() and "swagger" not in response.text.lower()


def test_pages_carry_the_full_security_policy(target, client):
    from cloudzero_provider.plugins.ledger_app import PAGE_POLICY

    folder = target.reports_dir / "2026-11-01"
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<html><body><script>alert(1)</script>ok</body></html>")
    ledger = client(authenticated=True).get(URL)
    for directive in (
        "frame-ancestors 'self'",
        "form-action 'none'",
        "base-uri 'none'",
        "default-src 'none'",
    ):
        assert directive in ledger.headers["content-security-policy"]
    assert ledger.headers["x-frame-options"] == "SAMEORIGIN"
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
    response = client(authenticated=True).get(f"/ledger?{query}")
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
    assert response.headers["content-security-policy"] == (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'; "
        "form-action 'none'; base-uri 'none'"
    )
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "<td>daily (daily_team)</td>" in response.text
    assert response.text.count("<td>in daily rollup</td>") == 2
    assert "&lt;b&gt;7&lt;/b&gt;" in response.text and "<b>7</b>" not in response.text
    assert '<span id="count-daily-rollup-days">1 daily-rollup days</span>' in response.text


@pytest.mark.parametrize("name", ["..", ".", "a/b", "x" * 300, "cloudzero_default\n", "a b", "..\n"])
def test_stream_names_that_could_leave_the_staging_root_are_refused(target, client, name):
    response = client(authenticated=True).get("/ledger", params={"stream": name})
    assert response.status_code == 400 and response.json()["detail"] == "invalid stream name"


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


def test_an_unreadable_manifest_shows_failed(target, client):
    target.manifests.dir.mkdir(parents=True)
    target.manifests.path(H).write_text('{"hour": "2026-11-01T00:00:00Z", "stat')
    response = client(authenticated=True).get(URL)
    assert response.status_code == 200 and '<span id="count-failed">1 failed</span>' in response.text
    manifest = target.manifests.get(H)
    assert manifest is not None and manifest.status == "failed" and manifest.unreadable


def test_the_plugin_builds_its_app_only_when_the_api_server_asks():
    """Every task process loads the installed plugins: loading ours must not import FastAPI and the page."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cloudzero_provider.plugins.ledger import CloudZeroLedgerPlugin\n"
        "print('=>', 'fastapi' in sys.modules)\n"
        "apps = CloudZeroLedgerPlugin().fastapi_apps\n"
        "print('=>', 'fastapi' in sys.modules, apps[0]['url_prefix'], type(apps[0]['app']).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    said = [line for line in out.splitlines() if line.startswith("=> ")]  # Airflow may log to stdout too
    assert said == ["=> False", "=> True /cloudzero FastAPI"]
