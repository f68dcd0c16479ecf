"""Per-hour manifests: what was sent to CloudZero for an hour, when, and from which source totals.

One JSON file per hour at ``<target>/manifests/<YYYY-MM-DDTHHZ>.json``, shared by every run that exports to the
target, so the late-data pass, reconciliation, the report sensor and the ledger page find any hour without knowing
which run sent it. :class:`Manifest` is the record, with its defaults in one place; :class:`ManifestStore` is the
only way one is read or written. Status is ``sending`` while requests are in flight, ``exported`` when CloudZero
acknowledged every chunk and ``failed`` when an upload stopped part-way or a run failed before sending (the next
export of the hour starts again from its first chunk).

A manifest that cannot be read (a torn write from an older version, a hand edit) reads as ``failed`` with
``unreadable`` saying why: the hour is exported again, and no reader raises because of it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from airflow.sdk import ObjectStoragePath

from cloudzero_provider.staging import (
    exclusive,
    listing,
    read_bytes,
    read_many,
    read_versioned,
    write_if_unchanged,
)
from cloudzero_provider.windows import (
    DAY,
    HOUR,
    Window,
    hour_label,
    iso_hour,
    iso_instant,
    parse_hour,
    parse_instant,
    utc_now,
)

SENDING, EXPORTED, FAILED = "sending", "exported", "failed"
SPEND_LOGS = "spend_logs"
DAILY_ORIGINS = ("daily_team", "daily_user", "daily_tag")
MAX_REASON_CHARS = 2000
NEWEST_LOOK_BACK = 24 * 400  # manifests read, newest first, to find the newest exported hour
CAS_ATTEMPTS = 8


class ManifestConflict(RuntimeError):
    """Other writers kept changing a manifest while this one tried to write it."""


@dataclass(frozen=True)
class Attempt:
    """
    The task attempt that sends (or fails) hours: named in idempotency keys and recorded in manifests, so the
    ledger can link an hour to the Airflow task instance that decided it.

    :param pass_name: The pass inside the task: ``""`` for the upload itself, ``late``, ``reconcile``, ``retry``.
    """

    dag_id: str = ""
    run_id: str = "adhoc"
    task_id: str = ""
    map_index: int = -1
    try_number: int = 0
    pass_name: str = ""

    @property
    def key(self) -> str:
        """``<run>/<map index>/<try>[/<pass>]``: stable across in-task retries, new for every Airflow try."""
        base = f"{self.run_id}/{self.map_index}/{self.try_number}"
        return f"{base}/{self.pass_name}" if self.pass_name else base

    def for_pass(self, name: str) -> Attempt:
        return replace(self, pass_name=f"{self.pass_name}/{name}" if self.pass_name else name)

    def as_record(self) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "run_id": self.run_id, "task_id": self.task_id,
                "map_index": self.map_index, "try_number": self.try_number, "pass": self.pass_name}  # fmt: skip


@dataclass
class SourceTotals:
    """The source's valid requests and exact ``SUM(spend::numeric)`` of an hour when it was extracted."""

    requests: int = 0
    spend: str = "0"


