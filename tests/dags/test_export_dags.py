"""The ready DAGs end to end: real PostgreSQL (LiteLLM's schema), the CloudZero double over HTTP, dag.test()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2
import pytest

from cloudzero_provider.options import ExportOptions
from cloudzero_provider.testing.fixtures import CONNECTION_ID
from cloudzero_provider.testing.runs import clear_and_resume, task_instances, xcom, xcom_key
from cloudzero_provider.testing.seed import insert_spend_logs, seed_synthetic, spend_by_hour, spend_log

H0 = datetime(2026, 11, 1, 10, tzinfo=timezone.utc)
HOURS = [H0 + timedelta(hours=i) for i in range(3)]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture
def schema_age() -> str:
    return "2026-10"


def seed_hours(db: str, rows: int = 400) -> None:
    for i, hour in enumerate(HOURS):
        seed_synthetic(db, hour, rows + 11 * i, id_prefix="e2e")
    # awkward exact values on top of the synthetic spend
    insert_spend_logs(db, [spend_log("tiny", HOURS[0] + timedelta(minutes=5), 1e-12, team_id="t-tiny"),
                           spend_log("big", HOURS[1] + timedelta(minutes=5), 1e6, team_id="t-big")])  # fmt: skip


def run_hourly(hour: datetime):
    from cloudzero_provider.ready_dags import build_hourly_dag

    return build_hourly_dag().test(logical_date=hour + timedelta(hours=1))


def test_three_hours_exact_then_rerun_identical(env):
    seed_hours(env["db"])
    for hour in HOURS:
        assert run_hourly(hour).state == "success"
    double = env["double"].double
    assert double.cost_by_hour(CONNECTION_ID) == spend_by_hour(env["db"])
    assert Decimal(double.cost_by_hour(CONNECTION_ID)["2026-11-01T11:00:00Z"]) > Decimal(1_000_000)
    snapshot = double.snapshot(CONNECTION_ID)
    manifests = sorted(p.name for p in (env["staging"] / "manifests").iterdir() if not p.name.startswith("."))
    assert manifests == ["2026-11-01T10Z.json", "2026-11-01T11Z.json", "2026-11-01T12Z.json"]
    first = json.loads((env["staging"] / "manifests" / manifests[0]).read_text())
    assert first["status"] == "exported" and first["cost"] == str(
        spend_by_hour(env["db"])["2026-11-01T10:00:00Z"].normalize()
    )
    assert first["drop_ids"] and first["content_sha256"] and first["sent_at"]
    for hour in HOURS:
        assert run_hourly(hour).state == "success"
    assert double.snapshot(CONNECTION_ID) == snapshot, "re-running the same hours changed CloudZero's state"
    assert double.concurrent_requests == 0


def test_late_rows_are_corrected_by_a_later_run(env):
    seed_hours(env["db"], rows=200)
    run_hourly(HOURS[0])
    run_hourly(HOURS[1])
    insert_spend_logs(env["db"], [spend_log(f"late-{i}", HOURS[0] + timedelta(minutes=59, seconds=i), 0.5 + i,
                                            team_id="t-late") for i in range(3)])  # fmt: skip
    before = env["double"].double.cost_by_hour(CONNECTION_ID)["2026-11-01T10:00:00Z"]
    run = run_hourly(HOURS[2])
    assert run.state == "success"
    after = env["double"].double.cost_by_hour(CONNECTION_ID)
    assert after == spend_by_hour(env["db"])
    assert after["2026-11-01T10:00:00Z"] - before == Decimal("4.5")
    manifest = json.loads((env["staging"] / "manifests" / "2026-11-01T10Z.json").read_text())
    assert manifest["late_corrections"] == 1
    late = xcom("litellm_cloudzero_hourly", run.run_id, "late_data")[-1]
    assert late["corrected"] == ["2026-11-01T10Z"]


def test_faults_are_ridden_out(env):
    seed_hours(env["db"], rows=300)
    srv = env["double"]
    # hour 1: a 503 then a 429 exhaust the connection's 2 in-task attempts -> Airflow retries the task
    srv.fail_next(1, 503, method="POST")
    srv.fail_next(1, 429, retry_after="1", method="POST")
    first = run_hourly(HOURS[0])
    # hour 2: CloudZero applies the drop but the answer is lost -> the in-task retry is replayed by idempotency key
    srv.lose_next_response(1, method="POST")
    second = run_hourly(HOURS[1])
    # hour 3: one 503, ridden out inside the task
    srv.fail_next(1, 503, method="POST")
    third = run_hourly(HOURS[2])
    assert [r.state for r in (first, second, third)] == ["success"] * 3
    tries = [
        task_instances("litellm_cloudzero_hourly", r.run_id)[("upload", -1)][1]
        for r in (first, second, third)
    ]
    assert tries == [2, 1, 1]
    double = srv.double
    assert double.cost_by_hour(CONNECTION_ID) == spend_by_hour(env["db"])
    assert double.concurrent_requests == 0
    assert sum(1 for r in double.requests if r.get("replayed")) == 1
    assert sorted(r["status"] for r in double.requests if r.get("injected")) == [429, 503, 503]


def test_split_hour_failing_after_first_chunk_is_resent_from_the_start(env, monkeypatch):
    monkeypatch.setenv("CLOUDZERO_MAX_REQUEST_BYTES", "30000")
    seed_hours(env["db"], rows=600)
    srv = env["double"]
    srv.fail_next(
        2, 500, method="POST", after=1
    )  # the first chunk lands, then the next one fails both attempts
    run = run_hourly(HOURS[0])
    assert run.state == "success"
    double = srv.double
    assert double.cost_by_hour(CONNECTION_ID) == {
        "2026-11-01T10:00:00Z": spend_by_hour(env["db"])["2026-11-01T10:00:00Z"]
    }
    applied = [r for r in double.requests if r.get("applied")]
    ops = [r["operation"] for r in applied]
    assert ops.count("replace_hourly") == 2, "the retry restarted the hour at its replace_hourly chunk"
    assert ops[0] == "replace_hourly" and ops[1] == "replace_hourly" and set(ops[2:]) == {"sum"}
    states = task_instances("litellm_cloudzero_hourly", run.run_id)
    assert states[("upload", -1)][0] == "success" and states[("upload", -1)][1] == 2


def test_wrong_api_key_fails_without_retry_and_never_logs_the_key(env, monkeypatch, capfd):
    secret = "cz-wrong-key-never-in-logs-9931"
    conn = json.loads(env["AIRFLOW_CONN_CLOUDZERO_DEFAULT"])
    conn["password"] = secret
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", json.dumps(conn))
    seed_hours(env["db"], rows=50)
    run = run_hourly(HOURS[0])
    assert run.state == "failed"
    state, tries, _ = task_instances("litellm_cloudzero_hourly", run.run_id)[("upload", -1)]
    assert (state, tries) == ("failed", 1)
    out = capfd.readouterr()
    assert "CloudZero answered 403" in out.out + out.err
    assert secret not in out.out + out.err
    # Everywhere the run wrote: its output (dag.test logs there), and every file under Airflow's log folder and
    # the staging folder (manifests record why an hour failed).
    places = {"stdout": out.out, "stderr": out.err}
    for folder in (Path(os.environ["AIRFLOW_HOME"], "logs"), env["staging"]):
        places.update({str(p): p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()})
    holding = [name for name, text in places.items() if "CloudZero answered 403" in text]
    assert holding, "the failure's text is somewhere: the secrecy check reads where the output went"
    assert [name for name, text in places.items() if secret in text] == [], "the key shows nowhere"


def test_range_dag_bad_hour_fails_alone_and_a_rerun_sends_only_it(env, capfd):
    """One chunk of three hours, the middle one poisoned: the other two export exactly, the chunk's upload fails
    naming the bad hour and why; after the row is fixed, running the range again sends that hour alone."""
    from cloudzero_provider.ready_dags import build_range_dag

    seed_hours(env["db"], rows=100)
    insert_spend_logs(env["db"], [spend_log("nan-row", HOURS[1] + timedelta(minutes=1), float("nan"))])
    conf = {"start": "2026-11-01T10:00:00Z", "end": "2026-11-01T13:00:00Z"}
    run = build_range_dag().test(run_conf=conf)
    assert run.state == "failed"
    states = task_instances("litellm_cloudzero_range", run.run_id)
    by_task = {task: ti for (task, _), ti in states.items()}
    assert {ti[2] for task, ti in by_task.items() if task.startswith("chunk.")} == {
        "2026-11-01T10Z--2026-11-01T13Z"
    }
    assert [by_task[t][:2] for t in ("chunk.extract", "chunk.transform", "chunk.upload")] == [
        ("success", 1), ("success", 1), ("failed", 1)
    ]  # fmt: skip
    out = capfd.readouterr()
    assert (
        "2026-11-01T11Z: 1 invalid LiteLLM_SpendLogs row(s) -- hour 2026-11-01T11:00:00Z: 1 spend is NaN"
        in (out.out + out.err)
    )
    held = env["double"].double.cost_by_hour(CONNECTION_ID)
    source = spend_by_hour(env["db"])
    assert set(held) == {"2026-11-01T10:00:00Z", "2026-11-01T12:00:00Z"}
    assert all(held[h] == source[h] for h in held)
    manifest = json.loads((env["staging"] / "manifests" / "2026-11-01T11Z.json").read_text())
    assert manifest["status"] == "failed" and "spend is NaN" in manifest["reason"]

    with psycopg2.connect(env["db"]) as conn, conn.cursor() as cur:
        cur.execute("""UPDATE "LiteLLM_SpendLogs" SET spend = 0.25 WHERE request_id = 'nan-row'""")
    before = len(env["double"].double.requests)
    rerun = build_range_dag().test(run_conf=conf)
    assert rerun.state == "success"
    sent = env["double"].double.requests[before:]
    assert [r["hours"] for r in sent] == [["2026-11-01T11:00:00Z"]], "only the hour CloudZero lacked is sent"
    assert env["double"].double.cost_by_hour(CONNECTION_ID) == spend_by_hour(env["db"])


def test_a_range_over_history_the_retention_purged_keeps_what_was_exported(env):
    """LiteLLM's retention deletes the oldest spend logs: a range run over those hours again must not lower or
    clear what CloudZero holds (the source is no longer whole there), while an hour emptied on purpose after the
    oldest row left is still cleared; lower_purged (opt-in) lowers them too."""
    from cloudzero_provider.ready_dags import build_range_dag

    seed_hours(env["db"], rows=60)
    conf = {"start": "2026-11-01T10:00:00Z", "end": "2026-11-01T13:00:00Z"}
    assert build_range_dag().test(run_conf=conf).state == "success"
    double = env["double"].double
    exported = double.cost_by_hour(CONNECTION_ID)
    assert exported == spend_by_hour(env["db"])

    def delete(before: datetime, after: datetime | None = None) -> None:
        with psycopg2.connect(env["db"]) as conn, conn.cursor() as cur:
            cur.execute("""DELETE FROM "LiteLLM_SpendLogs" WHERE "startTime" < %s AND "startTime" >= %s""",
                        (before.replace(tzinfo=None), (after or H0 - timedelta(days=1)).replace(tzinfo=None)))  # fmt: skip
            assert cur.rowcount > 0

    delete(
        HOURS[2] + timedelta(hours=1), HOURS[2]
    )  # the newest hour emptied on purpose: after the oldest row
    emptied = build_range_dag().test(run_conf=conf)
    assert emptied.state == "success"
    (upload,) = xcom("litellm_cloudzero_range", emptied.run_id, "chunk.upload").values()
    assert upload["cleared"] == ["2026-11-01T12Z"] and upload["kept_purged"] == []
    assert double.cost_by_hour(CONNECTION_ID)["2026-11-01T12:00:00Z"] == 0

    delete(HOURS[1] + timedelta(minutes=30))  # the retention: hour 10 gone, hour 11 half gone
    source = spend_by_hour(env["db"])
    assert (
        "2026-11-01T10:00:00Z" not in source
        and source["2026-11-01T11:00:00Z"] < exported["2026-11-01T11:00:00Z"]
    )
    sent = len(double.requests)
    purged = build_range_dag().test(run_conf=conf)
    assert purged.state == "success"
    (upload,) = xcom("litellm_cloudzero_range", purged.run_id, "chunk.upload").values()
    assert upload["kept_purged"] == ["2026-11-01T10Z", "2026-11-01T11Z"] and upload["hours"] == []
    assert len(double.requests) == sent, "nothing was sent"
    held = double.cost_by_hour(CONNECTION_ID)
    assert {h: held[h] for h in ("2026-11-01T10:00:00Z", "2026-11-01T11:00:00Z")} == {
        h: exported[h] for h in ("2026-11-01T10:00:00Z", "2026-11-01T11:00:00Z")
    }

    lowered = build_range_dag().test(run_conf={**conf, "lower_purged": True})
    assert lowered.state == "success"
    (upload,) = xcom("litellm_cloudzero_range", lowered.run_id, "chunk.upload").values()
    assert upload["kept_purged"] == [] and upload["hours"] == ["2026-11-01T10Z", "2026-11-01T11Z"]
    held = double.cost_by_hour(CONNECTION_ID)
    assert held["2026-11-01T10:00:00Z"] == 0 and {h: v for h, v in held.items() if v} == spend_by_hour(
        env["db"]
    )


def point_export_at(env: dict[str, Any], monkeypatch: Any, connection_id: str) -> None:
    """The export's Airflow connection names ``connection_id`` as its AnyCost connection from now on (as an admin
    editing its extra does); the CloudZero double accepts it beside the first."""
    double = env["double"].double
    double.connections = {*(double.connections or ()), CONNECTION_ID, connection_id}
    conn = json.loads(env["AIRFLOW_CONN_CLOUDZERO_DEFAULT"])
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDZERO_DEFAULT",
        json.dumps({**conn, "extra": {**conn["extra"], "connection_id": connection_id}}),
    )


def test_a_range_run_after_the_connection_names_another_anycost_connection_sends_history_again(
    env, monkeypatch
):
    """Manifests say what went to the AnyCost connection named then: after the connection's extra names another
    stream, "already exported with exactly these rows" no longer holds, and a range sends every hour to it."""
    from cloudzero_provider.ready_dags import build_range_dag

    seed_hours(env["db"], rows=40)
    conf = {"start": "2026-11-01T10:00:00Z", "end": "2026-11-01T13:00:00Z"}
    assert build_range_dag().test(run_conf=conf).state == "success"
    double = env["double"].double
    point_export_at(env, monkeypatch, "new-stream")
    moved = build_range_dag().test(run_conf=conf)
    assert moved.state == "success"
    (upload,) = xcom("litellm_cloudzero_range", moved.run_id, "chunk.upload").values()
    assert upload["unchanged"] == [] and len(upload["hours"]) == 3
    assert double.cost_by_hour("new-stream") == spend_by_hour(env["db"])
    again = build_range_dag().test(run_conf=conf)
    (upload,) = xcom("litellm_cloudzero_range", again.run_id, "chunk.upload").values()
    assert upload["hours"] == [] and len(upload["unchanged"]) == 3, "then it is held there"


def test_a_stream_that_never_held_a_purged_hour_is_sent_what_is_left_of_it(env, monkeypatch):
    """The purge guard keeps what a stream holds: after the connection's extra names another AnyCost connection,
    a range over hours LiteLLM's retention purged sends the rows left to the new stream (it held none of them, so
    nothing is lowered there) and clears nothing there; the old stream keeps what it was sent, and a switch back
    to it keeps the purged hours there (each hour's record remembers every connection's acknowledged export)."""
    from cloudzero_provider.ready_dags import build_range_dag

    seed_hours(env["db"], rows=40)
    conf = {"start": "2026-11-01T10:00:00Z", "end": "2026-11-01T13:00:00Z"}
    assert build_range_dag().test(run_conf=conf).state == "success"
    double = env["double"].double
    exported = double.cost_by_hour(CONNECTION_ID)
    with (
        psycopg2.connect(env["db"]) as conn,
        conn.cursor() as cur,
    ):  # the retention: 10:00 gone, 11:00 half gone
        cur.execute(
            """DELETE FROM "LiteLLM_SpendLogs" WHERE "startTime" < %s""",
            ((HOURS[1] + timedelta(minutes=30)).replace(tzinfo=None),),
        )
    source = spend_by_hour(env["db"])
    assert "2026-11-01T10:00:00Z" not in source
    assert source["2026-11-01T11:00:00Z"] < exported["2026-11-01T11:00:00Z"]
    point_export_at(env, monkeypatch, "new-stream")
    moved = build_range_dag().test(run_conf=conf)
    assert moved.state == "success"
    (upload,) = xcom("litellm_cloudzero_range", moved.run_id, "chunk.upload").values()
    assert upload["kept_purged"] == [] and upload["cleared"] == []
    assert upload["hours"] == ["2026-11-01T11Z", "2026-11-01T12Z"]
    assert double.cost_by_hour("new-stream") == source
    assert double.cost_by_hour(CONNECTION_ID) == exported, "the old stream keeps what it was sent"
    # Back to the first stream, which holds the purged hours whole: they are kept there, never lowered.
    point_export_at(env, monkeypatch, CONNECTION_ID)
    back = build_range_dag().test(run_conf=conf)
    assert back.state == "success"
    (upload,) = xcom("litellm_cloudzero_range", back.run_id, "chunk.upload").values()
    assert upload["kept_purged"] == ["2026-11-01T10Z", "2026-11-01T11Z"] and upload["cleared"] == []
    assert double.cost_by_hour(CONNECTION_ID) == exported
    assert double.cost_by_hour("new-stream") == source


def test_an_hour_whose_last_attempt_failed_and_whose_rows_then_vanish_is_cleared(env):
    """CloudZero still holds the hour's last acknowledged export when a later attempt fails: once the hour's rows
    are gone, a range clears it to 0 (the failed record kept it out of "exported before", so it stayed forever)."""
    from cloudzero_provider.ready_dags import build_range_dag

    seed_hours(env["db"], rows=30)
    conf = {"start": "2026-11-01T10:00:00Z", "end": "2026-11-01T13:00:00Z"}
    assert build_range_dag().test(run_conf=conf).state == "success"
    path = env["staging"] / "manifests" / "2026-11-01T12Z.json"
    record = json.loads(path.read_text())
    assert record["drop_ids"] and Decimal(record["cost"]) > 0
    path.write_text(json.dumps({**record, "status": "failed", "reason": "a later attempt failed"}))
    with psycopg2.connect(env["db"]) as conn, conn.cursor() as cur:
        cur.execute(
            """DELETE FROM "LiteLLM_SpendLogs" WHERE "startTime" >= %s""", (HOURS[2].replace(tzinfo=None),)
        )
    run = build_range_dag().test(run_conf=conf)
    assert run.state == "success"
    (upload,) = xcom("litellm_cloudzero_range", run.run_id, "chunk.upload").values()
    assert upload["cleared"] == ["2026-11-01T12Z"] and upload["kept_purged"] == []
    held = env["double"].double.cost_by_hour(CONNECTION_ID)
    assert held["2026-11-01T12:00:00Z"] == 0 and {h: v for h, v in held.items() if v} == spend_by_hour(
        env["db"]
    )
    after = json.loads(path.read_text())
    assert after["status"] == "exported" and after["cleared"] is True


def test_range_dag_maps_only_chunks_with_spend(env):
    from cloudzero_provider.ready_dags import build_range_dag

    seed_hours(env["db"], rows=50)  # 2026-11-01 10:00-13:00 only
    run = build_range_dag().test(
        run_conf={"start": "2026-10-30T00:00:00Z", "end": "2026-11-03T00:00:00Z", "chunk_hours": 24}
    )
    assert run.state == "success"
    states = task_instances("litellm_cloudzero_range", run.run_id)
    assert {ti[2] for (task, _), ti in states.items() if task == "chunk.upload"} == {"2026-11-01"}
    summary = xcom_key("litellm_cloudzero_range", run.run_id, "plan", "summary")
    assert summary["hours"] == 96 and summary["hours_with_spend"] == 3 and summary["chunks"] == 1
    assert summary["chunks_skipped_empty"] == 3 and summary["requests"] == 3 * 50 + 11 + 22 + 2
    assert env["double"].double.cost_by_hour(CONNECTION_ID) == spend_by_hour(env["db"])


def test_range_dag_dry_run_from_the_cli(env):
    seed_hours(env["db"], rows=100)
    conf = {"start": "2026-11-01T11:00:00+01:00", "end": "2026-11-01T12:00:00Z", "dry_run": True, "limit": 5}
    proc = subprocess.run([AIRFLOW, "dags", "test", "litellm_cloudzero_range", "--conf", json.dumps(conf)],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert env["double"].double.requests == [], "a dry run sent something"
    (area,) = env["staging"].glob("range-dry-run-*")  # the run's own area
    bodies = sorted(area.glob("*/requests/*.json"))
    assert not list(env["staging"].glob("*/requests")), "a dry run staged outside its own area"
    assert [b.parent.parent.name for b in bodies] == ["2026-11-01T10Z", "2026-11-01T11Z"]
    body = json.loads(bodies[0].read_text())
    assert body["operation"] == "replace_hourly" and len(body["data"]) == 5
    # one chunk of two hours, each previewed with its first 5 records
    assert "DRY RUN" in proc.stdout + proc.stderr and "nothing sent: 10 records" in proc.stdout + proc.stderr


def test_dry_run_summary_in_xcom(env):
    from cloudzero_provider.ready_dags import build_range_dag

    seed_hours(env["db"], rows=100)
    run = build_range_dag().test(run_conf={"start": "2026-11-01T10:00:00Z", "end": "2026-11-01T11:00:00Z",
                                           "dry_run": True})  # fmt: skip
    assert run.state == "success"
    (summary,) = xcom("litellm_cloudzero_range", run.run_id, "chunk.upload").values()
    assert summary["dry_run"] is True and summary["records"] > 0
    assert Decimal(summary["total_cost"]) == spend_by_hour(env["db"])["2026-11-01T10:00:00Z"]
    assert summary["services"] == ["litellm"] and summary["requests"] == 1
    assert env["double"].double.requests == []


def test_limit_without_dry_run_is_refused(env):
    from cloudzero_provider.ready_dags import build_range_dag

    run = build_range_dag().test(run_conf={"start": "2026-11-01T10:00:00Z", "end": "2026-11-01T11:00:00Z",
                                           "limit": 3})  # fmt: skip
    assert run.state == "failed"
    assert task_instances("litellm_cloudzero_range", run.run_id)[("plan", -1)][0] == "failed"


def test_no_import_errors(airflow_db):
    proc = subprocess.run([AIRFLOW, "dags", "list-import-errors", "--local"], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "No data found" in proc.stdout, proc.stdout + proc.stderr


def test_imports_and_repairs_take_the_pool_ahead_of_every_scheduled_hour(env):
    """By Airflow's default rule the hourly upload outweighed a range chunk's (2 to 1) and a manual run sorted after
    every scheduled one: a history import waited behind a whole catchup. Weights are absolute now, the same for
    every task of a DAG, and every pool task of an import or repair outweighs every scheduled one."""
    from cloudzero_provider.ready_dags import (
        build_daily_rollup_dag,
        build_hourly_dag,
        build_range_dag,
        build_reconcile_dag,
        build_report_dag,
        build_telemetry_dag,
    )

    def weights(dag) -> dict[str, tuple[int, str]]:
        return {t.task_id: (t.priority_weight, str(t.weight_rule)) for t in dag.tasks}

    imports = [build_range_dag(), build_daily_rollup_dag(), build_reconcile_dag()]
    scheduled = [build_hourly_dag(), build_report_dag(), build_telemetry_dag()]
    for dag in imports + scheduled:
        assert len(set(weights(dag).values())) == 1, (
            f"one absolute weight per DAG: {dag.dag_id} {weights(dag)}"
        )
        assert {rule for _, rule in weights(dag).values()} == {"absolute"}
    pool_tasks = {(d.dag_id, t.task_id): t.priority_weight for d in imports + scheduled for t in d.tasks
                  if t.pool == "cloudzero_anycost"}  # fmt: skip
    assert set(pool_tasks) == {
        ("litellm_cloudzero_hourly", "upload"), ("litellm_cloudzero_hourly", "late_data"),
        ("litellm_cloudzero_range", "chunk.upload"), ("litellm_cloudzero_daily_rollup", "day.upload"),
        ("litellm_cloudzero_reconcile", "reconcile"),
    }  # fmt: skip
    lowest_import = min(w for (dag_id, _), w in pool_tasks.items() if dag_id != "litellm_cloudzero_hourly")
    assert lowest_import > max(
        w for (dag_id, _), w in pool_tasks.items() if dag_id == "litellm_cloudzero_hourly"
    )


def test_413_splits_the_request_and_sends_the_hours_again(env, monkeypatch):
    """CloudZero's real limit turns out lower than ours: the 413 halves the requests, hours restart whole."""
    from cloudzero_provider.operators.extract import LiteLLMSpendExtractOperator
    from cloudzero_provider.operators.transform import CBFTransformOperator
    from cloudzero_provider.operators.upload import AnyCostUploadOperator

    seed_hours(env["db"], rows=300)
    double = env["double"].double
    double.max_body_bytes = 100_000
    kw = {"window_start": "2026-11-01T10:00:00Z", "window_end": "2026-11-01T13:00:00Z"}
    LiteLLMSpendExtractOperator(task_id="e", **kw).execute({})
    CBFTransformOperator(task_id="t", **kw).execute({})
    result = AnyCostUploadOperator(
        task_id="u", options=ExportOptions(max_request_bytes=1_000_000), **kw
    ).execute({})
    assert double.cost_by_hour(CONNECTION_ID) == spend_by_hour(env["db"])
    statuses = [r["status"] for r in double.requests]
    k = statuses.count(413)
    assert 1 <= k <= 3 and statuses == [413] * k + [200] * (len(statuses) - k), (
        "halved until accepted, then sent"
    )
    assert all(r["content_length"] <= 100_000 for r in double.requests[k:])
    assert result["hours"] == ["2026-11-01T10Z", "2026-11-01T11Z", "2026-11-01T12Z"]


