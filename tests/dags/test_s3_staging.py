"""Staging on a real S3 API (moto's server on loopback): the export, the late pass, reconciliation, housekeeping and
the ledger's reads exact as on a local disk, manifests in the bucket, nothing staged on local disk."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cloudzero_provider.testing.fixtures import CONNECTION_ID
from cloudzero_provider.testing.seed import insert_spend_logs, seed_synthetic, spend_by_hour, spend_log

# A housekeeping run a week after these tests run: a per-run area is kept while it was written within the
# retention, and its files are written now, whatever data time the tests stage.
TODAY = datetime.now(timezone.utc).replace(hour=1, minute=0, second=0, microsecond=0)
RETENTION_PASSED = TODAY + timedelta(days=8)

H0 = datetime(2026, 11, 1, 10, tzinfo=timezone.utc)
HOURS = [H0 + timedelta(hours=i) for i in range(3)]
CONF = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}


@pytest.fixture
def schema_age() -> str:
    return "2026-10"


def local_staged_files() -> list[Path]:
    import os

    root = Path(os.environ["AIRFLOW_HOME"])
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in (".jsonl", ".json") and "logs" not in p.parts
    ]


def test_export_late_pass_reconciliation_and_housekeeping_on_s3(env, s3_staging, monkeypatch):
    from cloudzero_provider.ready_dags import (
        build_hourly_dag,
        build_housekeeping_dag,
        build_range_dag,
        build_reconcile_dag,
    )

    for i, hour in enumerate(HOURS):
        seed_synthetic(env["db"], hour, 80 + i, id_prefix=f"s3{i}")
    for hour in HOURS[:2]:
        assert build_hourly_dag().test(logical_date=hour + timedelta(hours=1)).state == "success"
    insert_spend_logs(
        env["db"], [spend_log("late", HOURS[0] + timedelta(minutes=58), 2.25, team_id="t-late")]
    )
    assert build_hourly_dag().test(logical_date=HOURS[2] + timedelta(hours=1)).state == "success"  # late pass
    double = env["double"].double
    assert double.cost_by_hour(CONNECTION_ID) == spend_by_hour(env["db"]), "exact, the late row included"
    keys = s3_staging.object_keys()
    manifests = [k for k in keys if "/manifests/" in k and k.endswith(".json")]
    assert manifests == [
        f"staging/cloudzero_default/manifests/2026-11-01T{h}Z.json" for h in ("10", "11", "12")
    ]
    first = s3_staging.read_json(manifests[0])
    assert first["status"] == "exported" and first["late_corrections"] == 1 and first["receipts"]
    assert any(k.startswith("staging/cloudzero_default/late/") for k in keys), (
        "the late pass staged in the bucket"
    )

    assert build_range_dag().test(run_conf=CONF).state == "success"  # a run area of its own, in the bucket
    assert double.lose_hour(CONNECTION_ID, "2026-11-01T11:00:00Z") > 0
    run = build_reconcile_dag().test(run_conf=CONF)
    assert run.state == "success"
    assert double.cost_by_hour(CONNECTION_ID) == spend_by_hour(env["db"]), (
        "the lost hour repaired from S3 staging"
    )
    assert s3_staging.read_json(manifests[1])["reconcile"]["status"] == "repaired"

    before = [k for k in s3_staging.object_keys() if "/manifests/" in k and k.endswith(".json")]
    assert len(before) == 24, "the range checked the whole day: every hour has its record, 21 of them empty"
    monkeypatch.setenv("AIRFLOW__CLOUDZERO__STAGING_RETENTION_DAYS", "1")
    assert build_housekeeping_dag().test(logical_date=RETENTION_PASSED).state == "success"
    left = s3_staging.object_keys()
    assert [
        k for k in left if k.endswith(("extract.jsonl", "cbf.jsonl", "extract.json", "transform.json"))
    ] == []
    assert [k for k in left if "/manifests/" in k and k.endswith(".json")] == before, "every manifest kept"
    posts = sum(1 for r in double.requests if r["method"] == "POST")
    assert build_reconcile_dag().test(run_conf=CONF).state == "success"
    assert sum(1 for r in double.requests if r["method"] == "POST") == posts, (
        "nothing to send after housekeeping"
    )
    assert local_staged_files() == [], "nothing staged on local disk"


def test_the_ledger_reads_a_window_with_one_listing(env, s3_staging):
    """31 days of ledger: one LIST of the manifests and one GET per manifest that exists, no per-hour HEAD -- the
    day owners and the headline's newest hour answered from the same reads."""
    from cloudzero_provider.plugins.ledger_data import read_stream
    from cloudzero_provider.ready_dags import build_hourly_dag
    from cloudzero_provider.settings import ExportSettings
    from cloudzero_provider.target import ExportTarget

    seed_synthetic(env["db"], H0, 40, id_prefix="led")
    assert build_hourly_dag().test(logical_date=H0 + timedelta(hours=1)).state == "success"
    seen: list[tuple[str, str]] = []

    def count(request, **_):
        seen.append((request.method, request.url))

    fs = ExportTarget("cloudzero_default").dir.fs
    end = H0 + timedelta(days=1, hours=-10)
    fs.s3.meta.events.register("before-send.s3", count)
    try:
        ledger = read_stream(
            "cloudzero_default",
            end - timedelta(days=31),
            end,
            settings=ExportSettings.from_env(),
            runs={},
            now=end,
        )
    finally:
        fs.s3.meta.events.unregister("before-send.s3", count)
    assert len(ledger.hours) == 31 * 24
    assert sum(1 for h in ledger.hours if h.status == "exported") == 1, [h.status for h in ledger.hours][-30:]
    assert ledger.headline.newest_held == H0
    lists = [u for m, u in seen if m == "GET" and "list-type=2" in u]
    heads = [u for m, u in seen if m == "HEAD"]
    gets = [u for m, u in seen if m == "GET" and "list-type=2" not in u]
    assert len(lists) == 1 and heads == [] and len(gets) == 1, seen


