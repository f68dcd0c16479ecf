"""Per-hour manifests: what was sent to CloudZero for an hour, when, and from which source totals.

One JSON file per hour at ``<staging root>/<stream>/manifests/<YYYY-MM-DDTHHZ>.json``, shared by every run that
exports to the stream, so the late-data pass and the ledger page can find any hour without knowing which run
sent it. Status is ``sending`` while requests are in flight, ``exported`` when every chunk was accepted and
``failed`` when an upload stopped part-way (the next export of the hour starts again from its first chunk).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import ObjectStoragePath


def _label(hour: str) -> str:
    return hour[:13] + "Z"  # 2026-11-01T13:00:00Z -> 2026-11-01T13Z


class ManifestStore:
    """The manifests of one stream (one staging sub-folder)."""

    def __init__(self, stream_root: ObjectStoragePath) -> None:
        self.dir = stream_root / "manifests"

    def path(self, hour: str) -> ObjectStoragePath:
        return self.dir / f"{_label(hour)}.json"

    def get(self, hour: str) -> dict[str, Any] | None:
        path = self.path(hour)
        if not path.exists():
            return None
        return dict(json.loads(path.read_text(encoding="utf-8")))

    def _put(self, hour: str, manifest: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path(hour).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")

    def mark(self, hour: str, *, status: str, run: str) -> None:
        """Record an attempt's state without losing what the last successful export recorded."""
        manifest = self.get(hour) or {"hour": hour}
        manifest.update(status=status, attempt_run=run, attempt_at=datetime.now(timezone.utc).isoformat())
        self._put(hour, manifest)

    def write_exported(self, hour: str, fields: dict[str, Any], *, late_correction: bool) -> None:
        previous = self.get(hour) or {}
        corrections = int(previous.get("late_corrections", 0)) + (1 if late_correction else 0)
        manifest = {"hour": hour, **fields, "status": "exported", "late_corrections": corrections}
        self._put(hour, manifest)

    def all(self) -> list[dict[str, Any]]:
        if not self.dir.exists():
            return []
        out = []
        for path in sorted(self.dir.iterdir(), key=str):
            if str(path).endswith(".json"):
                out.append(json.loads(path.read_text(encoding="utf-8")))
        return out
