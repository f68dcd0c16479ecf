"""The settle sensor: no deferral for a moment already past (the catchup race), deferral for one ahead."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from airflow.sdk.exceptions import TaskDeferred

from cloudzero_provider.sensors.settle import SettledSensor


def test_a_past_target_succeeds_at_once_without_deferring():
    past = (datetime.now(timezone.utc) - timedelta(days=20)).isoformat()
    assert SettledSensor(task_id="settle", target_time=past).execute({}) is None


def test_a_future_target_defers_and_ends_in_the_triggerer():
    future = datetime.now(timezone.utc) + timedelta(minutes=10)
    with pytest.raises(TaskDeferred) as deferred:
        SettledSensor(task_id="settle", target_time=future.isoformat()).execute({})
    trigger = deferred.value.trigger
    assert trigger.moment == future
    assert trigger.end_from_trigger is True, "no second worker process after the wait"


def test_the_hourly_dag_settles_with_retries():
    from cloudzero_provider.ready_dags import build_hourly_dag

    settle = build_hourly_dag().get_task("settle")
    assert isinstance(settle, SettledSensor) and settle.retries >= 1