@dataclass
class Manifest:
    """
    What this exporter knows of one hour of one CloudZero stream.

    :param hour: The hour's start, aware UTC.
    :param status: ``sending``, ``exported`` or ``failed``.
    :param origin: Where the rows came from: ``spend_logs`` or a daily rollup (``daily_team`` ...).
    :param rows: CBF rows sent. :param cost: Their exact cost. :param tokens: Their tokens.
    :param content_sha256: Digest of the hour's rows as sent (see :func:`drops.content_digest`).
    :param receipts: CloudZero's receipts of the hour's requests, as they came (``drop_id``, ``month``,
        ``row_count``); ``drop_ids`` lists their ids.
    :param source: The source totals the rows were extracted from.
    :param cleared: The hour was set to exactly 0 (an emptied hour, or a day another source took over).
    :param empty: The hour was checked and held no spend to send: nothing went to CloudZero.
    :param decided_by: The task attempt that last wrote the record (:meth:`Attempt.as_record`).
    :param late_corrections: How many times the hour was exported again after its first export.
    :param acknowledged_by: Per AnyCost connection this hour was ever exported to, the ``origin`` and ``cost`` of
        its last acknowledged export there (one entry per connection an admin configured; ``None`` in a record
        written before it was kept, which then knows only its own ``connection_id``).
    :param reason: Why the last attempt failed. :param reconcile: The last reconciliation's verdict.
    :param unreadable: Set when the file could not be read; the manifest then reads as failed.
    """

    hour: datetime
    status: str = FAILED
    origin: str = SPEND_LOGS
    rows: int = 0
    cost: str = "0"
    tokens: int = 0
    content_sha256: str | None = None
    drop_ids: list[str] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)
    sent_at: datetime | None = None
    extracted_at: datetime | None = None
    source: SourceTotals | None = None
    cleared: bool = False
    empty: bool = False
    run: str | None = None
    decided_by: dict[str, Any] | None = None
    window: str | None = None
    connection_id: str | None = None
    late_corrections: int = 0
    attempt_run: str | None = None
    attempt_at: datetime | None = None
    reason: str | None = None
    reconcile: dict[str, Any] | None = None
    acknowledged_by: dict[str, dict[str, str]] | None = None
    unreadable: str | None = None

    @property
    def exported(self) -> bool:
        return self.status == EXPORTED

    @property
    def sent_cost(self) -> Decimal:
        """The cost this exporter last sent for the hour (0 when it never did)."""
        return Decimal(self.cost) if self.exported else Decimal(0)

    @property
    def was_sent(self) -> bool:
        """Whether CloudZero acknowledged rows of this hour from this exporter (an empty hour sent nothing)."""
        return bool(self.drop_ids)

    @property
    def acknowledged_cost(self) -> Decimal | None:
        """The cost of this exporter's last send of the hour that CloudZero acknowledged: an exported hour's, or
        the one a failed or cut-off later attempt leaves in place (its record keeps it, as it keeps the drop ids);
        ``None`` when CloudZero never acknowledged rows of the hour, or a failed hour's were cleared."""
        if not self.was_sent:
            return None
        if self.exported:
            return self.sent_cost
        if self.status not in (FAILED, SENDING) or self.cleared or not self.cost:
            return None
        try:
            return Decimal(self.cost)
        except ArithmeticError:  # a hand-edited record: not a figure to act on
            return None

    def held_on(self, connection_id: str | None, origin: str | None = None) -> Decimal:
        """What the AnyCost connection ``connection_id`` may hold in the hour from this exporter's last acknowledged
        export (of ``origin``, if given): :meth:`acknowledged_on` with a record from before connections were kept
        apart read as its own connection's, and 0 when it holds nothing of ours."""
        cost = self.acknowledged_on(connection_id, origin, unknown_as_own=True)
        return cost if cost is not None else Decimal(0)

    def acknowledged_on(
        self, connection_id: str | None, origin: str | None = None, *, unknown_as_own: bool
    ) -> Decimal | None:
        """:attr:`acknowledged_cost` as the AnyCost connection ``connection_id`` holds it from this exporter (of
        ``origin``'s rows, when given): the record's own when it names that connection (or none), else what
        :attr:`acknowledged_by` kept for that connection (``None``: CloudZero never acknowledged the hour there).
        A record from before ``acknowledged_by`` cannot tell: ``unknown_as_own`` takes its own figures, else
        ``None`` -- each caller picks the reading under which a guess destroys nothing."""
        if self.connection_id in (None, connection_id) or (self.acknowledged_by is None and unknown_as_own):
            if origin is not None and self.origin != origin:
                return None
            return self.acknowledged_cost
        entry = (self.acknowledged_by or {}).get(str(connection_id))
        if entry is None or (origin is not None and entry.get("origin") != origin):
            return None
        try:
            return Decimal(entry["cost"])
        except (ArithmeticError, KeyError, TypeError):  # a hand-edited record: not a figure to act on
            return None

    @property
    def is_daily(self) -> bool:
        return self.origin in DAILY_ORIGINS

    @property
    def is_ours(self) -> bool:
        """Exported from spend logs by the hourly, range, late or reconciliation path."""
        return self.origin == SPEND_LOGS

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["hour"] = iso_hour(self.hour)
        for key in ("sent_at", "extracted_at", "attempt_at"):
            if getattr(self, key) is not None:
                out[key] = iso_instant(getattr(self, key))
        return out

    @classmethod
    def from_json(cls, hour: datetime, value: Any) -> Manifest:
        """A manifest from its file's JSON; raises ValueError naming what is wrong."""
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in fields(cls)} - {"hour"}
        kw: dict[str, Any] = {k: v for k, v in value.items() if k in known}
        try:
            for key in ("sent_at", "extracted_at", "attempt_at"):
                if kw.get(key):
                    kw[key] = parse_instant(str(kw[key]), what=key)
            if isinstance(kw.get("source"), dict):
                src = kw["source"]
                kw["source"] = SourceTotals(int(src.get("requests", 0)), _number_text(src.get("spend", "0")))
            for key in ("rows", "tokens", "late_corrections"):
                kw[key] = int(kw.get(key) or 0)
            kw["cost"] = _number_text(kw.get("cost", "0"))  # a number, whatever a hand wrote
            kw["drop_ids"] = [str(d) for d in kw.get("drop_ids") or []]
            if kw.get("acknowledged_by") is not None:
                kw["acknowledged_by"] = {
                    str(conn): {"origin": str(e["origin"]), "cost": _number_text(e["cost"])}
                    for conn, e in dict(kw["acknowledged_by"]).items()
                }
            if kw.get("status", FAILED) not in (SENDING, EXPORTED, FAILED):
                raise ValueError(f"unknown status {kw['status']!r}")
        except (TypeError, ValueError, InvalidOperation, AttributeError) as exc:
            raise ValueError(f"malformed field: {exc}") from None
        return cls(hour=hour, **kw)


