"""The state and rules of the local CloudZero API double, independent of HTTP.

It implements CloudZero's documented AnyCost Stream semantics (``replace_drop``, ``replace_hourly``, ``sum``),
bare-key auth, CBF validation by the OpenAPI patterns, idempotency-key replay and the unit-cost telemetry
endpoints, and records every request so tests can assert what was sent. ``server.py`` puts it behind a real
HTTP server. Nothing here imports Airflow.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from cloudzero_provider.cbf import EXACT, exact_sum
from cloudzero_provider.cbf_rules import DATETIME_RE, drop_errors

ANYCOST = "/v2/connections/billing/anycost/"
TELEMETRY = "/unit-cost/v1/telemetry/metric/"
DEFAULT_MAX_BODY = 5 * 1024 * 1024
MONTH_RE = re.compile(r"(\d{4})-(\d\d)")


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps(self.body).encode()


def parse_time(value: str) -> datetime:
    """An ISO-8601 datetime as aware UTC; a missing offset means UTC, as CloudZero reads it."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def month_key(value: str) -> str:
    """``YYYY-MM`` from ``YYYY-MM`` or a full ISO-8601 datetime; ValueError otherwise."""
    match = MONTH_RE.fullmatch(value)
    if match:
        return value
    if DATETIME_RE.fullmatch(value):
        return parse_time(value).strftime("%Y-%m")
    raise ValueError(f"month {value!r} is neither YYYY-MM nor an ISO-8601 datetime")


def hour_key(row: dict[str, str]) -> str:
    return _hour_of(row["time/usage_start"])


@functools.lru_cache(maxsize=1 << 16)
def _hour_of(usage_start: str) -> str:
    """The hour a ``time/usage_start`` falls in; cached, since a ``replace_hourly`` looks at every row the month
    holds, and a month's rows share a few hundred texts (a value that does not parse is not cached: it raises)."""
    return parse_time(usage_start).strftime("%Y-%m-%dT%H:00:00Z")


def _bad_request(message: str, kind: str = "ValidationError") -> Reply:
    return Reply(400, {"error": {"message": message, "type": kind}})


@dataclass
class Stream:
    """One AnyCost connection's data: CBF rows per month and the drops that built it."""

    months: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    drops: list[dict[str, Any]] = field(default_factory=list)


