"""LiteLLMSpendHook: windowed, aggregated reads of a LiteLLM proxy's PostgreSQL database."""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property, lru_cache
from typing import Any, Literal, cast

from airflow.providers.postgres.hooks.postgres import USE_PSYCOPG3, PostgresHook
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.cbf import cacheable, is_caller_controlled
from cloudzero_provider.dimensions import TAG_DIMENSION_PREFIX, Dimension
from cloudzero_provider.json_lines import encode_line
from cloudzero_provider.staged_group import group_line
from cloudzero_provider.windows import DAY, Window, day_label, iso_hour, parse_hour

SPEND_LOGS = "LiteLLM_SpendLogs"
DAILY_TABLES = {
    "daily_team": "LiteLLM_DailyTeamSpend",
    "daily_user": "LiteLLM_DailyUserSpend",
    "daily_tag": "LiteLLM_DailyTagSpend",
}
VERIFICATION_TOKENS = "LiteLLM_VerificationToken"
Source = Literal["spend_logs", "daily_team", "daily_user", "daily_tag"]
IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
SAMPLES = 5
# A non-negative numeric as PostgreSQL writes it as text: nothing JSON escapes.
_NUMERIC_TEXT = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# Combinations of dimension values whose staged JSON a read keeps encoded (a few hundred bytes each; a combination
# longer than cbf.MAX_CACHED_VALUE_CHARS is never kept).
MAX_ENCODED_COMBINATIONS = 5000
_COUNT_TYPES = frozenset({int, type(None)})
# Statements a read of several sends ahead of the one whose rows its caller takes: PostgreSQL runs the next while
# the caller works on this one's rows, and memory holds the rows of a few statements at most.
READ_AHEAD = 2
TRANSACTION_TIMEOUT_VERSION = 170000  # PostgreSQL 17: transaction_timeout

# Why a row cannot be exported; NULL means valid. PostgreSQL orders NaN above every number and NaN = NaN is
# true, so NaN and the infinities are named explicitly before the sign test.
_INVALID = """CASE
    WHEN s.spend IS NULL THEN 'spend is NULL'
    WHEN s.spend = 'NaN'::float8 THEN 'spend is NaN'
    WHEN s.spend IN ('Infinity'::float8, '-Infinity'::float8) THEN 'spend is infinite'
    WHEN s.spend < 0 THEN 'spend is negative'
    WHEN {tokens_negative} THEN 'token count is negative'
END"""


# The complement of _INVALID, written so that PostgreSQL estimates it from the columns' statistics (it takes an
# ``IS NULL`` of an expression to hold for 0.5% of the rows, which turns a hash aggregate into a sort). NaN sorts above
# every number, so ``>= 0`` keeps it: it is named. A NULL token count is not negative, as in _INVALID.
_VALID = """s.spend >= 0 AND s.spend <> 'NaN'::float8 AND s.spend <> 'Infinity'::float8
            AND ({tokens_negative}) IS NOT TRUE"""


def _valid(total_tokens: str) -> str:
    """SQL over alias ``s`` that holds exactly when :func:`_invalid_reason` is NULL."""
    return _VALID.format(
        tokens_negative=f"s.prompt_tokens < 0 OR s.completion_tokens < 0 OR {total_tokens} < 0"
    )


def _grouping(d_cols: Sequence[str]) -> str:
    """``GROUPING()`` of the dimension columns of alias ``a``: 0 in a group of dimension values, else a total."""
    return f"GROUPING({', '.join('a.' + c for c in d_cols)})" if d_cols else "0"


def _group_by(d_cols: Sequence[str]) -> str:
    """The groups of alias ``a``: (hour, reason, dimension values), and (hour, reason) for each hour's totals."""
    outer = "".join(f", a.{c}" for c in d_cols)
    return f"GROUPING SETS ((a.hour, a.reason{outer}), (a.hour, a.reason))" if d_cols else "a.hour, a.reason"


def hashes_groups(dims: Sequence[Dimension], source: Source = "spend_logs") -> bool:
    """Whether a read of spend logs has PostgreSQL hash its groups instead of sorting the window's rows
    (``enable_sort = off`` for that read, on PostgreSQL 13 and later, whose hash aggregates spill to disk past
    ``work_mem`` instead of growing).

    PostgreSQL cannot know how few groups the dimensions make -- they are expressions without statistics, and it
    multiplies their guesses -- so it sorts every row of the window by all dimension values: 34 s of a 10M-request
    hour that hashes in 12 s. The organisation's own teams, users, keys and models usually make a few thousand groups;
    values LLM callers choose (end users, request tags) can make one per request, where sorting is the better plan
    and PostgreSQL is left to choose. A deployment whose keys or users are nearly one per request turns hashing off
    with the connection's extra ``"hash_groups": false`` (:attr:`LiteLLMSpendHook.hash_groups`).
    """
    return source == "spend_logs" and not any(is_caller_controlled(d.name) for d in dims)


# PostgreSQL 13: hash aggregates stay within work_mem (they spill to disk).
HASH_SPILL_VERSION = 130000


def planner_settings(*, hash_groups: bool, server_version: int) -> list[str]:
    """The planner settings a read runs under (``SET LOCAL`` each): JIT off, as it costs more than it saves on a
    one-off aggregate, and with ``hash_groups`` (:func:`hashes_groups`) sorting off, where hash aggregates spill."""
    return ["jit = off"] + (
        ["enable_sort = off"] if hash_groups and server_version >= HASH_SPILL_VERSION else []
    )


# The figures of a statement in steps, summed over its first step's groups (alias ``a``): numeric sums of numeric sums
# are exact and keep the largest scale; the samples come from the invalid rows' one group per reason.
_SUMS_OF_GROUPS = """sum(a.n)::bigint, sum(a.ok)::bigint, sum(a.failed)::bigint,
       sum(a.spend) FILTER (WHERE a.reason IS NULL)::text,
       COALESCE(sum(a.prompt_tokens), 0)::bigint, COALESCE(sum(a.completion_tokens), 0)::bigint,
       COALESCE(sum(a.total_tokens), 0)::bigint,
       max(a.samples)"""


