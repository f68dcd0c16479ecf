"""The spend-log read's two-step statement returns what one plain grouping of every row returns, on edge values (both
schema ages), whether PostgreSQL hashes its groups (the read's plan for the organisation's own dimensions) or sorts
its rows (caller-chosen dimensions)."""

from __future__ import annotations

import json
import math
from datetime import datetime
from urllib.parse import urlsplit

import psycopg2
import pytest
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.dimensions import DEFAULT_DIMENSIONS, resolve
from cloudzero_provider.hooks.litellm import (
    AggregateRow,
    HourTotal,
    LiteLLMSpendHook,
    _invalid_reason,
    _valid,
    hashes_groups,
)
from cloudzero_provider.json_lines import encode_line
from cloudzero_provider.testing.postgres import airflow_conn_uri
from cloudzero_provider.testing.reference_sql import one_level_spend_logs_sql
from cloudzero_provider.testing.seed import insert_spend_logs, key_hash, spend_log
from cloudzero_provider.windows import Window

# 10:00-12:59 hold valid and invalid rows, 13:00 valid rows only, 14:00 invalid rows only; rows just outside too.
WINDOW = Window.of("2026-11-01T10:00:00Z", "2026-11-01T15:00:00Z")
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
    for j in range(40):
        only_valid = j % 2 == 0
        rows.append(
            spend_log(
                f"x{j:03d}",
                datetime(2026, 11, 1, 13 if only_valid else 14, j),
                SPENDS[j % len(SPENDS)] if only_valid else INVALID_SPENDS[j % len(INVALID_SPENDS)],
                team_id=TEAMS[j % len(TEAMS)],
                user=USERS[j % len(USERS)],
                request_tags=TAGS[j % len(TAGS)],
            )
        )
    for j, start in enumerate([datetime(2026, 11, 1, 9, 59, 59, 999000), datetime(2026, 11, 1, 15)]):
        rows += [
            spend_log(f"out{j}", start, 1.0),
            spend_log(f"out-bad{j}", start, -1.0),
        ]  # outside the window
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


def _scans(node, above=()):
    """Each scan of LiteLLM_SpendLogs in a JSON plan, with the nodes from the nearest aggregate above it (first) down
    to it."""
    if node["Node Type"] == "Aggregate":
        above = (node,)
    elif above:
        above = (*above, node)
    if node.get("Relation Name") == "LiteLLM_SpendLogs":
        yield node, list(above)
    for child in node.get("Plans", []):
        yield from _scans(child, above)


def _reference(url, hook, dims, **kw):
    """The rows of one plain grouping of the window's spend logs, its dimensions as the hook reads them."""
    params: dict = {}
    exprs = hook._dimension_sql(resolve(dims), params)  # a tag dimension's prefix is a parameter
    sql, window = one_level_spend_logs_sql(*WINDOW.naive_utc(), exprs, **kw)
    return _rows(url, sql, {**params, **window})


def _dims_order(n):
    return lambda g: (g[0], *((v is None, v or "") for v in g[1 : 1 + n]))


def _groups(rows, n):
    """(hour, dimension values, figures) of the groups of valid rows."""
    return [(r[0], *r[3 : 3 + n], *r[3 + n : -1]) for r in rows if r[1] is None and r[2] == 0]


def _totals(rows, n):
    """(hour, reason) -> the figures of the hour's rows of that reason, and how many sample ids."""
    return {(r[0], r[1]): (*r[3 + n : -1], len(r[-1] or [])) for r in rows if r[2] != 0 or n == 0}


def _check(ours, reference, n, *, first_ids=None):
    assert _totals(ours, n) == _totals(reference, n)
    hours = {}
    for hour, reason in _totals(ours, n):
        hours.setdefault(hour.hour, set()).add(reason)
    assert len(hours) == 5 and hours[13] == {None} and None not in hours[14], (
        hours
    )  # valid only; invalid only
    assert len({r for rs in hours.values() for r in rs}) >= 4  # valid rows and three reasons at least
    # the same groups, exact spend text and all, in the order of hour then dimension values
    assert [_dims_order(n)(g) for g in _groups(ours, n)] == sorted(
        _dims_order(n)(g) for g in _groups(ours, n)
    )
    assert _groups(ours, n) == sorted(_groups(reference, n), key=_dims_order(n))
    assert len(_groups(ours, n)) > (30 if n else 3)
    if first_ids is not None:  # the samples of an hour's invalid rows of one reason
        for row in ours:
            if row[1] is not None and (row[2] != 0 or n == 0):
                ids = first_ids[(row[0], row[1])]
                assert row[-1] == ids[:5] if first_ids.sorted else set(row[-1]) <= set(ids)
                assert len(row[-1]) == min(5, len(ids))