def _aws_connection(monkeypatch, name: str, endpoint: str, *, secret: str = "testing") -> None:
    import json

    monkeypatch.setenv(
        f"AIRFLOW_CONN_{name.upper()}",
        json.dumps({
            "conn_type": "aws", "login": "testing", "password": secret,
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1",
                      "config_kwargs": {"connect_timeout": 1, "retries": {"total_max_attempts": 1}}},
        }),
    )  # fmt: skip


def test_a_missing_bucket_fails_the_first_task_with_what_to_fix(env, s3_staging, monkeypatch):
    from cloudzero_provider.ready_dags import build_hourly_dag
    from cloudzero_provider.target import ExportTarget, StagingUnreachable

    uri = f"s3://aws_default@{s3_staging.bucket}-missing/staging"
    with pytest.raises(StagingUnreachable) as caught:
        ExportTarget("cloudzero_default", uri).check_reachable()
    assert str(caught.value) == (
        f"Staging {uri}: the bucket '{s3_staging.bucket}-missing' does not exist, or connection 'aws_default' "
        "cannot see it. Create it, or correct [cloudzero] staging_uri."
    )
    assert not caught.value.retryable
    ExportTarget("cloudzero_default", f"s3://aws_default@{s3_staging.bucket}/never-written").check_reachable()

    seed_synthetic(env["db"], H0, 20, id_prefix="nob")
    monkeypatch.setenv("AIRFLOW__CLOUDZERO__STAGING_URI", uri)
    assert build_hourly_dag().test(logical_date=H0 + timedelta(hours=1)).state == "failed"
    assert env["double"].double.cost_by_hour(CONNECTION_ID) == {}, "nothing sent without a place to stage it"
    assert s3_staging.client.list_buckets()["Buckets"] == [
        b for b in s3_staging.client.list_buckets()["Buckets"] if not b["Name"].endswith("-missing")
    ], "no bucket created behind the user's back"


def test_refused_credentials_are_named_without_the_secret(s3_staging, monkeypatch):
    from moto import settings as moto_settings

    from cloudzero_provider.target import ExportTarget, StagingUnreachable

    secret = "wJalrXUtnFEMI-K7MDENG-not-a-real-key"
    _aws_connection(monkeypatch, "aws_wrong", s3_staging.endpoint, secret=secret)
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys from now on
    uri = f"s3://aws_wrong@{s3_staging.bucket}/staging"
    with pytest.raises(StagingUnreachable) as caught:
        ExportTarget("cloudzero_default", uri).check_reachable()
    message = str(caught.value)
    assert message.startswith(
        f"Staging {uri}: the store refused the credentials of connection 'aws_wrong' (PermissionError: "
    ), message
    assert message.endswith("Check that connection's keys or role and the bucket's policy."), message
    assert secret not in message and "testing" not in message
    assert not caught.value.retryable, "only a person can fix credentials: the task fails without retrying"


