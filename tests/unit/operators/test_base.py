"""The base operator: one export target per connection id, and staging areas that keep DAGs apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.operators.extract import LiteLLMSpendExtractOperator
from cloudzero_provider.operators.upload import AnyCostUploadOperator
from cloudzero_provider.windows import Window

HOUR = Window.hour("2026-11-01T10:00:00Z")


def at(path) -> Path:
    """A staging path (an ObjectStoragePath, ``file://...``) as a local path."""
    return Path(path.path)


def test_the_connection_id_names_the_target_and_its_manifests(tmp_path):
    op = AnyCostUploadOperator(task_id="u", cloudzero_conn_id="cz_prod", staging_uri=str(tmp_path))
    assert at(op.target.dir) == (tmp_path / "cz_prod")
    assert at(op.target.manifests.dir) == (tmp_path / "cz_prod" / "manifests")


def test_a_staging_area_keeps_a_manual_dags_stage_apart_from_the_hourly_one(tmp_path):
    hourly = LiteLLMSpendExtractOperator(task_id="e", staging_uri=str(tmp_path))
    ranged = LiteLLMSpendExtractOperator(task_id="e", staging_uri=str(tmp_path), staging_area="range")
    assert at(hourly.stage(HOUR).dir) == (tmp_path / "cloudzero_default" / "2026-11-01T10Z")
    assert at(ranged.stage(HOUR).dir) == (tmp_path / "cloudzero_default" / "range" / "2026-11-01T10Z")
    assert at(ranged.stage(HOUR, area="retry").dir) == (
        tmp_path / "cloudzero_default" / "range" / "retry" / "2026-11-01T10Z"
    )
    assert at(ranged.target.manifests.dir) == at(hourly.target.manifests.dir), "manifests stay shared"


@pytest.mark.parametrize("area", ["..", "../x", "a/b", "", " "])
def test_a_staging_area_that_is_not_a_folder_name_is_refused(tmp_path, area):
    op = LiteLLMSpendExtractOperator(task_id="e", staging_uri=str(tmp_path), staging_area=area)
    if area == "":
        assert at(op.stage(HOUR).dir) == (tmp_path / "cloudzero_default" / "2026-11-01T10Z")
        return
    with pytest.raises(AirflowFailException, match="is not a folder name"):
        op.stage(HOUR)


def test_a_connection_id_that_is_not_a_folder_name_is_refused(tmp_path):
    op = AnyCostUploadOperator(task_id="u", cloudzero_conn_id="..", staging_uri=str(tmp_path))
    with pytest.raises(AirflowFailException, match="cannot name a staging folder"):
        _ = op.target
