"""The daily-rollup DAG for proxies without spend logs, and one owner per day and stream (both schema ages)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from cloudzero_provider.testing.fixtures import CONNECTION_ID
from cloudzero_provider.testing.runs import clear_and_resume, task_instances, xcom
from cloudzero_provider.testing.seed import (
    insert_spend_logs,
    roll_up_daily,
    seed_synthetic,
    spend_by_day,
    spend_by_hour,
    spend_log,
)

DAY1 = datetime(2026, 11, 1, tzinfo=timezone.utc)
DAY2 = DAY1 + timedelta(days=1)
HOURS = [DAY1 + timedelta(hours=h) for h in (10, 11, 12)]
DAG_ID = "litellm_cloudzero_daily_rollup"
TWO_DAYS = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-03T00:00:00Z"}


def seed(db: str, schema_age: str) -> None:
    for i, hour in enumerate([*HOURS, DAY2 + timedelta(hours=5)]):
        seed_synthetic(db, hour, 120 + 7 * i, id_prefix=f"d{i}", with_organization=schema_age != "2025-05")
    insert_spend_logs(db, [spend_log("tiny", HOURS[0] + timedelta(minutes=3), 1e-12, team_id="t-tiny")])


def run_daily(**conf):
    from cloudzero_provider.ready_dags import build_daily_rollup_dag

    return build_daily_rollup_dag().test(run_conf=conf)


@contextmanager
def tag_stream(monkeypatch) -> Iterator[Any]:
    """A second CloudZero double, its own AnyCost connection ``tags-conn``, as the daily DAG's tag stream."""
    from cloudzero_provider.testing.double import CloudZeroDouble
    from cloudzero_provider.testing.fixtures import API_KEY
    from cloudzero_provider.testing.server import CloudZeroDoubleServer

    with CloudZeroDoubleServer(CloudZeroDouble(API_KEY, connections={"tags-conn"})) as tags:
        conn = {"conn_type": "cloudzero", "host": tags.url, "password": API_KEY,
                "extra": {"connection_id": "tags-conn", "max_attempts": 2}}  # fmt: skip
        monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_TAGS", json.dumps(conn))
        monkeypatch.setenv("CLOUDZERO_DAILY_TAG_CONN_ID", "cloudzero_tags")
        yield tags


def run_scheduled_daily(day: datetime):
    """The scheduled run that exports ``day`` (its data interval ends the next midnight)."""
    from cloudzero_provider.ready_dags import build_daily_rollup_dag

    return build_daily_rollup_dag().test(logical_date=day + timedelta(days=1))


def run_hourly(hour: datetime):
    from cloudzero_provider.ready_dags import build_hourly_dag

    return build_hourly_dag().test(logical_date=hour + timedelta(hours=1))


def test_days_land_at_midnight_exactly_and_the_hourly_export_leaves_them_alone(env, schema_age):
    seed(env["db"], schema_age)
    roll_up_daily(env["db"], delete_spend_logs=True)  # spend logs disabled: only the rollups remain
    expected = spend_by_day(env["db"])
    assert set(expected) == {"2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"}

    run = run_daily(**TWO_DAYS)
    assert run.state == "success"
    double = env["double"].double
    assert double.cost_by_hour(CONNECTION_ID) == expected
    labels = {ti[2] for (task, _), ti in task_instances("litellm_cloudzero_daily_rollup", run.run_id).items()
              if task == "day.upload"}  # fmt: skip
    assert labels == {"2026-11-01T00Z--2026-11-03T00Z"}, "a manual run's consecutive days are one chunk"
    for day in ("2026-11-01", "2026-11-02"):  # still a record per day
        record = json.loads((env["staging"] / "manifests" / f"{day}T00Z.json").read_text())
        assert Decimal(record["cost"]) == expected[f"{day}T00:00:00Z"]
    manifest = json.loads((env["staging"] / "manifests" / "2026-11-01T00Z.json").read_text())
    assert (
        manifest["origin"] == "daily_team" and Decimal(manifest["cost"]) == expected["2026-11-01T00:00:00Z"]
    )
    snapshot, sent = double.snapshot(CONNECTION_ID), len(double.requests)

    # the hourly export finds no spend logs and says why, sends nothing
    hourly = run_hourly(HOURS[0])
    assert hourly.state == "success"
    (extracted,) = xcom("litellm_cloudzero_hourly", hourly.run_id, "extract").values()
    assert "spend logs look disabled or purged for 2026-11-01" in extracted["hint"]
    assert "use litellm_cloudzero_daily_rollup" in extracted["hint"]
    # a stray spend-log row in hour 00 of a daily-owned day is not sent: it would erase the day's rollup
    insert_spend_logs(env["db"], [spend_log("stray", DAY1 + timedelta(minutes=30), 0.75, team_id="t1")])
    stray = run_hourly(DAY1)
    assert stray.state == "success"
    (uploaded,) = xcom("litellm_cloudzero_hourly", stray.run_id, "upload").values()
    assert uploaded["skipped_owned"] == ["2026-11-01T00Z"] and uploaded["hours"] == []
    assert double.snapshot(CONNECTION_ID) == snapshot and len(double.requests) == sent

    again = run_daily(**TWO_DAYS)
    assert again.state == "success"
    assert double.snapshot(CONNECTION_ID) == snapshot and len(double.requests) == sent, (
        "a second run sent data"
    )


