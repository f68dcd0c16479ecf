"""Extract and transform against a real PostgreSQL with LiteLLM's schema (both ages): exact to the last digit."""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.cbf import exact_sum
from cloudzero_provider.cbf_rules import row_errors
from cloudzero_provider.operators.extract import LiteLLMSpendExtractOperator
from cloudzero_provider.operators.transform import CBFTransformOperator
from cloudzero_provider.options import ExportOptions
from cloudzero_provider.testing.postgres import airflow_conn_uri
from cloudzero_provider.testing.seed import insert_spend_logs, spend_log

H13 = "2026-11-01T13:00:00Z"
H14 = "2026-11-01T14:00:00Z"


@pytest.fixture
def db(litellm_db, monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_LITELLM_DB", airflow_conn_uri(litellm_db))
    monkeypatch.setenv("CLOUDZERO_STAGING_URI", str(tmp_path / "staging"))
    return litellm_db


def run_window(
    start=H13,
    end=None,
    max_values_per_hour=1000,
    dimensions=None,
    on_invalid="fail",
    max_rows_per_hour=5000,
    **extract_kw,
):
    options = ExportOptions(
        dimensions=dimensions,
        on_invalid=on_invalid,
        max_values_per_hour=max_values_per_hour,
        max_rows_per_hour=max_rows_per_hour,
    )
    ex = LiteLLMSpendExtractOperator(
        task_id="extract", window_start=start, window_end=end, options=options, **extract_kw
    )
    extracted = ex.execute({})
    tr = CBFTransformOperator(task_id="transform", window_start=start, window_end=end, options=options)
    transformed = tr.execute({})
    cbf = [
        json.loads(line)
        for line in Path(transformed["path"].removeprefix("file://")).read_text().splitlines()
    ]
    return extracted, transformed, cbf


def source_sum_by_hour(url: str) -> dict[str, Decimal]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            """SELECT to_char(date_trunc('hour', "startTime"), 'YYYY-MM-DD"T"HH24:00:00"Z"'), SUM(spend::numeric)
               FROM "LiteLLM_SpendLogs" GROUP BY 1"""
        )
        return {h: v for h, v in cur.fetchall()}


def cbf_sum_by_hour(cbf) -> dict[str, Decimal]:
    out: dict[str, list[str]] = defaultdict(list)
    for row in cbf:
        out[row["time/usage_start"]].append(row["cost/cost"])
    return {hour: exact_sum(costs) for hour, costs in out.items()}


def test_boundaries_and_exact_conservation(db):
    insert_spend_logs(db, [
        spend_log("in-first", "2026-11-01T13:00:00.000", 1e-12, team_id="t1"),
        spend_log("in-last", "2026-11-01T13:59:59.999", 0.1, team_id="t1"),
        spend_log("in-b", "2026-11-01T13:30:00", 0.2, team_id="t1"),
        spend_log("in-big", "2026-11-01T13:31:00", 1e6, team_id="t2"),
        spend_log("out-next", "2026-11-01T14:00:00.000", 5.0, team_id="t1"),
        spend_log("out-prev", "2026-11-01T12:59:59.999", 7.0, team_id="t1"),
    ])  # fmt: skip
    extracted, transformed, cbf = run_window(H13)
    assert extracted["requests"] == 4
    source = source_sum_by_hour(db)
    assert cbf_sum_by_hour(cbf) == {H13: source[H13]}
    assert Decimal(transformed["cost"]) == source[H13]
    assert Decimal(extracted["spend"]) == source[H13]
    by_team = {r["resource/tag:team_id"]: r for r in cbf}
    # 1e-12 + 0.1 + 0.2, summed as numeric: non-zero digits far below a cent survive, no exponent
    assert Decimal(by_team["t1"]["cost/cost"]) == source[H13] - Decimal(1000000)
    assert "e" not in by_team["t1"]["cost/cost"].lower() and by_team["t1"]["cost/cost"].endswith("1")
    assert by_team["t2"]["cost/cost"] == "1000000"
    assert by_team["t1"]["usage/amount"] == "45" and by_team["t1"]["usage/units"] == "tokens"
    assert all(r["time/usage_start"] == H13 and not row_errors(r) for r in cbf)
    # the neighbouring hours hold exactly the boundary rows
    _, _, cbf14 = run_window(H14)
    assert cbf_sum_by_hour(cbf14) == {H14: Decimal(5)}