def test_each_exported_hour_emits_an_asset_event_that_queues_the_telemetry_dag(env):
    from airflow.models.asset import AssetDagRunQueue, AssetEvent
    from airflow.models.dag import DagModel
    from airflow.settings import Session

    seed_hours(env["db"], rows=50)
    run_hourly(HOURS[0])  # the first run also registers every DAG of the folder, the telemetry DAG among them
    with Session() as session:
        session.query(DagModel).filter_by(dag_id="litellm_cloudzero_telemetry").update({"is_paused": False})
        session.query(AssetDagRunQueue).delete()
        session.commit()
    run = run_hourly(HOURS[0])
    with Session() as session:
        events = (
            session.query(AssetEvent)
            .filter_by(source_dag_id="litellm_cloudzero_hourly", source_run_id=run.run_id)
            .all()
        )
        hours = [e.extra.get("hour") for e in events]
        queued = {q.target_dag_id for q in session.query(AssetDagRunQueue).all()}
    assert hours == ["2026-11-01T10:00:00Z"] and all(e.partition_key is None for e in events)
    assert "litellm_cloudzero_telemetry" in queued, "the export's events must trigger the telemetry DAG"


@pytest.mark.parametrize("manifest_left", [True, False], ids=["marked-failed", "no-manifest-at-all"])
def test_a_failed_run_shows_failed_and_the_next_run_exports_its_hour(env, manifest_left):
    """A run that fails before sending anything is not lost: its hour reads 'failed' on the ledger, and the next
    hourly run's late-data pass exports it -- also when nothing was recorded (a run the scheduler failed)."""
    from cloudzero_provider.ledger_view import FAILED, classify
    from cloudzero_provider.manifests import Manifest

    seed_hours(env["db"], rows=50)
    insert_spend_logs(env["db"], [spend_log("nan-row", HOURS[0] + timedelta(minutes=1), float("nan"))])
    failed = run_hourly(HOURS[0])
    assert failed.state == "failed"
    path = env["staging"] / "manifests" / "2026-11-01T10Z.json"
    manifest = json.loads(path.read_text())
    assert manifest["status"] == "failed" and "spend is NaN" in manifest["reason"]
    shown = classify(HOURS[0], Manifest.from_json(HOURS[0], manifest), None, now=HOURS[2], export_start=HOURS[0],
                     due_at=HOURS[1], schedule_dag="litellm_cloudzero_hourly")  # fmt: skip
    assert shown.status == FAILED and "spend is NaN" in shown.detail
    assert shown.link and shown.link.path.startswith(
        f"/dags/litellm_cloudzero_hourly/runs/{quote(failed.run_id, safe='')}/tasks/"
    )
    if not manifest_left:
        path.unlink()
    with psycopg2.connect(env["db"]) as conn, conn.cursor() as cur:
        cur.execute("""UPDATE "LiteLLM_SpendLogs" SET spend = 0.5 WHERE request_id = 'nan-row'""")
    run = run_hourly(HOURS[1])
    assert run.state == "success"
    late = xcom("litellm_cloudzero_hourly", run.run_id, "late_data")[-1]
    assert late["corrected"] == ["2026-11-01T10Z"]
    source = spend_by_hour(env["db"])
    held = env["double"].double.cost_by_hour(CONNECTION_ID)
    assert held == {h: source[h] for h in ("2026-11-01T10:00:00Z", "2026-11-01T11:00:00Z")}
    assert json.loads(path.read_text())["status"] == "exported"


