"""The three steps of one window -- extract, transform, upload -- as functions of hooks and an export target.

The operators are thin wrappers around these; the late-data pass calls them again for the hours that changed.
Errors a retry cannot fix raise ``AirflowFailException`` with a message that says what to do. Messages go to
this module's logger, which Airflow routes into the running task's log.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from itertools import groupby
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.cbf import (
    EXACT,
    OTHER,
    CBFError,
    exact_decimal,
    exact_sum,
    fold_rare_values,
    is_caller_controlled,
    transform,
)
from cloudzero_provider.dimensions import Dimension, names, resolve
from cloudzero_provider.drops import (
    DEFAULT_MAX_REQUEST_BYTES,
    DropRequest,
    content_digest,
    group_by_hour,
    plan,
    serialize_row,
)
from cloudzero_provider.hooks.cloudzero import CloudZeroHook, CloudZeroRequestTooLarge
from cloudzero_provider.hooks.litellm import AggregateRow, HourTotal, LiteLLMSpendHook, Source
from cloudzero_provider.manifests import ManifestStore
from cloudzero_provider.staging import WindowStage
from cloudzero_provider.windows import DAY, Window, day_label, hour_label, iso_hour, parse_hour

log = logging.getLogger(__name__)

INVALID_POLICIES = ("fail", "quarantine")
SOURCES = ("spend_logs", "daily_team", "daily_user", "daily_tag")
MIN_REQUEST_BYTES = 16_384
DEFAULT_MAX_VALUES_PER_HOUR = 1000
MONTH_ROW_LIMIT = 1_000_000  # CloudZero: rows per stream and month


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe_invalid(hours: Mapping[str, HourTotal], table: str) -> str:
    parts = []
    for hour, ht in sorted(hours.items()):
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(ht.invalid.items()))
        parts.append(f"hour {hour}: {reasons} (e.g. {', '.join(map(str, ht.invalid_samples))})")
    total = sum(sum(ht.invalid.values()) for ht in hours.values())
    return f"{total} invalid {table} row(s) -- " + "; ".join(parts)


def check_dry_run_limit(dry_run: bool, limit: int | None) -> None:
    """``limit`` previews part of an hour, which only a dry run may do."""
    if limit is not None and not dry_run:
        raise AirflowFailException(
            "limit previews only the first N records in a dry run. A real export always sends whole hours: "
            "replace_hourly with part of an hour would erase the rest of that hour in CloudZero. Set dry_run, "
            "or clear limit."
        )


# -- extract ----------------------------------------------------------------------------------------------


def extract_window(
    hook: LiteLLMSpendHook,
    window: Window,
    stage: WindowStage,
    *,
    dimensions: Sequence[str] | None,
    source: str = "spend_logs",
    on_invalid: str = "fail",
    isolate_hours: bool = False,
) -> dict[str, Any]:
    """
    Aggregate the window in PostgreSQL into ``extract.jsonl`` + ``extract.json``; returns the XCom summary.

    Invalid source rows under ``on_invalid="fail"`` fail the whole window, unless ``isolate_hours``: then each
    hour holding them is recorded in ``failed_hours`` (with the reason), the upload sends every other hour and
    fails at the end naming them.
    """
    try:
        dims: list[Dimension] = resolve(dimensions)
    except ValueError as exc:
        raise AirflowFailException(f"Invalid dimensions: {exc}") from None
    if on_invalid not in INVALID_POLICIES:
        raise AirflowFailException(f"on_invalid must be one of {INVALID_POLICIES}, got {on_invalid!r}")
    if source not in SOURCES:
        raise AirflowFailException(f"source must be one of {SOURCES}, got {source!r}")
    src: Source = source  # type: ignore[assignment]
    stage.remove("extract.json")  # a failed re-run must not leave the previous run's summary behind
    extracted_at = _now()
    hours: dict[str, HourTotal] = {}

    def rows() -> Iterator[dict[str, Any]]:
        for item in hook.aggregate(window, dims, src):
            if isinstance(item, AggregateRow):
                yield item.as_dict()
            else:
                hours[item.hour] = item

    try:
        row_count = stage.write_jsonl("extract.jsonl", rows())
    except ValueError as exc:
        raise AirflowFailException(str(exc)) from None
    table = "LiteLLM_SpendLogs" if source == "spend_logs" else source
    bad_hours = {h: ht for h, ht in hours.items() if ht.invalid}
    invalid_rows = sum(sum(ht.invalid.values()) for ht in bad_hours.values())
    quarantine = None
    failed_hours: dict[str, str] = {}
    if bad_hours and on_invalid == "fail" and isolate_hours:
        failed_hours = {h: describe_invalid({h: ht}, table) for h, ht in sorted(bad_hours.items())}
        log.error("Window %s: %d hour(s) hold invalid rows and will not be exported: %s", window,
                  len(failed_hours), "; ".join(failed_hours.values()))  # fmt: skip
    elif bad_hours and on_invalid == "fail":
        raise AirflowFailException(
            f"Window {window}: {describe_invalid(bad_hours, table)}. Nothing was exported. Fix these rows in "
            "the LiteLLM database, or set on_invalid='quarantine' to export the valid rows and keep the "
            "invalid ones in quarantine.jsonl."
        )
    if bad_hours and on_invalid == "quarantine":
        written = stage.write_jsonl("quarantine.jsonl", hook.invalid_rows(window, src))
        quarantine = str(stage.path("quarantine.jsonl"))
        log.warning(
            "Window %s: quarantined %d row(s) in %s -- %s",
            window,
            written,
            quarantine,
            describe_invalid(bad_hours, table),
        )
    else:
        stage.remove("quarantine.jsonl")
    requests = sum(ht.totals.requests for ht in hours.values())
    tokens = sum(ht.totals.total_tokens for ht in hours.values())
    spend = exact_decimal(exact_sum(ht.totals.spend for ht in hours.values()))
    stage.write_json(
        "extract.json",
        {
            "window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
            "extracted_at": extracted_at,
            "source": source,
            "dimensions": names(dims),
            "rows": row_count,
            "hours": {
                h: {**ht.totals.as_dict(), "invalid": ht.invalid, "invalid_samples": ht.invalid_samples}
                for h, ht in sorted(hours.items())
            },
            "invalid_rows": invalid_rows,
            "quarantine": quarantine,
            "failed_hours": failed_hours,
        },
    )
    hint = None
    if source == "spend_logs" and not hours:
        hint = _spend_logs_look_off(hook, window)
    log.info(
        "Extracted %s from %s: %d rows over %d hour(s), %d requests, %d tokens, spend %s USD, %d invalid row(s)%s",
        window,
        table,
        row_count,
        len(hours),
        requests,
        tokens,
        spend,
        invalid_rows,
        f" quarantined in {quarantine}" if quarantine else "",
    )
    return {
        "window": window.label,
        "path": str(stage.path("extract.jsonl")),
        "rows": row_count,
        "requests": requests,
        "tokens": tokens,
        "spend": spend,
        "invalid_rows": invalid_rows,
        "quarantine": quarantine,
        "failed_hours": sorted(failed_hours),
        **({"hint": hint} if hint else {}),
    }


def _spend_logs_look_off(hook: LiteLLMSpendHook, window: Window) -> str | None:
    """A hint when spend logs hold nothing for the window while the daily rollup has spend for its days."""
    days = list(window.each_day())
    try:
        spend = Decimal(hook.daily_spend(Window(days[0].start, days[-1].end)))
    except AirflowFailException:  # no rollup table (a very old LiteLLM): nothing to compare with
        return None
    if spend <= 0:
        return None
    text = (
        f"spend logs look disabled or purged for {', '.join(day_label(d.start) for d in days)}: "
        f"LiteLLM_SpendLogs holds nothing for {window} while LiteLLM_DailyTeamSpend holds {exact_decimal(spend)} "
        "USD for the day -- use litellm_cloudzero_daily_rollup"
    )
    log.warning("%s", text)
    return text


# -- transform --------------------------------------------------------------------------------------------


def transform_window(
    window: Window, stage: WindowStage, *, max_values_per_hour: int | None = DEFAULT_MAX_VALUES_PER_HOUR
) -> dict[str, Any]:
    """``extract.jsonl`` -> validated ``cbf.jsonl``, reconciled per hour against PostgreSQL's own totals.

    ``transform.json`` records each hour's rows, cost and tokens; the upload checks ``cbf.jsonl`` against them
    and writes them into the hour's manifest. Values LLM callers choose (``end_user``, request tags) are capped
    at ``max_values_per_hour`` distinct values per hour, the rest folded into ``(other)`` with their cost; rows
    of exactly zero cost are not sent (both counted in the result).
    """
    extract = stage.read_json("extract.json")
    dims = resolve(extract["dimensions"])
    cost: dict[str, Decimal] = {}
    tokens: dict[str, int] = {}
    rows: dict[str, int] = {}
    folded: dict[str, dict[str, int]] = {}
    zero_cost = 0

    def capped_rows() -> Iterator[dict[str, Any]]:
        staged = stage.read_jsonl("extract.jsonl")
        capped = [d.name for d in dims if is_caller_controlled(d.name)]
        if not capped or max_values_per_hour is None:
            yield from staged
            return
        for hour, group in groupby(staged, key=lambda r: r["hour"]):  # the extract streams hour by hour
            hour_rows, hour_folded = fold_rare_values(list(group), capped, max_values_per_hour)
            if hour_folded:
                folded[hour] = hour_folded
            yield from hour_rows

    def cbf_rows() -> Iterator[dict[str, str]]:
        nonlocal zero_cost
        for row in transform(capped_rows(), dims):
            hour = row["time/usage_start"]
            if row["cost/cost"] == "0":
                zero_cost += 1  # adds nothing to CloudZero: not sent, counted
                continue
            cost[hour] = EXACT.add(cost.get(hour, Decimal(0)), Decimal(row["cost/cost"]))
            tokens[hour] = tokens.get(hour, 0) + int(row["usage/amount"])
            rows[hour] = rows.get(hour, 0) + 1
            yield row

    stage.remove("transform.json")
    try:
        written = stage.write_jsonl("cbf.jsonl", cbf_rows())
    except CBFError as exc:
        stage.remove("cbf.jsonl")
        raise AirflowFailException(f"Window {window}: {exc}") from None
    mismatches = []
    for hour in sorted(set(cost) | set(extract["hours"])):
        source = Decimal(extract["hours"].get(hour, {}).get("spend", "0"))
        if cost.get(hour, Decimal(0)) != source:
            mismatches.append(
                f"hour {hour}: CBF cost/cost sums to {exact_decimal(cost.get(hour, Decimal(0)))} but "
                f"SUM(spend::numeric) of its source rows is {exact_decimal(source)}"
            )
    if mismatches:
        stage.remove("cbf.jsonl")
        raise AirflowFailException(
            f"Window {window} does not reconcile, nothing will be uploaded: " + "; ".join(mismatches)
        )
    total = exact_decimal(exact_sum(cost.values()))
    hours = {h: {"rows": rows[h], "cost": exact_decimal(cost[h]), "tokens": tokens[h]} for h in sorted(rows)}
    if folded:
        log.warning(
            "Window %s: more than %d distinct caller-chosen values in an hour; the rest were folded into %s with "
            "their cost: %s",
            window,
            max_values_per_hour,
            OTHER,
            "; ".join(
                f"{h}: {', '.join(f'{n} {k}' for k, n in f.items())}" for h, f in sorted(folded.items())
            ),
        )
    projection = _month_projection(hours)
    stage.write_json(
        "transform.json",
        {
            "rows": written,
            "cost": total,
            "hours": hours,
            "extracted_at": extract["extracted_at"],
            "folded": folded,
            "zero_cost_rows": zero_cost,
            "month_projection": projection,
        },
    )
    log.info(
        "Transformed %s: %d CBF rows over %d hour(s), cost %s USD, %d tokens -- reconciled exactly with the source",
        window,
        written,
        len(hours),
        total,
        sum(tokens.values()),
    )
    return {
        "window": window.label,
        "path": str(stage.path("cbf.jsonl")),
        "rows": written,
        "cost": total,
        "tokens": sum(tokens.values()),
        "hours": len(hours),
        "max_values_per_hour": max_values_per_hour,
        "folded_values": sum(n for f in folded.values() for n in f.values()),
        "zero_cost_rows": zero_cost,
        **({"month_projection": projection} if projection else {}),
    }


def _month_projection(hours: Mapping[str, Mapping[str, Any]]) -> int | None:
    """Rows a month would reach at the busiest hour's rate, when that crosses CloudZero's per-stream limit."""
    if not hours:
        return None
    busiest = max(int(fig["rows"]) for fig in hours.values())
    first = parse_hour(min(hours))
    days = (first.replace(month=first.month % 12 + 1, year=first.year + first.month // 12, day=1)
            - first.replace(day=1)).days  # fmt: skip
    projected = busiest * 24 * days
    if projected <= MONTH_ROW_LIMIT:
        return None
    log.warning(
        "At this window's busiest hour (%d CBF rows) a month would reach %d rows, over CloudZero's %d rows per "
        "stream and month: drop a high-cardinality dimension or lower max_values_per_hour",
        busiest,
        projected,
        MONTH_ROW_LIMIT,
    )
    return projected


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
            (folder / name).write_bytes(req.body)
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

    An hour is marked ``sending`` when its first request goes out and handed to ``on_hour_sent(hour, drop_ids)``
    when its last one lands. A 413 plans every unsent hour again at half the size, each from its first chunk.
    """
    connection_id = hook.connection_id
    queue: deque[DropRequest] = deque(_plan(rows_by_hour, max_request_bytes))
    drop_ids: dict[str, list[str]] = {h: [] for h in rows_by_hour}
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
                drop_ids[h] = []
            queue = deque(_plan({h: rows_by_hour[h] for h in hours}, smaller))
            continue
        except Exception:
            for h in req.hours:
                manifests.mark(parse_hour(h), status="failed", run=salt)
            raise
        sent += 1
        log.info("Sent %s: drop %s (%s rows)", req.summary(), answer.get("drop_id"), answer.get("row_count"))
        for h in req.hours:
            drop_ids[h].append(str(answer.get("drop_id")))
        if req.chunk == req.chunks - 1:
            for h in req.hours:
                on_hour_sent(h, drop_ids[h])
    return sent


