"""Send LiteLLM spend to CloudZero as a unit-cost metric: one record per UTC day and dimension combination."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import timezone
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from cloudzero_provider.dimensions import resolve
from cloudzero_provider.hooks.litellm import AggregateRow
from cloudzero_provider.operators.base import CloudZeroStagingOperator
from cloudzero_provider.staging import read_bytes, write_atomically
from cloudzero_provider.telemetry_records import (
    MAX_RECORDS_PER_REQUEST,
    MAX_VALUES_PER_DAY,
    batches,
    check_dimensions,
    check_metric_name,
    pace_delay,
    record_key,
    roll_up_days,
    stale_records,
    stream_name,
    to_records,
)
from cloudzero_provider.windows import (
    DAY,
    Window,
    day_label,
    day_start,
    floor_hour,
    iso_hour,
    iso_instant,
    may_be_purged,
    parse_hour,
    parse_instant,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)


MAX_DAYS = 366


def days_of(
    context: Context | dict[str, Any], start: Any, end: Any, *, now: datetime | None = None
) -> list[Window]:
    """The UTC days to (re)send: from explicit bounds, the triggering Asset events' hours, or the data interval.

    Explicit bounds may span at most :data:`MAX_DAYS` days and end no later than the end of the current hour. Asset
    events give the days their hours fall in, and only those (an import's events name each of its days; one event
    of a far year adds one day, not every day up to it); an hour after the current one is ignored with a warning.
    """
    hours: list[Any] = []
    limit = floor_hour(now or timezone.utcnow()) + timedelta(hours=1)
    if start:
        try:
            s = parse_instant(start, what="start")
            e = parse_instant(end, what="end") if end else s + timedelta(hours=1)
        except ValueError as exc:
            raise AirflowFailException(f"Telemetry window: {exc}") from None
        if e <= s or e - s > timedelta(days=MAX_DAYS) or e > limit:
            raise AirflowFailException(
                f"Telemetry window [{iso_hour(floor_hour(s))}, {iso_hour(floor_hour(e))}) refused: it must end after "
                f"it starts, span at most {MAX_DAYS} days and end no later than {iso_hour(limit)} (the current hour)."
            )
        hours = [s, e - timedelta(microseconds=1)]
    else:
        events = context.get("triggering_asset_events")
        for asset_events in (events or {}).values():
            for event in asset_events:
                hour = (getattr(event, "extra", None) or {}).get("hour")
                if hour:
                    hours.append(parse_hour(hour, what="Asset event hour"))  # an event's extra: the edge
        future = [h for h in hours if h >= limit]
        if future:
            log.warning("Ignoring %d Asset event(s) whose hour is after the current one: %s", len(future),
                        ", ".join(iso_hour(h) for h in sorted(set(future))[:5]))  # fmt: skip
        named_days = sorted({day_start(h) for h in hours if h < limit})
        if named_days:
            return [Window.day(day) for day in named_days]
        hours = []
        interval_start, interval_end = context.get("data_interval_start"), context.get("data_interval_end")
        if interval_start and interval_end:
            s, e = parse_instant(interval_start), parse_instant(interval_end)
            if e > s:
                hours = [s, e - timedelta(microseconds=1)]
    if not hours:
        raise AirflowFailException(
            "No days to send: give start/end, or run this task from the export's Asset events or a data interval."
        )
    first = min(hours).replace(hour=0, minute=0, second=0, microsecond=0)
    last = max(hours).replace(hour=0, minute=0, second=0, microsecond=0)
    out, day = [], first
    while day <= last:
        out.append(Window.day(day))
        day += DAY
    return out


class UnitCostTelemetryOperator(CloudZeroStagingOperator):
    """
    Send LiteLLM spend to a CloudZero unit-cost metric: one record per UTC day and dimension combination.

    Reads the same aggregate as the AnyCost extract, for whole days (the day so far when it is not over), and
    sends it with ``replace``: re-sending a day replaces its records, so each hourly run may refresh the current
    day and the first run after midnight finalises the previous one. A record sent before that the day no longer
    holds (a value the cap has since folded into ``(other)``) is deleted: what each day was last sent is kept under
    the export target (``telemetry/``), as long as reports are. Records whose value is not > 0 are skipped and
    counted. Requests stay within 5 MB and the send rate within ``max_records_per_second``.

    :param metric_name: Unit metric; default: the ``cloudzero`` connection's extra ``metric_name``.
    :param value: ``cost`` (default), ``requests`` or ``tokens``.
    :param dimensions: Up to 5 of model, user, team_id, organization_id, end_user.
    :param window_start: Explicit first hour (ISO-8601); default: the triggering Asset events, else the data
        interval. (templated)
    :param window_end: Explicit end (exclusive). (templated)
    :param max_records_per_second: CloudZero's sustained limit is 100.
    :param max_records_per_request: Records per request (each request also stays within 4 MB).
    :param max_values_per_day: Distinct ``end_user`` values a day keeps before the rest are folded into
        ``(other)`` with their cost (values LLM callers choose); 0 or ``None``: no cap.
    """

    template_fields: Sequence[str] = (
        *CloudZeroStagingOperator.template_fields,
        "metric_name",
        "value",
        "dimensions",
    )
    ui_color = "#fef9e7"

    def __init__(
        self,
        *,
        metric_name: str | None = None,
        value: str = "cost",
        dimensions: list[str] | None = None,
        max_records_per_second: float = 100.0,
        max_records_per_request: int = MAX_RECORDS_PER_REQUEST,
        max_values_per_day: int | None = MAX_VALUES_PER_DAY,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.metric_name = metric_name
        self.value = value
        self.dimensions = dimensions
        self.max_records_per_second = max_records_per_second
        self.max_records_per_request = max_records_per_request
        self.max_values_per_day = max_values_per_day

    def execute(self, context: Context) -> dict[str, Any]:
        cz = self.cloudzero_hook
        metric = self.metric_name or cz.metric_name
        if not metric:
            raise AirflowSkipException(
                'Unit-cost telemetry is off: no metric name. Set the cloudzero connection\'s extra "metric_name" '
                "(LiteLLM's CLOUDZERO_METRIC_NAME) or CLOUDZERO_TELEMETRY_METRIC to send LLM spend as a unit metric."
            )
        try:
            metric = check_metric_name(metric)
            dims = check_dimensions(self.dimensions)
            if self.value not in ("cost", "requests", "tokens"):
                raise ValueError(f"value must be cost, requests or tokens, got {self.value!r}")
        except ValueError as exc:
            raise AirflowFailException(f"Telemetry settings: {exc}") from None
        db = self.litellm_hook
        summary: dict[str, Any] = {
            "metric": metric,
            "value": self.value,
            "days": {},
            "skipped_not_positive": 0,
        }
        sent_records, started = 0, time.monotonic()

        def send(records: list[dict[str, object]], operation: str) -> None:
            nonlocal sent_records
            for body, count in batches(records, max_records=self.max_records_per_request):
                wait = pace_delay(
                    sent_records, count, time.monotonic() - started, self.max_records_per_second
                )
                if wait:
                    time.sleep(wait)
                cz.send_telemetry(metric, body, operation=operation)
                sent_records += count

        stream = stream_name(metric, self.value, dims)
        oldest: list[datetime | None] = []  # the oldest spend-log row left, read when first needed

        def purged(day: Window) -> bool:
            if not oldest:
                oldest.append(db.oldest_spend_log())
            return may_be_purged(day.start, oldest[0])

        for day in days_of(context, self.window_start, self.window_end):
            rows = (r.as_row() for r in db.aggregate(day, resolve(dims)) if isinstance(r, AggregateRow))
            records, skipped = to_records(
                roll_up_days(rows, dims, max_values_per_day=self.max_values_per_day or None), dims, self.value
            )
            ledger = self.target.telemetry_ledger(stream, day.start)
            before = self._sent_before(ledger)
            now = {record_key(r): str(r["value"]) for r in records}
            # Written before sending: whatever a failure leaves in CloudZero is known to the next run.
            write_atomically(ledger, json.dumps({**before, **now}, sort_keys=True).encode())
            send(records, "replace")
            stale = stale_records(before, records, day.start)
            kept: dict[str, str] = {}
            if stale and (purged(day) or not records):
                # What LiteLLM's retention purged is not gone from CloudZero: as the late pass keeps such hours.
                kept = {k: v for k, v in before.items() if k not in now}
                self.log.warning(
                    "Telemetry %s for %s: %d record(s) sent before are kept, not deleted: LiteLLM's retention may "
                    "have purged the day's spend logs (the oldest left is %s)", metric, day_label(day.start),
                    len(kept), iso_instant(oldest[0]) if oldest[0] else "none",
                )  # fmt: skip
                stale = []
            send(stale, "delete")
            write_atomically(ledger, json.dumps({**kept, **now}, sort_keys=True).encode())
            total = sum((float(r["value"]) for r in records), 0.0)  # type: ignore[arg-type]
            summary["days"][day_label(day.start)] = {
                "records": len(records),
                "skipped": skipped,
                "deleted_stale": len(stale),
                "kept_possibly_purged": len(kept),
            }
            summary["skipped_not_positive"] += skipped
            self.log.info(
                "Telemetry %s for %s: %d record(s) sent with replace (%s total %.6g), %d skipped (value not > 0), "
                "%d deleted (sent before, now folded into (other))",
                metric, day_label(day.start), len(records), self.value, total, skipped, len(stale),
            )  # fmt: skip
        summary["records_sent"] = sent_records
        return summary

    def _sent_before(self, ledger: Any) -> dict[str, str]:
        """What a day's records were last sent with: ``record_key`` -> value (none when it was never sent here)."""
        try:
            value = json.loads(read_bytes(ledger))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            self.log.warning("%s is unreadable (%s): records it listed cannot be deleted", ledger, exc)
            return {}
        if not isinstance(value, dict):
            return {}
        return {str(k): str(v) for k, v in value.items()}