def test_late_pass_never_exports_hours_before_the_dag_start(env, monkeypatch):
    monkeypatch.setenv("CLOUDZERO_EXPORT_START", "2026-11-01T11:00:00Z")
    seed_hours(env["db"], rows=50)
    run = run_hourly(HOURS[1])
    assert run.state == "success"
    assert xcom("litellm_cloudzero_hourly", run.run_id, "late_data")[-1]["corrected"] == []
    assert set(env["double"].double.cost_by_hour(CONNECTION_ID)) == {"2026-11-01T11:00:00Z"}


def test_an_hour_whose_rows_all_vanish_is_cleared_to_zero_by_the_late_pass(env):
    """Rows deleted after the oldest spend-log row left: the hour is cleared to 0. Rows gone at or before it may be
    LiteLLM's retention at work: the hour keeps what was exported."""
    seed_hours(env["db"], rows=50)
    previous = H0 - timedelta(hours=1)  # an hour before, so that the vanished one is not the oldest
    seed_synthetic(env["db"], previous, 20, id_prefix="before")
    for hour in [previous, *HOURS[:2]]:
        assert run_hourly(hour).state == "success"
    with psycopg2.connect(env["db"]) as conn, conn.cursor() as cur:
        cur.execute("""DELETE FROM "LiteLLM_SpendLogs" WHERE "startTime" >= %s AND "startTime" < %s""",
                    (HOURS[0].replace(tzinfo=None), HOURS[1].replace(tzinfo=None)))  # fmt: skip
    run = run_hourly(HOURS[2])
    assert run.state == "success"
    assert xcom("litellm_cloudzero_hourly", run.run_id, "late_data")[-1]["corrected"] == ["2026-11-01T10Z"]
    held = env["double"].double.cost_by_hour(CONNECTION_ID)
    assert held["2026-11-01T10:00:00Z"] == 0, "CloudZero no longer holds the vanished cost"
    assert {h: v for h, v in held.items() if v} == spend_by_hour(env["db"])
    manifest = json.loads((env["staging"] / "manifests" / "2026-11-01T10Z.json").read_text())
    assert manifest["cleared"] is True and manifest["cost"] == "0"
    again = run_hourly(HOURS[2])
    assert xcom("litellm_cloudzero_hourly", again.run_id, "late_data")[-1]["corrected"] == [], "cleared once"

    kept = held["2026-11-01T09:00:00Z"]
    assert kept > 0
    with psycopg2.connect(env["db"]) as conn, conn.cursor() as cur:  # the retention takes the oldest hour
        cur.execute("""DELETE FROM "LiteLLM_SpendLogs" WHERE "startTime" < %s""", (H0.replace(tzinfo=None),))
    purged = run_hourly(HOURS[2])
    assert purged.state == "success"
    late = xcom("litellm_cloudzero_hourly", purged.run_id, "late_data")[-1]
    assert "2026-11-01T09Z" in late["checked"] and late["corrected"] == []
    assert env["double"].double.cost_by_hour(CONNECTION_ID)["2026-11-01T09:00:00Z"] == kept


