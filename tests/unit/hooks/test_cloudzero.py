"""CloudZeroHook against the double over real HTTP: retries, errors, headers, secrecy."""

from __future__ import annotations

import json
import logging
import time
from decimal import Decimal

import pytest
import requests

import cloudzero_provider.hooks.cloudzero as cz
from cloudzero_provider.hooks.cloudzero import (
    TEST_KEY_HEADER,
    CloudZeroAPIError,
    CloudZeroHook,
    CloudZeroRequestTooLarge,
    CloudZeroTransientError,
)
from cloudzero_provider.testing.fixtures import API_KEY, CONNECTION_ID, cloudzero_conn_json

H13 = "2026-11-01T13:00:00Z"
BODY = {
    "month": "2026-11",
    "operation": "replace_hourly",
    "data": [{"time/usage_start": H13, "cost/cost": "0.25"}],
}


def fast_hook(**kw) -> CloudZeroHook:
    return CloudZeroHook(max_wait=0.2, **kw)


def statuses(double):
    return [r["status"] for r in double.double.requests]


def test_post_list_get_validate(double, cloudzero_conn):
    hook = CloudZeroHook()
    drop = hook.post_billing_drop(BODY, idempotency_key="idem-1")
    assert drop["row_count"] == 1 and drop["drop_id"]
    assert hook.list_billing_drops() == [drop]
    assert hook.get_billing_drop("2026-11") == BODY["data"]
    assert hook.get_billing_drop("2026-10") is None
    assert hook.validate_billing_drop(BODY) == {"is_valid": True, "errors": []}
    sent = double.double.requests[0]
    assert sent["idempotency_key"] == "idem-1"
    assert all(r["idempotency_key"] is None for r in double.double.requests[1:])


def test_exact_bytes_are_sent(double, cloudzero_conn):
    raw = json.dumps(BODY).encode()
    CloudZeroHook().post_billing_drop(raw)
    assert double.double.requests[0]["content_length"] == len(raw)


def test_429_with_retry_after_is_honoured(double, cloudzero_conn, capsys):
    double.fail_next(2, 429, retry_after="1")
    started = time.monotonic()
    CloudZeroHook(max_wait=5).post_billing_drop(BODY)
    assert statuses(double) == [429, 429, 200]
    assert time.monotonic() - started >= 2.0, "it waited the Retry-After twice"
    logged = capsys.readouterr().out
    assert "HTTP 429: injected fault: HTTP 429; retrying in 1.0s (attempt 2 of 6)" in logged
    assert "retrying in 1.0s (attempt 3 of 6)" in logged


def test_retry_after_is_waited_in_full_not_cut_to_max_wait(double, cloudzero_conn, capsys):
    double.fail_next(1, 429, retry_after="2")
    started = time.monotonic()
    CloudZeroHook(max_wait=0.2).post_billing_drop(BODY)
    assert time.monotonic() - started >= 2.0, "Retry-After is a floor: max_wait caps only our own backoff"
    assert "retrying in 2.0s (attempt 2 of 6)" in capsys.readouterr().out
    assert statuses(double) == [429, 200]


@pytest.mark.parametrize("retry_after", ["120", "3600"])
def test_a_longer_retry_after_hands_over_to_airflow_with_that_delay(double, cloudzero_conn, retry_after):
    from datetime import timedelta

    from cloudzero_provider.retries import RetryAfterPolicy

    double.fail_next(1, 429, retry_after=retry_after)
    started = time.monotonic()
    with pytest.raises(CloudZeroTransientError) as info:
        CloudZeroHook(max_wait=0.2, max_retry_time=5).post_billing_drop(BODY)
    assert time.monotonic() - started < 2, "no early retry, and no wait beyond the task's own budget"
    assert statuses(double) == [429], "never retried early"
    assert info.value.retry_after == float(retry_after)
    assert f"it asked to wait {retry_after} s (Retry-After)" in str(info.value)
    assert f"handing over to Airflow's retry, which waits {retry_after} s" in str(info.value)
    decision = RetryAfterPolicy().evaluate(info.value, try_number=1, max_tries=4)
    assert decision.action.value == "retry" and decision.retry_delay == timedelta(seconds=float(retry_after))
    other = RetryAfterPolicy().evaluate(CloudZeroTransientError("HTTP 503"), try_number=1, max_tries=4)
    assert other.action.value == "default" and other.retry_delay is None