def test_multi_hour_window_per_hour_conservation(db):
    insert_spend_logs(db, [spend_log(f"r{i}", f"2026-11-01T{13 + i % 3}:{i % 60:02d}:00", 0.001 * (i + 1),
                                     team_id=f"t{i % 4}", model=f"m{i % 2}") for i in range(90)])  # fmt: skip
    extracted, transformed, cbf = run_window(H13, "2026-11-01T16:00:00Z")
    assert cbf_sum_by_hour(cbf) == source_sum_by_hour(db)
    assert transformed["hours"] == 3 and extracted["requests"] == 90
    assert (
        len(cbf) == len({(r["time/usage_start"], r["resource/id"]) for r in cbf}) == 12
    )  # 4 teams x 3 hours; model follows team parity
    hours = [r["time/usage_start"] for r in cbf]
    assert hours == sorted(hours), "CBF rows come out in hour order"


def make_bad_rows(db, with_null: bool):
    rows = [
        spend_log("good-1", "2026-11-01T13:10:00", 0.5, team_id="t1"),
        spend_log("bad-nan", "2026-11-01T13:11:00", float("nan"), team_id="t1"),
        spend_log("bad-neg", "2026-11-01T13:12:00", -0.25, team_id="t1"),
        spend_log("bad-inf", "2026-11-01T13:13:00", float("inf"), team_id="t1"),
        spend_log("bad-tokens", "2026-11-01T13:14:00", 0.1, team_id="t1", prompt_tokens=-3),
    ]
    if with_null:
        with psycopg2.connect(db) as conn, conn.cursor() as cur:
            cur.execute('ALTER TABLE "LiteLLM_SpendLogs" ALTER COLUMN spend DROP NOT NULL')
        rows.append(spend_log("bad-null", "2026-11-01T13:15:00", None, team_id="t1"))
    insert_spend_logs(db, rows)


def test_invalid_rows_fail_the_window_by_default(db):
    make_bad_rows(db, with_null=True)
    with pytest.raises(AirflowFailException) as info:
        run_window(H13)
    message = str(info.value)
    assert "5 invalid LiteLLM_SpendLogs row(s)" in message
    for reason in ("1 spend is NaN", "1 spend is negative", "1 spend is infinite", "1 spend is NULL",
                   "1 token count is negative"):  # fmt: skip
        assert reason in message
    for rid in ("bad-nan", "bad-neg", "bad-inf", "bad-null", "bad-tokens"):
        assert rid in message
    assert "on_invalid='quarantine'" in message


def test_invalid_rows_quarantined_on_request(db, tmp_path):
    make_bad_rows(db, with_null=False)
    extracted, _, cbf = run_window(H13, on_invalid="quarantine")
    assert extracted["invalid_rows"] == 4 and extracted["requests"] == 1
    assert cbf_sum_by_hour(cbf) == {H13: Decimal("0.5")}
    quarantined = [
        json.loads(x) for x in Path(extracted["quarantine"].removeprefix("file://")).read_text().splitlines()
    ]
    assert sorted(q["request_id"] for q in quarantined) == ["bad-inf", "bad-nan", "bad-neg", "bad-tokens"]
    assert {q["request_id"]: q["reason"] for q in quarantined}["bad-tokens"] == "token count is negative"
    # totals account for every row: exported + quarantined = all rows of the hour
    summary = json.loads(
        (Path(extracted["path"].removeprefix("file://")).parent / "extract.json").read_text()
    )
    assert summary["hours"][H13]["requests"] + sum(summary["hours"][H13]["invalid"].values()) == 5


NASTY = ["Team A", "team-a", "team_a", "TEAM A", "équipe/α:β", "t:1/2 3", "  spaced  ", "emoji-🚀"]


