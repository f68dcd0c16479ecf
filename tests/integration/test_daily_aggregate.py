"""The daily-rollup read's three-step statement returns what one plain grouping returns, on edge values (both ages)."""

from __future__ import annotations

import math
import time
from decimal import Decimal

import psycopg2
import pytest
from airflow.sdk.exceptions import AirflowFailException

import cloudzero_provider.cbf as cbf_module
import cloudzero_provider.hooks.litellm as litellm_hook
from cloudzero_provider.dimensions import resolve
from cloudzero_provider.hooks.litellm import AggregateRow, LiteLLMSpendHook, _invalid_reason, _valid
from cloudzero_provider.json_lines import encode_line
from cloudzero_provider.testing.postgres import airflow_conn_uri
from cloudzero_provider.testing.reference_sql import one_level_daily_sql
from cloudzero_provider.windows import Window

WINDOW = Window.of("2026-11-01T00:00:00Z", "2026-11-03T00:00:00Z")
SPENDS = [0.0, -0.0, 1e-10, 5e-324, 2.2250738585072014e-308, 0.1, 0.2, 0.30000000000000004, 1e15, 1.7976931348623157e308,
          123456789.123456789, 3.0]  # fmt: skip
INVALID_SPENDS = [math.nan, math.inf, -math.inf, -1e-10, -5.0]
KEYS = ["k-alias", "k-alias-twin", "k-empty-alias", "k-null-alias", "k-unknown", "", "a" * 64]
TEAMS = ["t1", "T1", "", None, "t\n1", "团队", "t1 ", 'q"\\\u2028' + "x" * 300]