def test_redirect_is_not_followed_nothing_applied_and_retried(double, cloudzero_conn):
    double.redirect_next(1, status=301, location="https://gateway.example/login?next=/v2")
    drop = fast_hook().post_billing_drop(BODY, idempotency_key="after-redirect")
    assert [(r["method"], r["status"]) for r in double.double.requests] == [("POST", 301), ("POST", 200)]
    assert drop["drop_id"] and drop["row_count"] == 1
    assert double.double.cost_by_hour(CONNECTION_ID) == {H13: Decimal("0.25")}


def test_a_redirect_that_stays_fails_naming_where_it_pointed(double, cloudzero_conn):
    double.redirect_next(5, status=308, location="https://gateway.example/elsewhere")
    with pytest.raises(CloudZeroTransientError) as info:
        fast_hook(max_attempts=2).post_billing_drop(BODY)
    assert "HTTP 308: redirected to 'https://gateway.example/elsewhere', not followed" in str(info.value)
    assert "set the connection's host to the API's own https:// URL" in str(info.value)
    assert [r["method"] for r in double.double.requests] == ["POST", "POST"], "no GET to the Location"
    assert double.double.cost_by_hour(CONNECTION_ID) == {}


def test_a_200_without_receipt_is_retried_never_taken_as_done(double, cloudzero_conn, capsys):
    double.hollow_next(1, method="POST")
    drop = fast_hook().post_billing_drop(BODY)
    assert statuses(double) == [200, 200]
    assert "HTTP 200 without a drop receipt" in capsys.readouterr().out
    assert drop == {"drop_id": drop["drop_id"], "month": "2026-11-01T00:00:00Z", "row_count": 1}
    double.hollow_next(3, method="POST")
    with pytest.raises(CloudZeroTransientError, match=r"without a drop receipt .*Sign in to continue"):
        fast_hook(max_attempts=3).post_billing_drop(BODY)
    assert double.double.cost_by_hour(CONNECTION_ID) == {H13: Decimal("0.25")}, (
        "only the receipted drop counts"
    )


def test_hollow_answers_to_reads_are_retried_not_read_as_empty(double, cloudzero_conn):
    hook = fast_hook()
    hook.post_billing_drop(BODY)
    double.hollow_next(1, method="GET")
    assert hook.get_billing_drop("2026-11") == BODY["data"]
    double.hollow_next(2, method="GET")
    with pytest.raises(CloudZeroTransientError, match="without the expected 'billing_drops' list"):
        fast_hook(max_attempts=2).list_billing_drops()


@pytest.mark.parametrize(
    "host", ["http://api.cloudzero.com", "http://10.0.0.7:8123", "http://cloudzero-double:8123", "ftp://x"]
)
def test_plain_http_is_refused_except_on_loopback(double, monkeypatch, host):
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(host))
    with pytest.raises(AirflowFailException) as info:
        fast_hook().post_billing_drop(BODY)
    assert ("would travel in clear text" in str(info.value)) or ("must use https://" in str(info.value))
    assert API_KEY not in str(info.value)
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(host, allow_plain_http=True))
    if host.startswith("http://"):
        assert fast_hook().settings.allow_plain_http is True
    for loopback in (double.url, double.url.replace("127.0.0.1", "localhost")):
        monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(loopback))
        assert fast_hook().post_billing_drop(BODY)["row_count"] == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retried(double, cloudzero_conn, status):
    double.fail_next(3, status)
    fast_hook().post_billing_drop(BODY)
    assert statuses(double) == [status] * 3 + [200]
    assert double.double.cost_by_hour(CONNECTION_ID) == {H13: Decimal("0.25")}


def test_timeout_is_retried(double, cloudzero_conn, capsys):
    double.slow_next(1, 1.5, method="GET")
    drops = fast_hook(timeout=(2, 0.5)).list_billing_drops()
    assert drops == []
    assert "timed out (ReadTimeout); retrying in" in capsys.readouterr().out


def test_dropped_connection_is_retried(double, cloudzero_conn):
    double.drop_next(2)
    fast_hook().post_billing_drop(BODY)
    assert statuses(double) == [200]
    assert double.double.cost_by_hour(CONNECTION_ID) == {H13: Decimal("0.25")}


def test_lost_response_with_idempotency_key_applies_once(double, cloudzero_conn):
    body = {**BODY, "operation": "sum"}
    double.lose_next_response()
    drop = fast_hook().post_billing_drop(body, idempotency_key="sum-once")
    assert double.double.cost_by_hour(CONNECTION_ID) == {H13: Decimal("0.25")}
    assert double.double.requests[-1]["replayed"] is True
    assert drop["row_count"] == 1


