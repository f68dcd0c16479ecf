"""The ledger page in process: who may see it, what it shows for daily-rollup days, and hostile values."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient

from cloudzero_provider.target import ExportTarget

H = datetime(2026, 11, 1, tzinfo=timezone.utc)
URL = "/ledger?start=2026-11-01T00:00:00Z&end=2026-11-01T03:00:00Z"


@pytest.fixture
def target(tmp_path, monkeypatch) -> ExportTarget:
    monkeypatch.setenv("AIRFLOW__CLOUDZERO__STAGING_URI", str(tmp_path))
    return ExportTarget("cloudzero_default")


def client(authenticated: bool) -> TestClient:
    from cloudzero_provider.plugins.ledger_app import LEDGER_ACCESS, app

    app.dependency_overrides.clear()
    if authenticated:
        app.dependency_overrides[LEDGER_ACCESS] = lambda: None
    return TestClient(app)


def test_anonymous_requests_get_no_figures(target):
    target.manifests.write_exported(H, {"rows": 3, "cost": "12.5"}, late_correction=False)
    for path in (URL, "/reports/cloudzero_default/2026-11-01/report.html"):
        response = client(authenticated=False).get(path)
        assert response.status_code == 401 and "12.5" not in response.text


def test_daily_rollup_days_show_as_such_and_values_are_escaped(target):
    target.manifests.write_exported(
        H,
        {"rows": 2, "cost": "<b>7</b>", "origin": "daily_team", "source": {"spend": "7"}},
        late_correction=False,
    )
    response = client(authenticated=True).get(URL)
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    )
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "<td>daily (daily_team)</td>" in response.text
    assert response.text.count("<td>in daily rollup</td>") == 2
    assert "&lt;b&gt;7&lt;/b&gt;" in response.text and "<b>7</b>" not in response.text
    assert '<span id="count-daily-rollup-days">1 daily-rollup days</span>' in response.text


@pytest.mark.parametrize("name", ["..", ".", "a/b", "x" * 300])
def test_names_that_could_leave_the_staging_root_are_refused(target, name):
    response = client(authenticated=True).get(f"/ledger?stream={name}")
    assert response.status_code in (400, 404)
    response = client(authenticated=True).get(f"/reports/cloudzero_default/{name}/report.html")
    assert response.status_code in (400, 404)


def test_an_unreadable_manifest_shows_failed(target):
    target.manifests.dir.mkdir(parents=True)
    target.manifests.path(H).write_text('{"hour": "2026-11-01T00:00:00Z", "stat')
    response = client(authenticated=True).get(URL)
    assert response.status_code == 200 and '<span id="count-failed">1 failed</span>' in response.text
    assert json.loads(json.dumps(target.manifests.get(H)))["status"] == "failed"


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