def test_awkward_identifiers_stay_separate_resources(db):
    rows = []
    for i, team in enumerate(NASTY):
        rows.append(spend_log(f"r{i}", "2026-11-01T13:05:00", 0.01 * (i + 1), team_id=team,
                              model=f"org/Model:{i % 2} v", metadata={"user_api_key_team_alias": f"Alias {team}"},
                              request_tags=[f"taskName:{team}", "other:x"]))  # fmt: skip
    rows.append(spend_log("r-empty", "2026-11-01T13:06:00", 0.5, team_id="", model="m"))
    rows.append(spend_log("r-null", "2026-11-01T13:07:00", 0.25, team_id=None, model="m"))
    insert_spend_logs(db, rows)
    _, _, cbf = run_window(H13, dimensions=["team_id", "team_alias", "model", "tag:taskName"])
    assert len(cbf) == len(NASTY) + 1, "'' and NULL team ids are one group: none"
    assert len({r["resource/id"] for r in cbf}) == len(cbf)
    teams = {r.get("resource/tag:team_id") for r in cbf}
    assert teams == set(NASTY) | {None}
    none_row = next(r for r in cbf if "resource/tag:team_id" not in r)
    assert none_row["cost/cost"] == "0.75" and none_row["resource/account"] == "no-team"
    tagged = {r["resource/tag:tag.taskName"] for r in cbf if "resource/tag:tag.taskName" in r}
    assert tagged == set(NASTY)
    assert all(not row_errors(r) for r in cbf)


def test_ten_thousand_distinct_tag_values(db):
    rows = [spend_log(f"r{i}", "2026-11-01T13:00:00", 0.000001 * (i + 1), request_tags=[f"taskName:job-{i}"])
            for i in range(10_000)]  # fmt: skip
    insert_spend_logs(db, rows)
    extracted, transformed, cbf = run_window(H13, dimensions=["model", "tag:taskName"], max_values_per_hour=0,
                                             max_rows_per_hour=0)  # fmt: skip
    assert extracted["rows"] == transformed["rows"] == len(cbf) == 10_000
    assert len({r["resource/id"] for r in cbf}) == 10_000
    assert cbf_sum_by_hour(cbf) == source_sum_by_hour(db)
    # by default the caller-chosen tag values are capped per hour: the 1,000 costliest kept, the rest folded
    extracted, transformed, cbf = run_window(H13, dimensions=["model", "tag:taskName"])
    assert transformed["rows"] == len(cbf) == 1_001 and transformed["folded_values"] == 9_000
    kept = {r["resource/tag:tag.taskName"] for r in cbf}
    assert "(other)" in kept and "job-9999" in kept and "job-0" not in kept
    assert cbf_sum_by_hour(cbf) == source_sum_by_hour(db), "folding moves no cost"
    # with the value cap off, the cap on rows per hour still holds: the 4,999 costliest groups and one (other)
    extracted, transformed, cbf = run_window(H13, dimensions=["model", "tag:taskName"], max_values_per_hour=0)
    assert transformed["rows"] == len(cbf) == 5_000 and transformed["groups_folded_by_row_cap"] == 5_001
    other = [r for r in cbf if r["resource/tag:tag.taskName"] == "(other)"]
    assert len(other) == 1 and other[0].get("resource/tag:model") in (None, "(other)")
    assert cbf_sum_by_hour(cbf) == source_sum_by_hour(db), "the row cap moves no cost"


def test_both_schema_ages_and_missing_columns(db, schema_age, capsys):
    insert_spend_logs(db, [spend_log("r1", "2026-11-01T13:00:00", 0.3, team_id="t", model="m",
                                     **({"organization_id": "org-1"} if schema_age == "2026-10" else {}))])  # fmt: skip
    _, _, cbf = run_window(H13)
    logged = capsys.readouterr().out
    (row,) = cbf
    if schema_age == "2026-10":
        assert row["resource/tag:organization_id"] == "org-1"
        assert "lacks what these dimensions need" not in logged
    else:
        assert "resource/tag:organization_id" not in row
        assert logged.count("they stay empty: organization_id (needs column organization_id)") == 1