def test_transient_failures_are_bounded(double, cloudzero_conn):
    double.fail_next(10, 503)
    with pytest.raises(CloudZeroTransientError, match="still failing after 3 attempts: HTTP 503"):
        fast_hook(max_attempts=3).post_billing_drop(BODY)
    assert len(double.double.requests) == 3, "bounded by max_attempts"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"data": [{"time/usage_start": H13, "cost/cost": "1e-9"}]}, 400, "data[0]: column 'cost/cost'"),
        (
            {"data": [{"time/usage_start": H13, "cost/cost": "1", "lineitem/description": "x" * 6_000_000}]},
            413,
            "too large",
        ),
    ],
)
def test_client_errors_fail_at_once_with_cloudzero_message(double, cloudzero_conn, body, status, message):
    with pytest.raises(CloudZeroAPIError) as info:
        fast_hook().post_billing_drop(body)
    assert info.value.status == status
    assert message in str(info.value)
    assert len(double.double.requests) == 1
    if status == 413:
        assert isinstance(info.value, CloudZeroRequestTooLarge)


@pytest.mark.parametrize("status", [400, 502])
def test_an_answers_message_is_cut_after_the_key_is_scrubbed_whatever_its_size(
    double, cloudzero_conn, caplog, capsys, status
):
    """A 5 MB message (a proxy's page, or an error quoting the request) reaches no log line or exception whole, and
    the key it quotes where the cut falls leaves no part of itself behind."""
    double.fail_next(3, status, message="a" * 490 + API_KEY + "b" * 5_000_000, method="POST")
    with caplog.at_level(logging.INFO), pytest.raises((CloudZeroAPIError, CloudZeroTransientError)) as info:
        fast_hook(max_attempts=3).post_billing_drop(BODY)
    assert "a" * 490 + "***" in str(info.value)
    logged = [r.getMessage() for r in caplog.records] + capsys.readouterr().out.splitlines()
    assert status == 400 or any("still failing" in line or "retrying" in line for line in logged)
    for text in [str(info.value), *logged]:
        assert len(text) < 1_000 and API_KEY[:6] not in text


def _answer(status: int, body: bytes, content_type: str = "text/html") -> requests.Response:
    response = requests.Response()
    response.status_code, response._content, response.encoding = status, body, "utf-8"
    response.headers["Content-Type"] = content_type
    return response


@pytest.mark.parametrize(
    "body",
    [
        b"a" * 495 + API_KEY.encode() + b"b" * 100,  # the key where a message is cut
        b"\n" * 65_530
        + API_KEY.encode(),  # blank lines, then the key: blanking and stripping pull it forward
        b"\t \r" * 30_000 + API_KEY.encode() + b"\x00" * 10,
        json.dumps({"message": "\n" * 70_000 + API_KEY}).encode(),
        json.dumps({"error": {"message": "x" * 499, "type": API_KEY}}).encode(),
    ],
)
def test_no_part_of_the_key_reaches_a_message_whatever_surrounds_it(body):
    def scrub(text: str) -> str:
        return text.replace(API_KEY, "***")

    for message in (
        cz._error_message(_answer(502, body), scrub),
        cz._body_excerpt(_answer(200, body), scrub),
        cz._error_message(_answer(400, body, "application/json"), scrub),
    ):
        assert len(message) <= 500
        assert not any(API_KEY[:n] in message for n in range(4, len(API_KEY) + 1)), message[:80]


def test_an_answer_larger_than_any_of_cloudzeros_is_not_read_and_is_retried(
    double, cloudzero_conn, monkeypatch
):
    monkeypatch.setattr(cz, "MAX_ANSWER_BYTES", 100_000)
    double.fail_next(2, 400, message="x" * 5_000_000, method="POST")
    with pytest.raises(CloudZeroTransientError, match="an answer of more than 100000 bytes, not read"):
        fast_hook(max_attempts=2).post_billing_drop(BODY)
    assert double.double.cost_by_hour(CONNECTION_ID) == {}
    double.fail_next(1, 400, message="x" * 5_000_000, method="POST")
    drop = fast_hook(max_attempts=2).post_billing_drop(
        BODY
    )  # sent on the next attempt, after a refused answer
    assert drop["row_count"] == 1 and double.double.cost_by_hour(CONNECTION_ID) == {H13: Decimal("0.25")}


