"""Files under a staging root, through ObjectStoragePath: the root itself, one window's folder, and the writes
every other module goes through.

The root is a local folder by default (``$AIRFLOW_HOME/cloudzero-staging``) and any ``s3://``, ``gs://`` ... URI
when configured: the operator argument ``staging_uri``, else the provider option ``[cloudzero] staging_uri``
(``AIRFLOW__CLOUDZERO__STAGING_URI``), else the older ``CLOUDZERO_STAGING_URI`` variable. Workers, the DAG
processor and the API server's ledger page all resolve it here, the same way. Use object storage when tasks run
on several machines.

A reader never sees a partial file. On a local disk every file is written under a temporary name and renamed into
place; staged spend data is private there (files 0600, folders 0700: on object storage, the bucket's policy
decides). On object storage a rename is a copy and a delete, and one PUT is already atomic for readers, so a file
is written once, whole, under its own name.

Manifests change by compare-and-swap (:func:`read_versioned`, :func:`write_if_unchanged`): a local folder holds
an exclusive lock on a lock file while it reads, checks and writes; object storage writes conditionally on the
version it read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

from airflow.sdk import ObjectStoragePath

from cloudzero_provider.json_lines import decode_lines, encode_line, join_lines
from cloudzero_provider.windows import Window

ENV_STAGING = "CLOUDZERO_STAGING_URI"  # kept working; AIRFLOW__CLOUDZERO__STAGING_URI is preferred
TMP_SUFFIX = ".tmp"
FILE_MODE, DIR_MODE = 0o600, 0o700


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


def local_path(path: ObjectStoragePath) -> Path | None:
    """The path on this machine's disk, or ``None`` for object storage."""
    return Path(path.path) if path.protocol in ("file", "local") else None


def make_dirs(path: ObjectStoragePath) -> None:
    """Create a folder and its parents; on a local disk only its owner may enter the ones created here."""
    local = local_path(path)
    if local is None:
        return  # object stores have no folders (and mkdir would create a missing bucket, hiding a typo)
    missing = []
    for folder in (local, *local.parents):
        if folder.exists():
            break
        missing.append(folder)
    local.mkdir(parents=True, exist_ok=True)
    for folder in missing:
        with contextlib.suppress(OSError):  # a folder another process made first keeps its own mode
            folder.chmod(DIR_MODE)


def temporary_sibling(path: ObjectStoragePath) -> ObjectStoragePath:
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}"


