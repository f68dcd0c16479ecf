"""The CloudZero double over real HTTP: CloudZero's documented semantics, validation and faults."""

from __future__ import annotations

import json
import threading
from decimal import Decimal

import pytest
import requests

from cloudzero_provider.testing.double import CloudZeroDouble
from cloudzero_provider.testing.server import CloudZeroDoubleServer

KEY = "double-key-123"
CONN = "conn-a"


def row(hour: str, cost: str, rid: str = "czrn:litellm:x:cross-region:t:llm-usage:m", **extra: str) -> dict:
    return {"time/usage_start": hour, "cost/cost": cost, "resource/id": rid, **extra}


@pytest.fixture
def srv():
    with CloudZeroDoubleServer(CloudZeroDouble(KEY, connections={CONN}, max_body_bytes=20_000)) as server:
        yield server


def post(srv, body, *, key=KEY, conn=CONN, headers=None):
    hdrs = {"Authorization": key, **(headers or {})}
    return requests.post(
        f"{srv.url}/v2/connections/billing/anycost/{conn}/billing_drops", json=body, headers=hdrs
    )


def month_rows(srv, month="2026-11"):
    r = requests.get(
        f"{srv.url}/v2/connections/billing/anycost/{CONN}/billing_drops/{month}",
        headers={"Authorization": KEY},
    )
    return r.status_code, (r.json().get("billing_drop") if r.status_code == 200 else r.json())


H13, H14, H15 = "2026-11-01T13:00:00Z", "2026-11-01T14:00:00Z", "2026-11-01T15:00:00Z"


def test_bare_key_only(srv):
    assert post(srv, {"data": [row(H13, "1")]}).status_code == 200
    bearer = post(srv, {"data": [row(H13, "1")]}, key=f"Bearer {KEY}")
    assert bearer.status_code == 403
    assert "not a bearer token" in bearer.json()["message"]
    assert post(srv, {"data": [row(H13, "1")]}, key="nope").status_code == 403
    assert requests.get(f"{srv.url}/v2/connections/billing/anycost/{CONN}/billing_drops").status_code == 403


def test_unknown_connection_is_404(srv):
    r = post(srv, {"data": [row(H13, "1")]}, conn="other")
    assert r.status_code == 404
    assert "other" in r.json()["error"]["message"]


def test_413_above_body_limit(srv):
    rows = [row(H13, "1", lineitem_pad="x" * 100) for _ in range(300)]
    r = post(srv, {"month": "2026-11", "operation": "sum", "data": rows})
    assert r.status_code == 413
    assert srv.double.rows(CONN) == []


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"cost/cost": "1e-07"}, "data[1]: column 'cost/cost': '1e-07' is not a plain non-negative decimal"),
        ({"cost/cost": "-1"}, "data[1]: column 'cost/cost'"),
        ({"usage/amount": 12}, "data[1]: column 'usage/amount': value must be a string, got int"),
        ({"time/usage_start": "2026-11-01 13:00"}, "data[1]: column 'time/usage_start'"),
        ({"resource/tag:has space": "x"}, "data[1]: column 'resource/tag:has space': tag key"),
        ({"lineitem/type": "Refund"}, "data[1]: column 'lineitem/type'"),
        ({"cost/costs": "1"}, "data[1]: unknown column 'cost/costs'"),
    ],
)
def test_validation_names_row_and_column(srv, bad, expected):
    data = [row(H13, "1"), {**row(H13, "2"), **bad}]
    r = post(srv, {"month": "2026-11", "operation": "sum", "data": data})
    assert r.status_code == 400
    assert expected in r.json()["error"]["message"]
    assert srv.double.rows(CONN) == []


def test_tags_need_resource_id(srv):
    r = post(srv, {"data": [{"time/usage_start": H13, "cost/cost": "1", "resource/tag:team": "a"}]})
    assert r.status_code == 400
    assert "data[0]: column 'resource/id' is required" in r.json()["error"]["message"]


def test_rows_outside_the_month_are_refused(srv):
    r = post(
        srv, {"month": "2026-11-01T00:00:00Z", "data": [row(H13, "1"), row("2026-12-01T00:00:00Z", "1")]}
    )
    assert r.status_code == 400
    assert "data[1]" in r.json()["error"]["message"] and "2026-11" in r.json()["error"]["message"]