def test_wrong_key_403_never_shows_the_key(double, monkeypatch, caplog):
    secret = "sk-wrong-key-that-must-not-leak"
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(double.url, key=secret))
    hook = fast_hook()
    with caplog.at_level(logging.DEBUG), pytest.raises(CloudZeroAPIError) as info:
        hook.post_billing_drop(BODY)
    assert info.value.status == 403
    assert len(double.double.requests) == 1, "403 must not be retried"
    assert secret not in str(info.value) and secret not in repr(hook) and secret not in caplog.text
    ok, message = hook.test_connection()
    assert not ok and "403" in message and secret not in message


def test_test_connection_messages(double, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(double.url))
    assert CloudZeroHook().test_connection() == (
        True,
        f"CloudZero at {double.url} accepted the key; AnyCost connection '{CONNECTION_ID}' has 0 billing drop(s).",
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDZERO_DEFAULT",
        json.dumps(
            {
                "conn_type": "cloudzero",
                "host": double.url,
                "password": API_KEY,
                "extra": {"connection_id": "nope"},
            }
        ),
    )
    ok, message = CloudZeroHook().test_connection()
    assert not ok and "does not know AnyCost connection 'nope' (404)" in message
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDZERO_DEFAULT",
        json.dumps({"conn_type": "cloudzero", "host": double.url, "password": API_KEY}),
    )
    ok, message = CloudZeroHook().test_connection()
    assert not ok and 'extra "connection_id"' in message
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json("http://127.0.0.1:9"))
    ok, message = CloudZeroHook(max_wait=0.1).test_connection()
    assert not ok and "unreachable" in message and "connection failed" in message


def test_host_defaults_and_scheme(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDZERO_DEFAULT", json.dumps({"conn_type": "cloudzero", "password": "k" * 12})
    )
    hook = CloudZeroHook()
    hook.get_conn()
    assert hook.base_url == "https://api.cloudzero.com"
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDZERO_DEFAULT",
        json.dumps(
            {
                "conn_type": "cloudzero",
                "host": "proxy.internal",
                "password": "k" * 12,
                "extra": {"connection_id": "c"},
            }
        ),
    )
    hook = CloudZeroHook()
    session = hook.get_conn()
    assert hook.base_url == "https://proxy.internal"
    assert "connection_id" not in session.headers, "connection extras must not become HTTP headers"
    assert session.headers["Authorization"] == "k" * 12


def test_key_surrounding_whitespace_is_stripped(double, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(double.url, key=f"  {API_KEY}\n")
    )
    assert fast_hook().post_billing_drop(BODY)["row_count"] == 1


@pytest.mark.parametrize(
    "key",
    [
        "cz-key-with\nnewline-inside-9981",
        "cz-key with-space-9981",
        "cz-kéy-9981",
        "cz-key-with\r\ncrlf-inside-9981",
        "cz-key-with\x07bell-inside-9981",
        "cz-key-with\x00nul-inside-9981",
        "cz-key-with\ttab-inside-9981",
        "cz-key-ключ-9981",
    ],
)
def test_key_a_header_cannot_carry_is_refused_without_showing_it(double, monkeypatch, caplog, key):
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(double.url, key=key))
    hook = fast_hook()
    with caplog.at_level(logging.DEBUG), pytest.raises(AirflowFailException) as info:
        hook.post_billing_drop(BODY)
    assert "holds a character an HTTP header cannot carry" in str(info.value)
    for part in key.split():
        assert part not in str(info.value) and part not in caplog.text
    assert double.double.requests == [], "nothing was sent"
    ok, message = hook.test_connection()
    assert not ok and "cannot carry" in message and key.split()[0] not in message


def test_request_exceptions_are_scrubbed_of_the_key(double, monkeypatch):
    """requests' InvalidHeader carries the header's value in its text; the hook never lets it through."""
    import requests
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(double.url))
    hook = fast_hook()

    # Raised by requests before anything is sent, from a header value: no answer of the double can cause it.
    def explode(*args, **kwargs):
        raise requests.exceptions.InvalidHeader(f"Invalid leading whitespace in header value: {API_KEY!r}")

    monkeypatch.setattr(hook.session, "request", explode)
    with pytest.raises(AirflowFailException) as info:
        hook.post_billing_drop(BODY)
    assert "InvalidHeader" in str(info.value) and API_KEY not in str(info.value) and "***" in str(info.value)