# -- source ownership -------------------------------------------------------------------------------------

DAILY_ORIGINS = ("daily_team", "daily_user", "daily_tag")
SWITCH_HINT = {
    "spend_logs": "trigger litellm_cloudzero_range for that day with take_over=true",
    "daily": "trigger litellm_cloudzero_daily_rollup for that day with take_over=true",
}


def day_owner(manifests: ManifestStore, day: datetime) -> str | None:
    """
    Which source owns a UTC day of a stream: the daily-rollup export (its origin, recorded on the day's 00:00
    manifest), ``spend_logs`` when any hour of the day went out from spend logs, or ``None``.

    Daily rows sit at 00:00, so hourly and daily data of one day in one stream would either erase each other
    (``replace_hourly`` of hour 00) or be counted twice: a day has one owner.
    """
    first = manifests.get(day)
    if first and str(first.get("origin", "")) in DAILY_ORIGINS and first.get("status") != "failed":
        return str(first["origin"])
    for hour in Window(day, day + DAY).hour_starts():
        m = manifests.get(hour)
        if (
            m
            and m.get("origin", "spend_logs") == "spend_logs"
            and (m.get("drop_ids") or m.get("status") == "sending")
        ):
            return "spend_logs"
    return None


def clearing_row(hour: str) -> dict[str, str]:
    """One zero-cost CBF row: sent with ``replace_hourly`` it leaves the hour at exactly 0 in CloudZero."""
    return {
        "time/usage_start": hour,
        "cost/cost": "0",
        "lineitem/type": "Usage",
        "lineitem/description": "cleared: this hour holds no LLM spend from this source",
        "resource/service": "litellm",
        "resource/id": "litellm-cleared-hour",
        "usage/amount": "0",
    }


