"""Put LiteLLM-shaped spend into a database: exact rows for tests, synthetic volume for demos and benchmarks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.extras

_JSON_COLUMNS = {"metadata", "request_tags", "messages", "response", "proxy_server_request"}


def key_hash(name: str) -> str:
    """A LiteLLM-style hashed virtual key (sha256 hex)."""
    return hashlib.sha256(name.encode()).hexdigest()


def spend_log(request_id: str, start: datetime | str, spend: float | None, **columns: Any) -> dict[str, Any]:
    """One ``LiteLLM_SpendLogs`` row with LiteLLM's usual defaults; ``start`` is UTC."""
    if isinstance(start, str):
        start = datetime.fromisoformat(start.replace("Z", "+00:00"))
    start_naive = start.astimezone(timezone.utc).replace(tzinfo=None) if start.tzinfo else start
    row: dict[str, Any] = {
        "request_id": request_id,
        "call_type": "acompletion",
        "api_key": key_hash("sk-default"),
        "spend": spend,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "startTime": start_naive,
        "endTime": start_naive + timedelta(seconds=2),
        "model": "gpt-4o",
        "model_group": "gpt-4o",
        "custom_llm_provider": "openai",
        "user": "",
        "team_id": None,
        "end_user": "",
        "metadata": {},
        "request_tags": [],
        "status": "success",
    }
    row.update(columns)
    return row


def insert_spend_logs(url: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert rows into ``LiteLLM_SpendLogs``; columns this schema age lacks are refused by PostgreSQL."""
    rows = list(rows)
    if not rows:
        return 0
    columns = sorted({c for r in rows for c in r})
    values = [
        tuple(json.dumps(r[c]) if c in _JSON_COLUMNS and c in r else r.get(c) for c in columns) for r in rows
    ]
    quoted = ", ".join(f'"{c}"' for c in columns)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur, f'INSERT INTO "LiteLLM_SpendLogs" ({quoted}) VALUES %s', values, page_size=1000
        )
    conn.close()
    return len(rows)


def seed_synthetic(
    url: str,
    hour: datetime,
    rows: int,
    *,
    teams: int = 20,
    users: int = 150,
    models: int = 8,
    end_users: int = 500,
    id_prefix: str = "syn",
    seed: float = 0.42,
    with_organization: bool = True,
    analyze: bool = True,
) -> None:
    """``rows`` plausible requests spread over one UTC hour, generated inside PostgreSQL (fast at millions).

    Spend is a deterministic pseudo-random price x tokens, so two runs with the same arguments match exactly.
    Without ``analyze`` the table's statistics are left for the caller to refresh once after many hours.
    """
    start = hour.astimezone(timezone.utc).replace(tzinfo=None, minute=0, second=0, microsecond=0)
    org = ", organization_id" if with_organization else ""
    org_value = ", 'org-' || mod(i, 3)" if with_organization else ""
    team = "mod(mod(i, %(users)s), %(teams)s)"
    sql = f"""
        INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, prompt_tokens, completion_tokens,
            total_tokens, "startTime", "endTime", model, model_group, custom_llm_provider, "user", team_id,
            end_user, metadata, request_tags, status{org})
        SELECT %(prefix)s || '-' || i, 'acompletion',
               md5('key' || mod(i, 40)) || md5('k2' || mod(i, 40)),
               round(((10 + mod(i * 7919, 2000)) * (1 + mod(i, 7)) * 0.00000123)::numeric, 12)::float8,
               10 + mod(i * 7919, 2000), (1 + mod(i, 7)) * 37, 10 + mod(i * 7919, 2000) + (1 + mod(i, 7)) * 37,
               %(start)s::timestamp + ((i * 3599999::bigint / %(rows)s) || ' milliseconds')::interval,
               %(start)s::timestamp + ((i * 3599999::bigint / %(rows)s + 1500) || ' milliseconds')::interval,
               'model-' || mod(i, %(models)s), 'group-' || mod(i, %(models)s),
               (ARRAY['openai','anthropic','bedrock','vertex_ai'])[1 + mod(i, 4)],
               'user-' || mod(i, %(users)s), 'team-' || {team},
               'customer-' || mod(i, %(end_users)s),
               jsonb_build_object('user_api_key_team_alias', 'Team ' || {team},
                                  'user_api_key_alias', 'key-' || mod(i, 40)),
               jsonb_build_array('taskName:task-' || mod(i, 12), 'jobID:' || i),
               CASE WHEN mod(i, 50) = 0 THEN 'failure' ELSE 'success' END{org_value}
        FROM generate_series(0::bigint, %(rows)s - 1) AS i"""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT setseed(%s)", (seed,))
        cur.execute(
            sql,
            {"prefix": f"{id_prefix}-{start:%Y%m%d%H}", "start": start, "rows": rows, "models": models,
             "users": users, "teams": teams, "end_users": end_users},
        )  # fmt: skip
        if analyze:
            cur.execute('ANALYZE "LiteLLM_SpendLogs"')
    conn.close()


def analyze_spend_logs(url: str) -> None:
    """Refresh ``LiteLLM_SpendLogs``' statistics (after seeding many hours with ``analyze=False``)."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute('ANALYZE "LiteLLM_SpendLogs"')
    conn.close()