@pytest.fixture
def secrets_masker():
    """Airflow's real secrets masker -- the task SDK's, which ``mask_secret`` feeds and task logs go through --
    emptied for this test and given back its patterns after."""
    from airflow.sdk._shared.secrets_masker import _secrets_masker

    masker = _secrets_masker()
    saved = (masker.patterns, masker.replacer)
    masker.reset_masker()
    yield masker
    masker.patterns, masker.replacer = saved


def test_key_and_test_key_are_masked_once_the_hook_resolved_them(double, monkeypatch, secrets_masker):
    from airflow.sdk._shared.secrets_masker import redact

    test_key = "cz-test-namespace-key-7731"
    # Pasted with blanks around them, as keys often are: what Airflow itself may mask is the raw value, so only
    # the hook's own masking covers the keys as they are sent.
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDZERO_DEFAULT",
        cloudzero_conn_json(double.url, key=f" {API_KEY}\n", test_key=f"{test_key} "),
    )
    line = f"Authorization: {API_KEY}; cloudzero-test-key: {test_key}"
    assert redact(line) == line, "nothing masked them before the hook"
    hook = fast_hook()
    assert hook.settings.api_key == API_KEY and hook.settings.test_key == test_key
    assert redact(line) == "Authorization: ***; cloudzero-test-key: ***"


def test_test_key_is_sent_only_as_its_header(double, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDZERO_DEFAULT",
        cloudzero_conn_json(double.url, test_key="cz-test-namespace-key-7731"),
    )
    hook = fast_hook()
    hook.post_billing_drop(BODY)
    assert "cz-test-namespace-key-7731" not in repr(hook.settings) and API_KEY not in repr(hook.settings)
    assert double.double.cost_by_hour(CONNECTION_ID, namespace="cz-test-namespace-key-7731") == {
        H13: Decimal("0.25")
    }


@pytest.mark.parametrize("key", [f"{API_KEY}\n", f"{API_KEY}\r\n", f"\t{API_KEY} "])
def test_key_pasted_with_a_line_break_works_and_is_sent_stripped(double, monkeypatch, key):
    """The double accepts only the exact key: a 200 proves the stripped key went out, and nothing else."""
    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(double.url, key=key))
    hook = fast_hook()
    assert hook.settings.api_key == API_KEY
    assert hook.get_conn().headers["Authorization"] == API_KEY
    assert hook.test_connection()[0] is True
    assert hook.list_billing_drops() == []


def test_a_connection_dropped_on_every_attempt_fails_naming_it_without_the_key(
    double, monkeypatch, caplog, capsys
):
    from airflow.sdk.exceptions import AirflowException

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(double.url, key=f"{API_KEY}\n"))
    double.drop_next(2)
    with caplog.at_level(logging.DEBUG), pytest.raises(CloudZeroTransientError) as info:
        fast_hook(max_attempts=2).post_billing_drop(BODY)
    text = str(info.value)
    assert "still failing after 2 attempts: connection failed:" in text and "Connection aborted" in text
    assert isinstance(info.value, AirflowException), "Airflow's retry takes over"
    assert API_KEY not in text and API_KEY not in caplog.text and API_KEY not in capsys.readouterr().out
    assert info.value.__cause__ is None and info.value.__suppress_context__, "the original text stays out"
    assert double.double.requests == [] and double.double.cost_by_hour(CONNECTION_ID) == {}, "nothing applied"


# requests raises these from what it is given (a header value, a URL) or from deep in a transport, never from an
# answer: the double cannot produce them, nor a dropped connection whose text carries the key (the drop itself
# is the double's, above), so they are raised in place of the session's request.
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # InvalidHeader quotes the header value with repr(): the escaped form of the raw key must go too.
        (requests.exceptions.InvalidHeader(f"bad header value: {API_KEY + chr(10)!r}"), "InvalidHeader"),
        (requests.exceptions.InvalidURL(f"Invalid URL 'x/{API_KEY}'"), "InvalidURL"),
        (requests.exceptions.RequestException(f"key={API_KEY}"), "RequestException"),
        (
            requests.exceptions.ConnectionError(f"reset while sending {API_KEY}"),
            "still failing after 2 attempts: connection failed: reset while sending ***",
        ),
    ],
)
def test_every_requests_exception_is_scrubbed_of_the_key(
    double, monkeypatch, caplog, capsys, error, expected
):
    from airflow.sdk.exceptions import AirflowException

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(double.url, key=f"{API_KEY}\n"))
    hook = fast_hook(max_attempts=2)

    def explode(*args, **kwargs):
        raise error

    monkeypatch.setattr(hook.session, "request", explode)
    with caplog.at_level(logging.DEBUG), pytest.raises(AirflowException) as info:
        hook.post_billing_drop(BODY)
    text = str(info.value)
    assert expected in text and "***" in text
    assert API_KEY not in text and API_KEY not in caplog.text and API_KEY not in capsys.readouterr().out
    assert info.value.__cause__ is None and info.value.__suppress_context__, "the original text stays out"


