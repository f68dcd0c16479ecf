"""Sending: hours of serialized CBF rows planned into requests and sent one at a time, manifests marked in flight."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.drops import DropRequest, plan
from cloudzero_provider.hooks.cloudzero import CloudZeroHook, CloudZeroRequestTooLarge
from cloudzero_provider.manifests import FAILED, SENDING, Attempt, ManifestStore
from cloudzero_provider.options import MIN_REQUEST_BYTES

log = logging.getLogger(__name__)

Receipts = list[dict[str, Any]]


def plan_requests(
    rows_by_hour: Mapping[datetime, Sequence[bytes]], max_request_bytes: int
) -> list[DropRequest]:
    """The requests to send; a row too large for any request fails the task naming the hour and the row."""
    try:
        return plan(rows_by_hour, max_request_bytes)
    except ValueError as exc:
        raise AirflowFailException(
            f"Cannot upload: {exc}. Names are cut to 256 characters, so a row this large means an unusual "
            "dimension value or a request limit set too low (max_request_bytes); nothing of that hour was sent."
        ) from None


def send_hours(
    hook: CloudZeroHook,
    rows_by_hour: Mapping[datetime, Sequence[bytes]],
    *,
    max_request_bytes: int,
    attempt: Attempt,
    manifests: ManifestStore,
    on_hour_sent: Callable[[datetime, Receipts], None],
) -> int:
    """
    Send the hours' requests one at a time; returns how many requests were sent.

    An hour is marked ``sending`` when its first request goes out and handed to ``on_hour_sent(hour, receipts)``
    when CloudZero has acknowledged its last one (``receipts``: CloudZero's receipts of the hour's requests, as
    they came). A 413 plans every unsent hour again at half the size, each from its first chunk.
    """
    connection_id = hook.connection_id
    queue: deque[DropRequest] = deque(plan_requests(rows_by_hour, max_request_bytes))
    receipts: dict[datetime, Receipts] = {h: [] for h in rows_by_hour}
    sent = 0
    while queue:
        req = queue.popleft()
        if req.chunk == 0:  # an hour's first request: from here until its last chunk lands, it is in flight
            for h in req.hours:
                manifests.mark(h, status=SENDING, attempt=attempt)
        try:
            answer = hook.post_billing_drop(
                req.body, idempotency_key=req.idempotency_key(connection_id, attempt.key)
            )
        except CloudZeroRequestTooLarge:
            smaller = len(req.body) // 2
            if smaller < MIN_REQUEST_BYTES:
                raise AirflowFailException(
                    f"CloudZero refused a {len(req.body)}-byte request as too large (413); not splitting below "
                    f"{MIN_REQUEST_BYTES} bytes."
                ) from None
            hours = set(req.hours) | {h for r in queue for h in r.hours}
            log.warning(
                "CloudZero answered 413 to %d bytes: re-sending %d hour(s) from their first chunk in requests of "
                "at most %d bytes",
                len(req.body), len(hours), smaller,
            )  # fmt: skip
            for h in hours:
                receipts[h] = []
            queue = deque(plan_requests({h: rows_by_hour[h] for h in hours}, smaller))
            continue
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
                on_hour_sent(h, receipts[h])
    return sent
