"""The transform and the integrity check of staged CBF rows, on stages written by hand (no database)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from airflow.sdk.exceptions import AirflowFailException

from cloudzero_provider.pipeline.extract import read_extract
from cloudzero_provider.pipeline.transform import (
    StagedOrderError,
    cbf_hours,
    check_staged_cbf,
    read_transform,
    transform_window,
)
from cloudzero_provider.staging import WindowStage, staging_root
from cloudzero_provider.windows import Window

H10 = datetime(2026, 11, 1, 10, tzinfo=timezone.utc)
WINDOW = Window(H10, H10.replace(hour=12))


def staged(tmp_path, rows: list[dict], totals: dict[str, str], dims=("end_user", "model")) -> WindowStage:
    """A stage as the extract leaves it: aggregated rows in hour order and PostgreSQL's own hour totals."""
    stage = WindowStage(staging_root(str(tmp_path)), WINDOW)
    stage.write_jsonl("extract.jsonl", rows)
    stage.write_json("extract.json", {
        "extracted_at": "2026-11-01T12:10:00.000Z", "source": "spend_logs", "dimensions": list(dims),
        "rows": len(rows), "hours": {h: {"requests": 1, "spend": s} for h, s in totals.items()}, "failed_hours": {},
    })  # fmt: skip
    return stage


def row(hour: str, user: str, spend: str, model: str = "m") -> dict:
    return {"hour": hour, "dims": {"end_user": user, "model": model}, "spend": spend, "requests": 1,
            "total_tokens": 10, "prompt_tokens": 5, "completion_tokens": 5}  # fmt: skip


def test_hour_by_hour_exact_with_caller_values_folded_per_hour(tmp_path):
    rows = [row("2026-11-01T10:00:00Z", f"u{i}", f"0.{i + 1}") for i in range(5)]
    rows += [row("2026-11-01T11:00:00Z", "u0", "2"), row("2026-11-01T11:00:00Z", "zero", "0")]
    stage = staged(tmp_path, rows, {"2026-11-01T10:00:00Z": "1.5", "2026-11-01T11:00:00Z": "2"})
    result = transform_window(WINDOW, stage, max_values_per_hour=2)
    assert (result["rows"], result["cost"], result["folded_values"], result["zero_cost_rows"]) == (
        4,
        "3.5",
        3,
        1,
    )
    recorded = read_transform(stage)
    assert (
        recorded.hours[H10].rows == 3
        and recorded.hours[H10].cost == "1.5"
        and recorded.max_values_per_hour == 2
    )
    users = {
        r["resource/tag:end_user"]
        for r in stage.read_jsonl("cbf.jsonl")
        if r["time/usage_start"].startswith("2026-11-01T10")
    }
    assert users == {"u4", "u3", "(other)"}, "the two with most cost kept, the rest folded"
    assert read_extract(stage).extracted_at == datetime(2026, 11, 1, 12, 10, tzinfo=timezone.utc)


def test_an_hour_that_does_not_reconcile_fails_naming_it_and_leaves_nothing_to_send(tmp_path):
    stage = staged(tmp_path, [row("2026-11-01T10:00:00Z", "u", "1")], {"2026-11-01T10:00:00Z": "1.01"})
    with pytest.raises(
        AirflowFailException, match=r"hour 2026-11-01T10:00:00Z: CBF cost/cost sums to 1 but .* 1\.01"
    ):
        transform_window(WINDOW, stage)
    assert not stage.path("cbf.jsonl").exists()


