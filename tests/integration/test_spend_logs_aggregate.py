"""The spend-log read's two-step statement returns what one plain grouping of every row returns, on edge values (both
schema ages), whether PostgreSQL hashes its groups (the read's plan for the organisation's own dimensions) or sorts
its rows (caller-chosen dimensions)."""

from __future__ import annotations

import math
from datetime import datetime

import psycopg2
import pytest

from cloudzero_provider.dimensions import DEFAULT_DIMENSIONS, resolve
from cloudzero_provider.hooks.litellm import (
    AggregateRow,
    HourTotal,
    LiteLLMSpendHook,
    _invalid_reason,
    _valid,
    hashes_groups,
)
from cloudzero_provider.testing.postgres import airflow_conn_uri
from cloudzero_provider.testing.reference_sql import one_level_spend_logs_sql
from cloudzero_provider.testing.seed import insert_spend_logs, key_hash, spend_log
from cloudzero_provider.windows import Window

WINDOW = Window.of("2026-11-01T10:00:00Z", "2026-11-01T13:00:00Z")
SPENDS = [0.0, -0.0, 1e-10, 5e-324, 2.2250738585072014e-308, 0.1, 0.2, 0.30000000000000004, 1e15, 1.7976931348623157e308,
          123456789.123456789, 3.0]  # fmt: skip
INVALID_SPENDS = [math.nan, math.inf, -math.inf, -1e-10, -5.0]
TEAMS = ["t1", "T1", "", None, "t\n1", "团队", "t1 ", 'q"\\\u2028' + "x" * 300]
USERS = ["u1", "", None, "U1", "</script>"]
END_USERS = ["c1", "c2", "", None, "c1 "]
TAGS = [["task:a", "job:1"], ["task:b"], [], ["job:2", "task:a"], ["task:"], [7, "task:c"], ["other"]]
DIMENSION_SETS = [
    list(DEFAULT_DIMENSIONS),
    ["team_id", "end_user", "tag:task"],
    ["api_key", "model", "call_type"],
    [],
]