class _Ids(dict):
    sorted = True


def _ids(url, params, *, sorted_=True):
    ids = _Ids()
    ids.sorted = sorted_
    for request_id, reason, hour in _rows(
        url,
        f'SELECT request_id, {_invalid_reason()}, date_trunc(\'hour\', s."startTime") FROM "LiteLLM_SpendLogs" AS s '
        'WHERE s."startTime" >= %(start)s AND s."startTime" < %(end)s ORDER BY request_id',
        params,
    ):
        if reason is not None:
            ids.setdefault((hour, reason), []).append(request_id)
    return ids


@pytest.mark.parametrize("dims", DIMENSION_SETS, ids=lambda d: ",".join(d) or "none")
@pytest.mark.parametrize("as_read", [True, False], ids=["as-read", "postgres-defaults"])
def test_spend_log_statement_equals_one_plain_grouping(db, dims, as_read):
    hook = LiteLLMSpendHook()
    sql, params = hook.aggregate_sql(WINDOW, resolve(dims))
    hashed = hashes_groups(resolve(dims))
    settings = ["enable_sort = off"] if as_read and hashed else []
    if settings:  # the read's plan: the valid rows hashed into their groups, never sorted
        plan = _rows(db, "EXPLAIN (VERBOSE, FORMAT JSON) " + sql, params, *settings)[0][0][0]["Plan"]
        scans = list(_scans(plan))  # the valid rows' branch: the one without the invalid rows' sample ids
        valid = [
            nodes for _, nodes in scans if nodes and not any("array_agg" in o for o in nodes[0]["Output"])
        ]
        assert len(scans) == 2 and len(valid) == 1, scans
        assert valid[0][0]["Node Type"] == "Aggregate" and valid[0][0]["Strategy"] == "Hashed", valid
        assert not any(node["Node Type"] in ("Sort", "Incremental Sort") for node in valid[0]), valid
    _check(
        _rows(db, sql, params, *settings),
        _reference(db, hook, dims),
        len(dims),
        first_ids=_ids(db, params, sorted_=hashed),
    )


def test_without_a_status_column_successes_and_failures_are_null(db):
    """An older LiteLLM without ``status``: both shapes give NULL successes and failures, and the same figures."""
    with psycopg2.connect(db) as conn, conn.cursor() as cur:
        cur.execute('ALTER TABLE "LiteLLM_SpendLogs" DROP COLUMN status')
    conn.close()
    for dims in (list(DEFAULT_DIMENSIONS), ["team_id", "end_user"]):
        hook = LiteLLMSpendHook()
        ours = _rows(db, *hook.aggregate_sql(WINDOW, resolve(dims)))
        _check(ours, _reference(db, hook, dims, with_status=False), len(dims))
        assert {(r[4 + len(dims)], r[5 + len(dims)]) for r in ours} == {(None, None)}


@pytest.mark.parametrize("dims", DIMENSION_SETS, ids=lambda d: ",".join(d) or "none")
def test_the_read_gives_the_plain_groupings_rows(db, dims):
    """Through the hook's own read (its transaction, its settings, its streaming): every figure of the plain
    grouping's groups and hour totals, and the staged lines are the bytes encode_line writes of those groups."""
    hook, resolved, n = LiteLLMSpendHook(), resolve(dims), len(dims)
    items = list(hook.aggregate(WINDOW, resolved))
    reference = _reference(db, hook, dims)
    figures = (
        "requests",
        "successes",
        "failures",
        "spend",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    )
    got = [
        (i.hour.replace(tzinfo=None), *i.dims.values(), *(getattr(i.totals, f) for f in figures))
        for i in items
        if isinstance(i, AggregateRow)
    ]
    assert got == sorted(_groups(reference, n), key=_dims_order(n))
    totals = _totals(reference, n)
    hours = [i for i in items if isinstance(i, HourTotal)]
    assert [h.hour.replace(tzinfo=None) for h in hours] == sorted({hour for hour, _ in totals})
    for h in hours:
        hour = h.hour.replace(tzinfo=None)
        valid = totals.get((hour, None))
        assert tuple(getattr(h.totals, f) for f in figures) == (
            valid[:-1] if valid else (0, None, None, "0", 0, 0, 0)
        )
        assert h.invalid == {r: t[0] for (hr, r), t in totals.items() if hr == hour and r is not None}
        assert len(h.invalid_samples) == min(5, sum(h.invalid.values()))
    lines = [i for i in hook.staged_lines(WINDOW, resolved) if isinstance(i, bytes)]
    assert lines == [encode_line(i.as_dict()) for i in items if isinstance(i, AggregateRow)]


