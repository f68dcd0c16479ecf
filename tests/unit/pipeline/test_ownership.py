"""One owner per UTC day and stream, applied to the hours about to be sent."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.drops import serialize_row
from cloudzero_provider.manifests import Manifest, ManifestStore, SourceTotals
from cloudzero_provider.pipeline.ownership import apply_ownership, clearing_row
from cloudzero_provider.staging import staging_root
from cloudzero_provider.windows import Window

DAY = datetime(2026, 11, 1, tzinfo=timezone.utc)
WINDOW = Window(DAY, DAY + timedelta(days=1))


@pytest.fixture
def store(tmp_path) -> ManifestStore:
    return ManifestStore(staging_root(str(tmp_path)))


def sent(store, hour, origin="spend_logs"):
    store.write_exported(Manifest(hour, cost="1", drop_ids=["d"], origin=origin, sent_at=hour,
                                  source=SourceTotals(1, "1")), late_correction=False)  # fmt: skip


def test_hourly_rows_skip_a_day_the_daily_export_owns(store):
    sent(store, DAY, "daily_team")
    present = {DAY + timedelta(hours=h) for h in (0, 5)}
    out = apply_ownership(present, WINDOW, store, origin="spend_logs", take_over=False)
    assert sorted(out.owned_elsewhere) == [DAY, DAY + timedelta(hours=5)] and not out.cleared


def test_taking_a_day_back_to_hourly_clears_the_daily_row_at_midnight(store):
    sent(store, DAY, "daily_team")
    out = apply_ownership({DAY + timedelta(hours=5)}, WINDOW, store, origin="spend_logs", take_over=True)
    assert out.cleared == {DAY} and not out.owned_elsewhere
    assert json.loads(serialize_row(clearing_row(DAY)))["cost/cost"] == "0"


def test_a_daily_export_of_an_hourly_day_is_refused_or_clears_the_hours_it_takes_over(store):
    sent(store, DAY + timedelta(hours=7))
    with pytest.raises(AirflowFailException, match="already holds hourly data exported from spend logs"):
        apply_ownership({DAY}, WINDOW, store, origin="daily_team", take_over=False)
    out = apply_ownership({DAY}, WINDOW, store, origin="daily_team", take_over=True)
    assert out.cleared == {DAY + timedelta(hours=7)}, (
        "the hourly hours go to 0; the daily rows themselves are sent"
    )


def test_the_two_rollup_tables_never_share_a_day(store):
    sent(store, DAY, "daily_user")
    with pytest.raises(AirflowFailException, match="owned by the daily_user export, not daily_team"):
        apply_ownership({DAY}, WINDOW, store, origin="daily_team", take_over=False)


def test_take_over_of_part_of_a_day_is_refused_before_anything_is_cleared(store):
    """The day's 00:00 holds its daily rows for the whole day: clearing it from a window of hours 12-23 would leave
    hours 00-11 sent by nobody."""
    sent(store, DAY, "daily_team")
    afternoon = Window(DAY + timedelta(hours=12), DAY + timedelta(days=1))
    with pytest.raises(AirflowFailException, match=r"take_over switches whole UTC days; .* Nothing was sent"):
        apply_ownership({DAY + timedelta(hours=13)}, afternoon, store, origin="spend_logs", take_over=True)
    out = apply_ownership({DAY + timedelta(hours=13)}, afternoon, store, origin="spend_logs", take_over=False)
    assert out.owned_elsewhere == [DAY + timedelta(hours=13)] and not out.cleared