@pytest.fixture
def db(litellm_db, schema_age, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LITELLM_DB", airflow_conn_uri(litellm_db))
    rows = []
    for i in range(500):
        spend = SPENDS[i % len(SPENDS)] if i % 23 else INVALID_SPENDS[(i // 23) % len(INVALID_SPENDS)]
        prompt = -3 if i % 37 == 5 else 1000 + i
        extra = {"organization_id": ["org-1", None, ""][i % 3]} if schema_age != "2025-05" else {}
        rows.append(
            spend_log(
                f"r{(i * 7919) % 500:04d}",  # ids in another order than the rows
                datetime(2026, 11, 1, 10 + i % 3, (i * 7) % 60),
                spend,
                prompt_tokens=prompt,
                completion_tokens=10 + i % 5,
                total_tokens=prompt + 10 + i % 5,
                team_id=TEAMS[i % len(TEAMS)],
                user=USERS[(i // 2) % len(USERS)],
                end_user=END_USERS[(i // 3) % len(END_USERS)],
                api_key=key_hash(f"k{i % 4}") if i % 5 else "sk-raw-key",
                model=["", "gpt-4o", "GPT-4o", "gpt-4o "][i % 4] + "-" * (i // 120),
                model_group=[None, "g"][i % 2],
                custom_llm_provider=["openai", "", None][i % 3],
                call_type=["acompletion", "aembedding"][i % 2],
                metadata={"user_api_key_team_alias": ["Team A", "", "Team \u00e9"][i % 3]},
                request_tags=TAGS[i % len(TAGS)],
                status=["success", "failure", None][i % 3],
                **extra,
            )
        )
    insert_spend_logs(litellm_db, rows)
    return litellm_db


def _rows(url, sql, params, *settings):
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for setting in settings:
            cur.execute(f"SET LOCAL {setting}")
        cur.execute(sql, params)
        out = cur.fetchall()
    conn.close()
    return out


def _reference(url, hook, dims):
    """The rows of one plain grouping of the window's spend logs, its dimensions as the hook reads them."""
    params: dict = {}
    exprs = hook._dimension_sql(resolve(dims), params)  # a tag dimension's prefix is a parameter
    sql, window = one_level_spend_logs_sql(*WINDOW.naive_utc(), exprs)
    return _rows(url, sql, {**params, **window})


@pytest.mark.parametrize("dims", DIMENSION_SETS, ids=lambda d: ",".join(d) or "none")
@pytest.mark.parametrize("as_read", [True, False], ids=["as-read", "postgres-defaults"])
def test_spend_log_statement_equals_one_plain_grouping(db, dims, as_read):
    hook = LiteLLMSpendHook()
    sql, params = hook.aggregate_sql(WINDOW, resolve(dims))
    hashed = hashes_groups(resolve(dims))
    settings = ["enable_sort = off"] if as_read and hashed else []
    if settings:  # the read's plan: the valid rows hashed into their groups, never sorted
        plan = [line for (line,) in _rows(db, "EXPLAIN " + sql, params, *settings)]
        assert any("HashAggregate" in line for line in plan), plan
    ours = _rows(db, sql, params, *settings)
    reference = _reference(db, hook, dims)
    n = len(dims)
    reasons = _rows(
        db,
        f'SELECT request_id, {_invalid_reason()}, date_trunc(\'hour\', s."startTime") FROM "LiteLLM_SpendLogs" AS s',
        {},
    )

    def groups(rows):  # (hour, dimension values) -> figures, of the valid rows
        return [(r[0], *r[3 : 3 + n], *r[3 + n : -1]) for r in rows if r[1] is None and r[2] == 0]

    def totals(rows):  # (hour, reason) -> figures, and how many ids of its invalid rows
        return {(r[0], r[1]): (*r[3 + n : -1], len(r[-1] or [])) for r in rows if r[2] != 0 or n == 0}

    assert totals(ours) == totals(reference)
    assert len({reason for _, reason in totals(ours)}) >= 4  # valid rows and three reasons at least
    # the samples of an hour's invalid rows of one reason: five of their ids (in two steps, the first five)
    for row in ours:
        if row[1] is not None and (row[2] != 0 or n == 0):
            ids = sorted(r[0] for r in reasons if (r[2], r[1]) == (row[0], row[1]))
            if hashed:
                assert row[-1] == ids[:5]
            else:
                assert len(row[-1]) == min(5, len(ids)) and set(row[-1]) <= set(ids)
    # the same groups, exact spend text and all, in the order of hour then dimension values
    key = [(g[0], *((v is None, v or "") for v in g[1 : 1 + n])) for g in groups(ours)]
    assert key == sorted(key)
    assert groups(ours) == sorted(
        groups(reference), key=lambda g: (g[0], *((v is None, v or "") for v in g[1 : 1 + n]))
    )
    assert len(groups(ours)) > (30 if n else 2)


@pytest.mark.parametrize("dims", DIMENSION_SETS, ids=lambda d: ",".join(d) or "none")
def test_the_read_gives_the_plain_groupings_rows(db, dims):
    """Through the hook's own read (its transaction, its settings, its streaming): the rows of the plain grouping."""
    hook = LiteLLMSpendHook()
    resolved = resolve(dims)
    items = list(hook.aggregate(WINDOW, resolved))
    reference = _reference(db, hook, dims)
    n = len(dims)
    expected = sorted(
        (
            (r[0].isoformat(), *r[3 : 3 + n], r[3 + n], r[6 + n])
            for r in reference
            if r[1] is None and r[2] == 0
        ),
        key=lambda g: (g[0], *((v is None, v or "") for v in g[1 : 1 + n])),
    )
    got = [
        (i.hour.replace(tzinfo=None).isoformat(), *i.dims.values(), i.totals.requests, i.totals.spend)
        for i in items
        if isinstance(i, AggregateRow)
    ]
    assert got == expected
    hours = [i for i in items if isinstance(i, HourTotal)]
    assert len(hours) == 3 and all(h.invalid and h.invalid_samples for h in hours)


def test_the_read_hashes_groups_only_of_the_organisations_own_dimensions(db, monkeypatch):
    hook = LiteLLMSpendHook()
    seen = []
    stream = LiteLLMSpendHook._stream

    def recording(self, sql, params, name, **kw):
        if name == "cloudzero_extract":  # not the schema query before it
            seen.append(kw.get("hash_groups", False))
        return stream(self, sql, params, name, **kw)

    monkeypatch.setattr(LiteLLMSpendHook, "_stream", recording)
    for dims in DIMENSION_SETS:
        list(hook.staged_lines(WINDOW, resolve(dims)))
    assert seen == [True, False, True, True]
    monkeypatch.undo()
    setting = "SELECT current_setting('enable_sort')"
    assert [tuple(r) for r in hook._stream(setting, {}, "t", hash_groups=True)] == [("off",)]
    assert [tuple(r) for r in hook._stream(setting, {}, "t")] == [("on",)]
    assert hashes_groups(resolve(list(DEFAULT_DIMENSIONS)))
    assert hashes_groups(resolve(["api_key", "call_type"]))
    assert not hashes_groups(resolve(["team_id", "end_user"]))
    assert not hashes_groups(resolve(["team_id", "tag:task"]))
    assert not hashes_groups(resolve(list(DEFAULT_DIMENSIONS)), "daily_team")


def test_valid_is_exactly_no_invalid_reason_of_a_spend_log(litellm_db):
    """The predicate that lets PostgreSQL group the valid spend logs apart holds exactly when the row has no invalid
    reason, NULLs, NaN, infinities, signed zeros and a negative total alone included."""
    spends = ["NULL", "'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "0", "-1e-300", "1e-300", "5", "-5"]
    tokens = ["NULL", "-1", "0", "7"]
    values = ", ".join(
        f"({s}::float8, {p}::int, {c}::int, {t}::int)"
        for s in spends
        for p in tokens
        for c in tokens
        for t in tokens
    )
    rows = _rows(
        litellm_db,
        f"""SELECT ({_invalid_reason()}) IS NULL, COALESCE(({_valid("s.total_tokens")}), false),
                   ({_valid("s.total_tokens")}) IS NOT TRUE
            FROM (VALUES {values}) AS s(spend, prompt_tokens, completion_tokens, total_tokens)""",
        {},
    )
    assert len(rows) == 640
    assert all(no_reason == valid == (not invalid) for no_reason, valid, invalid in rows)
