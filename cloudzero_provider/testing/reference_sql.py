"""The aggregates as one plain grouping each, written independently of the hook.

They are the statements the hook ran before its reads took two or three steps (issue 22): the daily read looked up
every rollup row's key alias on its own, and both sorted all rows by hour (or day), reason and dimension values in
one grouping. Tests check that the hook's statements return the same rows; ``./dev bench --daily`` times the daily
one too, so that its ratio is stated against this one as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SAMPLES = 5
_TABLES = {"daily_team": "LiteLLM_DailyTeamSpend", "daily_user": "LiteLLM_DailyUserSpend"}
_DIMENSIONS = {
    "team_id": "NULLIF(s.team_id, '')",
    "user": "NULLIF(s.user_id, '')",
    "api_key_alias": (
        "(SELECT NULLIF(v.key_alias, '') FROM {schema}.\"LiteLLM_VerificationToken\" AS v "
        "WHERE v.token = s.api_key LIMIT 1)"
    ),
    "api_key": (
        "CASE WHEN COALESCE(s.api_key, '') = '' THEN NULL "
        "WHEN length(s.api_key) = 64 AND s.api_key ~ '^[0-9a-f]+$' THEN left(s.api_key, 16) "
        "ELSE left(encode(sha256(convert_to(s.api_key, 'UTF8')), 'hex'), 16) END"
    ),
    "model": "NULLIF(s.model, '')",
    "model_group": "NULLIF(s.model_group, '')",
    "provider": "NULLIF(s.custom_llm_provider, '')",
}


def _one_grouping(exprs: Sequence[str]) -> tuple[str, str, str, str]:
    """The parts of one grouping of every row by hour, reason and the dimensions ``exprs`` (as ``d0``, ``d1`` ...):
    the inner columns, the outer columns, ``GROUPING()`` and the ``GROUP BY``."""
    cols = [f"d{i}" for i in range(len(exprs))]
    inner = "".join(f", {e} AS {c}" for e, c in zip(exprs, cols, strict=True))
    outer = "".join(f", a.{c}" for c in cols)
    grouping = f"GROUPING({', '.join('a.' + c for c in cols)})" if cols else "0"
    group_by = (
        f"GROUPING SETS ((a.hour, a.reason{outer}), (a.hour, a.reason))" if cols else "a.hour, a.reason"
    )
    return inner, outer, grouping, group_by


def one_level_daily_sql(
    start_day: str, end_day: str, dims: Sequence[str], source: str = "daily_team", schema: str = "public"
) -> tuple[str, dict[str, Any]]:
    """The daily aggregate of ``[start_day, end_day)`` (``YYYY-MM-DD``) in one grouping, its rows shaped as the
    hook's :meth:`~cloudzero_provider.hooks.litellm.LiteLLMSpendHook.aggregate_sql` shapes them."""
    exprs = [_DIMENSIONS[d].format(schema=f'"{schema}"') for d in dims]
    inner, outer, grouping, group_by = _one_grouping(exprs)
    sql = f"""
SELECT a.hour::date::timestamp AS hour, a.reason, {grouping} AS g{outer},
       sum(a.n)::bigint, sum(a.ok)::bigint, sum(a.failed)::bigint,
       sum(a.spend::numeric) FILTER (WHERE a.reason IS NULL)::text,
       COALESCE(sum(a.prompt_tokens), 0)::bigint, COALESCE(sum(a.completion_tokens), 0)::bigint,
       COALESCE(sum(a.total_tokens), 0)::bigint,
       (array_agg(a.row_id) FILTER (WHERE a.reason IS NOT NULL))[1:{SAMPLES}]
FROM (
    SELECT s.date AS hour, CASE
        WHEN s.spend IS NULL THEN 'spend is NULL'
        WHEN s.spend = 'NaN'::float8 THEN 'spend is NaN'
        WHEN s.spend IN ('Infinity'::float8, '-Infinity'::float8) THEN 'spend is infinite'
        WHEN s.spend < 0 THEN 'spend is negative'
        WHEN s.prompt_tokens < 0 OR s.completion_tokens < 0 OR (s.prompt_tokens + s.completion_tokens) < 0
            THEN 'token count is negative'
        END AS reason, s.spend AS spend, s.api_requests AS n, s.successful_requests AS ok,
        s.failed_requests AS failed, s.prompt_tokens AS prompt_tokens, s.completion_tokens AS completion_tokens,
        (s.prompt_tokens + s.completion_tokens) AS total_tokens, s.id AS row_id{inner}
    FROM "{schema}"."{_TABLES[source]}" AS s
    WHERE s.date >= %(start)s AND s.date < %(end)s
) AS a
GROUP BY {group_by}
ORDER BY 1"""
    return sql, {"start": start_day, "end": end_day}


def one_level_spend_logs_sql(
    window_start: Any,
    window_end: Any,
    dim_exprs: Sequence[str],
    *,
    with_status: bool = True,
    schema: str = "public",
) -> tuple[str, dict[str, Any]]:
    """The spend-log aggregate of ``[window_start, window_end)`` (naive UTC) in one grouping of every row, its rows
    shaped as the hook's :meth:`~cloudzero_provider.hooks.litellm.LiteLLMSpendHook.aggregate_sql` shapes them.
    ``dim_exprs`` are the dimensions as SQL over alias ``s`` (what the hook reads is not under test here: how it
    groups is); the reason of an invalid row is written out on its own."""
    inner, outer, grouping, group_by = _one_grouping(dim_exprs)
    ok, failed = (
        (
            "CASE WHEN s.status = 'success' THEN 1 ELSE 0 END",
            "CASE WHEN s.status = 'failure' THEN 1 ELSE 0 END",
        )
        if with_status
        else ("NULL::int", "NULL::int")
    )
    sql = f"""
SELECT a.hour AS hour, a.reason, {grouping} AS g{outer},
       sum(a.n)::bigint, sum(a.ok)::bigint, sum(a.failed)::bigint,
       sum(a.spend::numeric) FILTER (WHERE a.reason IS NULL)::text,
       COALESCE(sum(a.prompt_tokens), 0)::bigint, COALESCE(sum(a.completion_tokens), 0)::bigint,
       COALESCE(sum(a.total_tokens), 0)::bigint,
       (array_agg(a.row_id) FILTER (WHERE a.reason IS NOT NULL))[1:{SAMPLES}]
FROM (
    SELECT date_trunc('hour', s."startTime") AS hour, CASE
        WHEN s.spend IS NULL THEN 'spend is NULL'
        WHEN s.spend = 'NaN'::float8 THEN 'spend is NaN'
        WHEN s.spend IN ('Infinity'::float8, '-Infinity'::float8) THEN 'spend is infinite'
        WHEN s.spend < 0 THEN 'spend is negative'
        WHEN s.prompt_tokens < 0 OR s.completion_tokens < 0 OR s.total_tokens < 0 THEN 'token count is negative'
        END AS reason, s.spend AS spend, 1 AS n, {ok} AS ok, {failed} AS failed,
        s.prompt_tokens AS prompt_tokens, s.completion_tokens AS completion_tokens,
        s.total_tokens AS total_tokens, s.request_id AS row_id{inner}
    FROM "{schema}"."LiteLLM_SpendLogs" AS s
    WHERE s."startTime" >= %(start)s AND s."startTime" < %(end)s
) AS a
GROUP BY {group_by}
ORDER BY 1"""
    return sql, {"start": window_start, "end": window_end}
