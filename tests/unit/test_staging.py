"""Staging: the root, atomic writes, a window's stage, export targets and their areas."""

from __future__ import annotations

import pytest

from cloudzero_provider.json_lines import BATCH_ROWS, encode_line
from cloudzero_provider.staging import WindowStage, staging_root, write_atomically
from cloudzero_provider.target import ExportTarget
from cloudzero_provider.windows import Window

HOUR = Window.hour("2026-11-01T10:00:00Z")


def test_the_root_follows_the_provider_option_then_the_old_variable_then_airflow_home(tmp_path, monkeypatch):
    monkeypatch.delenv("AIRFLOW__CLOUDZERO__STAGING_URI", raising=False)
    monkeypatch.delenv("CLOUDZERO_STAGING_URI", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    assert staging_root().path == str(tmp_path / "home" / "cloudzero-staging")
    monkeypatch.setenv("CLOUDZERO_STAGING_URI", str(tmp_path / "old"))
    assert staging_root().path == str(tmp_path / "old")
    monkeypatch.setenv("AIRFLOW__CLOUDZERO__STAGING_URI", str(tmp_path / "new"))
    assert staging_root().path == str(tmp_path / "new")
    assert staging_root(str(tmp_path / "explicit")).path == str(tmp_path / "explicit")


def test_rows_written_a_batch_at_a_time_are_the_lines_written_one_by_one(tmp_path):
    """Lines already encoded, joined in batches, write the very bytes (and count) the rows' own encoding does,
    across batch boundaries; a failed batched write leaves the old file."""
    stage = WindowStage(staging_root(str(tmp_path)), HOUR)
    rows = [
        {"i": i, "name": "é\u2028" * (i % 3), "none": None, "dims": {"t": f"t{i}"}}
        for i in range(2 * BATCH_ROWS + 7)
    ]
    assert stage.write_jsonl("one.jsonl", rows) == len(rows)
    assert stage.write_lines("lines.jsonl", (encode_line(r) for r in rows)) == len(rows)
    one = stage.path("one.jsonl").read_bytes()
    assert one.count(b"\n") == len(rows)
    assert one == b"".join(encode_line(r) for r in rows) == stage.path("lines.jsonl").read_bytes()

    def exploding():
        yield from (encode_line(r) for r in rows[: BATCH_ROWS + 1])
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        stage.write_lines("lines.jsonl", exploding())
    assert stage.path("lines.jsonl").read_bytes() == one, "old file intact"


def test_an_atomic_write_leaves_no_temporary_file_and_replaces_whole(tmp_path):
    path = staging_root(str(tmp_path)) / "a" / "b.json"
    write_atomically(path, b"first")
    write_atomically(path, b"second")
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.json"]


def test_a_stage_writes_and_reads_json_lines_and_a_failed_writer_leaves_nothing(tmp_path):
    stage = WindowStage(staging_root(str(tmp_path)), HOUR)
    assert stage.write_jsonl("rows.jsonl", ({"i": i, "name": "é"} for i in range(3))) == 3
    assert list(stage.read_jsonl("rows.jsonl")) == [{"i": i, "name": "é"} for i in range(3)]

    def exploding():
        yield {"i": 0}
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        stage.write_jsonl("rows.jsonl", exploding())
    assert list(stage.read_jsonl("rows.jsonl")) == [{"i": i, "name": "é"} for i in range(3)], (
        "old file intact"
    )
    assert sorted(p.name for p in (tmp_path / HOUR.label).iterdir()) == ["rows.jsonl"]
    with pytest.raises(FileNotFoundError, match="did the previous task of window"):
        stage.read_json("extract.json")


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x" * 201, "cz\n", "c z"])
def test_a_connection_id_that_cannot_name_a_folder_is_refused(name):
    with pytest.raises(ValueError, match="cannot name a staging folder"):
        ExportTarget(name)


@pytest.mark.parametrize("area", ["..", "a/b", "a.b", "x" * 65, "late\n"])
def test_an_area_that_is_not_a_folder_name_is_refused(tmp_path, area):
    with pytest.raises(ValueError, match="is not a folder name"):
        ExportTarget("cloudzero_default", str(tmp_path)).stage(HOUR, area=area)


def test_a_target_owns_its_folder_asset_and_alias(tmp_path):
    target = ExportTarget("cz_prod", str(tmp_path))
    assert target.dir.path == str(tmp_path / "cz_prod")
    assert target.stage(HOUR, area=("range-abc", None, "retry")).dir.path == str(
        tmp_path / "cz_prod" / "range-abc" / "retry" / HOUR.label
    )
    assert target.asset.uri == "cloudzero://anycost/cz_prod/litellm-hours"
    assert target.alias.name == "litellm_cloudzero_hours_alias__cz_prod"
    assert target.report_dir(Window.of("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z")).name == "2026-11-01"


def test_reads_of_missing_files_say_so_and_removing_nothing_is_no_error(tmp_path):
    from cloudzero_provider.staging import read_bytes, read_many, remove_file

    root = staging_root(str(tmp_path))
    write_atomically(root / "a.json", b"A")
    write_atomically(root / "b.json", b"B")
    assert read_bytes(root / "a.json") == b"A"
    with pytest.raises(FileNotFoundError):
        read_bytes(root / "gone.json")
    got = read_many([root / "a.json", root / "gone.json", root / "b.json"])
    assert got == {str(root / "a.json"): b"A", str(root / "b.json"): b"B"}
    assert read_many([]) == {}
    remove_file(root / "a.json")
    remove_file(root / "a.json")
    assert not (tmp_path / "a.json").exists()
    stage = WindowStage(root, HOUR)
    with pytest.raises(
        FileNotFoundError, match=r"extract\.json does not exist: did the previous task of window"
    ):
        stage.read_json("extract.json")
    with pytest.raises(FileNotFoundError, match=r"cbf\.jsonl does not exist"):
        list(stage.read_jsonl("cbf.jsonl"))