def test_one_owner_per_day_and_an_explicit_switch_each_way(env, schema_age, capfd, caplog):
    from cloudzero_provider.ready_dags import build_range_dag

    seed(env["db"], schema_age)
    roll_up_daily(env["db"])  # spend logs kept: both sources hold the day
    for hour in HOURS:
        assert run_hourly(hour).state == "success"
    double = env["double"].double
    hourly_state = double.snapshot(CONNECTION_ID)
    day1 = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}

    refused = run_daily(**day1)
    assert refused.state == "failed"
    out = capfd.readouterr()
    text = out.out + out.err
    assert "2026-11-01 of this stream already holds hourly data exported from spend logs" in text
    assert "trigger litellm_cloudzero_daily_rollup for that day with take_over=true" in text
    assert double.snapshot(CONNECTION_ID) == hourly_state

    switched = run_daily(**day1, take_over=True)
    assert switched.state == "success"
    held = double.cost_by_hour(CONNECTION_ID)
    assert held["2026-11-01T00:00:00Z"] == spend_by_day(env["db"])["2026-11-01T00:00:00Z"]
    assert all(held[h] == 0 for h in ("2026-11-01T10:00:00Z", "2026-11-01T11:00:00Z", "2026-11-01T12:00:00Z"))

    # the hourly export now leaves the day alone, with a warning naming the day and the owner
    daily_state = double.snapshot(CONNECTION_ID)
    caplog.clear()
    assert run_hourly(HOURS[1]).state == "success"
    assert "2026-11-01 of this stream is owned by the daily-rollup export (daily_team)" in caplog.text
    assert double.snapshot(CONNECTION_ID) == daily_state

    back = build_range_dag().test(run_conf={**day1, "take_over": True})
    assert back.state == "success"
    held = double.cost_by_hour(CONNECTION_ID)
    source = spend_by_hour(env["db"])
    assert held["2026-11-01T00:00:00Z"] == 0, "the daily rows at 00:00 were cleared"
    assert {h: held[h] for h in source if h.startswith("2026-11-01")} == {
        h: v for h, v in source.items() if h.startswith("2026-11-01")
    }

    # the next scheduled daily run looks again only at days it owns: the day taken back is left alone
    hourly_again = double.snapshot(CONNECTION_ID)
    nxt = run_scheduled_daily(DAY2)
    assert nxt.state == "success"
    (planned,) = xcom(DAG_ID, nxt.run_id, "plan_days").values()
    assert [d["window_start"] for d in planned] == ["2026-11-02T00:00:00Z"]
    assert {
        r for r in double.snapshot(CONNECTION_ID) if dict(r)["time/usage_start"].startswith("2026-11-01")
    } == {r for r in hourly_again if dict(r)["time/usage_start"].startswith("2026-11-01")}


def test_request_tags_go_to_their_own_stream_once_per_request(env, schema_age, monkeypatch):
    """The tag table counts a request once per tag, so tags get their own stream and one prefix: each request's
    taskName tag is counted once, and the team stream is untouched by it."""
    import psycopg2

    seed(env["db"], schema_age)
    roll_up_daily(env["db"], delete_spend_logs=True)
    with tag_stream(monkeypatch) as tags:
        run = run_daily(start="2026-11-01T00:00:00Z", end="2026-11-02T00:00:00Z")
        assert run.state == "success"
        with psycopg2.connect(env["db"]) as db, db.cursor() as cur:
            cur.execute("""SELECT SUM(spend::numeric) FROM "LiteLLM_DailyTagSpend"
                           WHERE date = '2026-11-01' AND tag LIKE 'taskName:%'""")  # fmt: skip
            (tagged,) = cur.fetchone()
        assert tags.double.cost_by_hour("tags-conn") == {"2026-11-01T00:00:00Z": tagged}
        values = {r["resource/tag:tag.taskName"] for r in tags.double.rows("tags-conn")}
        assert values == {f"task-{i}" for i in range(12)}
    assert env["double"].double.cost_by_hour(CONNECTION_ID) == {
        "2026-11-01T00:00:00Z": spend_by_day(env["db"])["2026-11-01T00:00:00Z"]
    }