@pytest.mark.parametrize("test_key", ["cz-test\nnamespace-7731", "cz-test-ключ-7731", "cz-test\x00nul-7731"])
def test_test_key_a_header_cannot_carry_is_refused_without_showing_it(double, monkeypatch, caplog, test_key):
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(double.url, test_key=test_key))
    hook = fast_hook()
    with caplog.at_level(logging.DEBUG), pytest.raises(AirflowFailException) as info:
        hook.post_billing_drop(BODY)
    assert '"test_key"' in str(info.value) and "cannot carry" in str(info.value)
    for part in (*test_key.split(), test_key):
        assert part not in str(info.value) and part not in caplog.text
    assert double.double.requests == [], "nothing was sent"


def test_test_key_is_never_logged(double, monkeypatch, caplog, capsys):
    """With Airflow's masker out of the way, the test key still shows in no log line: the hook never logs it.
    (That the hook masks it is proven with the real masker above.)"""
    monkeypatch.setattr("airflow.sdk.log.mask_secret", lambda value, *a, **k: None)
    test_key = "cz-test-namespace-key-4410"
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDZERO_DEFAULT", cloudzero_conn_json(double.url, test_key=f" {test_key}\n")
    )
    double.fail_next(1, 503)
    hook = fast_hook()
    with caplog.at_level(logging.DEBUG):
        hook.post_billing_drop(BODY)
        assert hook.test_connection()[0] is True
    assert hook.get_conn().headers[TEST_KEY_HEADER] == test_key
    assert statuses(double)[0] == 503, "a retry was logged"
    assert test_key not in caplog.text and test_key not in capsys.readouterr().out
    assert test_key not in repr(hook.settings) and test_key not in str(hook.settings)


def test_settings_resolved_once_extras_override_arguments(double, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDZERO_DEFAULT",
        cloudzero_conn_json(
            double.url, max_attempts="4", timeout=[1, 2], max_wait=0.1, metric_name="llm-cost"
        ),
    )
    hook = CloudZeroHook(max_attempts=9, max_wait=7.0, max_retry_time=42.0)
    assert (hook.max_attempts, hook.max_wait, hook.max_retry_time, hook.timeout) == (4, 0.1, 42.0, (1.0, 2.0))
    assert (hook.connection_id, hook.metric_name) == (CONNECTION_ID, "llm-cost")
    assert hook.settings is hook.settings and hook.connection is hook.connection

    # Counting reads of the connection's extra: resolving the settings and the scrubber read it once each,
    # however many attempts fail.
    connection, reads = hook.connection, []

    class Counting:
        def __getattr__(self, name):
            reads.append(name)
            return getattr(connection, name)

    hook.__dict__["connection"] = Counting()
    del hook.__dict__["settings"]
    double.fail_next(3, 503)
    hook.post_billing_drop(BODY)
    assert statuses(double) == [503, 503, 503, 200]
    assert reads.count("extra_dejson") == 2


def test_test_connection_keeps_the_hooks_own_settings(double, cloudzero_conn):
    hook = fast_hook(max_attempts=5)
    settings = hook.settings
    assert hook.test_connection()[0] is True
    assert hook.settings is settings and hook.max_attempts == 5


def test_session_keeps_httphooks_keep_alive_adapter(monkeypatch):
    from requests.adapters import HTTPAdapter

    monkeypatch.setenv(
        "AIRFLOW_CONN_CLOUDZERO_DEFAULT", json.dumps({"conn_type": "cloudzero", "password": "k" * 12})
    )
    hook = CloudZeroHook()
    assert hook.keep_alive_adapter is not None
    assert hook.get_conn().get_adapter("https://api.cloudzero.com/x") is hook.keep_alive_adapter
    adapter = HTTPAdapter()
    assert CloudZeroHook(adapter=adapter).get_conn().get_adapter("https://api.cloudzero.com/x") is adapter
