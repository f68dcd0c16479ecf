"""Per-hour manifests: what was sent to CloudZero for an hour, when, and from which source totals.

One JSON file per hour at ``<target>/manifests/<YYYY-MM-DDTHHZ>.json``, shared by every run that exports to the
target, so the late-data pass, the report sensor and the ledger page find any hour without knowing which run
sent it. Status is ``sending`` while requests are in flight, ``exported`` when every chunk was accepted and
``failed`` when an upload stopped part-way (the next export of the hour starts again from its first chunk).

A manifest that cannot be read (a torn write from an older version, a hand edit) counts as ``failed``: the hour
is exported again, and no reader raises because of it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import ObjectStoragePath

from cloudzero_provider.staging import write_atomically
from cloudzero_provider.windows import hour_label, iso_hour


class ManifestStore:
    """The manifests of one export target, keyed by the hour's start (an aware UTC datetime)."""

    def __init__(self, target_dir: ObjectStoragePath) -> None:
        self.dir = target_dir / "manifests"

    def path(self, hour: datetime) -> ObjectStoragePath:
        return self.dir / f"{hour_label(hour)}.json"

    def get(self, hour: datetime) -> dict[str, Any] | None:
        path = self.path(hour)
        if not path.exists():
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return {"hour": iso_hour(hour), "status": "failed", "unreadable": f"{path.name}: {exc}"}
        return value

    def _put(self, hour: datetime, manifest: dict[str, Any]) -> None:
        write_atomically(self.path(hour), json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))

    def mark(self, hour: datetime, *, status: str, run: str, reason: str | None = None) -> None:
        """Record an attempt's state (and why it failed) without losing what the last export recorded."""
        manifest = self.get(hour) or {"hour": iso_hour(hour)}
        manifest.pop("unreadable", None)
        manifest.update(status=status, attempt_run=run, attempt_at=datetime.now(timezone.utc).isoformat())
        if reason is not None:
            manifest["reason"] = reason[:2000]
        else:
            manifest.pop("reason", None)
        self._put(hour, manifest)

    def write_exported(self, hour: datetime, fields: dict[str, Any], *, late_correction: bool) -> None:
        previous = self.get(hour) or {}
        corrections = int(previous.get("late_corrections", 0)) + (1 if late_correction else 0)
        manifest = {"hour": iso_hour(hour), **fields, "status": "exported", "late_corrections": corrections}
        self._put(hour, manifest)

    def note(self, hour: datetime, key: str, value: Any) -> None:
        """Add one field to an hour's manifest (e.g. the last reconciliation's verdict), keeping the rest."""
        manifest = self.get(hour) or {"hour": iso_hour(hour)}
        manifest[key] = value
        self._put(hour, manifest)

    def hours(self) -> list[datetime]:
        """Every hour with a manifest, oldest first."""
        from cloudzero_provider.windows import parse_hour

        if not self.dir.exists():
            return []
        out = []
        for path in self.dir.iterdir():
            if path.name.endswith(".json") and not path.name.startswith("."):
                try:
                    out.append(parse_hour(path.name[: -len(".json")]))
                except ValueError:
                    continue  # not ours
        return sorted(out)