def test_the_tag_stream_is_exact_per_day_and_a_rerun_sends_only_what_changed(env, schema_age, monkeypatch):
    """Two days of the tag stream beside the team stream: each day exact against the tag table's own sum for the
    prefix (the other tags of the same requests left out), a second run sends nothing to either stream, and a late
    change to one tag row re-sends that day of the tag stream only, to its new exact total."""
    import psycopg2

    def tagged_by_day() -> dict[str, Decimal]:
        with psycopg2.connect(env["db"]) as db, db.cursor() as cur:
            cur.execute("""SELECT date, SUM(spend::numeric) FROM "LiteLLM_DailyTagSpend"
                           WHERE tag LIKE 'taskName:%' GROUP BY date ORDER BY date""")  # fmt: skip
            return {f"{day}T00:00:00Z": total for day, total in cur.fetchall()}

    seed(env["db"], schema_age)
    roll_up_daily(env["db"], delete_spend_logs=True)
    with tag_stream(monkeypatch) as tags:
        team, tag = env["double"].double, tags.double

        first = run_daily(**TWO_DAYS)
        assert first.state == "success"
        expected = tagged_by_day()
        assert set(expected) == {"2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"}
        assert tag.cost_by_hour("tags-conn") == expected
        assert team.cost_by_hour(CONNECTION_ID) == spend_by_day(env["db"])
        with psycopg2.connect(env["db"]) as db, db.cursor() as cur:
            cur.execute(
                """SELECT SUM(spend::numeric) FROM "LiteLLM_DailyTagSpend" WHERE tag LIKE 'jobID:%'"""
            )
            (other_tags,) = cur.fetchone()
        assert other_tags > 0, "the seed's other tags must exist for the prefix to leave them out"
        team_state, tag_state = team.snapshot(CONNECTION_ID), tag.snapshot("tags-conn")
        team_sent, tag_sent = len(team.requests), len(tag.requests)

        again = run_daily(**TWO_DAYS)
        assert again.state == "success"
        assert (team.snapshot(CONNECTION_ID), len(team.requests)) == (team_state, team_sent)
        assert (tag.snapshot("tags-conn"), len(tag.requests)) == (tag_state, tag_sent), "a re-run sent tags"

        with psycopg2.connect(env["db"]) as db, db.cursor() as cur:
            cur.execute("""UPDATE "LiteLLM_DailyTagSpend" SET spend = spend + 1.25
                           WHERE id = (SELECT min(id) FROM "LiteLLM_DailyTagSpend"
                                       WHERE date = '2026-11-02' AND tag LIKE 'taskName:%')""")  # fmt: skip
            assert cur.rowcount == 1
        late = run_daily(**TWO_DAYS)
        assert late.state == "success"
        changed = tagged_by_day()
        assert changed["2026-11-02T00:00:00Z"] == expected["2026-11-02T00:00:00Z"] + Decimal("1.25")
        assert tag.cost_by_hour("tags-conn") == changed
        assert (team.snapshot(CONNECTION_ID), len(team.requests)) == (team_state, team_sent)
        tag_uploads = xcom(DAG_ID, late.run_id, "tag_day.upload").values()
        assert sorted(h for u in tag_uploads for h in u["hours"]) == ["2026-11-02T00Z"]
        assert sorted(h for u in tag_uploads for h in u["unchanged"]) == ["2026-11-01T00Z"]
        team_uploads = xcom(DAG_ID, late.run_id, "day.upload").values()
        assert [h for u in team_uploads for h in u["hours"]] == []