def test_the_read_hashes_groups_only_of_the_organisations_own_dimensions(db, monkeypatch):
    hook = LiteLLMSpendHook()
    seen = []
    stream = LiteLLMSpendHook._stream

    def recording(self, sql, params, name, **kw):
        if name == "cloudzero_extract":  # not the schema query before it
            seen.append((kw.get("hash_groups", False), "UNION ALL" in sql))
        return stream(self, sql, params, name, **kw)

    monkeypatch.setattr(LiteLLMSpendHook, "_stream", recording)
    for dims in DIMENSION_SETS:
        list(hook.staged_lines(WINDOW, resolve(dims)))
    assert seen == [(True, True), (False, False), (True, True), (True, True)]  # the setting and the two steps
    monkeypatch.undo()
    setting = "SELECT current_setting('enable_sort')"
    assert [tuple(r) for r in hook._stream(setting, {}, "t", hash_groups=True)] == [("off",)]
    assert [tuple(r) for r in hook._stream(setting, {}, "t")] == [("on",)]
    assert hashes_groups(resolve(list(DEFAULT_DIMENSIONS)))
    assert hashes_groups(resolve(["api_key", "call_type"]))
    assert not hashes_groups(resolve(["team_id", "end_user"]))
    assert not hashes_groups(resolve(["team_id", "tag:task"]))
    assert not hashes_groups(resolve(list(DEFAULT_DIMENSIONS)), "daily_team")


@pytest.mark.parametrize("extra, hashed", [({"hash_groups": False}, False), ({"hash_groups": "False"}, False),
                                           ({"hash_groups": True}, True), ({}, True)])  # fmt: skip
def test_the_connection_can_turn_hashing_off(db, monkeypatch, extra, hashed):
    """A deployment whose keys or users are nearly one per request keeps the one sorted grouping: its figures are
    the same, and the extra never reaches libpq."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_LITELLM_DB", json.dumps({"conn_type": "postgres", **_conn(db), "extra": extra})
    )
    hook, dims = LiteLLMSpendHook(), list(DEFAULT_DIMENSIONS)
    assert hook.hashes(resolve(dims)) is hashed
    sql, _ = hook.aggregate_sql(WINDOW, resolve(dims))
    assert ("UNION ALL" in sql) is hashed

    def read(hook):  # the staged lines, and each hour's totals and invalid rows (sample ids aside: any five)
        return [
            i if isinstance(i, bytes) else (i.hour, i.totals, i.invalid)
            for i in hook.staged_lines(WINDOW, resolve(dims))
        ]

    lines = read(hook)
    monkeypatch.setenv("AIRFLOW_CONN_LITELLM_DB", airflow_conn_uri(db))
    assert lines == read(LiteLLMSpendHook()) and sum(isinstance(i, bytes) for i in lines) > 30


@pytest.mark.parametrize("value", ["yes", 1, None, ["true"]])
def test_a_hash_groups_extra_that_is_not_a_boolean_is_refused_naming_it(db, monkeypatch, value):
    monkeypatch.setenv(
        "AIRFLOW_CONN_LITELLM_DB",
        json.dumps({"conn_type": "postgres", **_conn(db), "extra": {"hash_groups": value}}),
    )
    with pytest.raises(AirflowFailException, match=r'extra "hash_groups" must be true or false, got'):
        list(LiteLLMSpendHook().staged_lines(WINDOW, resolve(list(DEFAULT_DIMENSIONS))))


def _conn(url):
    parts = urlsplit(url)
    return {
        "host": parts.hostname,
        "port": parts.port,
        "login": parts.username,
        "schema": parts.path.lstrip("/"),
    }


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
