"""Housekeeping of a staging target: what may be deleted, decided from the names and the runs in flight.

Staged data of an hour or a run older than the retention is deleted; manifests (they are the ledger) never are;
reports live longer (their raw ``aggregate.jsonl``, which holds caller-chosen names, goes with the staged data), and so
does what telemetry last sent each day.
Nothing that a run in flight may still read is touched:

- an hourly stage (``<target>/<window>/``) while the hourly DAG's run for one of its hours is queued or running;
- a per-run area (``range-<run>/``, ``daily-<run>/`` ...) while the run it names in its ``.run.json`` is;
- the late pass's and reconciliation's areas (``late/``, ``reconcile/``) while such a pass runs (each pass
  stages and reads within one task, so between passes their files are leftovers).

Ages come from the names (the window a folder stages), counted back from the housekeeping run's data interval. An
hourly stage or a per-run area also keeps its files while any of them was written after that cutoff: a history
import (or a catch-up of old hours) stages windows that are past retention the day it runs, and a failed one must
still be there when its task is cleared (its extract may hold hours LiteLLM's retention has purged since). Temporary files a killed writer left are removed once
older than :data:`ORPHAN_AGE`. Deleting is idempotent: a run killed half-way leaves only folders that are already past
retention and that nothing reads, and the next run finishes them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import ObjectStoragePath

from cloudzero_provider.staging import TMP_SUFFIX, local_path
from cloudzero_provider.target import RUN_MARKER, TELEMETRY_FOLDER, ExportTarget
from cloudzero_provider.windows import Window, parse_day, parse_window_label

log = logging.getLogger(__name__)

ORPHAN_AGE = timedelta(hours=6)
PASS_AREAS = ("late", "reconcile")
RUN_AREA_RE = re.compile(r"[a-z][a-z-]*-[0-9a-f]{12}")
KEEP = {"manifests"}


@dataclass
class Removed:
    """What one area lost: files, bytes and folders."""

    files: int = 0
    bytes: int = 0
    folders: int = 0

    def add(self, size: int) -> None:
        self.files += 1
        self.bytes += size


@dataclass
class InFlight:
    """How housekeeping asks Airflow what is still running (the operator answers from the task's context)."""

    hourly_hours: Callable[[list[datetime]], set[datetime]] = lambda hours: set()
    run: Callable[[str, str], bool] = lambda dag_id, run_id: False
    pass_running: Callable[[str], bool] = lambda name: False


@dataclass
class Sweep:
    removed: dict[str, Removed] = field(default_factory=dict)
    kept_in_flight: list[str] = field(default_factory=list)
    kept_recent: list[str] = field(default_factory=list)  # per-run areas written within the retention

    def area(self, name: str) -> Removed:
        return self.removed.setdefault(name, Removed())

    def as_xcom(self) -> dict[str, Any]:
        return {
            "removed": {k: v.__dict__ for k, v in sorted(self.removed.items()) if v.files or v.folders},
            "files": sum(v.files for v in self.removed.values()),
            "bytes": sum(v.bytes for v in self.removed.values()),
            "kept_in_flight": sorted(self.kept_in_flight),
            "kept_recent": sorted(self.kept_recent),
        }


def _mtime(info: dict[str, Any]) -> datetime | None:
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    return None


class Housekeeper:
    """
    Sweeps one export target.

    :param target: The export target (its staging folder).
    :param cutoff: Staged data of windows that ended at or before it is deleted.
    :param report_cutoff: Reports of days that ended at or before it are deleted.
    :param now: The moment temporary files are aged against (only they are aged by the clock).
    :param in_flight: What Airflow says is still running.
    """

    def __init__(
        self,
        target: ExportTarget,
        *,
        cutoff: datetime,
        report_cutoff: datetime,
        now: datetime,
        in_flight: InFlight,
    ) -> None:
        self.target = target
        self.cutoff = cutoff
        self.report_cutoff = report_cutoff
        self.now = now
        self.in_flight = in_flight
        self.sweep = Sweep()

    def run(self) -> Sweep:
        root = self.target.dir
        if not root.exists():
            return self.sweep
        entries = self._listing(root)
        by_top: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for rel, info in entries:
            by_top.setdefault(rel.split("/", 1)[0], []).append((rel, info))
        self._orphans(entries)
        hourly: dict[str, Window] = {}
        for top, files in sorted(by_top.items()):
            if top in KEEP or top.startswith("."):
                continue
            if top == "reports":
                self._reports(files)
            elif top == TELEMETRY_FOLDER:
                self._telemetry(files)
            elif top in PASS_AREAS:
                self._pass_area(top, files)
            elif RUN_AREA_RE.fullmatch(top):
                self._run_area(top, files)
            else:
                window = self._window(top)
                if window is not None:
                    hourly[top] = window
        self._hourly(hourly, by_top)
        self._prune_empty_folders()
        for area, removed in sorted(self.sweep.removed.items()):
            if removed.files or removed.folders:
                log.info("Housekeeping %s: removed %d file(s), %d bytes, %d folder(s) in %s", self.target.conn_id,
                         removed.files, removed.bytes, removed.folders, area)  # fmt: skip
        return self.sweep

    # -- listing and deleting ----------------------------------------------------------------------------

    def _listing(self, root: ObjectStoragePath) -> list[tuple[str, dict[str, Any]]]:
        """Every file under the target, relative to it, with its listing info (one listing on object storage)."""
        base = root.path.rstrip("/")
        found = root.fs.find(root.path, detail=True)
        return [
            (name[len(base) + 1 :], info)
            for name, info in sorted(found.items())
            if info.get("type", "file") == "file" and name.startswith(base + "/")
        ]

    def _delete(self, area: str, files: Iterable[tuple[str, dict[str, Any]]]) -> None:
        batch = list(files)
        if not batch:
            return
        paths = [f"{self.target.dir.path.rstrip('/')}/{rel}" for rel, _ in batch]
        self.target.dir.fs.rm(paths)
        removed = self.sweep.area(area)
        for _, info in batch:
            removed.add(int(info.get("size") or 0))

    def _prune_empty_folders(self) -> None:
        """Local disks keep empty folders; object stores have none."""
        local = local_path(self.target.dir)
        if local is None:
            return
        for folder in sorted(
            (p for p in local.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            if folder.name == "manifests" or folder == local / "reports":
                continue
            try:
                folder.rmdir()
            except OSError:
                continue  # not empty
            top = folder.relative_to(local).parts[0]
            self.sweep.area("hourly stages" if self._window(top) else top).folders += 1

    # -- what may go -------------------------------------------------------------------------------------

    @staticmethod
    def _window(name: str) -> Window | None:
        try:
            return parse_window_label(name)
        except ValueError:
            return None

    def _orphans(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        orphans = []
        for rel, info in entries:
            name = rel.rsplit("/", 1)[-1]
            mtime = _mtime(info)
            if (
                name.startswith(".")
                and name.endswith(TMP_SUFFIX)
                and mtime
                and mtime <= self.now - ORPHAN_AGE
            ):
                orphans.append((rel, info))
        self._delete("temporary files", orphans)

    def _reports(self, files: list[tuple[str, dict[str, Any]]]) -> None:
        whole, raw = [], []
        for rel, info in files:
            parts = rel.split("/")
            window = self._window(parts[1]) if len(parts) > 2 else None
            if window is None:
                continue
            if window.end <= self.report_cutoff:
                whole.append((rel, info))
            elif window.end <= self.cutoff and parts[-1] == "aggregate.jsonl":
                raw.append((rel, info))  # raw caller-chosen names: staged data, not the report
        self._delete("reports", whole)
        self._delete("reports (raw aggregates)", raw)

    def _telemetry(self, files: list[tuple[str, dict[str, Any]]]) -> None:
        """What telemetry last sent each day (``telemetry/<stream>/<day>.json``) is kept as long as reports: a day
        sent again after it is gone can no longer delete the records that day no longer holds."""
        old = []
        for rel, info in files:
            name = rel.rsplit("/", 1)[-1]
            try:
                day = parse_day(name.removesuffix(".json"))
            except ValueError:
                continue
            if name.endswith(".json") and day + timedelta(days=1) <= self.report_cutoff:
                old.append((rel, info))
        self._delete("telemetry", old)

    def _expired_windows(
        self, files: list[tuple[str, dict[str, Any]]], depth: int
    ) -> list[tuple[str, dict[str, Any]]]:
        """Files of window folders ``depth`` levels down (``retry/`` inside areas too) that ended by the cutoff."""
        out = []
        for rel, info in files:
            parts = rel.split("/")
            if parts[-1] == RUN_MARKER or parts[-1].endswith(TMP_SUFFIX):
                continue
            names = [p for p in parts[depth:-1] if p != "retry"]
            window = self._window(names[0]) if names else None
            if window is not None and window.end <= self.cutoff:
                out.append((rel, info))
        return out

    def _pass_area(self, area: str, files: list[tuple[str, dict[str, Any]]]) -> None:
        if self.in_flight.pass_running(area):
            self.sweep.kept_in_flight.append(f"{area}/ (a {area} pass is running)")
            return
        self._delete(area, self._expired_windows(files, 1))

    def _run_area(self, area: str, files: list[tuple[str, dict[str, Any]]]) -> None:
        owner = self.target.area_owner(area)
        if owner is not None and self.in_flight.run(*owner):
            self.sweep.kept_in_flight.append(f"{area}/ (run {owner[1]} of {owner[0]} is in flight)")
            return
        if self._written_recently(area, files):
            return
        expired = self._expired_windows(files, 1)
        self._delete(area, expired)
        staged = [
            rel for rel, _ in files if not rel.endswith(TMP_SUFFIX) and not rel.endswith("/" + RUN_MARKER)
        ]
        if len(expired) == len(staged):  # nothing of the run is left: its claim goes too
            self._delete(area, [(rel, info) for rel, info in files if rel.endswith("/" + RUN_MARKER)])

    def _hourly(
        self, windows: dict[str, Window], by_top: dict[str, list[tuple[str, dict[str, Any]]]]
    ) -> None:
        expired = {name: w for name, w in windows.items() if w.end <= self.cutoff}
        if not expired:
            return
        hours = sorted({h for w in expired.values() for h in w.hour_starts()})
        busy = self.in_flight.hourly_hours(hours)
        for name, window in sorted(expired.items()):
            if busy.intersection(window.hour_starts()):
                self.sweep.kept_in_flight.append(f"{name}/ (its hourly run is in flight)")
                continue
            if self._written_recently(
                name, by_top[name]
            ):  # a catch-up of old hours: its retry may still read it
                continue
            self._delete("hourly stages", by_top[name])

    def _written_recently(self, folder: str, files: list[tuple[str, dict[str, Any]]]) -> bool:
        """Whether anything in a folder was written after the cutoff (listed as kept); a store that gives no
        modification times leaves the names to decide."""
        last = max((m for m in (_mtime(info) for _, info in files) if m is not None), default=None)
        if last is None or last <= self.cutoff:
            return False
        self.sweep.kept_recent.append(f"{folder}/ (written {last:%Y-%m-%dT%H:%MZ}, within retention)")
        return True