def test_a_scheduled_run_reads_the_day_before_again_and_sends_it_only_when_its_rows_changed(env, schema_age):
    """Rows land after a day's run (LiteLLM's batched writes, requests that started before midnight): the next
    scheduled run reads the day before again, and sends it only when its rows changed, to its new exact total."""
    import psycopg2

    seed(env["db"], schema_age)
    roll_up_daily(env["db"], delete_spend_logs=True)
    double = env["double"].double
    assert run_scheduled_daily(DAY1).state == "success"
    assert double.cost_by_hour(CONNECTION_ID) == {
        "2026-11-01T00:00:00Z": spend_by_day(env["db"])["2026-11-01T00:00:00Z"]
    }
    with psycopg2.connect(env["db"]) as db, db.cursor() as cur:  # a late batch for day 1
        cur.execute("""UPDATE "LiteLLM_DailyTeamSpend" SET spend = spend + 0.5, api_requests = api_requests + 1
                       WHERE id = (SELECT min(id) FROM "LiteLLM_DailyTeamSpend" WHERE date = '2026-11-01')""")
        assert cur.rowcount == 1

    second = run_scheduled_daily(DAY2)
    assert second.state == "success"
    (planned,) = xcom(DAG_ID, second.run_id, "plan_days").values()
    assert [d["window_start"] for d in planned] == ["2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"]
    assert double.cost_by_hour(CONNECTION_ID) == spend_by_day(env["db"])
    uploads = xcom(DAG_ID, second.run_id, "day.upload").values()
    assert sorted(h for u in uploads for h in u["hours"]) == ["2026-11-01T00Z", "2026-11-02T00Z"]

    sent = len(double.requests)
    third = run_scheduled_daily(DAY2 + timedelta(days=1))
    assert third.state == "success"
    (planned,) = xcom(DAG_ID, third.run_id, "plan_days").values()
    assert [d["window_start"] for d in planned] == ["2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"]
    uploads = xcom(DAG_ID, third.run_id, "day.upload").values()
    assert sorted(h for u in uploads for h in u["unchanged"]) == ["2026-11-02T00Z"]
    assert [h for u in uploads for h in u["hours"]] == [], "an unchanged day (or an empty one) was sent"
    assert double.cost_by_hour(CONNECTION_ID) == spend_by_day(env["db"]) and len(double.requests) == sent


def test_a_tag_stream_naming_the_exports_own_anycost_connection_fails_alone(
    env, schema_age, monkeypatch, capfd
):
    """Two Airflow connections, one AnyCost connection: the tag stream is refused naming both, sends nothing, and
    the team stream is exported all the same; a dry run checks nothing it would not send."""
    seed(env["db"], schema_age)
    roll_up_daily(env["db"], delete_spend_logs=True)
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_TAGS", env["AIRFLOW_CONN_CLOUDZERO_DEFAULT"])
    monkeypatch.setenv("CLOUDZERO_DAILY_TAG_CONN_ID", "cloudzero_tags")
    day1 = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}

    dry = run_daily(**day1, dry_run=True)
    assert dry.state == "success"
    assert env["double"].double.requests == []

    run = run_daily(**day1)
    assert run.state == "failed"
    states = {task: ti[0] for (task, _), ti in task_instances(DAG_ID, run.run_id).items()}
    assert states["plan_tag_days"] == "failed" and states["tag_day.upload"] == "upstream_failed"
    assert states["day.upload"] == "success"
    out = capfd.readouterr()
    assert (
        "'cloudzero_default' (CLOUDZERO_CONN_ID) and 'cloudzero_tags' (CLOUDZERO_DAILY_TAG_CONN_ID) name the same"
        in (out.out + out.err)
    )
    assert env["double"].double.cost_by_hour(CONNECTION_ID) == {
        "2026-11-01T00:00:00Z": spend_by_day(env["db"])["2026-11-01T00:00:00Z"]
    }


def test_a_day_empty_at_its_run_is_read_again_by_the_next_but_never_one_before_the_start(
    env, schema_age, monkeypatch
):
    """All of a day's rollup rows land after its run (a quiet proxy, a long request): the day had no record, and the
    next scheduled run reads it again and sends it. The look-back never reaches before CLOUDZERO_EXPORT_START."""
    seed(env["db"], schema_age)
    double = env["double"].double
    empty = run_scheduled_daily(DAY1)  # the rollups hold nothing yet
    assert empty.state == "success" and double.cost_by_hour(CONNECTION_ID) == {}
    roll_up_daily(env["db"], delete_spend_logs=True)
    nxt = run_scheduled_daily(DAY2)
    assert nxt.state == "success"
    (planned,) = xcom(DAG_ID, nxt.run_id, "plan_days").values()
    assert [d["window_start"] for d in planned] == ["2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"]
    assert double.cost_by_hour(CONNECTION_ID) == spend_by_day(env["db"])

    monkeypatch.setenv("CLOUDZERO_EXPORT_START", "2026-11-02T00:00:00Z")
    first = run_scheduled_daily(DAY2)
    (planned,) = xcom(DAG_ID, first.run_id, "plan_days").values()
    assert [d["window_start"] for d in planned] == ["2026-11-02T00:00:00Z"], "a day before the start"


