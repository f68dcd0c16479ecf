"""Housekeeping decisions on a staging folder written by hand: what goes, what a run in flight keeps."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from cloudzero_provider.housekeeping import Housekeeper, InFlight
from cloudzero_provider.manifests import Manifest
from cloudzero_provider.target import ExportTarget

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
OLD, RECENT = "2026-11-01T10Z", "2026-11-30T10Z"


def layout(tmp_path) -> ExportTarget:
    target = ExportTarget("cloudzero_default", str(tmp_path))
    root = tmp_path / "cloudzero_default"
    for folder in (OLD, RECENT, f"late/{OLD}", f"reconcile/{OLD}", f"range-0123456789ab/{OLD}",
                   f"range-0123456789ab/retry/{OLD}", f"range-dry-run-aaaaaaaaaaaa/{OLD}/requests",
                   "reports/2026-11-01", "reports/2025-10-01"):  # fmt: skip
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "extract.jsonl").write_text("x" * 10)
    (root / "reports/2026-11-01/aggregate.jsonl").write_text("raw names")
    (root / "telemetry/0123456789abcdef").mkdir(parents=True)
    for day in ("2025-10-01", "2026-11-01"):  # what telemetry last sent a day: kept as long as reports
        (root / f"telemetry/0123456789abcdef/{day}.json").write_text("{}")
    target.claim_area("range-0123456789ab", dag_id="litellm_cloudzero_range", run_id="manual__1")
    target.manifests.put(Manifest(datetime(2026, 11, 1, 10, tzinfo=timezone.utc)))
    for path in root.rglob("*"):  # each file written when its window ran: a day after it, or on NOW's eve
        if path.is_file():
            written = NOW - timedelta(days=1) if RECENT in str(path) else WRITTEN
            os.utime(path, (written.timestamp(), written.timestamp()))
    return target


WRITTEN = datetime(2026, 11, 2, tzinfo=timezone.utc)


def sweep(target, **in_flight):
    return Housekeeper(target, cutoff=NOW - timedelta(days=7), report_cutoff=NOW - timedelta(days=400), now=NOW,
                       in_flight=InFlight(**in_flight)).run()  # fmt: skip


def left(tmp_path) -> set[str]:
    root = tmp_path / "cloudzero_default"
    return {
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".lock")
    }


def test_nothing_in_flight_everything_past_retention_goes_but_manifests_and_recent_data(tmp_path):
    result = sweep(layout(tmp_path)).as_xcom()
    assert left(tmp_path) == {
        f"{RECENT}/extract.jsonl", "manifests/2026-11-01T10Z.json",
        "reports/2026-11-01/extract.jsonl",  # the report stays 400 days, its raw aggregate goes with staged data
        "telemetry/0123456789abcdef/2026-11-01.json",
    }  # fmt: skip
    marker = len('{"dag_id": "litellm_cloudzero_range", "run_id": "manual__1"}')
    assert (result["files"], result["bytes"]) == (10, 7 * 10 + len("raw names") + marker + len("{}")), (
        "7 stages, 1 raw, 1 claim, 1 day telemetry sent 400 days ago"
    )
    assert set(result["removed"]) >= {
        "hourly stages", "late", "reconcile", "range-0123456789ab", "reports", "telemetry"
    }  # fmt: skip


def test_runs_and_passes_in_flight_keep_their_files(tmp_path):
    target = layout(tmp_path)
    result = sweep(
        target,
        hourly_hours=lambda hours: {h for h in hours if h.hour == 10 and h.day == 1},
        run=lambda dag_id, run_id: (dag_id, run_id) == ("litellm_cloudzero_range", "manual__1"),
        pass_running=lambda name: name == "late",
    ).as_xcom()
    still = left(tmp_path)
    assert {f"{OLD}/extract.jsonl", f"late/{OLD}/extract.jsonl", f"range-0123456789ab/{OLD}/extract.jsonl",
            f"range-0123456789ab/retry/{OLD}/extract.jsonl"} <= still  # fmt: skip
    assert (
        f"reconcile/{OLD}/extract.jsonl" not in still
        and f"range-dry-run-aaaaaaaaaaaa/{OLD}/requests/extract.jsonl" not in still
    )
    assert len(result["kept_in_flight"]) == 3


def test_a_stage_written_within_the_retention_stays_though_its_windows_are_past_it(tmp_path):
    """A history import (or a catch-up of old hours) stages windows past retention the day it runs: if it fails, its
    files must still be there when its task is cleared -- until the retention has passed since they were last
    written."""
    target = layout(tmp_path)
    area = tmp_path / "cloudzero_default" / "range-0123456789ab"
    retried = area / "retry" / OLD / "cbf.jsonl"
    retried.write_text("y" * 10)
    written = NOW - timedelta(days=3)  # the run failed three days ago, its upload last wrote then
    os.utime(retried, (written.timestamp(), written.timestamp()))
    caught_up = (
        tmp_path / "cloudzero_default" / "2026-10-01T10Z" / "extract.jsonl"
    )  # an hourly catch-up's stage
    caught_up.parent.mkdir()
    caught_up.write_text("z" * 10)
    os.utime(caught_up, (written.timestamp(), written.timestamp()))
    result = sweep(target).as_xcom()
    assert {f"range-0123456789ab/{OLD}/extract.jsonl", f"range-0123456789ab/retry/{OLD}/cbf.jsonl",
            "2026-10-01T10Z/extract.jsonl"} <= left(tmp_path)  # fmt: skip
    assert result["kept_recent"] == [
        "2026-10-01T10Z/ (written 2026-11-28T00:00Z, within retention)",
        "range-0123456789ab/ (written 2026-11-28T00:00Z, within retention)",
    ]
    assert f"reconcile/{OLD}/extract.jsonl" not in left(tmp_path), "other areas go by their windows' names"
    later = Housekeeper(target, cutoff=written, report_cutoff=NOW - timedelta(days=400), now=NOW + timedelta(days=7),
                        in_flight=InFlight()).run()  # fmt: skip
    assert not any(p.startswith(("range-0123456789ab/", "2026-10-01T10Z/")) for p in left(tmp_path)), (
        "gone once its retention passed"
    )
    assert later.kept_recent == []


def test_a_sweep_killed_half_way_is_finished_by_the_next(tmp_path, monkeypatch):
    target = layout(tmp_path)
    fs = target.dir.fs
    real_rm, calls = fs.rm, []

    def dying_rm(paths, *a, **k):
        calls.append(paths)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_rm(paths, *a, **k)

    monkeypatch.setattr(fs, "rm", dying_rm)
    with pytest.raises(KeyboardInterrupt):
        sweep(target)
    monkeypatch.setattr(fs, "rm", real_rm)
    sweep(target)
    assert left(tmp_path) == {
        f"{RECENT}/extract.jsonl",
        "manifests/2026-11-01T10Z.json",
        "reports/2026-11-01/extract.jsonl",
        "telemetry/0123456789abcdef/2026-11-01.json",
    }
