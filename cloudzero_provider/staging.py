"""Files under a staging root, through ObjectStoragePath: the root itself and one window's folder.

The root is a local folder by default (``$AIRFLOW_HOME/cloudzero-staging``) and any ``s3://``, ``gs://`` ... URI
when configured: the operator argument ``staging_uri``, else the provider option ``[cloudzero] staging_uri``
(``AIRFLOW__CLOUDZERO__STAGING_URI``), else the older ``CLOUDZERO_STAGING_URI`` variable. Workers, the DAG
processor and the API server's ledger page all resolve it here, the same way. Use object storage when tasks run
on several machines.

Every file is written under a temporary name and renamed into place, so a killed writer never leaves a torn
file where a reader looks.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from airflow.sdk import ObjectStoragePath

from cloudzero_provider.windows import Window

ENV_STAGING = "CLOUDZERO_STAGING_URI"  # kept working; AIRFLOW__CLOUDZERO__STAGING_URI is preferred


def configured_staging_uri() -> str | None:
    """``[cloudzero] staging_uri`` from Airflow's configuration, else ``CLOUDZERO_STAGING_URI``, else None."""
    from airflow.providers.common.compat.sdk import conf

    value = conf.get("cloudzero", "staging_uri", fallback="") or os.environ.get(ENV_STAGING, "")
    return value.strip() or None


def staging_root(uri: str | None = None) -> ObjectStoragePath:
    uri = uri or configured_staging_uri()
    if not uri:
        home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
        uri = "file://" + os.path.join(os.path.abspath(home), "cloudzero-staging")
    elif "://" not in uri:
        uri = "file://" + os.path.abspath(uri)
    return ObjectStoragePath(uri)


def write_atomically(path: ObjectStoragePath, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.write_bytes(data)
    tmp.rename(path)


class WindowStage:
    """The staging folder of one window of one export target.

    Layout of ``<target>/<window label>/``::

        extract.jsonl      aggregated spend rows        extract.json     their summary and PostgreSQL's hour totals
        quarantine.jsonl   invalid source rows (opt-in) cbf.jsonl        CBF rows    transform.json  its summary
        requests/          exact request bodies of a dry run
    """

    def __init__(self, target_dir: ObjectStoragePath, window: Window) -> None:
        self.window = window
        self.dir = target_dir / window.label

    def path(self, name: str) -> ObjectStoragePath:
        return self.dir / name

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def write_jsonl(self, name: str, rows: Iterable[Any]) -> int:
        """Write rows as JSON lines (under a temporary name, renamed when complete); returns how many."""
        self.ensure()
        final = self.path(name)
        tmp = self.dir / f".{name}.{uuid.uuid4().hex[:12]}.tmp"
        count = 0
        try:
            with tmp.open("w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
                    fh.write("\n")
                    count += 1
        except BaseException:
            if tmp.exists():
                tmp.unlink()
            raise
        tmp.rename(final)
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
        path = self.path(name)
        text = json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True)
        write_atomically(path, text.encode("utf-8"))
        return path

    def read_json(self, name: str) -> Any:
        return json.loads(self._existing(name).read_text(encoding="utf-8"))

    def remove(self, name: str) -> None:
        path = self.path(name)
        if path.exists():
            path.unlink()