def test_clearing_the_failed_chunk_upload_after_fixing_the_row_sends_only_that_hour(env):
    """What a clear of the failed upload does (its next try): the isolated hour is read again from the source and,
    sound now, sent alone; the hours CloudZero already holds are not sent again."""
    from cloudzero_provider.ready_dags import build_range_dag

    seed_hours(env["db"], rows=80)
    insert_spend_logs(env["db"], [spend_log("nan-row", HOURS[1] + timedelta(minutes=1), float("nan"))])
    conf = {"start": "2026-11-01T10:00:00Z", "end": "2026-11-01T13:00:00Z"}
    dag = build_range_dag()
    run = dag.test(run_conf=conf)
    assert run.state == "failed"
    assert task_instances("litellm_cloudzero_range", run.run_id)[("chunk.upload", 0)][:2] == ("failed", 1)
    with psycopg2.connect(env["db"]) as conn, conn.cursor() as cur:
        cur.execute("""UPDATE "LiteLLM_SpendLogs" SET spend = 0.125 WHERE request_id = 'nan-row'""")
    double = env["double"].double
    before = len(double.requests)
    assert clear_and_resume(dag, run.run_id, "chunk.upload") == "success"
    assert task_instances("litellm_cloudzero_range", run.run_id)[("chunk.upload", 0)][:2] == ("success", 2)
    result = xcom("litellm_cloudzero_range", run.run_id, "chunk.upload")[0]
    assert result["failed_hours"] == {} and result["retried"] == ["2026-11-01T11Z"]
    assert [r["hours"] for r in double.requests[before:]] == [["2026-11-01T11:00:00Z"]]
    assert double.cost_by_hour(CONNECTION_ID) == spend_by_hour(env["db"])


