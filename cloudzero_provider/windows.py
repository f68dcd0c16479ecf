"""Hour-aligned UTC time windows, and every conversion between an hour and its text.

Inside the provider an hour is an aware UTC ``datetime``. Text becomes a datetime here, where it enters (a file
name, a staged row, an XCom, an event's extra, a query parameter, a CBF row read back), and a datetime becomes
text here, where it leaves (CBF ``time/usage_start``, manifest file names, logs, map-index labels). Pure: no
Airflow imports.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def parse_instant(value: str | datetime, *, what: str = "time") -> datetime:
    """An aware UTC datetime from a datetime or an ISO-8601 string; naive values are refused."""
    if isinstance(value, datetime):
        parsed = value
    else:
        text = str(value).strip()
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{what} {value!r} is not an ISO-8601 date-time") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"{what} {value!r} has no time zone; give it in UTC, e.g. 2026-11-01T13:00:00Z")
    utc = parsed.astimezone(timezone.utc)
    # A plain datetime, even from pendulum: arithmetic with timedelta must behave the standard way.
    return datetime(
        utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond, timezone.utc
    )


def hour_label(hour: datetime) -> str:
    """``2026-11-01T13Z``: short, sortable, safe in paths and as a map-index label."""
    return hour.astimezone(timezone.utc).strftime("%Y-%m-%dT%HZ")


def iso_hour(hour: datetime) -> str:
    """``2026-11-01T13:00:00Z``, the form CBF's ``time/usage_start``, manifests and Asset events carry."""
    return hour.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:00:00Z")


def day_label(day: datetime) -> str:
    """``2026-11-01``: the name of a UTC day's report folder."""
    return day.astimezone(timezone.utc).strftime("%Y-%m-%d")


def iso_instant(instant: datetime) -> str:
    """``2026-11-01T13:05:07.123Z``: a moment (when something was sent or extracted), to the millisecond."""
    return instant.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def day_start(instant: datetime) -> datetime:
    """The UTC midnight that starts the instant's day."""
    return parse_instant(instant).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(instant: datetime) -> datetime:
    """The first instant of the instant's UTC month."""
    return day_start(instant).replace(day=1)


