"""Sending: hours of serialized CBF rows planned into requests and sent one at a time, manifests marked in flight."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.drops import DropRequest, plan_stream
from cloudzero_provider.hooks.cloudzero import CloudZeroHook, CloudZeroRequestTooLarge
from cloudzero_provider.manifests import FAILED, SENDING, Attempt, ManifestStore
from cloudzero_provider.options import MIN_REQUEST_BYTES

log = logging.getLogger(__name__)

Receipts = list[dict[str, Any]]


def plan_requests(
    rows_by_hour: Mapping[datetime, Sequence[bytes]], max_request_bytes: int
) -> list[DropRequest]:
    """The requests to send; a row too large for any request fails the task naming the hour and the row."""
    return list(stream_requests(((h, rows_by_hour[h]) for h in sorted(rows_by_hour)), max_request_bytes))


def stream_requests(
    hours: Iterable[tuple[datetime, Sequence[bytes]]], max_request_bytes: int
) -> Iterator[DropRequest]:
    """As :func:`plan_requests`, one request at a time, for hours arriving in ascending order."""
    try:
        yield from plan_stream(hours, max_request_bytes)
    except ValueError as exc:
        raise AirflowFailException(
            f"Cannot upload: {exc}. Names are cut to 256 characters, so a row this large means an unusual "
            "dimension value or a request limit set too low (max_request_bytes); nothing of that hour was sent."
        ) from None


HourGroups = Callable[[], Iterable[tuple[datetime, Sequence[bytes]]]]


def send_hours(
    hook: CloudZeroHook,
    hours: Mapping[datetime, Sequence[bytes]] | HourGroups,
    *,
    max_request_bytes: int,
    attempt: Attempt,
    manifests: ManifestStore,
    on_hour_sent: Callable[[datetime, Receipts], None],
) -> int:
    """
    Send hours of rows one request at a time; returns how many requests were sent.

    ``hours`` is a mapping, or a callable that streams ``(hour, rows)`` in ascending hour order each time it is
    called (a window's staged rows, read from the file hour by hour), so memory holds one request and one hour.
    An hour is marked ``sending`` when its first request goes out and handed to ``on_hour_sent(hour, receipts)``
    when CloudZero has acknowledged its last one (``receipts``: CloudZero's receipts of the hour's requests, as
    they came). A 413 plans every hour not yet acknowledged again at half the size, each from its first chunk.
    """
    if isinstance(hours, Mapping):
        mapping = hours
        groups: HourGroups = lambda: ((h, mapping[h]) for h in sorted(mapping))  # noqa: E731
    else:
        groups = hours
    connection_id = hook.connection_id
    done: set[datetime] = set()
    size, sent = max_request_bytes, 0
    while True:
        receipts: dict[datetime, Receipts] = {}
        too_large = None
        for req in stream_requests(((h, rows) for h, rows in groups() if h not in done), size):
            if (
                req.chunk == 0
            ):  # an hour's first request: from here until its last chunk lands, it is in flight
                for h in req.hours:
                    manifests.mark(h, status=SENDING, attempt=attempt)
                    receipts[h] = []
            try:
                answer = hook.post_billing_drop(
                    req.body, idempotency_key=req.idempotency_key(connection_id, attempt.key)
                )
            except CloudZeroRequestTooLarge:
                too_large = req
                break
            except Exception:
                for h in req.hours:
                    manifests.mark(h, status=FAILED, attempt=attempt)
                raise
            sent += 1
            log.info("Sent %s: drop %s (%s rows)", req.summary(), answer["drop_id"], answer.get("row_count"))
            if answer.get("row_count") not in (None, req.rows):
                log.warning("CloudZero's receipt %s counts %s rows; the request held %d", answer["drop_id"],
                            answer["row_count"], req.rows)  # fmt: skip
            for h in req.hours:
                receipts[h].append(answer)
            if req.chunk == req.chunks - 1:
                for h in req.hours:
                    done.add(h)
                    on_hour_sent(h, receipts[h])
        if too_large is None:
            return sent
        size = len(too_large.body) // 2
        if size < MIN_REQUEST_BYTES:
            raise AirflowFailException(
                f"CloudZero refused a {len(too_large.body)}-byte request as too large (413); not splitting below "
                f"{MIN_REQUEST_BYTES} bytes."
            )
        log.warning("CloudZero answered 413 to %d bytes: re-sending every hour not yet acknowledged from its first "
                    "chunk in requests of at most %d bytes", len(too_large.body), size)  # fmt: skip