def _invalid_reason(total_tokens: str = "s.total_tokens") -> str:
    """The reason a source row cannot be exported, as SQL over alias ``s`` (NULL when the row is valid)."""
    return _INVALID.format(
        tokens_negative=f"s.prompt_tokens < 0 OR s.completion_tokens < 0 OR {total_tokens} < 0"
    )


# Dimension -> (SQL over alias ``s``, columns it needs). '' and NULL both mean "none".
_SPEND_LOG_DIMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "team_id": ("NULLIF(s.team_id, '')", ("team_id",)),
    "team_alias": ("NULLIF(s.metadata->>'user_api_key_team_alias', '')", ("metadata",)),
    "organization_id": ("NULLIF(s.organization_id, '')", ("organization_id",)),
    "user": ("NULLIF(s.\"user\", '')", ("user",)),
    "end_user": ("NULLIF(s.end_user, '')", ("end_user",)),
    # Only a hash prefix leaves the database; a raw key stored by some writer is hashed first, never exported.
    # length() + "[0-9a-f]+" rather than "[0-9a-f]{64}": PostgreSQL's regex engine takes 8x longer on the bound.
    "api_key": (
        "CASE WHEN COALESCE(s.api_key, '') = '' THEN NULL "
        "WHEN length(s.api_key) = 64 AND s.api_key ~ '^[0-9a-f]+$' THEN left(s.api_key, 16) "
        "ELSE left(encode(sha256(convert_to(s.api_key, 'UTF8')), 'hex'), 16) END",
        ("api_key",),
    ),
    "api_key_alias": ("NULLIF(s.metadata->>'user_api_key_alias', '')", ("metadata",)),
    "model": ("NULLIF(s.model, '')", ("model",)),
    "model_group": ("NULLIF(s.model_group, '')", ("model_group",)),
    "provider": ("NULLIF(s.custom_llm_provider, '')", ("custom_llm_provider",)),
    "call_type": ("NULLIF(s.call_type, '')", ("call_type",)),
}
# The first request tag "<prefix>:<value>" of a request, by jsonpath: 40% cheaper per row than unnesting the
# array in a subquery. Non-string elements never match; a request_tags that is not an array holds no tags.
_TAG_SQL = (
    "CASE WHEN jsonb_typeof(s.request_tags) = 'array' THEN NULLIF(substr(jsonb_path_query_first("
    "s.request_tags, '$[*] ? (@ starts with $p)', jsonb_build_object('p', {prefix})) #>> '{{}}', {start}), '') END"
)


@dataclass
class Totals:
    """Requests, tokens and exact spend (a decimal string) of a group of source rows."""

    requests: int = 0
    successes: int | None = None
    failures: int | None = None
    spend: str = "0"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(
        cls,
        requests: Any,
        successes: Any,
        failures: Any,
        spend: Any,
        prompt: Any,
        completion: Any,
        total: Any,
    ) -> Totals:
        """The figures of one aggregate record, in the statement's order (a NULL count or spend is 0)."""
        return cls(
            int(requests or 0), successes, failures, spend or "0", int(prompt), int(completion), int(total)
        )

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _server_version(conn: Any) -> int:
    """PostgreSQL's version number (``150004``) as the driver learnt it when connecting: no query."""
    info = getattr(conn, "info", None)  # psycopg 3
    return int(getattr(info, "server_version", 0) or getattr(conn, "server_version", 0) or 0)


def _utc(value: datetime) -> datetime:
    """An hour as PostgreSQL returns it: ``timestamp without time zone``, which LiteLLM fills with UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


@lru_cache(maxsize=1024)
def _iso_hour(hour: datetime) -> str:
    """:func:`iso_hour` of an aware hour, remembered: a window's rows share a few hours."""
    return iso_hour(hour)


@dataclass
class AggregateRow:
    """One group: an hour (aware UTC) and dimension values (``None`` = none)."""

    hour: datetime
    dims: dict[str, str | None]
    totals: Totals

    def as_dict(self) -> dict[str, Any]:
        """The staged form: ``hour`` (``2026-11-01T13:00:00Z``), ``dims`` and the totals (``spend``, ``requests``,
        ``total_tokens`` ...)."""
        return {"hour": _iso_hour(self.hour), "dims": self.dims, **self.totals.as_dict()}

    def as_row(self) -> dict[str, Any]:
        """The form the pure report and telemetry modules read: as :meth:`as_dict`, ``hour`` a datetime."""
        return {"hour": self.hour, "dims": self.dims, **self.totals.as_dict()}

    @classmethod
    def from_staged(cls, row: dict[str, Any]) -> AggregateRow:
        """A row as :meth:`as_dict` staged it."""
        totals = Totals(**{k: row[k] for k in Totals.__dataclass_fields__ if k in row})
        return cls(parse_hour(row["hour"], what="staged row hour"), dict(row["dims"]), totals)


@dataclass
class HourTotal:
    """PostgreSQL's own per-hour totals of the valid rows, and what was invalid, for reconciliation."""

    hour: datetime
    totals: Totals = field(default_factory=Totals)
    invalid: dict[str, int] = field(default_factory=dict)  # reason -> rows
    invalid_samples: list[str] = field(default_factory=list)