def write_atomically(path: ObjectStoragePath, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never part of one."""
    local = local_path(path)
    if local is None:
        path.write_bytes(data)  # one PUT
        return
    make_dirs(path.parent)
    tmp = local.parent / f".{local.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, local)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_lines_atomically(path: ObjectStoragePath, lines: Iterable[bytes]) -> None:
    """Write lines as they come, whole or not at all (see :class:`StreamedFile`)."""
    with StreamedFile(path) as out:
        for line in lines:
            out.write(line)


class StreamedFile:
    """A file written as its data comes and placed whole by :meth:`place`, or dropped by :meth:`drop`; as a context
    manager, placed when the block ends and dropped when it raises. A local file streams to disk under a temporary
    name; for object storage the data is spooled to a local temporary file and uploaded when complete (one PUT, or
    parts that become visible only when the upload completes), so memory stays flat and a failure part-way leaves
    the previous object."""

    def __init__(self, path: ObjectStoragePath) -> None:
        self.path = path
        self._local = local_path(path)
        self._tmp: Path | None = None
        self._spool: Any = None
        self._finished = False
        if self._local is None:
            self._spool = tempfile.NamedTemporaryFile(prefix="cz-stage-", suffix=TMP_SUFFIX)  # noqa: SIM115
            self._fh: Any = self._spool
            return
        make_dirs(path.parent)
        self._tmp = self._local.parent / f".{self._local.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}"
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            self._fh = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._tmp.unlink()
            raise

    def write(self, data: bytes) -> None:
        self._fh.write(data)

    def place(self) -> None:
        """The file whole under its name (replacing what was there); once placed or dropped, nothing more."""
        if self._finished:
            return
        try:
            if self._spool is not None:
                self._spool.flush()
                self.path.fs.put_file(self._spool.name, self.path.path)
                self._spool.close()
            else:
                self._fh.close()
                os.replace(cast(Path, self._tmp), cast(Path, self._local))
        except BaseException:
            self.drop()
            raise
        self._finished = True

    def drop(self) -> None:
        """Nothing written: the temporary file removed, what was under the name left as it was (once placed, the
        file stays)."""
        if self._finished:
            return
        self._finished = True
        with contextlib.suppress(OSError):
            self._fh.close()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()

    def __enter__(self) -> StreamedFile:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.place()
        else:
            self.drop()


def listing(folder: ObjectStoragePath) -> list[str]:
    """The names directly in a folder, as they are now (``[]`` when it does not exist). On object storage one LIST
    per 1,000 names, after dropping the file system's listings cache, which never expires on its own: in a
    long-lived process (the API server's ledger) it would hide what other machines wrote."""
    local = local_path(folder)
    if local is not None:
        return sorted(os.listdir(local)) if local.is_dir() else []
    fs = folder.fs
    fs.invalidate_cache(folder.path)
    try:
        entries = fs.ls(folder.path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)


def read_bytes(path: ObjectStoragePath) -> bytes:
    """A file's bytes (``FileNotFoundError`` when absent). On object storage one GET: no HEAD before it, and a
    missing object costs no listing to tell it from a folder."""
    if local_path(path) is None:
        if path.protocol in (
            "s3",
            "s3a",
        ):  # one stream: s3fs would HEAD first to split a large object in parts
            return bytes(path.fs.cat_file(path.path, max_concurrency=1))
        return bytes(path.fs.cat_file(path.path))
    return path.read_bytes()


def read_many(paths: Iterable[ObjectStoragePath]) -> dict[str, bytes]:
    """The bytes of several files, keyed by ``str(path)``; files that do not exist are left out. On object storage
    the GETs run concurrently (fsspec's batches), so a month of manifests takes a few round trips, not 744."""
    paths = list(paths)
    if not paths:
        return {}
    if local_path(paths[0]) is not None:
        out = {}
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                out[str(path)] = path.read_bytes()
        return out
    fs = paths[0].fs
    by_key = {fs._strip_protocol(p.path): str(p) for p in paths}
    kwargs = {"max_concurrency": 1} if paths[0].protocol in ("s3", "s3a") else {}
    got = fs.cat(list(by_key), on_error="omit", **kwargs)
    if not isinstance(got, dict):  # one path: fsspec answers its bytes
        got = {next(iter(by_key)): got}
    return {by_key[key]: bytes(data) for key, data in got.items() if key in by_key}


def remove_file(path: ObjectStoragePath) -> None:
    """Delete a file if it exists (one DELETE on object storage, where deleting nothing is no error)."""
    local = local_path(path)
    if local is not None:
        local.unlink(missing_ok=True)
        return
    with contextlib.suppress(FileNotFoundError):
        path.fs.rm_file(path.path)


def read_versioned(path: ObjectStoragePath) -> tuple[bytes | None, str | None]:
    """A file's bytes and the version a conditional write compares against (``None``, ``None`` when absent): the
    content's digest on a local disk, the object's ETag on object storage (a HEAD and a GET; one HEAD when absent).
    Should the object change between the two, the write that follows is refused and the caller reads again."""
    if local_path(path) is None:
        try:
            etag = _object_etag(path)
            data = read_bytes(path)
        except FileNotFoundError:
            return None, None
        return data, etag or hashlib.sha256(data).hexdigest()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    return data, hashlib.sha256(data).hexdigest()


def _object_etag(path: ObjectStoragePath) -> str | None:
    fs = path.fs
    if path.protocol in ("s3", "s3a"):
        bucket, key, _ = fs.split_path(path.path)
        head = fs.call_s3("head_object", Bucket=bucket, Key=key)  # a plain HEAD: info() would LIST on a miss
        return str(head["ETag"]) if head.get("ETag") else None
    info = fs.info(path.path, refresh=True)
    etag = info.get("ETag") or info.get("etag")
    return str(etag) if etag else None


@contextlib.contextmanager
def exclusive(folder: ObjectStoragePath) -> Iterator[None]:
    """Hold the folder's lock for a read-check-write (local disk; object storage writes conditionally instead).
    One lock file per folder: writers of manifests are few and brief."""
    local = local_path(folder)
    if local is None:
        yield
        return
    make_dirs(folder)
    fd = os.open(local / ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_if_unchanged(path: ObjectStoragePath, data: bytes, version: str | None) -> bool:
    """Write ``data`` if the file still is at ``version`` (``None``: still absent); False if another writer
    changed it since it was read. On a local disk call it inside :func:`exclusive` for the file's folder."""
    if local_path(path) is not None:
        if read_versioned(path)[1] != version:
            return False
        write_atomically(path, data)
        return True
    return _object_write_if(path, data, version)


def _object_write_if(path: ObjectStoragePath, data: bytes, version: str | None) -> bool:
    """A conditional PUT: ``If-Match`` the ETag read (``If-None-Match: *`` for a new object). The store refuses it
    (412) when another writer changed the object in between. Stores without conditional writes compare, then write,
    with a window between the two (say so in their docs)."""
    if path.protocol in ("s3", "s3a"):
        try:
            if version is None:
                path.fs.pipe_file(path.path, data, mode="create")
            else:
                path.fs.pipe_file(path.path, data, IfMatch=version)
        except FileExistsError:
            return False
        except OSError as exc:  # 412 Precondition Failed (s3fs: EINVAL), 409 a concurrent conditional write
            if (
                "precondition" in str(exc).lower()
                or "conflict" in str(exc).lower()
                or exc.errno == errno.EINVAL
            ):
                return False
            raise
        return True
    if read_versioned(path)[1] != version:
        return False
    path.write_bytes(data)
    return True


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
        make_dirs(self.dir)

    def write_jsonl(self, name: str, rows: Iterable[Any]) -> int:
        """Write rows as JSON lines, whole or not at all; returns how many."""
        return self.write_lines(name, map(encode_line, rows))

    def write_lines(self, name: str, lines: Iterable[bytes]) -> int:
        """Write lines already encoded (each ending in a newline), whole or not at all; returns how many."""
        count = 0

        def batches() -> Iterator[bytes]:
            nonlocal count
            for data, n in join_lines(lines):
                yield data
                count += n

        write_lines_atomically(self.path(name), batches())
        return count

    def streamed(self, name: str) -> StreamedFile:
        """The named file, written as its data comes (see :class:`StreamedFile`)."""
        return StreamedFile(self.path(name))

    def digest(self, name: str) -> str:
        """The SHA-256 of the file's bytes, read a block at a time."""
        try:
            fh = self.path(name).open("rb")
        except FileNotFoundError:
            raise self._missing(name) from None
        digest = hashlib.sha256()
        with fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()

    def _missing(self, name: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"{self.path(name)} does not exist: did the previous task of window {self.window} run? On local disk "
            "it must have run on this machine (stage on object storage for several workers); housekeeping removes "
            "a stage once staging_retention_days have passed since it was written. Clear the run from its extract "
            "task to stage the window again."
        )

    def read_jsonl(self, name: str) -> Iterator[Any]:
        return decode_lines(self.read_lines(name))

    def read_lines(self, name: str) -> Iterator[bytes]:
        """The file's lines as bytes, each with its newline, as they are read (never the file whole)."""
        try:
            fh = self.path(name).open("rb")
        except FileNotFoundError:
            raise self._missing(name) from None
        with fh:
            yield from fh

    def write_json(self, name: str, value: Any) -> ObjectStoragePath:
        path = self.path(name)
        text = json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True)
        write_atomically(path, text.encode("utf-8"))
        return path

    def read_json(self, name: str) -> Any:
        try:
            raw = read_bytes(self.path(name))
        except FileNotFoundError:
            raise self._missing(name) from None
        return json.loads(raw.decode("utf-8"))

    def remove(self, name: str) -> None:
        remove_file(self.path(name))
