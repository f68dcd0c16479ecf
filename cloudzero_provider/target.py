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
from datetime import datetime
from functools import cached_property

from airflow.sdk import Asset, AssetAlias, ObjectStoragePath

from cloudzero_provider.manifests import ManifestStore
from cloudzero_provider.staging import WindowStage, local_path, staging_root, write_atomically
from cloudzero_provider.windows import Window, day_label

# An Airflow connection id as used in a path: no separators, never "." or "..".
TARGET_NAME_RE = re.compile(r"(?!\.{1,2}\Z)[A-Za-z0-9_.:-]{1,200}")
RUN_MARKER = ".run.json"
TELEMETRY_FOLDER = "telemetry"  # what telemetry last sent each day, per metric stream
# One folder of a staging area (``range-<run>``, ``late``): no separators, no dots.
AREA_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class StagingUnreachable(RuntimeError):
    """The staging root on object storage cannot be used (no bucket, refused credentials, no endpoint).

    :param retryable: False when only a person can fix it (bucket, credentials); True for an outage.
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


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

    def check_reachable(self) -> None:
        """
        On object storage, look at the staging root once, so that a wrong bucket, refused credentials or an
        unreachable endpoint fail the first task with a message that names the URI and what to check -- never a
        secret, never a traceback from deep inside a write. A local folder needs no check.

        :raises StagingUnreachable: The store cannot be used.
        """
        root = staging_root(self.staging_uri)
        if local_path(root) is not None:
            return
        uri = str(root)
        bucket = root.path.split("/", 1)[0]
        conn = getattr(root, "conn_id", None) or "the default"
        fs = root.fs
        try:
            fs.invalidate_cache(root.path)
            try:
                fs.ls(root.path, detail=False)  # the prefix only: a policy may grant no more than it
            except FileNotFoundError:
                if not fs.exists(bucket):  # an empty prefix is a first run; a missing bucket is a mistake
                    raise
        except FileNotFoundError:
            raise StagingUnreachable(
                f"Staging {uri}: the bucket {bucket!r} does not exist, or connection {conn!r} cannot see it. Create "
                "it, or correct [cloudzero] staging_uri.",
                retryable=False,
            ) from None
        except PermissionError as exc:
            raise StagingUnreachable(
                f"Staging {uri}: the store refused the credentials of connection {conn!r} ({_brief(exc)}). Check "
                "that connection's keys or role and the bucket's policy.",
                retryable=False,
            ) from None
        except Exception as exc:  # endpoint down, DNS, TLS: what botocore and aiohttp raise varies
            raise StagingUnreachable(
                f"Staging {uri}: cannot reach the store ({_brief(exc)}). Check connection {conn!r}'s endpoint_url, "
                "the network, and that the service runs.",
                retryable=True,
            ) from None

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

    def telemetry_ledger(self, stream: str, day: datetime) -> ObjectStoragePath:
        """``telemetry/<stream>/<YYYY-MM-DD>.json``: what a unit-cost metric stream last sent for a UTC day."""
        return self.dir / TELEMETRY_FOLDER / stream / f"{day_label(day)}.json"


def _brief(exc: BaseException) -> str:
    """An exception's class and the first line of its message, bounded: store errors can be long XML."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__