def _apply_ownership(
    rows_by_hour: dict[str, list[bytes]],
    window: Window,
    manifests: ManifestStore,
    *,
    origin: str,
    take_over: bool,
    dropped: list[str],
) -> set[str]:
    """Drop the hours another source owns into ``dropped`` (or, with ``take_over``, add the clearing rows that
    switch them); returns the hours to clear."""
    days = sorted(
        {parse_hour(h).replace(hour=0) for h in rows_by_hour} | {d.start for d in window.each_day()}
    )
    clear: set[str] = set()
    for day in days:
        owner = day_owner(manifests, day)
        if owner is None or owner == origin:
            continue
        if owner in DAILY_ORIGINS and origin in DAILY_ORIGINS:
            if not take_over:
                raise AirflowFailException(
                    f"{day_label(day)} of this stream is owned by the {owner} export, not {origin}: the two "
                    f"rollup tables count the same requests. Nothing was sent. To switch, {SWITCH_HINT['daily']}."
                )
            if iso_hour(day) not in rows_by_hour:
                clear.add(iso_hour(day))
            continue
        hours = Window(day, day + DAY).hour_starts()
        if not take_over:
            if origin == "spend_logs":
                owned = [iso_hour(h) for h in hours if iso_hour(h) in rows_by_hour]
                for h in owned:
                    del rows_by_hour[h]
                dropped.extend(owned)
                log.warning(
                    "%s of this stream is owned by the daily-rollup export (%s): not sending %d hour(s) from spend "
                    "logs into it. To switch the day to hourly data, %s.",
                    day_label(day), owner, len(owned), SWITCH_HINT["spend_logs"],
                )  # fmt: skip
                continue
            raise AirflowFailException(
                f"{day_label(day)} of this stream already holds hourly data exported from spend logs; a daily "
                f"export ({origin}) of it would count its spend twice. Nothing was sent. To switch the day to the "
                f"daily rollup, {SWITCH_HINT['daily']}; to keep hourly data, leave it to litellm_cloudzero_hourly."
            )
        if origin == "spend_logs":  # the daily rows sit at 00:00: replace them, with nothing if need be
            first = iso_hour(day)
            if first not in rows_by_hour:
                clear.add(first)
        else:  # every hour the spend-log export sent that day goes back to 0
            for hour in hours[1:]:
                m = manifests.get(hour)
                if m and m.get("origin", "spend_logs") == "spend_logs" and m.get("drop_ids"):
                    clear.add(iso_hour(hour))
            if iso_hour(day) not in rows_by_hour:
                clear.add(iso_hour(day))
        log.warning("Taking %s of this stream over from %s to %s: clearing %d hour(s)", day_label(day), owner,
                    origin, len(clear))  # fmt: skip
    for cleared_hour in clear:
        rows_by_hour[cleared_hour] = [serialize_row(clearing_row(cleared_hour))]
    return clear


