"""Dry run: the exact request bodies of a window's hours written beside their stages; nothing is sent."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from cloudzero_provider.cbf import exact_decimal, exact_sum
from cloudzero_provider.pipeline.sending import plan_requests
from cloudzero_provider.pipeline.transform import cbf_hours
from cloudzero_provider.staging import WindowStage, write_atomically
from cloudzero_provider.windows import Window

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
    records = requests = 0
    cost: list[str] = []
    tokens = 0
    accounts: set[str] = set()
    services: set[str] = set()
    folders = []
    for hour, rows in cbf_hours(stage_of(window)):  # one hour in memory at a time
        if limit is not None:
            rows = rows[:limit]
        for raw in rows:
            row = json.loads(raw)
            cost.append(row["cost/cost"])
            tokens += int(row.get("usage/amount", "0"))
            accounts.add(row.get("resource/account", ""))
            services.add(row.get("resource/service", ""))
        records += len(rows)
        hour_window = Window.hour(hour)
        folder = stage_of(hour_window).path("requests")
        if folder.exists():
            for old in folder.iterdir():
                old.unlink()
        for index, req in enumerate(plan_requests({hour: rows}, max_request_bytes)):
            name = f"{index:04d}-{hour_window.label}-chunk{req.chunk + 1}of{req.chunks}.json"
            write_atomically(folder / name, req.body)
            requests += 1
        folders.append(str(folder))
    summary = {
        "dry_run": True,
        "window": window.label,
        "records": records,
        "limit": limit,
        "total_cost": exact_decimal(exact_sum(cost)),
        "total_tokens": tokens,
        "accounts": sorted(accounts)[:20],
        "accounts_count": len(accounts),
        "services": sorted(services),
        "requests": requests,
        "bodies": folders[:50],
    }
    log.info(
        "DRY RUN %s -- nothing sent: %d records, total cost %s USD, %d tokens, %d account(s) %s, services %s; "
        "%d request bod%s written to %s",
        window, summary["records"], summary["total_cost"], summary["total_tokens"], len(accounts),
        sorted(accounts)[:5], sorted(services), requests, "y" if requests == 1 else "ies",
        folders[0] if len(folders) == 1 else f"{len(folders)} hour folders",
    )  # fmt: skip
    return summary