def roll_up_daily(url: str, *, delete_spend_logs: bool = False) -> None:
    """Fill LiteLLM's daily rollup tables from the spend logs the way the proxy does: hour batch by hour batch,
    each upserted by *adding* to the counters of its (team | user) x date x api_key x model x provider row.

    With ``delete_spend_logs`` the spend logs are emptied afterwards, as on a proxy with spend logs disabled.
    """
    tables = {"LiteLLM_DailyTeamSpend": "team_id", "LiteLLM_DailyUserSpend": "user_id"}
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("""SELECT DISTINCT date_trunc('hour', "startTime") FROM "LiteLLM_SpendLogs" ORDER BY 1""")
        hours = [r[0] for r in cur.fetchall()]
        for hour in hours:
            for table, owner in tables.items():
                source = "s.team_id" if owner == "team_id" else 's."user"'
                cur.execute(
                    f"""INSERT INTO "{table}" AS t (id, {owner}, date, api_key, model, model_group,
                            custom_llm_provider, prompt_tokens, completion_tokens, spend, api_requests,
                            successful_requests, failed_requests, updated_at)
                        SELECT md5(concat_ws('|', {source}, to_char(s."startTime", 'YYYY-MM-DD'), s.api_key, s.model,
                                             s.custom_llm_provider)),
                               {source}, to_char(s."startTime", 'YYYY-MM-DD'), s.api_key, s.model,
                               min(s.model_group), s.custom_llm_provider, sum(s.prompt_tokens),
                               sum(s.completion_tokens), sum(s.spend), count(*),
                               count(*) FILTER (WHERE s.status IS DISTINCT FROM 'failure'),
                               count(*) FILTER (WHERE s.status = 'failure'), now()
                        FROM "LiteLLM_SpendLogs" AS s
                        WHERE s."startTime" >= %(hour)s AND s."startTime" < %(hour)s + interval '1 hour'
                        GROUP BY {source}, to_char(s."startTime", 'YYYY-MM-DD'), s.api_key, s.model,
                                 s.custom_llm_provider
                        ON CONFLICT (id) DO UPDATE SET
                            prompt_tokens = t.prompt_tokens + excluded.prompt_tokens,
                            completion_tokens = t.completion_tokens + excluded.completion_tokens,
                            spend = t.spend + excluded.spend,
                            api_requests = t.api_requests + excluded.api_requests,
                            successful_requests = t.successful_requests + excluded.successful_requests,
                            failed_requests = t.failed_requests + excluded.failed_requests,
                            updated_at = now()""",
                    {"hour": hour},
                )
            cur.execute(  # the tag table: the request once per tag it carries
                """INSERT INTO "LiteLLM_DailyTagSpend" AS t (id, tag, date, api_key, model, model_group,
                        custom_llm_provider, prompt_tokens, completion_tokens, spend, api_requests,
                        successful_requests, failed_requests, updated_at)
                    SELECT md5(concat_ws('|', g.tag, to_char(s."startTime", 'YYYY-MM-DD'), s.api_key, s.model,
                                         s.custom_llm_provider)),
                           g.tag, to_char(s."startTime", 'YYYY-MM-DD'), s.api_key, s.model, min(s.model_group),
                           s.custom_llm_provider, sum(s.prompt_tokens), sum(s.completion_tokens), sum(s.spend),
                           count(*), count(*) FILTER (WHERE s.status IS DISTINCT FROM 'failure'),
                           count(*) FILTER (WHERE s.status = 'failure'), now()
                    FROM "LiteLLM_SpendLogs" AS s
                    CROSS JOIN LATERAL jsonb_array_elements_text(
                        CASE WHEN jsonb_typeof(s.request_tags) = 'array' THEN s.request_tags ELSE '[]' END
                    ) AS g(tag)
                    WHERE s."startTime" >= %(hour)s AND s."startTime" < %(hour)s + interval '1 hour'
                    GROUP BY g.tag, to_char(s."startTime", 'YYYY-MM-DD'), s.api_key, s.model, s.custom_llm_provider
                    ON CONFLICT (id) DO UPDATE SET
                        prompt_tokens = t.prompt_tokens + excluded.prompt_tokens,
                        completion_tokens = t.completion_tokens + excluded.completion_tokens,
                        spend = t.spend + excluded.spend,
                        api_requests = t.api_requests + excluded.api_requests,
                        successful_requests = t.successful_requests + excluded.successful_requests,
                        failed_requests = t.failed_requests + excluded.failed_requests,
                        updated_at = now()""",
                {"hour": hour},
            )
        if delete_spend_logs:
            cur.execute('DELETE FROM "LiteLLM_SpendLogs"')
    conn.close()


def spend_by_hour(url: str) -> dict[str, Decimal]:
    """``SUM(spend::numeric)`` of LiteLLM_SpendLogs per hour (``2026-11-01T13:00:00Z``): what CloudZero must hold."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("""SELECT to_char(date_trunc('hour', "startTime"), 'YYYY-MM-DD"T"HH24:00:00"Z"'),
                              SUM(spend::numeric) FROM "LiteLLM_SpendLogs" GROUP BY 1""")  # fmt: skip
        result = dict(cur.fetchall())
    conn.close()
    return result


def spend_by_day(url: str, table: str = "LiteLLM_DailyTeamSpend") -> dict[str, Decimal]:
    """``SUM(spend::numeric)`` of a daily rollup table per day, keyed by the day's 00:00 (``...T00:00:00Z``)."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"""SELECT date || 'T00:00:00Z', SUM(spend::numeric) FROM "{table}" GROUP BY 1""")
        result = dict(cur.fetchall())
    conn.close()
    return result