def test_the_late_pass_tries_every_hour_and_names_the_ones_it_could_not_correct(env, capfd):
    seed_hours(env["db"], rows=40)
    for hour in HOURS[:2]:
        assert run_hourly(hour).state == "success"
    insert_spend_logs(env["db"], [
        spend_log("late-bad", HOURS[0] + timedelta(minutes=58), float("nan")),  # hour 10 changed and cannot be
        spend_log("late-10", HOURS[0] + timedelta(minutes=59), 0.25, team_id="t-late"),  # exported any more
        spend_log("late-ok", HOURS[1] + timedelta(minutes=58), 0.75, team_id="t-late"),  # hour 11 just moved
    ])  # fmt: skip
    run = run_hourly(HOURS[2])
    states = task_instances("litellm_cloudzero_hourly", run.run_id)
    assert states[("late_data", -1)][0] == "failed" and states[("upload", -1)][0] == "success"
    out = capfd.readouterr()
    assert (
        "Late-data pass corrected 1 hour(s) ['2026-11-01T11Z'] but could not correct 1: 2026-11-01T10Z:"
        in (out.out + out.err)
    )
    held = env["double"].double.cost_by_hour(CONNECTION_ID)
    source = spend_by_hour(env["db"])
    assert held["2026-11-01T11:00:00Z"] == source["2026-11-01T11:00:00Z"], (
        "the hour after the bad one was corrected"
    )
    manifest = json.loads((env["staging"] / "manifests" / "2026-11-01T10Z.json").read_text())
    assert manifest["status"] == "exported", "the bad hour keeps its last good export"


def test_an_hour_without_spend_is_recorded_as_checked_and_each_record_names_its_task(env):
    """ "No spend" and "not done yet" read differently: the run for an empty hour leaves a record that sent nothing;
    every record names the task attempt that wrote it, for the ledger's links."""
    seed_synthetic(env["db"], HOURS[1], 40, id_prefix="one")
    for hour in HOURS[:2]:
        assert run_hourly(hour).state == "success"
    empty = json.loads((env["staging"] / "manifests" / "2026-11-01T10Z.json").read_text())
    assert empty["empty"] is True and empty["status"] == "exported" and not empty.get("drop_ids")
    assert empty["source"] == {"requests": 0, "spend": "0"}
    sent = json.loads((env["staging"] / "manifests" / "2026-11-01T11Z.json").read_text())
    assert sent.get("empty") is not True and sent["drop_ids"]
    for record in (empty, sent):
        assert record["decided_by"]["dag_id"] == "litellm_cloudzero_hourly"
        assert record["decided_by"]["task_id"] == "upload" and record["decided_by"]["try_number"] == 1
    assert env["double"].double.cost_by_hour(CONNECTION_ID) == spend_by_hour(env["db"]), (
        "nothing sent for 10:00"
    )