def test_an_unreachable_endpoint_is_an_outage_a_retry_may_pass(s3_staging, monkeypatch):
    import socket

    from cloudzero_provider.target import ExportTarget, StagingUnreachable

    with socket.socket() as sock:  # a port bound and never listened on: connections are refused
        sock.bind(("127.0.0.1", 0))
        _aws_connection(monkeypatch, "aws_nowhere", f"http://127.0.0.1:{sock.getsockname()[1]}")
        uri = f"s3://aws_nowhere@{s3_staging.bucket}/staging"
        with pytest.raises(StagingUnreachable) as caught:
            ExportTarget("cloudzero_default", uri).check_reachable()
    message = str(caught.value)
    assert message.startswith(f"Staging {uri}: cannot reach the store ("), message
    assert message.endswith(
        "Check connection 'aws_nowhere''s endpoint_url, the network, and that the service runs."
    ), message
    assert caught.value.retryable, "an outage: Airflow's retries may pass it"


def test_failed_torn_and_lost_puts_are_retried_and_never_read_as_a_manifest(env, s3_staging, monkeypatch):
    """Every 3rd PUT answered 503, every 4th cut off half-way through its body, every 5th applied with its answer
    lost: botocore retries each, a conditional manifest write whose first attempt landed finds its own change and
    applies the step again on what is there; every hour exact, every manifest whole."""
    from cloudzero_provider.ready_dags import build_hourly_dag
    from cloudzero_provider.testing.s3_faults import S3FaultProxy

    def plan(n: int) -> str | None:
        return "503" if n % 3 == 0 else "torn" if n % 4 == 0 else "lost" if n % 5 == 0 else None

    for i, hour in enumerate(HOURS[:2]):
        seed_synthetic(env["db"], hour, 60 + i, id_prefix=f"flt{i}")
    with S3FaultProxy(s3_staging.endpoint, plan) as proxy:
        import json

        monkeypatch.setenv(
            "AIRFLOW_CONN_AWS_FLAKY",
            json.dumps({
                "conn_type": "aws", "login": "testing", "password": "testing",
                "extra": {"endpoint_url": proxy.url, "region_name": "us-east-1",
                          "config_kwargs": {"connect_timeout": 2, "read_timeout": 10,
                                            "retries": {"total_max_attempts": 4, "mode": "standard"}}},
            }),
        )  # fmt: skip
        monkeypatch.setenv("AIRFLOW__CLOUDZERO__STAGING_URI", f"s3://aws_flaky@{s3_staging.bucket}/staging")
        for hour in HOURS[:2]:
            assert build_hourly_dag().test(logical_date=hour + timedelta(hours=1)).state == "success"
    assert set(proxy.injected) == {"503", "torn", "lost"} and proxy.puts >= 12, (proxy.puts, proxy.injected)
    assert {f for f, path in proxy.spoiled if "/manifests/" in path} == {"503", "torn", "lost"}, (
        "each fault met a conditional manifest write too"
    )
    assert env["double"].double.cost_by_hour(CONNECTION_ID) == spend_by_hour(env["db"])
    keys = s3_staging.object_keys()
    manifests = [k for k in keys if "/manifests/" in k and k.endswith(".json")]
    assert len(manifests) == 2
    for key in manifests:
        record = s3_staging.read_json(key)
        assert record["status"] == "exported" and record["receipts"], record
    assert [k for k in keys if k.endswith(".tmp") or "/." in k] == [], "no temporary object left behind"