def test_success_and_failure_counts(db):
    insert_spend_logs(db, [spend_log("a", "2026-11-01T13:00:00", 0.1, status="success"),
                           spend_log("b", "2026-11-01T13:00:01", 0.0, status="failure")])  # fmt: skip
    extracted, _, _ = run_window(H13)
    rows = [json.loads(x) for x in Path(extracted["path"].removeprefix("file://")).read_text().splitlines()]
    assert [(r["requests"], r["successes"], r["failures"]) for r in rows] == [(2, 1, 1)]


def test_api_keys_only_leave_as_hash_prefixes(db):
    hashed = "a" * 64
    insert_spend_logs(db, [spend_log("a", "2026-11-01T13:00:00", 0.1, api_key=hashed),
                           spend_log("b", "2026-11-01T13:00:01", 0.1, api_key="sk-raw-secret-key")])  # fmt: skip
    _, _, cbf = run_window(H13, dimensions=["api_key"])
    keys = sorted(r["resource/tag:api_key"] for r in cbf)
    assert "a" * 16 in keys and len(keys) == 2
    assert all("sk-raw" not in json.dumps(r) for r in cbf)


def test_daily_rollup_source(db):
    with psycopg2.connect(db) as conn, conn.cursor() as cur:
        for i, (team, spend) in enumerate([("t1", 0.1), ("t1", 0.2), ("t2", 3.0)]):
            cur.execute(
                """INSERT INTO "LiteLLM_DailyTeamSpend" (id, team_id, date, api_key, model, custom_llm_provider,
                   prompt_tokens, completion_tokens, spend, api_requests, successful_requests, failed_requests,
                   updated_at) VALUES (%s, %s, '2026-11-01', %s, %s, 'openai', 10, 5, %s, 2, 2, 0, now())""",
                (f"id{i}", team, f"k{i}", f"m{i}", spend),
            )
        cur.execute(
            """INSERT INTO "LiteLLM_DailyTeamSpend" (id, team_id, date, api_key, model, spend, updated_at)
               VALUES ('other-day', 't1', '2026-11-02', 'k', 'm', 9, now())"""
        )
    extracted, transformed, cbf = run_window("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z", source="daily_team",
                                             dimensions=["team_id", "model", "provider"])  # fmt: skip
    assert {r["time/usage_start"] for r in cbf} == {"2026-11-01T00:00:00Z"}
    assert transformed["cost"] == "3.3" and extracted["requests"] == 6
    with pytest.raises(AirflowFailException, match="whole UTC days"):
        run_window(H13, source="daily_team")


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2026-11-01T13:30:00Z", None, "not aligned to the hour"),
        ("2026-11-01T13:00:00", None, "has no time zone"),
        (H14, H13, "is not after its start"),
        ("yesterday", None, "not an ISO-8601"),
    ],
)
def test_bad_windows_are_refused(db, start, end, message):
    with pytest.raises(AirflowFailException, match=message):
        LiteLLMSpendExtractOperator(task_id="e", window_start=start, window_end=end).execute({})


def test_no_window_fails_clearly(db):
    with pytest.raises(AirflowFailException, match="no data interval"):
        LiteLLMSpendExtractOperator(task_id="e").execute(
            {"data_interval_start": None, "data_interval_end": None}
        )


def test_bad_dimension_is_named(db):
    with pytest.raises(AirflowFailException, match="unknown dimension 'colour'"):
        LiteLLMSpendExtractOperator(
            task_id="e", window_start=H13, options=ExportOptions(dimensions=["model", "colour"])
        ).execute({})


