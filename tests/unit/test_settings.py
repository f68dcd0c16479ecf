"""Settings from the environment: converted by type, bounded, each error naming its variable."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from cloudzero_provider.options import ExportOptions
from cloudzero_provider.settings import SETTINGS, ExportSettings


def test_defaults_and_conversions():
    s = ExportSettings.from_env({
        "CLOUDZERO_EXPORT_START": "2026-10-01T00:00:00+02:00", "CLOUDZERO_DIMENSIONS": " team_id, model ,",
        "CLOUDZERO_ALERT_LIMITS": '{"team": 5}', "CLOUDZERO_SETTLE_MINUTES": " 15 ", "CLOUDZERO_POOL": "",
    })  # fmt: skip
    assert s.start_date == datetime(2026, 9, 30, 22, tzinfo=timezone.utc)
    assert s.dimensions == ["team_id", "model"] and s.alert_limits == {"team": 5} and s.settle_minutes == 15
    assert s.pool == "cloudzero_anycost", "an empty variable keeps the default"
    assert ExportSettings() == ExportSettings.from_env({})


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        (
            "CLOUDZERO_SETTLE_MINUTES",
            "1441",
            "CLOUDZERO_SETTLE_MINUTES) must be a whole number from 0 to 1440",
        ),
        ("CLOUDZERO_MAX_REQUEST_BYTES", "6000000", "from 16384 to 5000000"),
        ("CLOUDZERO_TASK_RETRIES", "-1", "from 0 to 20"),
        ("CLOUDZERO_RECONCILE_RETENTION_DAYS", "ten", "CLOUDZERO_RECONCILE_RETENTION_DAYS='ten'"),
        ("CLOUDZERO_EXPORT_START", "2026-11-01T00:00:00", "has no time zone"),
        ("CLOUDZERO_ALERT_LIMITS", "[1]", "must be a JSON object"),
    ],
)
def test_a_bad_value_fails_naming_the_variable(var, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ExportSettings.from_env({var: value})


def test_every_setting_is_documented_and_in_the_table():
    table = ExportSettings().table()
    for name, (var, text) in SETTINGS.items():
        assert f"| {name} | `{var}` |" in table and text


def test_options_parse_templated_dimensions_and_check_themselves():
    assert ExportOptions(dimensions="team_id, model,").dimension_names() == ["team_id", "model"]
    assert ExportOptions(dimensions="None").dimension_names() is None
    assert ExportOptions(max_values_per_hour=0).value_cap is None
    with pytest.raises(ValueError, match="unknown dimension 'colour'"):
        ExportOptions(dimensions="model,colour").checked()
    with pytest.raises(ValueError, match="on_invalid must be one of"):
        ExportOptions(on_invalid="ignore").checked()
    with pytest.raises(ValueError, match="max_request_bytes must be at least 16384"):
        ExportOptions(max_request_bytes=100).checked()
    assert ExportOptions(dimensions=["model"]).but(on_invalid="quarantine") == ExportOptions(
        dimensions=["model"], on_invalid="quarantine"
    )


def test_provider_metadata_names_the_installed_version():
    from importlib.metadata import version

    from cloudzero_provider.get_provider_info import get_provider_info

    info = get_provider_info()
    assert info["versions"][0] == version("airflow-provider-cloudzero")
    assert "plugins" not in info, "registered once, through its entry point"
    integrations = {h["integration-name"]: h["python-modules"] for h in info["hooks"]}
    assert integrations == {
        "CloudZero": ["cloudzero_provider.hooks.cloudzero"],
        "LiteLLM": ["cloudzero_provider.hooks.litellm"],
    }