def test_each_staged_file_is_one_put_and_never_a_rename(env, s3_staging):
    """On S3 a rename is a copy and a delete: every staged file and manifest write here is a single PUT, every
    read a single GET (and a HEAD for a stream or a manifest's ETag), a missing file costs no listing."""
    from cloudzero_provider.ready_dags import build_hourly_dag
    from cloudzero_provider.target import ExportTarget

    seed_synthetic(env["db"], H0, 30, id_prefix="put")
    target = ExportTarget("cloudzero_default")
    target.check_reachable()  # connects the file system whose client the tasks share in this process
    seen: list[tuple[str, str, bool]] = []

    def count(request, **_):
        seen.append(
            (request.method, request.url, "x-amz-copy-source" in {k.lower() for k in request.headers})
        )

    target.dir.fs.s3.meta.events.register("before-send.s3", count)
    try:
        assert build_hourly_dag().test(logical_date=H0 + timedelta(hours=1)).state == "success"
    finally:
        target.dir.fs.s3.meta.events.unregister("before-send.s3", count)
    assert [u for _, u, copy in seen if copy] == [], "no copy: nothing is renamed"
    puts = sorted(u.split("/cloudzero_default/", 1)[1] for m, u, _ in seen if m == "PUT")
    stage = "2026-11-01T10Z"
    assert puts == sorted([
        f"{stage}/cbf.jsonl", f"{stage}/extract.json", f"{stage}/extract.jsonl", f"{stage}/transform.json",
        *["manifests/2026-11-01T10Z.json"] * puts.count("manifests/2026-11-01T10Z.json"),
    ]), puts  # fmt: skip
    assert 1 <= puts.count("manifests/2026-11-01T10Z.json") <= 3, "sending, exported (and the empty-check)"
    deletes = [u for m, u, _ in seen if m == "DELETE"]
    assert all(
        u.rsplit("/", 1)[-1] in ("extract.json", "quarantine.jsonl", "transform.json") for u in deletes
    ), "only stale outputs are removed before a step writes anew"
    assert s3_staging.read_json(f"staging/cloudzero_default/manifests/{stage}.json")["status"] == "exported"


def test_a_daily_extract_builds_its_rows_on_s3_as_the_transform_would(env, s3_staging):
    """The daily extract's rows built as it reads, on S3: each file one PUT of what the transform builds itself."""
    import psycopg2

    from cloudzero_provider.operators.extract import LiteLLMSpendExtractOperator
    from cloudzero_provider.operators.transform import CBFTransformOperator
    from cloudzero_provider.options import ExportOptions
    from cloudzero_provider.pipeline.transform import transform_window

    with psycopg2.connect(env["db"]) as conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO "LiteLLM_DailyTeamSpend" (id, team_id, date, api_key, model, custom_llm_provider,
                   prompt_tokens, completion_tokens, spend, api_requests, successful_requests, failed_requests,
                   updated_at)
               SELECT 'r' || d || '-' || i, 't' || (i % 4), to_char(date '2026-11-01' + d, 'YYYY-MM-DD'), 'k' || i,
                      'm', 'openai', 10, 5, 0.1 * (i + d), 2, 2, 0, now()
               FROM generate_series(0, 2) AS d, generate_series(0, 9) AS i"""
        )
    conn.close()
    kw = {"window_start": "2026-11-01T00:00:00Z", "window_end": "2026-11-04T00:00:00Z",
          "options": ExportOptions(dimensions=["team_id"])}  # fmt: skip
    extract = LiteLLMSpendExtractOperator(task_id="e", source="daily_team", **kw)
    extract.execute({})
    stage = "staging/cloudzero_default/2026-11-01T00Z--2026-11-04T00Z"
    assert s3_staging.object_keys(stage) == [f"{stage}/{name}" for name in
                                             ("cbf.jsonl", "extract.json", "extract.jsonl", "transform.json")]  # fmt: skip
    record = s3_staging.read_json(f"{stage}/transform.json")
    assert record["built_from"]["cbf_sha256"]
    transformed = CBFTransformOperator(task_id="t", **kw).execute({})
    assert s3_staging.read_json(f"{stage}/transform.json") == record  # taken as built
    built = s3_staging.client.get_object(Bucket=s3_staging.bucket, Key=f"{stage}/cbf.jsonl")["Body"].read()
    window = extract.window({})
    assert (
        transform_window(window, extract.stage(window), max_rows_per_hour=5000, take_built=False)
        == transformed
    )
    rebuilt = s3_staging.client.get_object(Bucket=s3_staging.bucket, Key=f"{stage}/cbf.jsonl")["Body"].read()
    assert rebuilt == built and transformed["rows"] == 12 and transformed["cost"] == "16.5"
    assert local_staged_files() == []