def test_reconciliation_failure_names_hour_and_figures(db):
    insert_spend_logs(db, [spend_log("a", "2026-11-01T13:00:00", 0.1)])
    ex = LiteLLMSpendExtractOperator(task_id="e", window_start=H13)
    extracted = ex.execute({})
    summary_path = Path(extracted["path"].removeprefix("file://")).parent / "extract.json"
    summary = json.loads(summary_path.read_text())
    summary["hours"][H13]["spend"] = (
        "0.1000000000001"  # as if a row had been lost between extract and transform
    )
    summary_path.write_text(json.dumps(summary))
    with pytest.raises(AirflowFailException) as info:
        CBFTransformOperator(task_id="t", window_start=H13).execute({})
    assert (
        f"hour {H13}: CBF cost/cost sums to 0.1 but SUM(spend::numeric) of its source rows is 0.1000000000001"
        in str(info.value)
    )
    assert not (summary_path.parent / "cbf.jsonl").exists()


def test_server_side_cursor_reads_the_same(db):
    from cloudzero_provider.dimensions import resolve
    from cloudzero_provider.hooks.litellm import LiteLLMSpendHook
    from cloudzero_provider.windows import Window

    insert_spend_logs(
        db, [spend_log(f"r{i}", "2026-11-01T13:00:00", 0.01 * i, team_id=f"t{i % 3}") for i in range(30)]
    )
    window, dims = Window.hour(H13), resolve(["team_id"])
    streamed = list(LiteLLMSpendHook(fetch_size=2).aggregate(window, dims))
    cursor = list(LiteLLMSpendHook(fetch_size=2, server_side_cursor=True).aggregate(window, dims))
    assert streamed == cursor and len(streamed) == 4


def test_request_tag_edge_cases(db):
    insert_spend_logs(db, [
        spend_log("obj", "2026-11-01T13:00:00", 0.1, request_tags={"taskName": "not-a-list"}),
        spend_log("mixed", "2026-11-01T13:00:01", 0.2, request_tags=[1, None, "taskName:y", "taskName:z"]),
        spend_log("empty", "2026-11-01T13:00:02", 0.4, request_tags=["taskName:"]),
        spend_log("colon", "2026-11-01T13:00:03", 0.8, request_tags=["taskNameX:a", "taskName:a:b/c d"]),
    ])  # fmt: skip
    _, _, cbf = run_window(H13, dimensions=["tag:taskName"])
    by_value = {r.get("resource/tag:tag.taskName"): r["cost/cost"] for r in cbf}
    assert by_value == {None: "0.5", "y": "0.2", "a:b/c d": "0.8"}


def test_daily_rollup_refuses_a_dimension_it_cannot_give(db):
    with pytest.raises(
        AirflowFailException, match=r"LiteLLM_DailyTeamSpend cannot give dimension\(s\) \['end_user'\]"
    ):
        run_window(
            "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z", source="daily_team", dimensions=["end_user"]
        )


DAYS = ("2026-11-01T00:00:00Z", "2026-11-04T00:00:00Z")