def clear_hours(
    hook: CloudZeroHook,
    hours: Sequence[datetime],
    manifests: ManifestStore,
    *,
    salt: str,
    origin: str = "spend_logs",
) -> int:
    """Leave each hour at exactly 0 in CloudZero (one zero-cost row with ``replace_hourly``); returns requests."""
    rows_by_hour = {iso_hour(h): [serialize_row(clearing_row(iso_hour(h)))] for h in hours}
    connection_id = hook.connection_id
    stamp = _now()

    def record(hour: str, drop_ids: list[str]) -> None:
        manifests.write_exported(
            parse_hour(hour),
            {
                "connection_id": connection_id,
                "window": hour_label(parse_hour(hour)),
                "rows": 0,
                "cost": "0",
                "tokens": 0,
                "content_sha256": content_digest(rows_by_hour[hour]),
                "drop_ids": drop_ids,
                "sent_at": stamp,
                "extracted_at": stamp,
                "source": {"requests": 0, "spend": "0"},
                "origin": origin,
                "cleared": True,
                "run": salt,
            },
            late_correction=True,
        )

    return _send_all(hook, rows_by_hour, max_request_bytes=DEFAULT_MAX_REQUEST_BYTES, salt=salt,
                     manifests=manifests, on_hour_sent=record)  # fmt: skip


