"""The daily-rollup DAG's plan: whole days that are over, a settle wait after them, caps a day's worth of the hourly
ones, and a tag stream that can never be the export's own."""

from __future__ import annotations

from datetime import datetime, timezone

import pendulum
import pytest
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.ready_dags.common import settled_at
from cloudzero_provider.ready_dags.daily_rollup import check_separate_streams, rollup_days
from cloudzero_provider.sensors.settle import SettledSensor
from cloudzero_provider.testing.fixtures import cloudzero_conn_json

TWO_DAYS = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-03T00:00:00Z"}
AFTER = datetime(2026, 11, 3, 0, 5, tzinfo=timezone.utc)


def test_days_that_are_over_are_planned_one_chunk_each():
    assert rollup_days(TWO_DAYS, None, None, now=AFTER) == [
        {"window_start": "2026-11-01T00:00:00Z", "window_end": "2026-11-02T00:00:00Z"},
        {"window_start": "2026-11-02T00:00:00Z", "window_end": "2026-11-03T00:00:00Z"},
    ]
    interval = (pendulum.datetime(2026, 11, 2), pendulum.datetime(2026, 11, 3))
    assert rollup_days({}, *interval, now=AFTER) == [
        {"window_start": "2026-11-02T00:00:00Z", "window_end": "2026-11-03T00:00:00Z"}
    ]


def test_a_day_not_over_is_refused_naming_it():
    with pytest.raises(AirflowFailException) as refused:
        rollup_days(TWO_DAYS, None, None, now=datetime(2026, 11, 2, 23, 59, tzinfo=timezone.utc))
    message = str(refused.value)
    assert (
        "[2026-11-01T00:00Z, 2026-11-03T00:00Z) has not ended yet (now 2026-11-02T23:59:00.000Z)" in message
    )
    assert "LiteLLM is still adding to its rollups" in message


def test_the_settle_wait_ends_its_minutes_after_the_last_day():
    assert settled_at("2026-11-03T00:00:00Z", 10) == "2026-11-03T00:10:00.000Z"
    assert settled_at(pendulum.datetime(2026, 11, 3), "0") == "2026-11-03T00:00:00.000Z"
    assert settled_at("2026-11-03T01:00:00+01:00", 1440) == "2026-11-04T00:00:00.000Z"


def _daily_dag(monkeypatch, **env):
    from cloudzero_provider.ready_dags import build_daily_rollup_dag

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return build_daily_rollup_dag()


def test_both_streams_wait_for_the_days_to_settle(monkeypatch):
    dag = _daily_dag(monkeypatch, CLOUDZERO_DAILY_TAG_CONN_ID="cloudzero_tags", CLOUDZERO_SETTLE_MINUTES="25")
    settle = dag.get_task("settle")
    assert isinstance(settle, SettledSensor) and settle.retries >= 1
    assert settle.upstream_task_ids == {"plan_days"}, "the tag stream's plan never holds the team stream up"
    assert {"day.extract", "tag_day.extract"} <= settle.downstream_task_ids
    assert dag.get_task("plan_tag_days").downstream_task_ids == {
        "tag_day.extract",
        "tag_day.transform",
        "tag_day.upload",
    }
    assert dag.params["settle_minutes"] == 25
    template = dag.get_template_env().from_string(settle.target_time)
    manual = {"end": "2026-11-03T00:00:00Z", "settle_minutes": 25}
    assert template.render(params=manual, data_interval_end=None) == "2026-11-03T00:25:00.000Z"
    scheduled = {"end": None, "settle_minutes": 0}
    rendered = template.render(params=scheduled, data_interval_end=pendulum.datetime(2026, 11, 2))
    assert rendered == "2026-11-02T00:00:00.000Z"


def test_a_day_keeps_a_days_worth_of_each_hourly_cap(monkeypatch):
    dag = _daily_dag(monkeypatch, CLOUDZERO_MAX_VALUES_PER_HOUR="700", CLOUDZERO_MAX_ROWS_PER_HOUR="300")
    options = dag.get_task("day.extract").options
    assert (options.max_values_per_hour, options.max_rows_per_hour) == (700 * 24, 300 * 24)
    unlimited = _daily_dag(monkeypatch, CLOUDZERO_MAX_VALUES_PER_HOUR="0").get_task("day.transform").options
    assert unlimited.value_cap is None


