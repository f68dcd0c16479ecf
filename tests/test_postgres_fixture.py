"""The throwaway PostgreSQL carries LiteLLM's real schema at both ages."""

from __future__ import annotations

import psycopg2


def columns(url: str, table: str) -> set[str]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,))
        return {r[0] for r in cur.fetchall()}


def test_schema_loaded(litellm_db, schema_age):
    cols = columns(litellm_db, "LiteLLM_SpendLogs")
    assert {"request_id", "spend", "startTime", "team_id", "end_user", "request_tags", "metadata"} <= cols
    assert ("organization_id" in cols) == (schema_age == "2026-10")
    assert "status" in cols
    assert columns(litellm_db, "LiteLLM_DailyTeamSpend")