def _emptied_hours(
    window: Window,
    rows_by_hour: Mapping[str, Sequence[bytes]],
    extract: Mapping[str, Any],
    manifests: ManifestStore,
    *,
    origin: str,
) -> list[str]:
    """Hours of the window this source exported with a cost that now have nothing to send: without an explicit
    clearing row, CloudZero would keep their old cost forever (an empty hour sends no request)."""
    failed = set(extract.get("failed_hours") or {})
    out = []
    for start in window.hour_starts():
        hour = iso_hour(start)
        if hour in rows_by_hour or hour in failed:
            continue
        m = manifests.get(start)
        if (
            m
            and m.get("status") == "exported"
            and m.get("origin", "spend_logs") == origin
            and not m.get("cleared")
            and Decimal(str(m.get("cost", "0"))) != 0
        ):
            out.append(hour)
    return out


def upload_window(
    hook: CloudZeroHook,
    window: Window,
    stage: WindowStage,
    manifests: ManifestStore,
    *,
    max_request_bytes: int,
    salt: str,
    late_correction: bool = False,
    skip_unchanged: bool = False,
    origin: str = "spend_logs",
    take_over: bool = False,
) -> dict[str, Any]:
    """
    Send the window's CBF rows to AnyCost, one request at a time, and write a manifest per hour.

    Every hour is sent whole (``replace_hourly``; a split hour restarts at its first chunk), so re-running
    a window is safe. An hour whose manifest records a newer extract (e.g. the late-data pass) is not sent.
    Hours the extract recorded as failed (``isolate_hours``) are not sent; their manifests say why, and the
    result lists them under ``failed_hours`` for the caller to fail on after the others went.

    :param skip_unchanged: Do not send an hour whose manifest says it was exported with exactly these rows
        (a retry, or a range run again, redoes only what is not yet in CloudZero).
    :param origin: The source the rows come from (``spend_logs``, ``daily_team``, ``daily_user``); a UTC day of
        a stream is owned by one source (see :func:`day_owner`), and the other never writes into it.
    :param take_over: Switch the days of the window to ``origin``: the other source's hours of those days are
        cleared (left at exactly 0) as the new rows are sent.
    """
    rows_by_hour, recorded = _staged_cbf(window, stage)
    extract = stage.read_json("extract.json")
    owned_elsewhere: list[str] = []
    emptied = _emptied_hours(window, rows_by_hour, extract, manifests, origin=origin)
    cleared = _apply_ownership(rows_by_hour, window, manifests, origin=origin, take_over=take_over,
                               dropped=owned_elsewhere)  # fmt: skip
    for hour in emptied:
        rows_by_hour[hour] = [serialize_row(clearing_row(hour))]
        cleared.add(hour)
    if emptied:
        log.warning("Clearing %d hour(s) to 0 in CloudZero: exported before, they hold no spend now: %s",
                    len(emptied), emptied)  # fmt: skip
    failed: dict[str, str] = dict(extract.get("failed_hours") or {})
    for hour, reason in failed.items():
        rows_by_hour.pop(hour, None)
        manifests.mark(parse_hour(hour), status="failed", run=salt, reason=reason)
    skipped, unchanged = [], []
    for hour in list(rows_by_hour):
        current = manifests.get(parse_hour(hour))
        if current and current.get("extracted_at", "") > extract["extracted_at"]:
            # A newer extract of this hour was already sent: never overwrite it with older data.
            skipped.append(hour)
            del rows_by_hour[hour]
        elif (
            skip_unchanged
            and current
            and current.get("status") == "exported"
            and current.get("content_sha256") == content_digest(rows_by_hour[hour])
        ):
            unchanged.append(hour)
            del rows_by_hour[hour]
    if skipped:
        log.warning("Not sending hour(s) %s: a newer extract of them was already exported", skipped)
    if unchanged:
        log.info("%d hour(s) already exported with exactly these rows, not sent again", len(unchanged))
    connection_id = hook.connection_id
    total_hours = len(rows_by_hour)
    started = time.monotonic()

    def record(hour: str, drop_ids: list[str]) -> None:
        src = extract["hours"].get(hour, {})
        fig = recorded["hours"].get(hour) or {"rows": 0, "cost": "0", "tokens": 0}  # a cleared hour
        manifests.write_exported(
            parse_hour(hour),
            {
                "connection_id": connection_id,
                "window": window.label,
                "rows": fig["rows"],
                "cost": fig["cost"],
                "tokens": fig["tokens"],
                "content_sha256": content_digest(rows_by_hour[hour]),
                "drop_ids": drop_ids,
                "sent_at": _now(),
                "extracted_at": extract["extracted_at"],
                "source": {"requests": src.get("requests", 0), "spend": src.get("spend", "0")},
                "origin": origin,
                "cleared": hour in cleared,
                "run": salt,
            },
            late_correction=late_correction,
        )
        done.append(hour)
        elapsed = max(time.monotonic() - started, 1e-9)
        requests_done = sum(int(extract["hours"].get(h, {}).get("requests", 0)) for h in done)
        log.info("Hour %s exported: %d/%d hour(s) of %s done, %.0f source requests/s", hour, len(done),
                 total_hours, window, requests_done / elapsed)  # fmt: skip

    done: list[str] = []
    sent = _send_all(hook, rows_by_hour, max_request_bytes=max_request_bytes, salt=salt, manifests=manifests,
                     on_hour_sent=record)  # fmt: skip
    exported = sorted(rows_by_hour)
    total = exact_decimal(exact_sum(recorded["hours"][h]["cost"] for h in exported if h in recorded["hours"]))
    rows = sum(len(v) for v in rows_by_hour.values())
    drops = sorted({d for h in exported for d in (manifests.get(parse_hour(h)) or {}).get("drop_ids", [])})
    log.info(
        "Uploaded %s to AnyCost connection %s: %d hour(s), %d rows, cost %s USD, %d request(s); drops %s",
        window,
        connection_id,
        len(exported),
        rows,
        total,
        sent,
        drops,
    )
    return {
        "window": window.label,
        "hours": [hour_label(parse_hour(h)) for h in exported],
        "rows": rows,
        "cost": total,
        "requests_sent": sent,
        "drop_ids": drops,
        "skipped_newer": skipped,
        "unchanged": [hour_label(parse_hour(h)) for h in unchanged],
        "cleared": [hour_label(parse_hour(h)) for h in sorted(cleared)],
        "skipped_owned": [hour_label(parse_hour(h)) for h in owned_elsewhere],
        "failed_hours": {hour_label(parse_hour(h)): reason for h, reason in sorted(failed.items())},
    }