def test_the_tag_stream_on_the_exports_own_connection_is_refused_when_the_dag_is_built(monkeypatch):
    with pytest.raises(ValueError) as refused:
        _daily_dag(monkeypatch, CLOUDZERO_DAILY_TAG_CONN_ID="cloudzero_default")
    message = str(refused.value)
    assert "CLOUDZERO_DAILY_TAG_CONN_ID is 'cloudzero_default', the export's own connection" in message
    assert "a second cloudzero connection" in message


def test_a_tag_prefix_no_tag_can_carry_is_refused_when_the_dag_is_built(monkeypatch):
    with pytest.raises(
        ValueError, match=r"CLOUDZERO_DAILY_TAG_PREFIX: request-tag prefix 'task name' must be"
    ):
        _daily_dag(
            monkeypatch, CLOUDZERO_DAILY_TAG_CONN_ID="cloudzero_tags", CLOUDZERO_DAILY_TAG_PREFIX="task name"
        )


def test_two_connections_naming_one_anycost_stream_are_refused(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json("https://api.cloudzero.com"))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDZERO_TAGS", cloudzero_conn_json("https://api.cloudzero.com", key="k2")
    )
    with pytest.raises(AirflowFailException) as refused:
        check_separate_streams("cloudzero_default", "cloudzero_tags")
    message = str(refused.value)
    assert (
        "'cloudzero_default' (CLOUDZERO_CONN_ID) and 'cloudzero_tags' (CLOUDZERO_DAILY_TAG_CONN_ID)"
        in message
    )
    assert "name the same AnyCost connection" in message and "Nothing was exported" in message
    assert "k2" not in message

    other = cloudzero_conn_json("https://api.cloudzero.com", key="k2", connection_id="tags-stream")
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_TAGS", other)
    assert check_separate_streams("cloudzero_default", "cloudzero_tags") is None


def _days(first: int, last: int) -> list[dict[str, str]]:
    return [
        {"window_start": f"2026-11-{d:02d}T00:00:00Z", "window_end": f"2026-11-{d + 1:02d}T00:00:00Z"}
        for d in range(first, last + 1)
    ]


def _windows(chunks: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(c["window_start"][5:10], c["window_end"][5:10]) for c in chunks]


def test_a_manual_runs_consecutive_days_are_chunks_of_at_most_chunk_days():
    from cloudzero_provider.ready_dags.daily_rollup import chunk_days

    days = _days(1, 16)
    assert _windows(chunk_days(days, {}, "daily_team", max_days=7)) == [
        ("11-01", "11-08"), ("11-08", "11-15"), ("11-15", "11-17")
    ]  # fmt: skip
    assert chunk_days(days, {}, "daily_team", max_days=1) == days, "chunk_days 1: a chunk per day, as before"
    assert _windows(chunk_days(days, {}, "daily_team", max_days=31)) == [("11-01", "11-17")]
    # days the stream's own source holds join like empty ones; every day stays in exactly one chunk
    owned = {datetime(2026, 11, d, tzinfo=timezone.utc): "daily_team" for d in (2, 3)}
    assert _windows(chunk_days(days, owned, "daily_team", max_days=16)) == [("11-01", "11-17")]
    with pytest.raises(ValueError, match="max_days must be at least 1, got 0"):
        chunk_days(days, {}, "daily_team", max_days=0)


def test_a_day_another_source_owns_is_a_chunk_of_its_own_unless_taken_over():
    from cloudzero_provider.ready_dags.daily_rollup import chunk_days

    days = _days(1, 9)
    owners = {
        datetime(2026, 11, 4, tzinfo=timezone.utc): "spend_logs",
        datetime(2026, 11, 5, tzinfo=timezone.utc): "daily_user",
    }
    # its refusal fails that day alone: the days around it are sent, as when every day was a chunk
    assert _windows(chunk_days(days, owners, "daily_team", max_days=7)) == [
        ("11-01", "11-04"), ("11-04", "11-05"), ("11-05", "11-06"), ("11-06", "11-10")
    ]  # fmt: skip
    assert _windows(chunk_days(days, owners, "daily_team", max_days=7, take_over=True)) == [
        ("11-01", "11-08"), ("11-08", "11-10")
    ]  # fmt: skip
    # a gap (days planned apart) is never bridged
    gapped = _days(1, 2) + _days(5, 6)
    assert _windows(chunk_days(gapped, {}, "daily_team", max_days=7)) == [
        ("11-01", "11-03"),
        ("11-05", "11-07"),
    ]