def test_an_import_runs_in_chunks_and_a_day_another_source_owns_fails_alone(env, schema_age, capfd):
    """A manual run maps its consecutive days as chunks; a day the hourly export holds in this stream is a chunk of
    its own, refused naming it, while the days around it are exported as when each day was its own chunk."""
    seed(env["db"], schema_age)
    roll_up_daily(env["db"])  # spend logs kept: day 2's hour 05 goes out hourly first
    hour = DAY2 + timedelta(hours=5)
    assert run_hourly(hour).state == "success"
    double = env["double"].double
    hourly = double.cost_by_hour(CONNECTION_ID)
    assert set(hourly) == {"2026-11-02T05:00:00Z"}

    run = run_daily(start="2026-11-01T00:00:00Z", end="2026-11-05T00:00:00Z")
    assert run.state == "failed"
    (planned,) = xcom(DAG_ID, run.run_id, "plan_days").values()
    assert [(d["window_start"][5:10], d["window_end"][5:10]) for d in planned] == [
        ("11-01", "11-02"), ("11-02", "11-03"), ("11-03", "11-05")
    ]  # fmt: skip
    out = capfd.readouterr()
    assert "2026-11-02 of this stream already holds hourly data exported from spend logs" in out.out + out.err
    states = {label: ti[0] for (task, _), ti in task_instances(DAG_ID, run.run_id).items()
              if task == "day.upload" for label in [ti[2]]}  # fmt: skip
    assert states == {
        "2026-11-01": "success",
        "2026-11-02": "failed",
        "2026-11-03T00Z--2026-11-05T00Z": "success",
    }
    assert double.cost_by_hour(CONNECTION_ID) == {
        "2026-11-01T00:00:00Z": spend_by_day(env["db"])["2026-11-01T00:00:00Z"],
        **hourly,
    }, "day 1 exported, day 2 left to the hourly export, the empty days sent nothing"


def test_a_day_with_invalid_rows_fails_alone_in_its_chunk_and_a_clear_sends_it_once_fixed(
    env, schema_age, capfd
):
    """Two days in one chunk, day 1 holding a NaN spend: day 2 is exported exactly, the chunk's upload fails naming
    day 1 and why; after the row is fixed, a clear of the upload reads day 1 again -- as its whole day -- and sends
    it alone."""
    import psycopg2

    seed(env["db"], schema_age)
    roll_up_daily(env["db"], delete_spend_logs=True)
    with psycopg2.connect(env["db"]) as db, db.cursor() as cur:
        cur.execute("""UPDATE "LiteLLM_DailyTeamSpend" SET spend = 'NaN'
                       WHERE id = (SELECT min(id) FROM "LiteLLM_DailyTeamSpend" WHERE date = '2026-11-01')
                       RETURNING id""")
        (poisoned,) = cur.fetchone()
    from cloudzero_provider.ready_dags import build_daily_rollup_dag

    dag = build_daily_rollup_dag()
    run = dag.test(run_conf=TWO_DAYS)
    assert run.state == "failed"
    tis = task_instances(DAG_ID, run.run_id)
    assert [tis[(t, 0)][:2] for t in ("day.extract", "day.transform", "day.upload")] == [
        ("success", 1), ("success", 1), ("failed", 1)
    ]  # fmt: skip
    out = capfd.readouterr()
    failure = (out.out + out.err).split("hour(s) failed and were not sent: ", 1)[-1]
    assert failure.startswith("2026-11-01T00Z: ") and "hour 2026-11-01T00:00:00Z:" in failure
    assert "spend is NaN" in failure.split(". Fix the rows", 1)[0]
    double = env["double"].double
    expected = spend_by_day(env["db"])
    assert double.cost_by_hour(CONNECTION_ID) == {"2026-11-02T00:00:00Z": expected["2026-11-02T00:00:00Z"]}
    manifest = json.loads((env["staging"] / "manifests" / "2026-11-01T00Z.json").read_text())
    assert manifest["status"] == "failed" and "spend is NaN" in manifest["reason"]

    with psycopg2.connect(env["db"]) as db, db.cursor() as cur:
        cur.execute("""UPDATE "LiteLLM_DailyTeamSpend" SET spend = 0.125 WHERE id = %s""", (poisoned,))
    before = len(double.requests)
    assert clear_and_resume(dag, run.run_id, "day.upload") == "success"
    assert task_instances(DAG_ID, run.run_id)[("day.upload", 0)][:2] == ("success", 2)
    result = xcom(DAG_ID, run.run_id, "day.upload")[0]
    assert result["failed_hours"] == {} and result["retried"] == ["2026-11-01T00Z"]
    assert [r["hours"] for r in double.requests[before:]] == [["2026-11-01T00:00:00Z"]]
    assert double.cost_by_hour(CONNECTION_ID) == spend_by_day(env["db"])