@pytest.fixture
def db(litellm_db, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LITELLM_DB", airflow_conn_uri(litellm_db))
    with psycopg2.connect(litellm_db) as conn, conn.cursor() as cur:
        cur.executemany(
            'INSERT INTO "LiteLLM_VerificationToken" (token, key_alias) VALUES (%s, %s)',
            [
                ("k-alias", "shared"),
                ("k-alias-twin", "shared"),
                ("k-empty-alias", ""),
                ("k-null-alias", None),
            ],
        )
        rows = []
        for i in range(400):
            spend = SPENDS[i % len(SPENDS)] if i % 23 else INVALID_SPENDS[(i // 23) % len(INVALID_SPENDS)]
            prompt = -3 if i % 37 == 5 else 1000 + i
            rows.append((
                f"r{i:04d}", TEAMS[i % len(TEAMS)], f"2026-11-0{1 + i % 3}", KEYS[(i // 2) % len(KEYS)],
                ["", "gpt-4o", "GPT-4o", "gpt-4o "][i % 4] + "-" * (i // 84), [None, "g"][i % 2], ["openai", "", None][i % 3], prompt,
                10 + i % 5, spend, 1 + i % 4, i % 4, 1,
            ))  # fmt: skip
        cur.executemany(
            """INSERT INTO "LiteLLM_DailyTeamSpend" (id, team_id, date, api_key, model, model_group,
                   custom_llm_provider, prompt_tokens, completion_tokens, spend, api_requests, successful_requests,
                   failed_requests, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())""",
            rows,
        )
    conn.close()
    return litellm_db


def _rows(url, sql, params):
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        out = cur.fetchall()
    conn.close()
    return out


@pytest.mark.parametrize(
    "dims",
    [
        ["team_id", "api_key_alias", "model", "model_group", "provider"],
        ["api_key_alias"],
        ["api_key", "team_id"],
        ["provider", "model"],
        [],
    ],
)
def test_daily_statement_equals_one_plain_grouping(db, dims):
    sql, params = LiteLLMSpendHook().aggregate_sql(WINDOW, resolve(dims), "daily_team")
    ours = _rows(db, sql, params)
    reference = _rows(db, *one_level_daily_sql("2026-11-01", "2026-11-03", dims))
    n = len(dims)

    def groups(rows):  # (hour, dimension values) -> figures, of the valid rows
        return [(r[0], *r[3 : 3 + n], *r[3 + n : -1]) for r in rows if r[1] is None and r[2] == 0]

    def totals(rows):  # (hour, reason) -> figures and the ids of invalid rows (any five of them)
        return {
            (r[0], r[1]): (*r[3 + n : -1], sorted(r[-1] or []) if r[1] is None else len(r[-1] or []))
            for r in rows
            if r[2] != 0 or n == 0
        }

    assert totals(ours) == totals(reference)
    assert any(reason is not None for _, reason in totals(ours))  # the invalid rows are there
    # the same groups, exact spend text and all, in the order of hour then dimension values
    key = [(g[0], *((v is None, v or "") for v in g[1 : 1 + n])) for g in groups(ours)]
    assert key == sorted(key)
    assert groups(ours) == sorted(
        groups(reference), key=lambda g: (g[0], *((v is None, v or "") for v in g[1 : 1 + n]))
    )
    if (
        "api_key_alias" in dims
    ):  # two keys of one alias are one group; '' and NULL aliases and unknown keys none
        aliases = {g[1 + dims.index("api_key_alias")] for g in groups(ours)}
        assert aliases == {"shared", None}


def test_samples_of_invalid_rows_are_their_ids(db):
    sql, params = LiteLLMSpendHook().aggregate_sql(WINDOW, resolve(["team_id"]), "daily_team")
    by_reason = {(r[0], r[1]): r[-1] for r in _rows(db, sql, params) if r[1] is not None and r[2] != 0}
    ids = {row[0] for row in _rows(db, 'SELECT id FROM "LiteLLM_DailyTeamSpend"', {})}
    assert by_reason and all(
        1 <= len(s) <= 5 and set(s) <= ids and s == sorted(s) for s in by_reason.values()
    )


def test_valid_is_exactly_no_invalid_reason(litellm_db):
    """The predicate that lets PostgreSQL hash the valid rows holds exactly when the row has no invalid reason,
    NULLs, NaN, infinities and signed zeros included."""
    spends = ["NULL", "'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "0", "-1e-300", "1e-300", "5", "-5"]
    tokens = ["NULL", "-1", "0", "7", "1099511627776"]
    values = ", ".join(
        f"({s}::float8, {p}::bigint, {c}::bigint)" for s in spends for p in tokens for c in tokens
    )
    total = "(s.prompt_tokens + s.completion_tokens)"
    rows = _rows(
        litellm_db,
        f"""SELECT ({_invalid_reason(total)}) IS NULL, COALESCE(({_valid(total)}), false), ({_valid(total)}) IS NOT TRUE
            FROM (VALUES {values}) AS s(spend, prompt_tokens, completion_tokens)""",
        {},
    )
    assert len(rows) > 100
    assert all(no_reason == valid == (not invalid) for no_reason, valid, invalid in rows)


@pytest.mark.parametrize(
    "dims", [["team_id", "api_key_alias", "model", "model_group", "provider"], ["api_key"], []]
)
def test_the_staged_lines_are_the_rows_aggregate_gives(db, dims, monkeypatch):
    """The extract's lines, built straight from the records (hostile team names included), are the bytes
    encode_line writes of each AggregateRow.as_dict(), with the same hour totals after them -- with the cache of
    encoded combinations cleared again and again."""
    monkeypatch.setattr(litellm_hook, "MAX_ENCODED_COMBINATIONS", 3)
    monkeypatch.setattr(cbf_module, "MAX_CACHED_VALUE_CHARS", 40)  # the long team name is never kept
    hook, resolved = LiteLLMSpendHook(), resolve(dims)
    rows = [
        encode_line(r.as_dict()) if isinstance(r, AggregateRow) else r
        for r in hook.aggregate(WINDOW, resolved, "daily_team")
    ]
    lines = list(hook.staged_lines(WINDOW, resolved, "daily_team"))
    assert sum(isinstance(r, bytes) for r in rows) > (10 if dims else 1)
    assert lines == rows


def test_a_missing_rollup_table_is_named(db):
    with psycopg2.connect(db) as conn, conn.cursor() as cur:
        cur.execute('DROP TABLE "LiteLLM_DailyUserSpend"')
    conn.close()
    with pytest.raises(
        AirflowFailException, match=r'lacks a table or column .*"public\.LiteLLM_DailyUserSpend" does not'
    ):
        list(LiteLLMSpendHook().aggregate(WINDOW, resolve(["user"]), "daily_user"))


TAG_VALUES = ["job_id:a", "job_id:b", "jobXid:c", "job_id:", "job_id:团队\n", "JOB_ID:x", "job_id:%", None, "other:z",
              'job_id:q"\\\u2028' + "x" * 300, "job_id:a"]  # fmt: skip
TAG_SPENDS = [0.25, 1.5, 3.0, 0.1, 0.0, 2.75, math.nan, -1.0]


def test_the_tag_stream_reads_its_prefix_literally_and_sums_exactly(litellm_db, monkeypatch):
    """LiteLLM_DailyTagSpend through the hook: only tags starting with the prefix itself (``_`` and ``%`` in it or in
    a value are not patterns, case counts), a value left empty is no value, every figure is the rows' sum, and
    invalid rows are counted per day and reason -- never exported."""
    monkeypatch.setenv("AIRFLOW_CONN_LITELLM_DB", airflow_conn_uri(litellm_db))
    rows = []
    with psycopg2.connect(litellm_db) as conn, conn.cursor() as cur:
        for i in range(0, 120, 2):  # a key per row (the table's unique key), the even ones sharing an alias
            cur.execute(
                """INSERT INTO "LiteLLM_VerificationToken" (token, key_alias) VALUES (%s, 'alias one')""",
                (f"k1-{i}",),
            )
        for i in range(120):
            row = (f"t{i:03d}", TAG_VALUES[i % len(TAG_VALUES)], f"2026-11-0{1 + i % 2}", f"k{1 + i % 2}-{i}",
                   ["m1", "", "m2"][i % 3], ["openai", "bedrock"][i % 2], 100 + i, 10 + i % 7,
                   TAG_SPENDS[i % len(TAG_SPENDS)], 1 + i % 5)  # fmt: skip
            rows.append(row)
            cur.execute(
                """INSERT INTO "LiteLLM_DailyTagSpend" (id, tag, date, api_key, model, custom_llm_provider,
                       prompt_tokens, completion_tokens, spend, api_requests, successful_requests, failed_requests,
                       updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0, now())""",
                (*row, row[-1]),
            )
    conn.close()
    dims = ["tag:job_id", "model", "api_key_alias"]
    items = list(LiteLLMSpendHook().aggregate(WINDOW, resolve(dims), "daily_tag"))
    expected: dict = {}
    invalid: dict = {}
    for _, tag, day, key, model, _, prompt, completion, spend, requests in rows:
        if tag is None or not tag.startswith("job_id:"):
            continue
        if math.isnan(spend) or spend < 0:
            reason = "spend is NaN" if math.isnan(spend) else "spend is negative"
            invalid.setdefault(day, {}).setdefault(reason, 0)
            invalid[day][reason] += requests
            continue
        group = (
            day,
            tag[len("job_id:") :] or None,
            model or None,
            "alias one" if key.startswith("k1-") else None,
        )
        n, cost, tokens = expected.get(group, (0, Decimal(0), 0))
        expected[group] = (n + requests, cost + Decimal(repr(spend)), tokens + prompt + completion)
    got = {
        (i.hour.date().isoformat(), *i.dims.values()): (
            i.totals.requests,
            Decimal(i.totals.spend),
            i.totals.total_tokens,
        )
        for i in items
        if isinstance(i, AggregateRow)
    }
    assert got == expected
    assert {v for _, v, _, _ in got} == {"a", "b", None, "团队\n", "%", 'q"\\\u2028' + "x" * 300}
    hours = {i.hour.date().isoformat(): i for i in items if not isinstance(i, AggregateRow)}
    assert {day: h.invalid for day, h in hours.items() if h.invalid} == invalid
    assert all(h.invalid_samples == sorted(h.invalid_samples) for h in hours.values())
    for day, h in hours.items():  # the day's valid total is its groups' sum
        assert Decimal(h.totals.spend) == sum(
            (c for (d, *_), (_, c, _) in expected.items() if d == day), Decimal(0)
        )
    # the quarantine file holds the invalid rows of the prefix, and only those
    quarantined = {
        q["request_id"]: q["reason"]
        for q in LiteLLMSpendHook().invalid_rows(WINDOW, "daily_tag", resolve(dims))
    }
    bad = {r[0]: r[8] for r in rows if math.isnan(r[8]) or r[8] < 0}
    of_prefix = {i: spend for i, spend in bad.items() if (rows[int(i[1:])][1] or "").startswith("job_id:")}
    assert len(bad) > len(of_prefix) > 0, (
        "the seed must hold invalid rows of other tags for this to test anything"
    )
    assert quarantined == {
        i: "spend is NaN" if math.isnan(v) else "spend is negative" for i, v in of_prefix.items()
    }


@pytest.mark.parametrize(
    "dims, message",
    [
        (["tag:job_id", "tag:team"], r"give exactly one tag:<prefix> dimension for its stream, got \['tag:job_id', 'tag:team'\]"),
        (["model"], r"give exactly one tag:<prefix> dimension for its stream, got \[\]"),
        (["tag:job_id", "team_id"], r"LiteLLM_DailyTagSpend cannot give dimension\(s\) \['team_id'\]"),
    ],
)  # fmt: skip
def test_the_tag_stream_refuses_dimensions_it_cannot_give(litellm_db, monkeypatch, dims, message):
    monkeypatch.setenv("AIRFLOW_CONN_LITELLM_DB", airflow_conn_uri(litellm_db))
    with pytest.raises(AirflowFailException, match=message):
        LiteLLMSpendHook().aggregate_sql(WINDOW, resolve(dims), "daily_tag")


@pytest.mark.parametrize("server_side_cursor", [False, True])
def test_a_read_of_several_days_is_what_one_statement_reads(db, monkeypatch, server_side_cursor):
    """Several days are read a statement per day (pipelined with psycopg 3, one after the other through a
    server-side cursor): the same lines and hour totals, in the same order, as the one statement of the window."""
    hook, dims = (
        LiteLLMSpendHook(fetch_size=7, server_side_cursor=server_side_cursor),
        resolve(["team_id", "model"]),
    )
    # Days on either side hold nothing; more than five days: psycopg would prepare the day's statement from its sixth
    # run, a name that outlives the read on a pooled server connection.
    window = Window.of("2026-10-28T00:00:00Z", "2026-11-05T00:00:00Z")
    statements = []
    real = hook._stream_each

    def each(found, *args, **kwargs):
        statements.extend(found)
        return real(found, *args, **kwargs)

    monkeypatch.setattr(hook, "_stream_each", each)
    by_day = list(hook.staged_lines(window, dims, "daily_team"))
    assert len(statements) == 8
    # The window is one day long, for the read: one statement.
    monkeypatch.setattr(litellm_hook, "DAY", window.end - window.start)
    one_statement = list(hook.staged_lines(window, dims, "daily_team"))
    assert len(statements) == 8
    assert sum(isinstance(line, bytes) for line in by_day) > 30
    assert by_day == one_statement


def test_the_days_of_a_read_see_one_snapshot(db):
    """Rows written while a read of several days runs are not in any of its days, whichever statement reads them
    (REPEATABLE READ): as one statement, the read sees the database as it was when it started."""
    window = Window.of("2026-11-01T00:00:00Z", "2026-11-06T00:00:00Z")
    hook = LiteLLMSpendHook()
    read = hook.aggregate(window, resolve(["team_id"]), "daily_team")
    first = next(read)
    assert first.hour.isoformat().startswith("2026-11-01")
    with psycopg2.connect(db) as conn, conn.cursor() as cur:  # committed before the later days are read
        cur.execute(
            """INSERT INTO "LiteLLM_DailyTeamSpend" (id, team_id, date, api_key, model, spend, api_requests,
               updated_at) VALUES ('late', 'late-team', '2026-11-05', 'k', 'm', 7, 3, now())"""
        )
    conn.close()
    rest = list(read)
    assert not [r for r in rest if isinstance(r, AggregateRow) and r.dims["team_id"] == "late-team"]
    after = [
        r for r in hook.aggregate(window, resolve(["team_id"]), "daily_team") if isinstance(r, AggregateRow)
    ]
    assert [r.totals.requests for r in after if r.dims["team_id"] == "late-team"] == [3]


def test_a_read_of_several_days_left_part_way_closes_its_connection(db):
    window = Window.of("2026-11-01T00:00:00Z", "2026-11-04T00:00:00Z")
    hook = LiteLLMSpendHook()

    def sessions() -> int:
        rows = _rows(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()", {})
        return rows[0][0] - 1  # not this one

    read = hook.aggregate(window, resolve(["team_id"]), "daily_team")
    next(read)
    assert sessions() == 1
    read.close()
    deadline = time.monotonic() + 10  # a backend leaves pg_stat_activity a moment after its client closes
    while sessions() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions() == 0
    assert any(
        isinstance(r, AggregateRow) for r in hook.aggregate(window, resolve(["team_id"]), "daily_team")
    )


def test_a_read_of_several_days_left_part_way_does_not_wait_for_the_days_sent(db, monkeypatch):
    """Statements sent ahead are cancelled with the connection, not waited for, when the caller stops reading."""
    window = Window.of("2026-11-01T00:00:00Z", "2026-11-05T00:00:00Z")
    hook = LiteLLMSpendHook()
    real = hook.aggregate_sql

    def slow_from_the_third_day(day, *args):
        # The first fetch receives the first two days (psycopg takes every result sent so far): the third is sent
        # once it has, and is running when the caller stops.
        sql, params = real(day, *args)
        if day.start < window.start + litellm_hook.DAY * 2:
            return sql, params
        return f"SELECT q.* FROM ({sql}) AS q, pg_sleep(30)", params

    monkeypatch.setattr(hook, "aggregate_sql", slow_from_the_third_day)
    read = hook.aggregate(window, resolve(["team_id"]), "daily_team")
    next(read)
    started = time.monotonic()
    read.close()
    assert time.monotonic() - started < 10


def test_a_read_of_several_days_leaves_nothing_prepared(db, monkeypatch):
    """The day's statement is never prepared: psycopg's own prepared statements (from a query's sixth run) would
    outlive the read on a pooled server connection, and another client's statement of that name would then fail."""
    hook = LiteLLMSpendHook()
    real = hook.get_conn
    seen: list[list[str]] = []

    def get_conn():
        conn = real()
        close = conn.close

        def closing():
            if not conn.closed:
                seen.append(
                    [r[0] for r in conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()]
                )
            close()

        monkeypatch.setattr(conn, "close", closing)
        return conn

    monkeypatch.setattr(hook, "get_conn", get_conn)
    window = Window.of("2026-10-28T00:00:00Z", "2026-11-05T00:00:00Z")
    read = list(hook.aggregate(window, resolve(["team_id"]), "daily_team"))
    assert sum(isinstance(r, AggregateRow) for r in read) > 10
    assert seen == [[]]
