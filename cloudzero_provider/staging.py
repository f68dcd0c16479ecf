"""Where a window's files live: one folder per window under a staging root, through ObjectStoragePath.

The root is a local folder by default (``$AIRFLOW_HOME/cloudzero-staging``) and any ``s3://``, ``gs://`` ... URI
when configured (operator argument ``staging_uri`` or the ``CLOUDZERO_STAGING_URI`` environment variable); use
object storage when tasks run on several workers. Files are overwritten when a window runs again.

Layout of ``<root>/<stream>/<window label>/``::

    extract.jsonl      aggregated spend rows        extract.json     their summary and PostgreSQL's hour totals
    quarantine.jsonl   invalid source rows (opt-in) cbf.jsonl        CBF rows    transform.json  its summary
    requests/          exact request bodies of a dry run
    manifests/<hour>.json   what was sent to CloudZero for that hour, and when
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from airflow.sdk import ObjectStoragePath

from cloudzero_provider.windows import Window

ENV_STAGING = "CLOUDZERO_STAGING_URI"


def staging_root(uri: str | None = None) -> ObjectStoragePath:
    uri = uri or os.environ.get(ENV_STAGING)
    if not uri:
        home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
        uri = "file://" + os.path.join(os.path.abspath(home), "cloudzero-staging")
    elif "://" not in uri:
        uri = "file://" + os.path.abspath(uri)
    return ObjectStoragePath(uri)


class WindowStage:
    """The staging folder of one window of one stream (a stream is an AnyCost connection or a dry run)."""

    def __init__(self, uri: str | None, window: Window, stream: str = "default") -> None:
        self.window = window
        self.root = staging_root(uri) / stream
        self.dir = self.root / window.label

    def path(self, name: str) -> ObjectStoragePath:
        return self.dir / name

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def write_jsonl(self, name: str, rows: Iterable[Any]) -> int:
        """Write rows as JSON lines; returns how many."""
        self.ensure()
        count = 0
        with self.path(name).open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
                fh.write("\n")
                count += 1
        return count

    def _existing(self, name: str) -> ObjectStoragePath:
        path = self.path(name)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: did the previous task of window {self.window} run?"
            )
        return path

    def read_jsonl(self, name: str) -> Iterator[Any]:
        with self._existing(name).open("r", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)

    def write_json(self, name: str, value: Any) -> ObjectStoragePath:
        self.ensure()
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True), encoding="utf-8")
        return path

    def read_json(self, name: str) -> Any:
        return json.loads(self._existing(name).read_text(encoding="utf-8"))

    def exists(self, name: str) -> bool:
        return bool(self.path(name).exists())

    def remove(self, name: str) -> None:
        path = self.path(name)
        if path.exists():
            path.unlink()