class CloudZeroDouble:
    """
    In-memory CloudZero: AnyCost Stream and unit-cost telemetry.

    :param api_key: The one key accepted, compared with the bare ``Authorization`` header.
    :param connections: AnyCost connection ids that exist; ``None`` accepts any id.
    :param max_body_bytes: Uncompressed body limit; larger requests get 413.
    :param telemetry_rate: Telemetry records per second allowed, sustained (CloudZero: 100).
    :param telemetry_burst: Records the telemetry bucket holds (CloudZero allows bursts).
    :param processing_delay: Seconds each AnyCost write takes, to make overlapping requests observable.
    """

    def __init__(
        self,
        api_key: str = "cz-double-key",
        *,
        connections: set[str] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        telemetry_rate: float = 100.0,
        telemetry_burst: float = 1000.0,
        processing_delay: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.connections = connections
        self.max_body_bytes = max_body_bytes
        self.telemetry_rate = telemetry_rate
        self.telemetry_burst = telemetry_burst
        self.processing_delay = processing_delay
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            # (namespace, connection id) -> Stream; namespace is the cloudzero-test-key or "".
            self.streams: dict[tuple[str, str], Stream] = defaultdict(Stream)
            # (namespace, metric) -> {(day, frozenset(associated_cost.items())): Decimal}
            self.metrics: dict[tuple[str, str], dict[tuple[str, frozenset[tuple[str, str]]], Decimal]] = (
                defaultdict(dict)
            )
            self.metric_keys: dict[tuple[str, str], frozenset[str]] = {}
            self.idempotent: dict[tuple[str, str], Reply] = {}
            self.requests: list[dict[str, Any]] = []
            self.in_flight: dict[tuple[str, str], int] = defaultdict(int)
            self.concurrent_requests = 0
            # Seconds spent answering requests (parsing, checking and applying bodies): for benchmarks.
            self.handling_seconds = 0.0
            self.telemetry_records_seen = 0
            self.rate_limited = 0
            self._bucket = self.telemetry_burst
            self._bucket_at = time.monotonic()

    # -- reading state (tests, demo) --------------------------------------------------------------------

    def rows(self, connection_id: str, month: str | None = None, namespace: str = "") -> list[dict[str, str]]:
        with self.lock:
            stream = self.streams.get((namespace, connection_id))
            if stream is None:
                return []
            months = [month] if month else sorted(stream.months)
            return [dict(r) for m in months for r in stream.months.get(m, [])]

    def lose_hour(self, connection_id: str, hour: str, namespace: str = "") -> int:
        """Forget an hour's rows, as if CloudZero had lost or rejected a drop after answering 200."""
        with self.lock:
            stream = self.streams[(namespace, connection_id)]
            month = month_key(hour)
            before = len(stream.months.get(month, []))
            stream.months[month] = [r for r in stream.months.get(month, []) if hour_key(r) != hour]
            return before - len(stream.months[month])

    def cost_by_hour(self, connection_id: str, namespace: str = "") -> dict[str, Decimal]:
        by_hour: dict[str, list[str]] = defaultdict(list)
        for row in self.rows(connection_id, namespace=namespace):
            by_hour[hour_key(row)].append(row["cost/cost"])
        return {hour: exact_sum(costs) for hour, costs in sorted(by_hour.items())}

    def snapshot(self, connection_id: str, namespace: str = "") -> list[tuple[tuple[str, str], ...]]:
        """The stream's rows in a canonical order, for comparing states before and after a re-run."""
        return sorted(tuple(sorted(r.items())) for r in self.rows(connection_id, namespace=namespace))

    def metric_values(self, metric: str, namespace: str = "") -> dict[tuple[str, frozenset], Decimal]:
        with self.lock:
            return dict(self.metrics.get((namespace, metric), {}))

    def state(self) -> dict[str, Any]:
        """A JSON view of everything, served at ``GET /_double/state``."""
        with self.lock:
            return {
                "streams": {
                    f"{ns}/{cid}" if ns else cid: {"months": s.months, "drops": s.drops}
                    for (ns, cid), s in self.streams.items()
                },
                "metrics": {
                    f"{ns}/{m}" if ns else m: [
                        {"timestamp": day, "associated_cost": dict(dims), "value": str(v)}
                        for (day, dims), v in sorted(
                            values.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))
                        )
                    ]
                    for (ns, m), values in self.metrics.items()
                },
                "requests": self.requests,
                "concurrent_requests": self.concurrent_requests,
                "rate_limited": self.rate_limited,
            }

    # -- dispatch ---------------------------------------------------------------------------------------

    def stream_of(self, method: str, path: str, namespace: str) -> tuple[str, str] | None:
        """The stream a request writes to or reads from, for concurrency detection."""
        if path.startswith(ANYCOST):
            parts = path[len(ANYCOST) :].split("/")
            if len(parts) >= 2 and parts[1] == "billing_drops":
                return (namespace, "anycost:" + unquote(parts[0]))
        if path.startswith(TELEMETRY):
            return (namespace, "metric:" + unquote(path[len(TELEMETRY) :].split("/")[0]))
        return None

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        """Answer one request as CloudZero would. ``headers`` keys are lower-case."""
        entry: dict[str, Any] = {
            "method": method,
            "path": path,
            "idempotency_key": headers.get("cloudzero-idempotency-key"),
            "content_length": len(body),
        }
        began = time.perf_counter()
        reply = self._handle(method, path, headers, body, entry)
        entry["status"] = reply.status
        with self.lock:
            self.requests.append(entry)
            self.handling_seconds += time.perf_counter() - began
        return reply

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes, entry: dict) -> Reply:
        auth = headers.get("authorization", "")
        if auth != self.api_key:
            hint = " (send the bare key: it is not a bearer token)" if auth.startswith("Bearer ") else ""
            return Reply(403, {"message": f"Forbidden: invalid API key{hint}"})
        if len(body) > self.max_body_bytes:
            return Reply(
                413, {"message": f"Request entity too large: {len(body)} bytes > {self.max_body_bytes}"}
            )
        namespace = headers.get("cloudzero-test-key", "")
        key = headers.get("cloudzero-idempotency-key")
        if key:
            with self.lock:
                stored = self.idempotent.get((namespace, key))
            if stored is not None:
                entry["replayed"] = True
                return stored
        reply = self._route(method, path, body, namespace, entry)
        if key and method == "POST":
            with self.lock:
                self.idempotent.setdefault((namespace, key), reply)
        return reply

    def _route(self, method: str, path: str, body: bytes, namespace: str, entry: dict) -> Reply:
        if path.startswith(TELEMETRY) and method == "POST":
            return self._telemetry(path[len(TELEMETRY) :], body, namespace, entry)
        if not path.startswith(ANYCOST):
            return Reply(404, {"error": {"message": f"no route for {method} {path}", "type": "NotFound"}})
        parts = [unquote(p) for p in path[len(ANYCOST) :].split("/")]
        if parts == ["validate_billing_drop"] and method == "POST":
            return self._validate(body)
        if len(parts) < 2 or parts[1] != "billing_drops" or len(parts) > 3:
            return Reply(404, {"error": {"message": f"no route for {method} {path}", "type": "NotFound"}})
        connection_id = parts[0]
        if self.connections is not None and connection_id not in self.connections:
            return Reply(
                404,
                {"error": {"message": f"AnyCost connection {connection_id} not found", "type": "NotFound"}},
            )
        stream_key = (namespace, connection_id)
        if len(parts) == 3 and method == "GET":
            return self._read_month(stream_key, parts[2])
        if len(parts) == 2 and method == "GET":
            with self.lock:
                drops = [dict(d) for d in self.streams[stream_key].drops]
            return Reply(200, {"billing_drops": drops})
        if len(parts) == 2 and method == "POST":
            return self._post_drop(stream_key, body, entry)
        return Reply(405, {"message": f"method {method} not allowed on {path}"})

    # -- AnyCost ----------------------------------------------------------------------------------------

    @staticmethod
    def _parse(body: bytes) -> tuple[Any, Reply | None]:
        try:
            return json.loads(body or b"null"), None
        except (ValueError, UnicodeDecodeError) as exc:
            return None, _bad_request(f"request body is not valid JSON: {exc}")

    def _check_drop(self, payload: Any) -> tuple[str | None, str, list[dict[str, str]], list[str]]:
        """(month, operation, rows, errors) of a billing-drop body."""
        if not isinstance(payload, dict):
            return None, "", [], ["request body must be a JSON object"]
        errors: list[str] = []
        rows = payload.get("data")
        if not isinstance(rows, list):
            return None, "", [], ["'data' is required and must be an array of CBF rows"]
        operation = payload.get("operation", "replace_drop")
        if operation not in ("replace_drop", "replace_hourly", "sum"):
            errors.append(f"'operation' {operation!r} is not one of replace_drop, replace_hourly, sum")
        errors.extend(drop_errors(rows))
        month: str | None = None
        if payload.get("month") is not None:
            try:
                month = month_key(str(payload["month"]))
            except ValueError as exc:
                errors.append(str(exc))
        if not errors:
            for index, row in enumerate(rows):
                row_month = parse_time(row["time/usage_start"]).strftime("%Y-%m")
                if month is None:
                    month = row_month
                elif row_month != month:
                    errors.append(
                        f"data[{index}]: column 'time/usage_start' {row['time/usage_start']!r} is outside "
                        f"the request's month {month}"
                    )
                    break
        return month, operation, rows, errors

    def _validate(self, body: bytes) -> Reply:
        payload, bad = self._parse(body)
        if bad:
            return bad
        _, _, _, errors = self._check_drop(payload)
        return Reply(200, {"connection": {"is_valid": not errors, "errors": errors}})

    def _post_drop(self, stream_key: tuple[str, str], body: bytes, entry: dict) -> Reply:
        payload, bad = self._parse(body)
        if bad:
            return bad
        month, operation, rows, errors = self._check_drop(payload)
        entry.update(operation=operation, month=month, rows=len(rows))
        if errors:
            return _bad_request(
                "; ".join(errors[:20]) + (f" (and {len(errors) - 20} more)" if len(errors) > 20 else "")
            )
        if month is None:
            return _bad_request("'month' is required when 'data' is empty")
        if self.processing_delay:
            time.sleep(self.processing_delay)
        hours = sorted({hour_key(r) for r in rows})
        entry["hours"] = hours
        with self.lock:
            stream = self.streams[stream_key]
            current = stream.months.get(month, [])
            if operation == "replace_drop":
                current = []
            elif operation == "replace_hourly":
                drop_hours = set(hours)
                current = [r for r in current if hour_key(r) not in drop_hours]
            stream.months[month] = current + [dict(r) for r in rows]
            drop = {
                "drop_id": str(uuid.uuid4()),
                "month": f"{month}-01T00:00:00Z",
                "row_count": len(rows),
            }
            stream.drops.append(drop)
        entry["applied"] = True
        return Reply(200, {"connection": dict(drop)})

    def _read_month(self, stream_key: tuple[str, str], month: str) -> Reply:
        try:
            key = month_key(month)
        except ValueError as exc:
            return _bad_request(str(exc))
        with self.lock:
            stream = self.streams.get(stream_key)
            rows = stream.months.get(key) if stream else None
        if not rows:
            return Reply(404, {"error": {"message": f"no billing drop for month {key}", "type": "NotFound"}})
        return Reply(200, {"billing_drop": [dict(r) for r in rows]})

    # -- unit-cost telemetry ----------------------------------------------------------------------------

    def _take_tokens(self, count: int) -> bool:
        with self.lock:
            now = time.monotonic()
            self._bucket = min(
                self.telemetry_burst, self._bucket + (now - self._bucket_at) * self.telemetry_rate
            )
            self._bucket_at = now
            if count > self._bucket:
                self.rate_limited += 1
                return False
            self._bucket -= count
            return True

    def _telemetry(self, rest: str, body: bytes, namespace: str, entry: dict) -> Reply:
        parts = [unquote(p) for p in rest.split("/")]
        if len(parts) == 1:
            parts.append("sum")  # the deprecated bare endpoint behaves as /sum
        if len(parts) != 2 or parts[1] not in ("sum", "replace", "delete") or not parts[0]:
            return Reply(404, {"error": {"message": f"no telemetry route {rest}", "type": "NotFound"}})
        metric, operation = parts
        payload, bad = self._parse(body)
        if bad:
            return bad
        records = payload.get("records") if isinstance(payload, dict) else None
        if not isinstance(records, list) or not records:
            return _bad_request("'records' must be a non-empty array")
        entry.update(operation=operation, metric=metric, records=len(records))
        if not self._take_tokens(len(records)):
            return Reply(429, {"message": "Too many requests: slow down"}, {"Retry-After": "1"})
        stream = (namespace, metric)
        parsed: list[tuple[str, frozenset[tuple[str, str]], Decimal]] = []
        errors: list[str] = []
        with self.lock:
            known_keys = self.metric_keys.get(stream)
        for index, record in enumerate(records):
            where = f"records[{index}]"
            if not isinstance(record, dict):
                errors.append(f"{where}: must be an object")
                continue
            try:
                day = parse_time(str(record.get("timestamp"))).strftime("%Y-%m-%d")
            except ValueError:
                errors.append(f"{where}: 'timestamp' {record.get('timestamp')!r} is not ISO-8601")
                continue
            dims = record.get("associated_cost") or {}
            if not isinstance(dims, dict) or not all(isinstance(v, str) for v in dims.values()):
                errors.append(f"{where}: 'associated_cost' must map names to strings")
                continue
            if len(dims) > 5:
                errors.append(f"{where}: {len(dims)} associated_cost dimensions, at most 5 allowed")
            bad_keys = [k for k in dims if not k.startswith("custom:") or len(k) == len("custom:")]
            if bad_keys:
                errors.append(f"{where}: dimension keys {bad_keys} lack the 'custom:' prefix")
            keys = frozenset(dims)
            if known_keys is None:
                known_keys = keys
            elif keys != known_keys:
                errors.append(
                    f"{where}: dimension keys {sorted(keys)} differ from the stream's {sorted(known_keys)}"
                )
            value = record.get("value")
            try:
                amount = Decimal(str(value))
            except ArithmeticError:
                amount = Decimal(0)
                errors.append(f"{where}: 'value' {value!r} is not a number")
            if operation != "delete" and not amount > 0:
                errors.append(f"{where}: 'value' must be greater than 0, got {value!r}")
            parsed.append((day, frozenset(dims.items()), amount))
        if errors:
            return _bad_request("; ".join(errors[:20]))
        with self.lock:
            self.metric_keys.setdefault(stream, known_keys or frozenset())
            values = self.metrics[stream]
            self.telemetry_records_seen += len(parsed)
            if operation == "replace":
                replaced = {(day, dims) for day, dims, _ in parsed}
                for item in replaced:
                    values.pop(item, None)
            for day, dims, amount in parsed:
                if operation == "delete":
                    values.pop((day, dims), None)
                else:
                    values[(day, dims)] = EXACT.add(values.get((day, dims), Decimal(0)), amount)
        entry["applied"] = True
        return Reply(200, {"message": f"{len(parsed)} records accepted", "count": len(parsed)})