def days_in_month(instant: datetime) -> int:
    first = month_start(instant)
    following = first.replace(year=first.year + first.month // 12, month=first.month % 12 + 1)
    return (following - first).days


def parse_day(value: str, *, what: str = "day") -> datetime:
    """The UTC midnight a ``YYYY-MM-DD`` label names."""
    return parse_instant(f"{str(value).strip()}T00:00:00Z", what=what)


def short_day_label(day: datetime) -> str:
    """``11-01``: a day on a chart's axis."""
    return day.astimezone(timezone.utc).strftime("%m-%d")


def month_label(instant: datetime) -> str:
    """``2026-11``: a UTC month as CloudZero's read-back path names it."""
    return instant.astimezone(timezone.utc).strftime("%Y-%m")


def parse_hour(value: str | datetime, *, what: str = "hour") -> datetime:
    """The hour an edge value names: an ISO instant (``2026-11-01T13:00:00Z``) or a label (``2026-11-01T13Z``).

    Refuses a value that is not on the hour, so a mistyped file name or event never shifts data by minutes.
    """
    text = value if isinstance(value, datetime) else str(value).strip()
    if isinstance(text, str) and len(text) == 14 and text.endswith("Z"):
        text = text[:13] + ":00:00Z"
    hour = parse_instant(text, what=what)
    if hour.minute or hour.second or hour.microsecond:
        raise ValueError(f"{what} {value!r} is not aligned to the hour")
    return hour


def parse_window_label(label: str) -> Window:
    """The window a folder name names: an hour label (``2026-11-01T13Z``), ``<start label>--<end label>``, or a
    UTC day (``2026-11-01``). Raises ValueError for any other name."""
    if "--" in label:
        start, _, end = label.partition("--")
        return Window.of(parse_hour(start, what="window label"), parse_hour(end, what="window label"))
    if len(label) == 10:
        day = parse_day(label, what="window label")
        return Window.day(day)
    return Window.hour(parse_hour(label, what="window label"))


def hour_of(value: str) -> datetime:
    """The hour an ISO-8601 date-time falls in, read as UTC when it has no offset (as CloudZero reads a CBF
    ``time/usage_start``). Raises ValueError for anything else."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO-8601 date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return floor_hour(parsed)
    except OverflowError:
        raise ValueError(f"{value!r} lies outside the years a UTC date-time can hold") from None


def floor_hour(instant: datetime) -> datetime:
    return parse_instant(instant).replace(minute=0, second=0, microsecond=0)


def may_be_purged(start: datetime, oldest_left: datetime | None) -> bool:
    """Whether LiteLLM's retention may have purged rows of the hour (or day) starting at ``start``: it starts at or
    before the hour of the oldest spend-log row left (``oldest_left``; every hour, when none is left)."""
    return oldest_left is None or start <= floor_hour(oldest_left)


@dataclass(frozen=True)
class Window:
    """A half-open window ``[start, end)`` of whole UTC hours."""

    start: datetime
    end: datetime

    @classmethod
    def of(cls, start: str | datetime, end: str | datetime) -> Window:
        """Validate and build a window; the error names the offending bound."""
        s = parse_instant(start, what="window start")
        e = parse_instant(end, what="window end")
        for what, value in (("start", s), ("end", e)):
            if value.minute or value.second or value.microsecond:
                raise ValueError(f"window {what} {value.isoformat()} is not aligned to the hour")
        if e <= s:
            raise ValueError(f"window end {e.isoformat()} is not after its start {s.isoformat()}")
        return cls(s, e)

    @classmethod
    def hour(cls, start: str | datetime) -> Window:
        """The hour starting at ``start``: an instant or an hour label such as ``2026-11-01T13Z``."""
        s = parse_hour(start, what="hour")
        return cls.of(s, s + HOUR)

    @classmethod
    def day(cls, start: datetime) -> Window:
        """The UTC day starting at ``start`` (a UTC midnight)."""
        return cls(start, start + DAY)

    @property
    def hours(self) -> int:
        return int((self.end - self.start) / HOUR)

    def hour_starts(self) -> list[datetime]:
        return [w.start for w in self.each_hour()]

    def each_hour(self) -> Iterator[Window]:
        cursor = self.start
        while cursor < self.end:
            yield Window(cursor, cursor + HOUR)
            cursor += HOUR

    @property
    def label(self) -> str:
        if self.hours == 1:
            return hour_label(self.start)
        return f"{hour_label(self.start)}--{hour_label(self.end)}"

    def each_day(self) -> Iterator[Window]:
        """The UTC days the window touches, each as a whole day."""
        day = self.start.replace(hour=0)
        while day < self.end:
            yield Window.day(day)
            day += DAY

    def chunks(self, hours: int) -> list[Window]:
        """The window cut into pieces of ``hours`` hours, aligned to multiples of ``hours`` since a UTC midnight
        (whole days for 24), the first and last piece clipped to the window."""
        if hours < 1:
            raise ValueError(f"a chunk must hold at least one hour, got {hours}")
        out, cursor = [], self.start
        while cursor < self.end:
            since_midnight = int((cursor - cursor.replace(hour=0)) / HOUR)
            boundary = (
                cursor + HOUR * (hours - since_midnight % hours) if 24 % hours == 0 else cursor + HOUR * hours
            )
            piece_end = min(boundary, self.end)
            out.append(Window(cursor, piece_end))
            cursor = piece_end
        return out

    @property
    def display(self) -> str:
        """What people read in the grid: ``2026-11-01`` for a whole UTC day, else the label."""
        if self.hours == 24 and self.is_day_aligned:
            return day_label(self.start)
        return self.label

    @property
    def is_day_aligned(self) -> bool:
        return self.start.hour == 0 and self.end.hour == 0

    def naive_utc(self) -> tuple[datetime, datetime]:
        """Bounds for comparing with LiteLLM's ``timestamp without time zone`` columns, which hold UTC.

        Binding naive values keeps PostgreSQL from shifting them by the session's TimeZone.
        """
        return self.start.replace(tzinfo=None), self.end.replace(tzinfo=None)

    def __str__(self) -> str:
        return f"[{self.start:%Y-%m-%dT%H:%M}Z, {self.end:%Y-%m-%dT%H:%M}Z)"