# A manifest's figure is at most this many digits either side of the point (PostgreSQL's numeric: 131072 before).
MAX_FIGURE_EXPONENT = 1000


def _number_text(value: Any) -> str:
    """A recorded figure checked to be a finite number and kept as written: PostgreSQL's text of a sum stays byte for
    byte what the source gives (``0.0000001``, ``12.50``), where ``str(Decimal)`` would write ``1E-7`` and no longer
    compare equal. A hand-written exponent is written out, within :data:`MAX_FIGURE_EXPONENT` digits."""
    number = Decimal(str(value))
    if not number.is_finite():  # NaN or Infinity: every comparison of it would raise
        raise ValueError(f"{str(value)[:40]!r} is not a finite number")
    if abs(number.adjusted()) > MAX_FIGURE_EXPONENT:
        raise ValueError(f"{str(value)[:40]!r} is out of range")
    return format(number, "f")


class ManifestStore:
    """The manifests of one export target, keyed by the hour's start (an aware UTC datetime)."""

    def __init__(self, target_dir: ObjectStoragePath) -> None:
        self.dir = target_dir / "manifests"

    def path(self, hour: datetime) -> ObjectStoragePath:
        return self.dir / f"{hour_label(hour)}.json"

    def get(self, hour: datetime) -> Manifest | None:
        try:
            raw: bytes | None = read_bytes(self.path(hour))
        except FileNotFoundError:
            raw = None
        return self._parse(hour, raw)

    def get_many(self, hours: Iterable[datetime]) -> dict[datetime, Manifest]:
        """The manifests of several hours that have one, read with one listing of the folder and one read per
        manifest that exists -- no exists-check per hour (on object storage each would be a request)."""
        present = set(listing(self.dir))
        return self.read_listed(h for h in hours if f"{hour_label(h)}.json" in present)

    def read_listed(self, hours: Iterable[datetime]) -> dict[datetime, Manifest]:
        """The manifests of hours a listing showed, read together (concurrently on object storage); one that
        vanished since, or cannot be parsed as a manifest, is left out."""
        paths = {str(self.path(h)): h for h in hours}
        raw = read_many(self.path(h) for h in paths.values())
        out = {}
        for key, hour in paths.items():
            manifest = self._parse(hour, raw.get(key))
            if manifest is not None:
                out[hour] = manifest
        return out

    def _parse(self, hour: datetime, raw: bytes | None) -> Manifest | None:
        if raw is None:
            return None
        try:
            return Manifest.from_json(hour, json.loads(raw.decode("utf-8")))
        except (ValueError, UnicodeDecodeError) as exc:
            return Manifest(hour, status=FAILED, unreadable=f"{self.path(hour).name}: {exc}")

    def update(self, hour: datetime, change: Callable[[Manifest | None], Manifest | None]) -> Manifest | None:
        """
        Change an hour's manifest by compare-and-swap: ``change`` gets what is there now (``None``: no manifest)
        and returns the new record, or ``None`` to leave it as it is. If another writer changed the file between
        the read and the write, the change is applied again to what that writer left.

        :return: The manifest as it is after the call.
        :raises ManifestConflict: Other writers kept changing it (more than :data:`CAS_ATTEMPTS` times).
        """
        path = self.path(hour)
        for _ in range(CAS_ATTEMPTS):
            with exclusive(self.dir):
                raw, version = read_versioned(path)
                current = self._parse(hour, raw)
                new = change(copy.deepcopy(current))
                if new is None:
                    return current
                new.hour = hour
                body = json.dumps(new.to_json(), indent=1, sort_keys=True).encode("utf-8")
                if write_if_unchanged(path, body, version):
                    return new
        raise ManifestConflict(
            f"{path.name}: changed by other writers {CAS_ATTEMPTS} times while this one wrote"
        )

    def put(self, manifest: Manifest) -> None:
        """Replace an hour's manifest whatever it holds (tests and repairs; the pipeline uses :meth:`update`)."""
        self.update(manifest.hour, lambda _: manifest)

    def mark(self, hour: datetime, *, status: str, attempt: Attempt, reason: str | None = None) -> None:
        """Record an attempt's state (and why it failed) without losing what the last export recorded."""

        def change(manifest: Manifest | None) -> Manifest:
            manifest = manifest or Manifest(hour)
            manifest.unreadable = None
            manifest.status, manifest.attempt_run, manifest.attempt_at = status, attempt.key, utc_now()
            manifest.decided_by = attempt.as_record()
            manifest.reason = reason[:MAX_REASON_CHARS] if reason is not None else None
            return manifest

        self.update(hour, change)

    def mark_failed_unless_exported(self, hour: datetime, *, attempt: Attempt, reason: str) -> bool:
        """Mark an hour failed -- unless it is exported by the time the write happens (another run exported it
        meanwhile, or this run's own upload did). Returns whether it was marked."""
        marked = False

        def change(manifest: Manifest | None) -> Manifest | None:
            nonlocal marked
            if manifest is not None and manifest.exported:
                return None
            marked = True
            manifest = manifest or Manifest(hour)
            manifest.unreadable = None
            manifest.status, manifest.attempt_run, manifest.attempt_at = FAILED, attempt.key, utc_now()
            manifest.decided_by = attempt.as_record()
            manifest.reason = reason[:MAX_REASON_CHARS]
            return manifest

        self.update(hour, change)
        return marked

    def write_exported(self, manifest: Manifest, *, late_correction: bool) -> None:
        """Record an hour CloudZero acknowledged; ``late_corrections`` counts on from the previous record."""

        def change(previous: Manifest | None) -> Manifest:
            manifest.status, manifest.unreadable, manifest.reason = EXPORTED, None, None
            base = previous.late_corrections if previous else 0
            manifest.late_corrections = base + (1 if late_correction else 0)
            # What each AnyCost connection holds of the hour, so that a switch away and back still knows.
            held = dict(previous.acknowledged_by or {}) if previous is not None else {}
            if previous is not None and previous.acknowledged_by is None and previous.connection_id:
                before = previous.acknowledged_cost  # a record from before: its own connection's figures
                if before is not None:
                    held[previous.connection_id] = {"origin": previous.origin, "cost": str(before)}
            if manifest.connection_id and manifest.was_sent:
                cost = "0" if manifest.cleared else manifest.cost
                held[manifest.connection_id] = {"origin": manifest.origin, "cost": cost}
            manifest.acknowledged_by = held or None  # none named: the record's own figures say it all
            return manifest

        self.update(manifest.hour, change)

    def write_checked_empty(self, manifest: Manifest) -> bool:
        """Record an hour checked and holding no spend, unless the hour already has a record; returns whether
        it wrote one."""
        wrote = False

        def change(previous: Manifest | None) -> Manifest | None:
            nonlocal wrote
            if previous is not None:
                return None
            wrote = True
            manifest.status, manifest.empty = EXPORTED, True
            return manifest

        self.update(manifest.hour, change)
        return wrote

    def note_reconcile(self, hour: datetime, verdict: dict[str, Any]) -> None:
        """Add the last reconciliation's verdict to an hour's manifest, keeping the rest."""

        def change(manifest: Manifest | None) -> Manifest:
            manifest = manifest or Manifest(hour)
            manifest.reconcile = verdict
            return manifest

        self.update(hour, change)

    def hours(self) -> list[datetime]:
        """Every hour with a manifest, oldest first (one listing)."""
        out = []
        for name in listing(self.dir):
            if name.endswith(".json") and not name.startswith("."):
                try:
                    out.append(parse_hour(name[: -len(".json")], what="manifest name"))
                except ValueError:
                    continue  # not ours
        return sorted(out)

    def newest_held(
        self,
        look_back: int = NEWEST_LOOK_BACK,
        *,
        hours: list[datetime] | None = None,
        read: Callable[[datetime], Manifest | None] | None = None,
    ) -> datetime | None:
        """
        The newest hour CloudZero holds from this exporter -- or that was checked and held no spend: the export is
        current through its end. A day the daily-rollup export sent counts to its last hour. Reads the newest
        ``look_back`` manifests at most, newest first. The lag alert and the ledger both ask here.

        :param hours: The caller's :meth:`hours` (one listing less); ``read``: its reader of a manifest (a cache).
        """
        read = read or self.get
        for hour in reversed((self.hours() if hours is None else hours)[-look_back:]):
            manifest = read(hour)
            if manifest is not None and manifest.exported:
                return hour + DAY - HOUR if manifest.is_daily else hour
        return None

    def day_owner(self, day: datetime) -> str | None:
        """
        Which source owns a UTC day of this stream: the daily-rollup export (its origin, on the day's 00:00
        manifest, unless that export failed before CloudZero acknowledged any of its rows), ``spend_logs`` when any
        hour of the day went out from spend logs (or is going out), or ``None``.

        Daily rows sit at 00:00, so hourly and daily data of one day in one stream would either erase each other
        (``replace_hourly`` of hour 00) or be counted twice: a day has one owner. The pipeline, reconciliation and
        the ledger all ask here.
        """
        return self.day_owners([day])[day]

    def day_owners(
        self, days: Iterable[datetime], *, held: dict[datetime, Manifest] | None = None
    ) -> dict[datetime, str | None]:
        """:meth:`day_owner` of several days, their manifests read with one listing (or taken from ``held``, the
        caller's :meth:`get_many` of those days' hours)."""
        days = list(days)
        if held is None:
            held = self.get_many(h for d in days for h in Window.day(d).hour_starts())
        out: dict[datetime, str | None] = {}
        for day in days:
            first = held.get(day)
            out[day] = None
            if first and first.is_daily and first.status != FAILED:
                out[day] = first.origin
                continue
            for hour in Window.day(day).hour_starts():
                m = held.get(hour)
                if m and m.is_ours and (m.drop_ids or m.status == SENDING):
                    out[day] = SPEND_LOGS
                    break
            else:
                # A daily export that failed still owns the day while CloudZero holds rows it acknowledged before
                # (and no spend-log hour went out meanwhile: then spend logs claim it, so that a daily retry is
                # refused, loudly, rather than succeeding beside them; take_over switches the day whole).
                if first and first.is_daily and first.acknowledged_cost is not None:
                    out[day] = first.origin
        return out