def test_operations_month_semantics(srv):
    assert post(srv, {"month": "2026-11", "operation": "sum", "data": [row(H13, "1"), row(H14, "2")]}).ok
    assert post(srv, {"month": "2026-11", "operation": "sum", "data": [row(H14, "3")]}).ok
    assert srv.double.cost_by_hour(CONN) == {H13: Decimal(1), H14: Decimal(5)}
    # replace_hourly replaces only the hours present in the request
    assert post(
        srv, {"month": "2026-11", "operation": "replace_hourly", "data": [row(H14, "7"), row(H15, "1")]}
    ).ok
    assert srv.double.cost_by_hour(CONN) == {H13: Decimal(1), H14: Decimal(7), H15: Decimal(1)}
    # another month is untouched by anything sent for November
    assert post(srv, {"month": "2026-10", "operation": "sum", "data": [row("2026-10-31T23:00:00Z", "9")]}).ok
    # replace_drop replaces the whole month
    assert post(srv, {"month": "2026-11", "operation": "replace_drop", "data": [row(H15, "4")]}).ok
    assert srv.double.cost_by_hour(CONN) == {"2026-10-31T23:00:00Z": Decimal(9), H15: Decimal(4)}
    status, rows = month_rows(srv, "2026-11")
    assert status == 200 and rows == [row(H15, "4")]
    # the month path accepts YYYY-MM and a full datetime; an empty month is 404
    assert month_rows(srv, "2026-10-01T00:00:00Z")[0] == 200
    assert month_rows(srv, "2026-09")[0] == 404
    drops = requests.get(
        f"{srv.url}/v2/connections/billing/anycost/{CONN}/billing_drops", headers={"Authorization": KEY}
    ).json()
    assert [d["row_count"] for d in drops["billing_drops"]] == [2, 1, 2, 1, 1]
    assert drops["billing_drops"][0]["month"] == "2026-11-01T00:00:00Z"


def test_default_operation_is_replace_drop(srv):
    assert post(srv, {"data": [row(H13, "1"), row(H14, "1")]}).ok
    assert post(srv, {"data": [row(H15, "2")]}).ok
    assert srv.double.cost_by_hour(CONN) == {H15: Decimal(2)}


def test_validate_endpoint_stores_nothing(srv):
    url = f"{srv.url}/v2/connections/billing/anycost/validate_billing_drop"
    good = requests.post(url, json={"data": [row(H13, "0.5")]}, headers={"Authorization": KEY}).json()
    assert good == {"connection": {"is_valid": True, "errors": []}}
    bad = requests.post(url, json={"data": [row(H13, "1.")]}, headers={"Authorization": KEY}).json()
    assert bad["connection"]["is_valid"] is False
    assert bad["connection"]["errors"] == [
        "data[0]: column 'cost/cost': '1.' is not a plain non-negative decimal"
    ]
    assert srv.double.rows(CONN) == []


def test_idempotency_key_replays_first_answer(srv):
    first = post(
        srv, {"operation": "sum", "data": [row(H13, "1")]}, headers={"cloudzero-idempotency-key": "k1"}
    )
    again = post(
        srv, {"operation": "sum", "data": [row(H13, "1")]}, headers={"cloudzero-idempotency-key": "k1"}
    )
    assert first.json() == again.json()
    assert srv.double.cost_by_hour(CONN) == {H13: Decimal(1)}
    # errors are replayed too, even when the body is now valid
    bad = post(srv, {"data": [row(H13, "x")]}, headers={"cloudzero-idempotency-key": "k2"})
    later = post(
        srv, {"operation": "sum", "data": [row(H13, "1")]}, headers={"cloudzero-idempotency-key": "k2"}
    )
    assert bad.status_code == later.status_code == 400
    assert srv.double.cost_by_hour(CONN) == {H13: Decimal(1)}
    assert [r.get("replayed", False) for r in srv.double.requests] == [False, True, False, True]


def test_test_key_namespace_is_separate(srv):
    assert post(srv, {"data": [row(H13, "1")]}, headers={"cloudzero-test-key": "ns"}).ok
    assert srv.double.rows(CONN) == []
    assert srv.double.cost_by_hour(CONN, namespace="ns") == {H13: Decimal(1)}