def seed_rollup_days(url: str) -> None:
    """Three days of LiteLLM_DailyTeamSpend: five teams a day, spends that only sum exactly as numeric."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for day in (1, 2, 3):
            for i in range(10):
                cur.execute(
                    """INSERT INTO "LiteLLM_DailyTeamSpend" (id, team_id, date, api_key, model,
                       custom_llm_provider, prompt_tokens, completion_tokens, spend, api_requests,
                       successful_requests, failed_requests, updated_at)
                       VALUES (%s, %s, %s, %s, %s, 'openai', 10, 5, %s, 2, 2, 0, now())""",
                    (f"d{day}-{i}", f"t{i % 5}", f"2026-11-0{day}", f"k{i}", f"m{i % 2}", 0.1 * (i + day)),
                )
    conn.close()


def _stage_of(result) -> Path:
    return Path(result["path"].removeprefix("file://")).parent


def test_a_daily_extract_builds_the_rows_the_transform_would(db):
    """The daily extract builds the CBF rows as it reads, a day at a time; the transform takes them as built, and
    they are byte for byte what the transform builds itself from the same extract (caps folding groups included)."""
    from cloudzero_provider.pipeline.transform import transform_window
    from cloudzero_provider.windows import Window

    seed_rollup_days(db)
    extracted, transformed, cbf = run_window(*DAYS, source="daily_team", dimensions=["team_id", "model"],
                                             max_rows_per_hour=4)  # fmt: skip
    stage = _stage_of(transformed)
    built, record = (stage / "cbf.jsonl").read_bytes(), json.loads((stage / "transform.json").read_text())
    assert record["built_from"]  # taken as the extract built them: the transform wrote nothing
    assert transformed["hours"] == 3 and transformed["groups_folded_by_row_cap"] == 3 * (10 - 3)
    assert cbf_sum_by_hour(cbf) == {"2026-11-01T00:00:00Z": Decimal("5.5"), "2026-11-02T00:00:00Z": Decimal("6.5"),
                                    "2026-11-03T00:00:00Z": Decimal("7.5")}  # fmt: skip
    assert extracted["spend"] == "19.5"
    window = Window.of(*DAYS)
    window_stage = CBFTransformOperator(task_id="t", window_start=DAYS[0], window_end=DAYS[1]).stage(window)
    rebuilt = transform_window(
        window, window_stage, max_values_per_hour=1000, max_rows_per_hour=4, take_built=False
    )
    assert rebuilt == transformed
    assert (stage / "cbf.jsonl").read_bytes() == built
    again = json.loads((stage / "transform.json").read_text())
    assert "built_from" not in again
    assert again == {k: v for k, v in record.items() if k != "built_from"}


@pytest.mark.parametrize("edit", ["a line of extract.jsonl", "a figure of extract.json"])
def test_the_transform_builds_again_what_was_edited_since_the_extract(db, edit):
    """Rows built by the extract are taken only for the extract.jsonl they were built from and the totals
    extract.json records: an edited file is transformed again, and fails reconciliation naming the hour."""
    seed_rollup_days(db)
    options = ExportOptions(dimensions=["team_id"])
    extracted = LiteLLMSpendExtractOperator(task_id="e", window_start=DAYS[0], window_end=DAYS[1],
                                            source="daily_team", options=options).execute({})  # fmt: skip
    stage = _stage_of(extracted)
    assert json.loads((stage / "transform.json").read_text())["built_from"]
    if edit == "a line of extract.jsonl":
        lines = (stage / "extract.jsonl").read_bytes().splitlines(keepends=True)
        (stage / "extract.jsonl").write_bytes(b"".join(lines[:-1]))  # as if the last group had been lost
        message = "hour 2026-11-03T00:00:00Z: CBF cost/cost sums to"
    else:
        summary = json.loads((stage / "extract.json").read_text())
        summary["hours"]["2026-11-02T00:00:00Z"]["spend"] = "5.0000000000001"
        (stage / "extract.json").write_text(json.dumps(summary))
        message = "hour 2026-11-02T00:00:00Z: CBF cost/cost sums to 6.5 but SUM(spend::numeric) of its source rows is 5.0000000000001"
    with pytest.raises(AirflowFailException, match="does not reconcile") as info:
        CBFTransformOperator(task_id="t", window_start=DAYS[0], window_end=DAYS[1], options=options).execute(
            {}
        )
    assert message in str(info.value)
    assert not (stage / "cbf.jsonl").exists()


@pytest.mark.parametrize(
    "edit", ["tokens in cbf.jsonl", "tokens in transform.json", "another provider version", "no cbf.jsonl"]
)
def test_rows_built_by_the_extract_are_taken_only_as_they_were_built(db, edit, monkeypatch):
    """A cbf.jsonl or transform.json changed since the extract built them, or a build of another provider version,
    is not taken: the transform builds the rows again, and they are the extract's own."""
    import cloudzero_provider.pipeline.transform as transform_module

    seed_rollup_days(db)
    kw = {"window_start": DAYS[0], "window_end": DAYS[1], "options": ExportOptions(dimensions=["team_id"])}
    stage = _stage_of(LiteLLMSpendExtractOperator(task_id="e", source="daily_team", **kw).execute({}))
    built = (stage / "cbf.jsonl").read_bytes()
    record = json.loads((stage / "transform.json").read_text())
    expected = {
        k: v for k, v in json.loads((stage / "transform.json").read_text()).items() if k != "built_from"
    }
    if edit == "tokens in cbf.jsonl":  # the upload checks rows and cost per hour, not tokens
        (stage / "cbf.jsonl").write_bytes(built.replace(b'"usage/amount":"', b'"usage/amount":"1', 1))
    elif edit == "tokens in transform.json":
        record["hours"]["2026-11-01T00:00:00Z"]["tokens"] += 1
        (stage / "transform.json").write_text(json.dumps(record))
    elif edit == "another provider version":
        monkeypatch.setattr(transform_module, "__version__", "0.0.0-other")
    else:
        (stage / "cbf.jsonl").unlink()
    transformed = CBFTransformOperator(task_id="t", **kw).execute({})
    assert "built_from" not in json.loads((stage / "transform.json").read_text())  # built by the transform
    assert json.loads((stage / "transform.json").read_text()) == expected
    assert (stage / "cbf.jsonl").read_bytes() == built
    assert transformed["tokens"] == sum(f["tokens"] for f in expected["hours"].values()) == 450


