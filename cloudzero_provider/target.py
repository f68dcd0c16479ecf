"""ExportTarget: the staging area of one CloudZero target, derived once from the connection id and staging root.

Everything an export writes for one ``cloudzero`` connection lives under ``<staging root>/<connection id>/``:
each window's stage, the per-hour manifests and the daily reports. Operators, the report sensor and the ledger
page all reach it through this class, so an operator given ``cloudzero_conn_id="cz_prod"`` can never write its
manifests beside another target's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cached_property

from airflow.sdk import Asset, AssetAlias, ObjectStoragePath

from cloudzero_provider.manifests import ManifestStore
from cloudzero_provider.staging import WindowStage, staging_root, write_atomically
from cloudzero_provider.windows import Window, day_label

# An Airflow connection id as used in a path: no separators, never "." or "..".
TARGET_NAME_RE = re.compile(r"(?!\.{1,2}\Z)[A-Za-z0-9_.:-]{1,200}")
RUN_MARKER = ".run.json"
# One folder of a staging area (``range-<run>``, ``late``): no separators, no dots.
AREA_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ExportTarget:
    """
    The staging area of one CloudZero target.

    :param cloudzero_conn_id: The ``cloudzero`` connection the data goes to; names the folder.
    :param staging_uri: The staging root; default: ``[cloudzero] staging_uri`` (see :mod:`staging`).
    """

    def __init__(self, cloudzero_conn_id: str, staging_uri: str | None = None) -> None:
        if not TARGET_NAME_RE.fullmatch(cloudzero_conn_id or ""):
            raise ValueError(
                f"connection id {cloudzero_conn_id!r} cannot name a staging folder: use letters, digits, _ . : -"
            )
        self.conn_id = cloudzero_conn_id
        self.staging_uri = staging_uri

    def __repr__(self) -> str:
        return f"ExportTarget({self.conn_id!r}, {str(self.dir)!r})"

    @cached_property
    def dir(self) -> ObjectStoragePath:
        return staging_root(self.staging_uri) / self.conn_id

    def stage(self, window: Window, *, area: str | Sequence[str | None] = ()) -> WindowStage:
        """The window's folder; ``area`` (e.g. ``["range-<run>", "retry"]``, empty parts skipped) keeps a run that
        re-exports hours out of the folders another run of the same hour may be writing at the same moment."""
        folder = self.dir
        for part in (area,) if isinstance(area, str) else area:
            if not part:
                continue
            if not AREA_RE.fullmatch(part):
                raise ValueError(f"staging area {part!r} is not a folder name: use letters, digits, _ -")
            folder = folder / part
        return WindowStage(folder, window)

    def claim_area(self, area: str, *, dag_id: str, run_id: str) -> None:
        """Record which DAG run owns a per-run staging area (``<area>/.run.json``), once."""
        if not AREA_RE.fullmatch(area):
            raise ValueError(f"staging area {area!r} is not a folder name: use letters, digits, _ -")
        marker = self.dir / area / RUN_MARKER
        if not marker.exists():
            write_atomically(marker, json.dumps({"dag_id": dag_id, "run_id": run_id}).encode("utf-8"))

    def area_owner(self, area: str) -> tuple[str, str] | None:
        """``(dag_id, run_id)`` of the run that owns a per-run staging area, if it recorded itself."""
        try:
            value = json.loads((self.dir / area / RUN_MARKER).read_text(encoding="utf-8"))
            return str(value["dag_id"]), str(value["run_id"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    @cached_property
    def manifests(self) -> ManifestStore:
        return ManifestStore(self.dir)

    @property
    def asset(self) -> Asset:
        """One event per exported hour (``extra["hour"]`` = ``2026-11-01T13:00:00Z``): schedule other DAGs on it."""
        return Asset(
            name=f"litellm_cloudzero_hours__{self.conn_id}",
            uri=f"cloudzero://anycost/{self.conn_id}/litellm-hours",
        )

    @property
    def alias(self) -> AssetAlias:
        """The outlet through which a task emits several events (one per hour) on :attr:`asset`."""
        return AssetAlias(name=f"litellm_cloudzero_hours_alias__{self.conn_id}")

    @property
    def reports_dir(self) -> ObjectStoragePath:
        return self.dir / "reports"

    def report_dir(self, window: Window) -> ObjectStoragePath:
        """``reports/<YYYY-MM-DD>`` for a whole UTC day, ``reports/<window label>`` otherwise."""
        name = day_label(window.start) if window.hours == 24 and window.is_day_aligned else window.label
        return self.reports_dir / name
