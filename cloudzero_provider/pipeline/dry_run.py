"""Dry run: the exact request bodies of a window's hours written beside their stages; nothing is sent."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cloudzero_provider.cbf import exact_decimal, exact_sum
from cloudzero_provider.drops import group_by_hour
from cloudzero_provider.pipeline.sending import plan_requests
from cloudzero_provider.staging import WindowStage, write_atomically
from cloudzero_provider.windows import Window, hour_of

log = logging.getLogger(__name__)


def dry_run_window(
    window: Window, stage_of: Callable[[Window], WindowStage], *, limit: int | None, max_request_bytes: int
) -> dict[str, Any]:
    """
    Send nothing: write the exact request bodies of every hour (its first ``limit`` records) to that hour's
    ``requests/`` folder, and return what would be sent.

    :param stage_of: The export target's ``stage``: the window's CBF rows are read from its stage, each hour's
        bodies written to the hour's own.
    """
    by_hour: dict[datetime, list[dict[str, str]]] = {}
    hours_of: dict[str, datetime] = {}
    for row in stage_of(window).read_jsonl("cbf.jsonl"):
        text = row["time/usage_start"]
        hour = hours_of.get(text) or hours_of.setdefault(text, hour_of(text))
        by_hour.setdefault(hour, []).append(row)
    if limit is not None:
        by_hour = {h: rows[:limit] for h, rows in by_hour.items()}
    cbf = [r for h in sorted(by_hour) for r in by_hour[h]]
    requests = 0
    folders = []
    for hour in sorted(by_hour):
        hour_window = Window.hour(hour)
        folder = stage_of(hour_window).path("requests")
        if folder.exists():
            for old in folder.iterdir():
                old.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        for index, req in enumerate(plan_requests(group_by_hour(by_hour[hour]), max_request_bytes)):
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
        window, summary["records"], summary["total_cost"], summary["total_tokens"], len(accounts), accounts[:5],
        services, requests, "y" if requests == 1 else "ies",
        folders[0] if len(folders) == 1 else f"{len(folders)} hour folders",
    )  # fmt: skip
    return summary