def test_a_row_that_cannot_be_cbf_leaves_nothing_built_and_the_transform_names_it(db, monkeypatch):
    import cloudzero_provider.cbf as cbf_module
    import cloudzero_provider.cbf_rules as rules

    seed_rollup_days(db)
    monkeypatch.setattr(rules, "MAX_NUMBER_CHARS", 2)  # no cost here is one digit
    monkeypatch.setattr(cbf_module, "MAX_NUMBER_CHARS", 2)
    kw = {"window_start": DAYS[0], "window_end": DAYS[1], "options": ExportOptions(dimensions=["team_id"])}
    extracted = LiteLLMSpendExtractOperator(task_id="e", source="daily_team", **kw).execute({})
    stage = _stage_of(extracted)
    assert extracted["rows"] == 15
    assert not (stage / "cbf.jsonl").exists() and not (stage / "transform.json").exists()
    with pytest.raises(AirflowFailException) as info:
        CBFTransformOperator(task_id="t", **kw).execute({})
    assert str(info.value) == (
        "Window [2026-11-01T00:00Z, 2026-11-04T00:00Z): aggregated row 0 (hour '2026-11-01T00:00:00Z'): column "
        "'cost/cost': '0.7' is not a plain non-negative decimal"
    )


@pytest.mark.parametrize("cap", ["max_rows_per_hour", "max_values_per_hour"])
def test_a_transform_with_other_caps_builds_its_own_rows(db, cap):
    seed_rollup_days(db)
    with psycopg2.connect(db) as conn, conn.cursor() as cur:  # the tag stream: a caller-chosen value per team
        cur.execute(
            """INSERT INTO "LiteLLM_DailyTagSpend" (id, tag, date, api_key, model, custom_llm_provider,
                   prompt_tokens, completion_tokens, spend, api_requests, successful_requests, failed_requests,
                   updated_at)
               SELECT id, 'job:' || team_id, date, api_key, model, custom_llm_provider, prompt_tokens,
                      completion_tokens, spend, api_requests, successful_requests, failed_requests, updated_at
               FROM "LiteLLM_DailyTeamSpend"
            """
        )
    conn.close()
    kw = {"window_start": DAYS[0], "window_end": DAYS[1]}
    extract = LiteLLMSpendExtractOperator(task_id="e", source="daily_tag", options=ExportOptions(dimensions=["tag:job"]),
                                          **kw).execute({})  # fmt: skip
    assert json.loads((_stage_of(extract) / "transform.json").read_text())["built_from"]
    transformed = CBFTransformOperator(task_id="t", options=ExportOptions(dimensions=["tag:job"], **{cap: 2}),
                                       **kw).execute({})  # fmt: skip
    assert transformed[cap] == 2
    folded = transformed["folded_values"] + transformed["groups_folded_by_row_cap"]
    assert folded == 3 * (5 - 1 if cap == "max_rows_per_hour" else 5 - 2)
    assert "built_from" not in json.loads((_stage_of(transformed) / "transform.json").read_text())