class LiteLLMSpendHook(PostgresHook):
    """
    Read LiteLLM spend from the proxy's PostgreSQL database, aggregated inside PostgreSQL.

    Every read runs in a ``READ ONLY`` transaction with ``statement_timeout`` and
    ``idle_in_transaction_session_timeout`` set for that transaction only, over a connection opened with a
    ``connect_timeout``: this is the proxy's production database (point the connection at a read replica when
    you have one). Results are streamed, never held in memory whole (a read of several days of a rollup holds a
    few days' rows); :meth:`cancel` stops a running statement (the operators call it from ``on_kill``).

    :param postgres_conn_id: Airflow connection to the LiteLLM database (default ``litellm_db``).
    :param db_schema: PostgreSQL schema holding LiteLLM's tables (default ``public``).
    :param fetch_size: Rows per round trip when streaming the result.
    :param server_side_cursor: Read through a named server-side cursor (``DECLARE``) instead of psycopg 3's
        protocol-level streaming. Both keep memory flat; PostgreSQL never runs a cursor's query with parallel
        workers, so streaming is about 1.6x faster on a million-row hour and is the default. With psycopg2 a
        server-side cursor is always used.
    :param statement_timeout: Seconds one statement may run (default 1800); the connection's extra
        ``statement_timeout`` overrides it.
    :param connect_timeout: Seconds to wait for a connection (default 10), unless the connection's extra sets it.
    """

    conn_name_attr = "postgres_conn_id"
    default_conn_name = "litellm_db"
    hook_name = "LiteLLM (PostgreSQL)"
    # Keys of the connection's extra this hook reads (or refuses) itself: PostgresHook passes every other key into
    # the libpq connection string, where ``statement_timeout`` is an invalid option and ``autocommit`` would turn
    # the READ ONLY transaction and its local timeouts into no-ops.
    ignored_extra_options = PostgresHook.ignored_extra_options | {
        "statement_timeout",
        "autocommit",
        "hash_groups",
    }
    MAX_STATEMENT_TIMEOUT = 24 * 3600.0

    def __init__(
        self,
        *args: Any,
        db_schema: str = "public",
        fetch_size: int = 5000,
        server_side_cursor: bool = False,
        statement_timeout: float = 1800.0,
        connect_timeout: int = 10,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("postgres_conn_id", self.default_conn_name)
        super().__init__(*args, **kwargs)
        if not IDENTIFIER_RE.fullmatch(db_schema):
            raise AirflowFailException(f"db_schema {db_schema!r} is not a plain PostgreSQL identifier")
        self.db_schema = db_schema
        self.fetch_size = fetch_size
        self.server_side_cursor = server_side_cursor
        self.statement_timeout = statement_timeout
        self.connect_timeout = connect_timeout
        self._columns: dict[str, set[str]] = {}
        self._active: Any = None

    @cached_property
    def _connection_with_defaults(self) -> Any:
        """A copy of the Airflow connection with ``connect_timeout`` in its extra unless it sets one; the fetched
        connection itself is never changed."""
        conn = copy.deepcopy(super().connection)
        extra = conn.extra_dejson
        if "autocommit" in extra:
            self.log.warning(
                'Connection %r: its extra "autocommit" is ignored: every read of the LiteLLM database is one READ '
                "ONLY transaction with its own timeouts, which autocommit would switch off.",
                self.get_conn_id(),
            )
        if "connect_timeout" not in extra:
            conn.extra = json.dumps({**extra, "connect_timeout": self.connect_timeout})
        return conn

    @property
    def connection(self) -> Any:
        """The Airflow connection as this hook connects with it (see :attr:`_connection_with_defaults`)."""
        return self._connection_with_defaults

    @connection.setter
    def connection(self, value: Any) -> None:
        raise AttributeError("LiteLLMSpendHook.connection is read-only: pass postgres_conn_id instead")

    @cached_property
    def timeout_ms(self) -> int:
        """``statement_timeout`` of every read in milliseconds: the connection's extra ``statement_timeout`` (seconds)
        if it sets one, else the hook's argument.

        :raises AirflowFailException: The extra is not a number of seconds between 1 and 86400.
        """
        configured = self.connection.extra_dejson.get("statement_timeout")
        if configured in (None, ""):
            return int(self.statement_timeout * 1000)
        try:
            seconds = float(configured)
        except (TypeError, ValueError):
            seconds = float("nan")
        if not 1 <= seconds <= self.MAX_STATEMENT_TIMEOUT:
            raise AirflowFailException(
                f'Connection {self.get_conn_id()!r}: extra "statement_timeout" must be a number of seconds between 1 '
                f"and {self.MAX_STATEMENT_TIMEOUT:.0f}, got {str(configured)[:40]!r}."
            )
        return int(seconds * 1000)

    @cached_property
    def hash_groups(self) -> bool:
        """Whether reads of the organisation's own dimensions may hash their groups (:func:`hashes_groups`): the
        connection's extra ``hash_groups`` (``true`` or ``false``, as JSON or as the text of a connection URI;
        default ``true``).

        :raises AirflowFailException: The extra is anything else.
        """
        configured = self.connection.extra_dejson.get("hash_groups", True)
        if type(configured) is bool:
            return configured
        if isinstance(configured, str) and configured.strip().lower() in ("true", "false"):
            return configured.strip().lower() == "true"
        raise AirflowFailException(
            f'Connection {self.get_conn_id()!r}: extra "hash_groups" must be true or false, got '
            f"{str(configured)[:40]!r}."
        )

    def hashes(self, dims: Sequence[Dimension], source: Source = "spend_logs") -> bool:
        """:func:`hashes_groups` of a read by this hook, unless its connection turns hashing off."""
        return hashes_groups(dims, source) and self.hash_groups

    def read_settings(self) -> dict[str, str]:
        """What a read of this hook runs under, as PostgreSQL reports it inside the read: ``transaction_read_only``,
        ``statement_timeout``, ``idle_in_transaction_session_timeout``."""
        names = ("transaction_read_only", "statement_timeout", "idle_in_transaction_session_timeout")
        rows = list(self._stream(
            "SELECT " + ", ".join(f"current_setting('{n}')" for n in names), {}, "cloudzero_settings"
        ))  # fmt: skip
        return dict(zip(names, (str(v) for v in rows[0]), strict=True))

    def test_connection(self) -> tuple[bool, str]:  # type: ignore[override]
        """Read LiteLLM's spend-log columns through a READ ONLY transaction and say what the reads run under."""
        try:
            columns = self.table_columns(SPEND_LOGS)
            seen = self.read_settings()
            hashed = self.hash_groups
        except Exception as exc:
            return False, f"{type(exc).__name__}: {str(exc)[:500]}"
        return True, (
            f'LiteLLM database reachable: "{self.db_schema}"."{SPEND_LOGS}" has {len(columns)} columns; reads run '
            f"READ ONLY={seen['transaction_read_only']}, statement_timeout={seen['statement_timeout']}; groups of "
            f"the organisation's own dimensions {'hashed' if hashed else 'sorted (hash_groups=false)'}."
        )

    def cancel(self) -> None:
        """Cancel the statement this hook is running, if any (safe to call from another thread or on_kill)."""
        conn = self._active
        if conn is not None:
            try:
                (getattr(conn, "cancel_safe", None) or conn.cancel)()
                self.log.info("Cancelled the running statement on the LiteLLM database")
            except Exception as exc:  # the statement may have just finished; nothing to cancel
                self.log.warning("Could not cancel the running statement: %s", exc)

    # -- schema discovery -------------------------------------------------------------------------------

    def table_columns(self, table: str) -> set[str]:
        """The columns of one of LiteLLM's tables; an error names the table when it does not exist."""
        if table not in self._columns:
            rows = list(self._stream(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = %(schema)s AND table_name = %(table)s",
                {"schema": self.db_schema, "table": table},
                "cloudzero_columns",
            ))  # fmt: skip
            if not rows:
                raise AirflowFailException(
                    f'table "{self.db_schema}"."{table}" not found in the LiteLLM database '
                    f"(connection {self.get_conn_id()!r}): is this LiteLLM's database and schema?"
                )
            self._columns[table] = {r[0] for r in rows}
        return self._columns[table]

    def _table(self, table: str) -> str:
        return f'"{self.db_schema}"."{table}"'

    # -- SQL --------------------------------------------------------------------------------------------

    def _dimension_sql(self, dims: Sequence[Dimension], params: dict[str, Any]) -> list[str]:
        """Each dimension of a spend-log read as SQL over alias ``s`` (``NULL::text`` where a column is missing)."""
        exprs: list[str] = []
        missing: list[str] = []
        columns = self.table_columns(SPEND_LOGS)
        for i, dim in enumerate(dims):
            if dim.name.startswith(TAG_DIMENSION_PREFIX):
                prefix = dim.name[len(TAG_DIMENSION_PREFIX) :] + ":"
                params[f"tag{i}"] = prefix
                if "request_tags" not in columns:
                    missing.append(f"{dim.name} (needs request_tags)")
                    exprs.append("NULL::text")
                else:
                    exprs.append(_TAG_SQL.format(start=len(prefix) + 1, prefix=f"%(tag{i})s::text"))
                continue
            sql, needs = _SPEND_LOG_DIMS[dim.name]
            absent = [c for c in needs if c not in columns]
            if absent:
                missing.append(f"{dim.name} (needs column {', '.join(absent)})")
                sql = "NULL::text"
            exprs.append(sql)
        if missing:
            self.log.warning(
                "LiteLLM database lacks what these dimensions need; they stay empty: %s", "; ".join(missing)
            )
        return exprs

    def _daily_dimension_sql(
        self, dims: Sequence[Dimension], source: Source, params: dict[str, Any]
    ) -> tuple[list[str], list[str]]:
        """Each dimension of a daily-rollup read as SQL over alias ``s`` (the rollup's columns) and ``v`` (the key's
        row in LiteLLM_VerificationToken), and the rollup columns those need, in a stable order. A missing rollup
        table is named by the read itself (:meth:`_explain`): no schema query, and no connection, before it."""
        daily: dict[str, tuple[str, str]] = {
            "api_key": (_SPEND_LOG_DIMS["api_key"][0], "api_key"),
            "api_key_alias": ("NULLIF(v.key_alias, '')", "api_key"),
            "model": ("NULLIF(s.model, '')", "model"),
            "model_group": ("NULLIF(s.model_group, '')", "model_group"),
            "provider": ("NULLIF(s.custom_llm_provider, '')", "custom_llm_provider"),
        }
        if source == "daily_team":
            daily["team_id"] = ("NULLIF(s.team_id, '')", "team_id")
        elif source == "daily_user":
            daily["user"] = ("NULLIF(s.user_id, '')", "user_id")
        else:  # one tag prefix: each request counts once per tag, so the stream holds one prefix only
            tags = [d for d in dims if d.name.startswith(TAG_DIMENSION_PREFIX)]
            if len(tags) != 1:
                raise AirflowFailException(
                    "LiteLLM_DailyTagSpend counts a request once per tag: give exactly one tag:<prefix> "
                    f"dimension for its stream, got {[d.name for d in tags]}"
                )
            prefix = tags[0].name[len(TAG_DIMENSION_PREFIX) :] + ":"
            params["tag_like"] = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            daily[tags[0].name] = (f"NULLIF(substr(s.tag, {len(prefix) + 1}), '')", "tag")
        unavailable = [d.name for d in dims if d.name not in daily]
        if unavailable:
            raise AirflowFailException(
                f"{DAILY_TABLES[source]} cannot give dimension(s) {unavailable}: LiteLLM's daily rollups keep "
                f"only {sorted(daily)}. Choose among those for the daily-rollup export (CLOUDZERO_DAILY_DIMENSIONS)."
            )
        return [daily[d.name][0] for d in dims], list(dict.fromkeys(daily[d.name][1] for d in dims))

    def aggregate_sql(
        self, window: Window, dims: Sequence[Dimension], source: Source = "spend_logs"
    ) -> tuple[str, dict[str, Any]]:
        """The one statement that aggregates a window: per hour and dimensions, plus per-hour totals.

        Its rows: hour, reason (NULL: valid rows), ``GROUPING()`` of the dimensions (0: a group of the hour and its
        dimension values; else the hour's totals for that reason), the dimension values, requests, successes,
        failures, exact spend of the valid rows as text, prompt, completion and total tokens, and up to five ids of
        the invalid rows. The groups come in the order of hour, then dimension values.

        Spend logs of the organisation's own dimensions are read in two steps, as the daily rollups are
        (:meth:`_daily_aggregate_sql`): the valid rows grouped by hour and dimension values, beside the invalid rows
        grouped by hour and reason (their first five ids, sorted, kept as samples; the row of that reason's group
        of dimension values has them all NULL, and :meth:`aggregate` reads neither); then the groups and each hour's
        totals per reason from those. Numeric sums of numeric sums are exact and keep the largest scale, so every
        figure is the one a single grouping of every row gives. The first step is a plain grouping, which PostgreSQL
        hashes when told to (:meth:`hashes`); grouping sets it does not hash when it believes them large, as it
        believes every grouping of several expressions to be, so it sorts every row of the window. With a
        caller-chosen dimension (or hashing turned off) the window is one grouping of every row, sorted, its sample
        ids any five: two sorted steps measured 8.3 s against 5.0 s for it where each of 1M requests was its own
        group.
        """
        if source != "spend_logs":
            return self._daily_aggregate_sql(window, dims, source)
        start, end = window.naive_utc()
        params: dict[str, Any] = {"start": start, "end": end}
        dim_exprs = self._dimension_sql(dims, params)
        columns = self.table_columns(SPEND_LOGS)
        if "status" in columns:
            ok = "CASE WHEN s.status = 'success' THEN 1 ELSE 0 END"
            failed = "CASE WHEN s.status = 'failure' THEN 1 ELSE 0 END"
        else:
            self.log.warning(
                "LiteLLM_SpendLogs has no status column: success/failure counts are not available"
            )
            ok = failed = "NULL::int"
        d_cols = [f"d{i}" for i in range(len(dims))]
        inner_dims = "".join(
            f",\n        {expr} AS {col}" for expr, col in zip(dim_exprs, d_cols, strict=True)
        )
        invalid_dims = "".join(f", NULL::text AS {col}" for col in d_cols)
        outer_dims = "".join(f", a.{col}" for col in d_cols)
        sums = (
            f"count(*) AS n, sum({ok}) AS ok, sum({failed}) AS failed, {{spend}} AS spend, "
            "sum(s.prompt_tokens) AS prompt_tokens, sum(s.completion_tokens) AS completion_tokens, "
            "sum(s.total_tokens) AS total_tokens"
        )
        where = 's."startTime" >= %(start)s AND s."startTime" < %(end)s'
        if not self.hashes(dims, source):  # one grouping of every row, sorted: see hashes_groups
            sql = f"""
SELECT a.hour AS hour, a.reason, {_grouping(d_cols)} AS g{outer_dims},
       sum(a.n)::bigint, sum(a.ok)::bigint, sum(a.failed)::bigint,
       sum(a.spend::numeric) FILTER (WHERE a.reason IS NULL)::text,
       COALESCE(sum(a.prompt_tokens), 0)::bigint, COALESCE(sum(a.completion_tokens), 0)::bigint,
       COALESCE(sum(a.total_tokens), 0)::bigint,
       (array_agg(a.row_id) FILTER (WHERE a.reason IS NOT NULL))[1:{SAMPLES}]
FROM (
    SELECT date_trunc('hour', s."startTime") AS hour, {_invalid_reason()} AS reason, s.spend AS spend,
        1 AS n, {ok} AS ok, {failed} AS failed,
        s.prompt_tokens AS prompt_tokens, s.completion_tokens AS completion_tokens,
        s.total_tokens AS total_tokens, s.request_id AS row_id{inner_dims}
    FROM {self._table(SPEND_LOGS)} AS s
    WHERE {where}
) AS a
GROUP BY {_group_by(d_cols)}
ORDER BY 1{outer_dims}, 2, 3"""
            return sql, params
        sql = f"""
SELECT a.hour AS hour, a.reason, {_grouping(d_cols)} AS g{outer_dims},
       {_SUMS_OF_GROUPS}
FROM (
    SELECT date_trunc('hour', s."startTime") AS hour, NULL::text AS reason{inner_dims},
        {sums.format(spend="sum(s.spend::numeric)")}, NULL::text[] AS samples
    FROM {self._table(SPEND_LOGS)} AS s
    WHERE {where}
        AND {_valid("s.total_tokens")}
    GROUP BY 1{"".join(f", {col}" for col in d_cols)}
    UNION ALL
    SELECT date_trunc('hour', s."startTime"), {_invalid_reason()}{invalid_dims},
        {sums.format(spend="NULL::numeric")}, (array_agg(s.request_id ORDER BY s.request_id))[1:{SAMPLES}]
    FROM {self._table(SPEND_LOGS)} AS s
    WHERE {where}
        AND ({_valid("s.total_tokens")}) IS NOT TRUE
    GROUP BY 1, 2
) AS a
GROUP BY {_group_by(d_cols)}
ORDER BY 1{outer_dims}, 2, 3"""
        return sql, params

    def _daily_aggregate_sql(
        self, window: Window, dims: Sequence[Dimension], source: Source
    ) -> tuple[str, dict[str, Any]]:
        """:meth:`aggregate_sql` of a daily rollup, in three steps so that PostgreSQL hashes the rollup's rows once:

        1. the valid rows grouped by day and the raw rollup columns the dimensions read (a hash aggregate: the
           rollup's own columns carry statistics, so PostgreSQL sees how few groups there are), beside the invalid
           rows grouped by day and reason (their ids kept as samples);
        2. the dimensions computed on those groups, the key alias joined from LiteLLM_VerificationToken once per
           group (its ``token`` is the primary key: one alias at most per key);
        3. the groups of (day, dimension values) and each day's totals per reason, as for spend logs: numeric sums
           of numeric sums are exact and keep the largest scale, so every figure is the one a single grouping gives.
        """
        if not window.is_day_aligned:
            raise AirflowFailException(f"the daily source needs a window of whole UTC days, got {window}")
        params: dict[str, Any] = {"start": day_label(window.start), "end": day_label(window.end)}
        dim_exprs, raw = self._daily_dimension_sql(dims, source, params)
        table = self._table(DAILY_TABLES[source])
        where = "s.date >= %(start)s AND s.date < %(end)s"
        if source == "daily_tag":
            where += " AND s.tag LIKE %(tag_like)s"
        total_tokens = "(s.prompt_tokens + s.completion_tokens)"
        invalid = _invalid_reason(total_tokens)
        sums = (
            "sum(s.api_requests) AS n, sum(s.successful_requests) AS ok, sum(s.failed_requests) AS failed, "
            "{spend} AS spend, sum(s.prompt_tokens) AS prompt_tokens, sum(s.completion_tokens) AS completion_tokens, "
            "sum(s.prompt_tokens + s.completion_tokens) AS total_tokens"
        )
        raw_valid = "".join(f", s.{c}" for c in raw)
        raw_invalid = "".join(f", NULL::text AS {c}" for c in raw)
        d_cols = [f"d{i}" for i in range(len(dims))]
        middle_dims = "".join(f", {expr} AS {col}" for expr, col in zip(dim_exprs, d_cols, strict=True))
        outer_dims = "".join(f", a.{col}" for col in d_cols)
        alias_join = (
            f"\n    LEFT JOIN {self._table(VERIFICATION_TOKENS)} AS v ON v.token = s.api_key"
            if any(d.name == "api_key_alias" for d in dims)
            else ""
        )
        sql = f"""
SELECT a.hour::date::timestamp AS hour, a.reason, {_grouping(d_cols)} AS g{outer_dims},
       {_SUMS_OF_GROUPS}
FROM (
    SELECT s.hour, s.reason, s.n, s.ok, s.failed, s.spend, s.prompt_tokens, s.completion_tokens, s.total_tokens,
        s.samples{middle_dims}
    FROM (
        SELECT s.date AS hour, NULL::text AS reason{raw_valid}, {sums.format(spend="sum(s.spend::numeric)")},
            NULL::text[] AS samples
        FROM {table} AS s
        WHERE {where}
            AND {_valid(total_tokens)}
        GROUP BY s.date{raw_valid}
        UNION ALL
        SELECT s.date, {invalid}{raw_invalid}, {sums.format(spend="NULL::numeric")},
            (array_agg(s.id ORDER BY s.id))[1:{SAMPLES}]
        FROM {table} AS s
        WHERE {where}
            AND ({_valid(total_tokens)}) IS NOT TRUE
        GROUP BY 1, 2
    ) AS s{alias_join}
) AS a
GROUP BY {_group_by(d_cols)}
ORDER BY 1{outer_dims}, 2, 3"""
        return sql, params

    # -- reading ----------------------------------------------------------------------------------------

    def aggregate(
        self, window: Window, dims: Sequence[Dimension], source: Source = "spend_logs"
    ) -> Iterator[AggregateRow | HourTotal]:
        """
        Stream the window's aggregate (psycopg 3's streaming by default; a server-side cursor on request).

        Yields :class:`AggregateRow` for every (hour, dimension values) group of valid rows, and one
        :class:`HourTotal` per hour with PostgreSQL's own totals of that hour and its invalid rows.
        Raw request rows never leave the database.
        """
        items = self._aggregate(window, dims, source, as_lines=False)  # groups as AggregateRow, never bytes
        return cast(Iterator[AggregateRow | HourTotal], items)

    def staged_lines(
        self, window: Window, dims: Sequence[Dimension], source: Source = "spend_logs"
    ) -> Iterator[bytes | HourTotal]:
        """As :meth:`aggregate`, each group as its staged line: the bytes
        :func:`~cloudzero_provider.json_lines.encode_line` writes of :meth:`AggregateRow.as_dict`, built straight
        from the record (the dimension values encoded once per combination), never an object per group: the
        extract's path, where a window holds up to millions of groups."""
        items = self._aggregate(window, dims, source, as_lines=True)  # groups as bytes, never an AggregateRow
        return cast(Iterator[bytes | HourTotal], items)

    def _aggregate(
        self, window: Window, dims: Sequence[Dimension], source: Source, *, as_lines: bool
    ) -> Iterator[AggregateRow | bytes | HourTotal]:
        names = [d.name for d in dims]
        n_dims = len(dims)
        figures = slice(3 + n_dims, 10 + n_dims)
        totals: dict[datetime, HourTotal] = {}
        encoded: dict[tuple[Any, ...], str] = {}  # dimension values -> their staged JSON object
        raw_hour: Any = None
        hour = datetime.min
        hour_text = ""
        hash_groups = self.hashes(dims, source)
        records: Iterator[Sequence[Any]]
        if source != "spend_logs" and window.is_day_aligned and window.end - window.start > DAY:
            # A statement per day, read ahead: PostgreSQL aggregates the next day while this one's groups are
            # staged (and built into CBF rows). In day order, each ordered as one statement orders the window.
            statements = [self.aggregate_sql(day, dims, source) for day in window.each_day()]
            records = self._stream_each(statements, "cloudzero_extract", hash_groups=hash_groups)
        else:
            sql, params = self.aggregate_sql(window, dims, source)
            records = self._stream(sql, params, "cloudzero_extract", hash_groups=hash_groups)
        for record in records:
            if record[0] != raw_hour:  # the rows come in hour order: one aware hour for all of an hour's rows
                raw_hour, hour = record[0], _utc(record[0])
                hour_text = _iso_hour(hour)
            reason, g = record[1], record[2]
            req, ok, failed, spend, prompt, completion, total = figures_of = record[figures]
            if reason is None and g == 0:
                values = tuple(record[3 : 3 + n_dims])
                # As lines: written by f-string (group_line) when every figure is what the statement casts it to (a
                # bigint: an int or None) and the spend a numeric's text; anything else is encoded whole.
                if (
                    as_lines
                    and type(spend) is str
                    and _NUMERIC_TEXT.fullmatch(spend)
                    and type(prompt) is int
                    and type(completion) is int
                    and type(total) is int
                    and type(req) in _COUNT_TYPES
                    and type(ok) in _COUNT_TYPES
                    and type(failed) in _COUNT_TYPES
                ):
                    dims_text = encoded.get(values)
                    if dims_text is None:
                        dims_text = encode_line(dict(zip(names, values, strict=True)))[:-1].decode()
                        if cacheable(values):  # a huge caller value is encoded each time, never kept
                            if len(encoded) >= MAX_ENCODED_COMBINATIONS:
                                encoded.clear()
                            encoded[values] = dims_text
                    yield group_line(hour_text, dims_text, req, ok, failed, spend, prompt, completion, total)
                else:
                    row = AggregateRow(hour, dict(zip(names, values, strict=True)), Totals.of(*figures_of))
                    yield encode_line(row.as_dict()) if as_lines else row
            if g != 0 or n_dims == 0:  # the (hour, reason) grouping set: PostgreSQL's own totals
                t = Totals.of(*figures_of)
                ht = totals.setdefault(hour, HourTotal(hour))
                if reason is None:
                    ht.totals = t
                else:
                    ht.invalid[reason] = ht.invalid.get(reason, 0) + t.requests
                    samples = record[10 + n_dims]
                    ht.invalid_samples.extend((samples or [])[: SAMPLES - len(ht.invalid_samples)])
        yield from (totals[h] for h in sorted(totals))

    def _stream(
        self, sql: str, params: dict[str, Any], name: str, *, hash_groups: bool = False
    ) -> Iterator[Sequence[Any]]:
        """Run one statement in a read-only, time-limited transaction and yield its rows as they arrive; with
        ``hash_groups``, its groups hashed rather than its rows sorted (see :func:`hashes_groups`)."""
        return self._read([(sql, params)], name, hash_groups=hash_groups)

    def _stream_each(
        self, statements: Sequence[tuple[str, dict[str, Any]]], name: str, *, hash_groups: bool = False
    ) -> Iterator[Sequence[Any]]:
        """The rows of several statements, one after the other, in one read-only transaction that sees one snapshot
        (``REPEATABLE READ``), as one statement would see the database. Each statement has the ``statement_timeout``;
        on PostgreSQL 17 and later the transaction has their sum (``transaction_timeout``), which also ends a
        snapshot held by a stalled reader between statements, where ``idle_in_transaction_session_timeout`` is not
        armed. With psycopg 3 they are pipelined: PostgreSQL runs the next statement while the caller works on this
        one's rows (each statement's rows are received whole, at most :data:`READ_AHEAD` statements ahead, so memory
        holds a few statements' rows); otherwise they run one after the other. psycopg hands the results over in
        pairs (fetching one statement's receives every result sent so far): while the caller works on two days,
        PostgreSQL runs the next two."""
        return self._read(statements, name, hash_groups=hash_groups)

    def _read(
        self, statements: Sequence[tuple[str, dict[str, Any]]], name: str, *, hash_groups: bool
    ) -> Iterator[Sequence[Any]]:
        """What :meth:`_stream` and :meth:`_stream_each` run: one statement's rows streamed as they arrive, several
        statements' as :meth:`_stream_each` says."""
        conn = self.get_conn()
        self._active = conn
        try:
            self._begin_read(conn, hash_groups=hash_groups, statements=len(statements))
            if len(statements) > 1 and USE_PSYCOPG3 and not self.server_side_cursor:
                yield from self._pipelined(conn, statements)
            else:
                for sql, params in statements:
                    yield from self._rows(conn, sql, params, name)
            conn.commit()
        except Exception as exc:
            raise self._explain(exc) from exc
        finally:
            self._active = None
            conn.close()

    def _pipelined(
        self, conn: Any, statements: Sequence[tuple[str, dict[str, Any]]]
    ) -> Iterator[Sequence[Any]]:
        sent: deque[Any] = deque()
        to_send = iter(statements)

        def send(n: int) -> None:
            for sql, params in itertools.islice(to_send, n):
                cur = conn.cursor()
                # Never a prepared statement: psycopg prepares a query run five times, under a name that outlives
                # the read on a pooled server connection (and breaks the next client's statement of that name), and
                # a generic plan would not see each day's own values.
                cur.execute(sql, params, prepare=False)
                sent.append(cur)

        with conn.pipeline():
            try:
                send(READ_AHEAD)
                while sent:
                    with sent.popleft() as cur:
                        rows = cur.fetchall()
                    # Before this statement's rows are taken, so that PostgreSQL has the next to run.
                    send(1)
                    yield from rows
                    del rows
            except BaseException:
                # Left early (an error, the caller stopped): the pipeline's exit would wait for every statement sent
                # to finish. The one running is cancelled and the connection closed instead.
                self.cancel()
                conn.close()
                raise

    def _begin_read(self, conn: Any, *, hash_groups: bool, statements: int = 1) -> None:
        """Open the read's transaction: READ ONLY (checked), its timeouts and planner settings for it alone; for
        several statements, one snapshot and a bound on the whole (see :meth:`_stream_each`)."""
        if getattr(conn, "autocommit", False):
            setattr(conn, "autocommit", False)  # noqa: B010 -- one transaction per read, whatever the connection says
        with conn.cursor() as setup:
            isolation = "ISOLATION LEVEL REPEATABLE READ, " if statements > 1 else ""
            setup.execute(f"SET TRANSACTION {isolation}READ ONLY")
            # LOCAL: this transaction only.
            setup.execute(f"SET LOCAL statement_timeout = {self.timeout_ms}")
            setup.execute("SET LOCAL idle_in_transaction_session_timeout = 600000")
            if statements > 1 and _server_version(conn) >= TRANSACTION_TIMEOUT_VERSION:
                # A GUC holds at most 2^31 - 1 ms (24.8 days): a sum past it is that.
                setup.execute(
                    f"SET LOCAL transaction_timeout = {min(self.timeout_ms * statements, 2**31 - 1)}"
                )
            for setting in planner_settings(hash_groups=hash_groups, server_version=_server_version(conn)):
                setup.execute(f"SET LOCAL {setting}")
            setup.execute("SELECT current_setting('transaction_read_only')")
            row = setup.fetchone()
            if not row or row[0] != "on":
                raise AirflowFailException(
                    f"Connection {self.get_conn_id()!r}: the read did not run READ ONLY "
                    f"(transaction_read_only={row[0] if row else None!r}); nothing was read."
                )

    def _rows(self, conn: Any, sql: str, params: dict[str, Any], name: str) -> Iterator[Sequence[Any]]:
        """One statement's rows as they arrive: psycopg 3's streaming, or a server-side cursor."""
        if USE_PSYCOPG3 and not self.server_side_cursor:
            with conn.cursor() as cur:
                yield from cur.stream(sql, params, size=self.fetch_size)
        else:
            with conn.cursor(name=name) as cur:
                cur.itersize = self.fetch_size
                cur.execute(sql, params)
                yield from cur

    def _explain(self, exc: Exception) -> Exception:
        """An error a user can act on: a timeout, a missing table or column, named; others unchanged."""
        code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        if code == "57014":
            return AirflowFailException(
                f"The LiteLLM database cancelled the statement ({str(exc).strip()}): it ran past statement_timeout "
                f"({self.timeout_ms // 1000} s) or the task was stopped. Raise the connection's extra "
                '"statement_timeout", use smaller windows, or point the connection at a read replica.'
            )
        if code in ("42P01", "42703"):
            return AirflowFailException(
                f"The LiteLLM database (connection {self.get_conn_id()!r}, schema {self.db_schema!r}) lacks a "
                f"table or column this export needs: {str(exc).strip()}"
            )
        return exc

    def invalid_rows(
        self, window: Window, source: Source = "spend_logs", dims: Sequence[Dimension] = ()
    ) -> Iterator[dict[str, Any]]:
        """Every invalid source row of the window with its reason, for the quarantine file: the rows the read of
        ``dims`` counts as invalid (of the tag table, only its rows of the one tag prefix)."""
        start, end = window.naive_utc()
        if source == "spend_logs":
            invalid = _invalid_reason()
            sql = f"""
SELECT * FROM (
    SELECT s.request_id, to_char(s."startTime", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), s.spend::text,
           s.prompt_tokens, s.completion_tokens, s.total_tokens, NULLIF(s.team_id, ''), NULLIF(s.model, ''),
           {invalid} AS reason
    FROM {self._table(SPEND_LOGS)} AS s WHERE s."startTime" >= %(start)s AND s."startTime" < %(end)s
) AS q WHERE q.reason IS NOT NULL"""
            params: dict[str, Any] = {"start": start, "end": end}
        else:
            invalid = _invalid_reason("(s.prompt_tokens + s.completion_tokens)")
            params = {"start": day_label(window.start), "end": day_label(window.end)}
            where = "s.date >= %(start)s AND s.date < %(end)s"
            if source == "daily_tag":
                self._daily_dimension_sql(dims, source, params)  # the one prefix, as the read takes it
                where += " AND s.tag LIKE %(tag_like)s"
            sql = f"""
SELECT * FROM (
    SELECT s.id, s.date, s.spend::text, s.prompt_tokens, s.completion_tokens,
           s.prompt_tokens + s.completion_tokens, NULL, NULLIF(s.model, ''), {invalid} AS reason
    FROM {self._table(DAILY_TABLES[source])} AS s WHERE {where}
) AS q WHERE q.reason IS NOT NULL"""
        keys = ("request_id", "start_time", "spend", "prompt_tokens", "completion_tokens", "total_tokens",
                "team_id", "model", "reason")  # fmt: skip
        for record in self._stream(sql, params, "cloudzero_quarantine"):
            yield dict(zip(keys, record, strict=True))

    def hour_spend(self, window: Window) -> dict[datetime, tuple[int, str]]:
        """Per hour of the window: valid requests and ``SUM(spend::numeric)``, straight from the source rows.

        Used by the late-data pass to see whether an exported hour changed since.
        """
        start, end = window.naive_utc()
        invalid = _invalid_reason()
        rows = self._stream(
            f"""SELECT date_trunc('hour', s."startTime"), count(*), COALESCE(sum(s.spend::numeric), 0)::text
                FROM {self._table(SPEND_LOGS)} AS s
                WHERE s."startTime" >= %(start)s AND s."startTime" < %(end)s AND ({invalid}) IS NULL
                GROUP BY 1""",
            {"start": start, "end": end},
            "cloudzero_hour_spend",
        )
        return {_utc(r[0]): (int(r[1]), r[2]) for r in rows}

    def hour_counts(self, window: Window) -> dict[datetime, int]:
        """Per hour of the window: how many spend-log rows it holds, valid or not.

        A count over the ``"startTime"`` index only: the range DAG's plan uses it to skip empty time cheaply.
        """
        start, end = window.naive_utc()
        rows = self._stream(
            f"""SELECT date_trunc('hour', s."startTime"), count(*)
                FROM {self._table(SPEND_LOGS)} AS s
                WHERE s."startTime" >= %(start)s AND s."startTime" < %(end)s
                GROUP BY 1""",
            {"start": start, "end": end},
            "cloudzero_hour_counts",
        )
        return {_utc(r[0]): int(r[1]) for r in rows}

    def oldest_spend_log(self) -> datetime | None:
        """When the oldest spend-log row the source still holds started (``None``: it holds none). What LiteLLM's
        retention purged lies before it. One index lookup."""
        rows = list(self._stream(f'SELECT min(s."startTime") FROM {self._table(SPEND_LOGS)} AS s', {},
                                 "cloudzero_oldest"))  # fmt: skip
        return _utc(rows[0][0]) if rows and rows[0][0] is not None else None

    def daily_spend(self, day: Window, source: Source = "daily_team") -> str:
        """``SUM(spend::numeric)`` of one daily rollup table over whole UTC days ("0" when it holds none)."""
        rows = list(self._stream(
            f"""SELECT COALESCE(sum(s.spend::numeric), 0)::text FROM {self._table(DAILY_TABLES[source])} AS s
                WHERE s.date >= %(start)s AND s.date < %(end)s""",
            {"start": day_label(day.start), "end": day_label(day.end)},
            "cloudzero_daily_spend",
        ))  # fmt: skip
        return str(rows[0][0]) if rows else "0"