def test_a_torn_cbf_file_is_rebuilt_once_with_the_transforms_own_cap(tmp_path):
    rows = [row("2026-11-01T10:00:00Z", f"u{i}", "1") for i in range(4)]
    stage = staged(tmp_path, rows, {"2026-11-01T10:00:00Z": "4"})
    transform_window(WINDOW, stage, max_values_per_hour=2)
    text = stage.path("cbf.jsonl").read_text()
    stage.path("cbf.jsonl").write_text(text[: len(text) // 2])
    held, recorded = check_staged_cbf(WINDOW, stage)
    assert held[H10].rows == recorded.hours[H10].rows == 3, (
        "rebuilt with the cap it was made with (2 + other)"
    )
    assert held[H10].cost == 4
    ((hour, rows),) = list(cbf_hours(stage))
    assert hour == H10 and sum(Decimal(json.loads(r)["cost/cost"]) for r in rows) == 4


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (('"cost/cost":"1"', '"cost/cost":"x"'), "a cost that is not a number"),
        (('"time/usage_start":"2026-11-01T10:00:00Z"', '"time/usage_start":1'), "an hour that is not a text"),
        (('"cost/cost":"1"', '"cost/cost":"1","x":"\\ud800"'), "a value that cannot be sent"),
    ],
)
def test_an_edited_cbf_file_is_rebuilt_whatever_its_lines_hold(tmp_path, edit, why):
    stage = staged(tmp_path, [row("2026-11-01T10:00:00Z", "u", "1")], {"2026-11-01T10:00:00Z": "1"})
    transform_window(WINDOW, stage)
    cbf = stage.path("cbf.jsonl")
    text = cbf.read_text()
    assert edit[0] in text
    cbf.write_text(text.replace(*edit))
    held, _ = check_staged_cbf(WINDOW, stage)
    assert (held[H10].rows, held[H10].cost) == (1, 1), why
    assert edit[1] not in cbf.read_text(), "rebuilt from extract.jsonl"


def test_an_hour_of_staged_rows_comes_whole_before_a_later_line_fails(tmp_path):
    """A line that cannot be sent fails where it is read: the hours before it come first, as they always did."""
    rows = [row("2026-11-01T10:00:00Z", "a", "1"), row("2026-11-01T11:00:00Z", "b", "2")]
    stage = staged(tmp_path, rows, {"2026-11-01T10:00:00Z": "1", "2026-11-01T11:00:00Z": "2"})
    transform_window(WINDOW, stage)
    lines = stage.path("cbf.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"cost/cost":"2"', '"cost/cost":"2","x":"\\ud800"')
    stage.path("cbf.jsonl").write_text("\n".join(lines) + "\n")
    read = cbf_hours(stage)
    assert next(read)[0] == H10
    with pytest.raises(UnicodeEncodeError):
        next(read)


def test_staged_rows_that_stay_wrong_are_never_sent(tmp_path):
    """cbf.jsonl edited after the transform, and the rebuild cannot reconcile either: nothing is sent."""
    stage = staged(tmp_path, [row("2026-11-01T10:00:00Z", "u", "1")], {"2026-11-01T10:00:00Z": "1"})
    transform_window(WINDOW, stage)
    cbf = stage.path("cbf.jsonl")
    cbf.write_text(cbf.read_text().replace('"cost/cost":"1"', '"cost/cost":"9"'))
    stage.path("extract.jsonl").write_text(json.dumps(row("2026-11-01T10:00:00Z", "u", "5")) + "\n")
    with pytest.raises(AirflowFailException, match=r"does not reconcile.*CBF cost/cost sums to 5 .* is 1"):
        check_staged_cbf(WINDOW, stage)


def test_rows_of_an_hour_out_of_order_are_rebuilt_never_sent_as_they_are(tmp_path):
    rows = [row("2026-11-01T10:00:00Z", "a", "1"), row("2026-11-01T11:00:00Z", "b", "2")]
    stage = staged(tmp_path, rows, {"2026-11-01T10:00:00Z": "1", "2026-11-01T11:00:00Z": "2"})
    transform_window(WINDOW, stage)
    lines = stage.path("cbf.jsonl").read_text().splitlines()
    stage.path("cbf.jsonl").write_text(
        "\n".join([lines[0], lines[1], lines[0]]) + "\n"
    )  # hour 10 twice, apart
    with pytest.raises(StagedOrderError, match="the rows of hour 2026-11-01T10:00:00Z are not together"):
        list(cbf_hours(stage))
    staged_hours, _ = check_staged_cbf(WINDOW, stage)
    assert {h: s.rows for h, s in staged_hours.items()} == {H10: 1, H10.replace(hour=11): 1}, "rebuilt"