def test_concurrent_requests_to_one_stream_are_detected():
    double = CloudZeroDouble(KEY, processing_delay=1.0)  # wide enough that the two threads always overlap
    with CloudZeroDoubleServer(double) as srv:
        post(srv, {"operation": "sum", "data": [row(H13, "1")]})
        post(srv, {"operation": "sum", "data": [row(H13, "1")]})
        assert double.concurrent_requests == 0
        threads = [
            threading.Thread(target=post, args=(srv, {"operation": "sum", "data": [row(H13, "1")]}))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert double.concurrent_requests == 1


def test_injected_faults(srv):
    srv.fail_next(1, 503)
    srv.fail_next(1, 429, retry_after="3")
    r1 = post(srv, {"data": [row(H13, "1")]})
    r2 = post(srv, {"data": [row(H13, "1")]})
    assert (r1.status_code, r2.status_code, r2.headers["Retry-After"]) == (503, 429, "3")
    assert srv.double.rows(CONN) == []
    srv.lose_next_response()
    with pytest.raises(requests.ConnectionError):
        post(srv, {"operation": "sum", "data": [row(H13, "1")]})
    assert srv.double.cost_by_hour(CONN) == {H13: Decimal(1)}, "a lost response was still applied"
    srv.drop_next()
    with pytest.raises(requests.ConnectionError):
        post(srv, {"operation": "sum", "data": [row(H13, "1")]})
    assert srv.double.cost_by_hour(CONN) == {H13: Decimal(1)}, "a dropped request was not applied"


def test_control_api_over_http(srv):
    requests.post(f"{srv.url}/_double/faults", json={"status": 500, "count": 2})
    assert post(srv, {"data": [row(H13, "1")]}).status_code == 500
    assert post(srv, {"data": [row(H13, "1")]}).status_code == 500
    assert post(srv, {"data": [row(H13, "1")]}).status_code == 200
    state = requests.get(f"{srv.url}/_double/state").json()
    assert state["streams"][CONN]["months"]["2026-11"] == [row(H13, "1")]
    assert KEY not in json.dumps(state)
    requests.post(f"{srv.url}/_double/reset")
    assert srv.double.rows(CONN) == []


def test_fault_after_lets_requests_through_first(srv):
    srv.fail_next(2, 500, method="POST", after=1)
    codes = [post(srv, {"operation": "sum", "data": [row(H13, "1")]}).status_code for _ in range(4)]
    assert codes == [200, 500, 500, 200]


def test_periodic_faults_hit_every_nth_request():
    from cloudzero_provider.testing.server import Fault

    with CloudZeroDoubleServer(CloudZeroDouble("k", connections={"c"})) as srv:
        srv.fail_every(3, Fault("status", status=503, method="GET"))
        srv.fail_every(2, Fault("status", status=429, retry_after="1", method="GET"))
        got = [
            requests.get(f"{srv.url}/v2/connections/billing/anycost/c/billing_drops", headers={"Authorization": "k"},
                         timeout=5).status_code
            for _ in range(7)
        ]  # fmt: skip
    assert got == [200, 429, 503, 429, 200, 503, 200]


def test_clearing_faults_stops_periodic_and_queued_ones_and_keeps_the_data():
    from cloudzero_provider.testing.server import Fault

    with CloudZeroDoubleServer(CloudZeroDouble(KEY, connections={CONN})) as srv:
        srv.fail_every(2, Fault("status", status=503, method="POST"))
        codes = [post(srv, {"operation": "sum", "data": [row(H13, "1")]}).status_code for _ in range(4)]
        assert codes == [200, 503, 200, 503]
        srv.fail_next(1, 500, method="POST")
        srv.clear_faults()
        codes = [post(srv, {"operation": "sum", "data": [row(H13, "1")]}).status_code for _ in range(4)]
        assert codes == [200] * 4, "no queued or periodic fault is left"
        assert srv.double.cost_by_hour(CONN) == {H13: Decimal(6)}, "the data stays"
        assert len(srv.double.requests) == 8, "the request log stays"
        srv.fail_every(1, Fault("status", status=503, method="POST"))
        srv.fail_next(1, 500, method="POST")
        assert requests.delete(f"{srv.url}/_double/faults", timeout=5).json() == {"queued": 0, "periodic": 0}
        assert post(srv, {"operation": "sum", "data": [row(H13, "1")]}).status_code == 200
        assert srv.double.cost_by_hour(CONN) == {H13: Decimal(7)}
