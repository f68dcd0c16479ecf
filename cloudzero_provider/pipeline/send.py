"""Sending: staged CBF rows checked against the transform, planned into requests and sent one at a time."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.cbf import (
    EXACT,
    exact_decimal,
    exact_sum,
)
from cloudzero_provider.drops import (
    DropRequest,
    group_by_hour,
    plan,
)
from cloudzero_provider.hooks.cloudzero import CloudZeroHook, CloudZeroRequestTooLarge
from cloudzero_provider.manifests import ManifestStore
from cloudzero_provider.pipeline.common import MIN_REQUEST_BYTES
from cloudzero_provider.pipeline.transform import transform_window
from cloudzero_provider.staging import WindowStage, write_atomically
from cloudzero_provider.windows import Window, parse_hour

log = logging.getLogger(__name__)

# -- upload -----------------------------------------------------------------------------------------------


def _staged_cbf(window: Window, stage: WindowStage) -> tuple[dict[str, list[bytes]], dict[str, Any]]:
    """``cbf.jsonl`` grouped by hour, checked against what the transform recorded.

    A ``cbf.jsonl`` that does not hold the rows and cost the transform reconciled (a torn or edited file) is
    rebuilt once from ``extract.jsonl``; if it still disagrees nothing is sent.
    """
    for attempt in (1, 2):
        recorded = stage.read_json("transform.json")
        try:
            cbf = list(stage.read_jsonl("cbf.jsonl"))
        except ValueError as exc:  # a line cut in the middle
            cbf, torn = [], f"cbf.jsonl cannot be read ({exc})"
        else:
            torn = ""
        by_hour = group_by_hour(cbf)
        cost: dict[str, Decimal] = {}
        for row in cbf:
            cost[row["time/usage_start"]] = EXACT.add(
                cost.get(row["time/usage_start"], Decimal(0)), Decimal(row["cost/cost"])
            )
        problems = [
            f"hour {h}: cbf.jsonl holds {len(by_hour.get(h, []))} rows / {exact_decimal(cost.get(h, Decimal(0)))} "
            f"USD, the transform recorded {fig['rows']} / {fig['cost']}"
            for h, fig in sorted(recorded["hours"].items())
            if len(by_hour.get(h, [])) != fig["rows"] or cost.get(h, Decimal(0)) != Decimal(fig["cost"])
        ]
        problems += [
            f"hour {h}: in cbf.jsonl but not in transform.json" for h in by_hour if h not in recorded["hours"]
        ]
        if torn:
            problems.append(torn)
        if not problems:
            return by_hour, recorded
        if attempt == 1:
            log.warning("Window %s: staged CBF rows do not match the transform (%s); transforming again",
                        window, "; ".join(problems))  # fmt: skip
            transform_window(window, stage)
    raise AirflowFailException(f"Window {window}: refusing to send CBF rows that do not match the transform: "
                               + "; ".join(problems))  # fmt: skip


def dry_run_window(
    window: Window, stage_of: Callable[[Window], WindowStage], *, limit: int | None, max_request_bytes: int
) -> dict[str, Any]:
    """
    Send nothing: write the exact request bodies of every hour (its first ``limit`` records) to that hour's
    ``requests/`` folder, and return what would be sent.

    :param stage_of: The export target's ``stage``: the window's CBF rows are read from its stage, each hour's
        bodies written to the hour's own.
    """
    by_hour: dict[str, list[dict[str, str]]] = {}
    for row in stage_of(window).read_jsonl("cbf.jsonl"):
        by_hour.setdefault(row["time/usage_start"], []).append(row)
    if limit is not None:
        by_hour = {h: rows[:limit] for h, rows in by_hour.items()}
    cbf = [r for h in sorted(by_hour) for r in by_hour[h]]
    requests = 0
    folders = []
    for hour in sorted(by_hour):
        hour_window = Window.hour(parse_hour(hour))
        folder = stage_of(hour_window).path("requests")
        if folder.exists():
            for old in folder.iterdir():
                old.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        for index, req in enumerate(_plan(group_by_hour(by_hour[hour]), max_request_bytes)):
            name = f"{index:04d}-{hour_window.label}-chunk{req.chunk + 1}of{req.chunks}.json"
            write_atomically(folder / name, req.body)
            requests += 1
        folders.append(str(folder))
    accounts = sorted({r.get("resource/account", "") for r in cbf})
    services = sorted({r.get("resource/service", "") for r in cbf})
    summary = {
        "dry_run": True,
        "window": window.label,
        "records": len(cbf),
        "limit": limit,
        "total_cost": exact_decimal(exact_sum(r["cost/cost"] for r in cbf)),
        "total_tokens": sum(int(r.get("usage/amount", "0")) for r in cbf),
        "accounts": accounts[:20],
        "accounts_count": len(accounts),
        "services": services,
        "requests": requests,
        "bodies": folders[:50],
    }
    log.info(
        "DRY RUN %s -- nothing sent: %d records, total cost %s USD, %d tokens, %d account(s) %s, services %s; "
        "%d request bod%s written to %s",
        window,
        summary["records"],
        summary["total_cost"],
        summary["total_tokens"],
        len(accounts),
        accounts[:5],
        services,
        requests,
        "y" if requests == 1 else "ies",
        folders[0] if len(folders) == 1 else f"{len(folders)} hour folders",
    )
    return summary


def _plan(rows_by_hour: Mapping[str, Sequence[bytes]], max_request_bytes: int) -> list[DropRequest]:
    """The requests to send; a row too large for any request fails the task naming the hour and the row."""
    try:
        return plan(rows_by_hour, max_request_bytes)
    except ValueError as exc:
        raise AirflowFailException(
            f"Cannot upload: {exc}. Names are cut to 256 characters, so a row this large means an unusual "
            "dimension value or a request limit set too low (max_request_bytes); nothing of that hour was sent."
        ) from None


def _send_all(
    hook: CloudZeroHook,
    rows_by_hour: Mapping[str, Sequence[bytes]],
    *,
    max_request_bytes: int,
    salt: str,
    manifests: ManifestStore,
    on_hour_sent: Any,
) -> int:
    """
    Send the hours' requests one at a time; returns how many requests were sent.

    An hour is marked ``sending`` when its first request goes out and handed to ``on_hour_sent(hour, receipts)``
    when CloudZero has acknowledged its last one (``receipts``: CloudZero's receipts of the hour's requests, as
    they came). A 413 plans every unsent hour again at half the size, each from its first chunk.
    """
    connection_id = hook.connection_id
    queue: deque[DropRequest] = deque(_plan(rows_by_hour, max_request_bytes))
    receipts: dict[str, list[dict[str, Any]]] = {h: [] for h in rows_by_hour}
    sent = 0
    while queue:
        req = queue.popleft()
        if req.chunk == 0:  # an hour's first request: from here until its last chunk lands, it is in flight
            for h in req.hours:
                manifests.mark(parse_hour(h), status="sending", run=salt)
        try:
            answer = hook.post_billing_drop(
                req.body, idempotency_key=req.idempotency_key(connection_id, salt)
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
                len(req.body),
                len(hours),
                smaller,
            )
            for h in hours:
                receipts[h] = []
            queue = deque(_plan({h: rows_by_hour[h] for h in hours}, smaller))
            continue
        except Exception:
            for h in req.hours:
                manifests.mark(parse_hour(h), status="failed", run=salt)
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
