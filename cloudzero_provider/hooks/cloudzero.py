"""CloudZeroHook: the AnyCost Stream and unit-cost telemetry HTTP client."""

from __future__ import annotations

import ipaddress
import itertools
import json
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from typing import Any
from urllib.parse import quote, urlparse

import requests
import tenacity
from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk.exceptions import AirflowException, AirflowFailException

DEFAULT_API_BASE = "https://api.cloudzero.com"
ANYCOST_PATH = "/v2/connections/billing/anycost"
TELEMETRY_PATH = "/unit-cost/v1/telemetry/metric"
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
IDEMPOTENCY_HEADER = "cloudzero-idempotency-key"
TEST_KEY_HEADER = "cloudzero-test-key"
# A wait CloudZero asks for beyond this is not believed: Airflow's retry waits at most this long.
MAX_RETRY_AFTER = 6 * 3600.0
# The largest answer read into memory (a receipt is a few hundred bytes, a list of every drop a connection ever had a
# few megabytes); the month's rows are streamed instead. Anything larger is not CloudZero's answer.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# A drop id as CloudZero issues it (a UUID): anything else in its place is not a receipt.
_DROP_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class CloudZeroAPIError(AirflowFailException):
    """CloudZero refused a request for a reason a retry cannot fix (400, 403, 404, 413)."""

    def __init__(self, status: int, message: str, *, method: str, path: str) -> None:
        self.status = status
        self.api_message = message
        self.method = method
        self.path = path
        super().__init__(f"CloudZero answered {status} to {method} {path}: {message}")


class CloudZeroRequestTooLarge(CloudZeroAPIError):
    """413: the request body is above CloudZero's 5 MB limit; the caller may split it and send again."""


class CloudZeroTransientError(AirflowException):
    """CloudZero stayed unavailable (429, 5xx, timeouts, dropped connections, answers without a receipt) after
    every in-task retry.

    Derives from ``AirflowException`` so that Airflow's own task retries take over. ``retry_after`` is the wait
    CloudZero asked for when it is longer than the hook may wait inside the task: the ready DAGs'
    :class:`~cloudzero_provider.retries.RetryAfterPolicy` makes Airflow's next try wait that long, never less.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Retryable(Exception):
    """One failed attempt that is worth another try; ``retry_after`` is CloudZero's hint in seconds."""

    def __init__(self, description: str, retry_after: float | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.retry_after = retry_after


def _retry_after_seconds(value: str | None) -> float | None:
    """
    Seconds to wait from a ``Retry-After`` header, or ``None`` when there is none or it cannot be read.

    :param value: The header: delta-seconds or an HTTP date (RFC 9110 allows both). At most
        :data:`MAX_RETRY_AFTER` is believed.
    """
    if not value or len(value) > 64:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            from email.utils import parsedate_to_datetime

            import pendulum

            seconds = (parsedate_to_datetime(value) - pendulum.now("UTC")).total_seconds()
        except (TypeError, ValueError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def _same(text: str) -> str:
    return text


def _excerpt(text: str, limit: int, scrub: Callable[[str], str]) -> str:
    """Text from an answer made fit for a message: secrets scrubbed from all of it (an answer is at most
    :data:`MAX_ANSWER_BYTES`), then cut to ``limit`` characters, then control characters blanked -- in that order,
    so that neither a cut nor the blanking can bring part of a secret into the message."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", scrub(text)[:limit]).strip()


def _body_excerpt(response: requests.Response, scrub: Callable[[str], str] = _same) -> str:
    """The start of an answer's body, for a message: scrubbed, printable, at most 200 characters."""
    return _excerpt(response.text or "", 200, scrub) or "(empty body)"


def _receipt(response: requests.Response, scrub: Callable[[str], str] = _same) -> dict[str, Any]:
    """
    CloudZero's receipt for a billing drop, as it came: ``{"drop_id", "month", "row_count"}``.

    :raises _Retryable: The answer holds no receipt (a gateway, proxy or captive portal answered instead of
        CloudZero, or the answer was cut): the drop may not have been applied, so it is sent again.
    """
    try:
        payload = response.json()
    except ValueError:
        payload = None
    connection = payload.get("connection") if isinstance(payload, Mapping) else None
    drop_id = connection.get("drop_id") if isinstance(connection, Mapping) else None
    if not isinstance(drop_id, str) or not _DROP_ID.fullmatch(drop_id):
        raise _Retryable(
            f"HTTP {response.status_code} without a drop receipt (no connection.drop_id in the answer: "
            f"{_body_excerpt(response, scrub)!r}); the drop may not have been applied"
        )
    assert isinstance(connection, Mapping)
    receipt: dict[str, Any] = {"drop_id": drop_id}
    month, rows = connection.get("month"), connection.get("row_count")
    if isinstance(month, str) and len(month) <= 40:
        receipt["month"] = month
    if isinstance(rows, int) and not isinstance(rows, bool) and 0 <= rows < 10**9:
        receipt["row_count"] = rows
    return receipt


def _json_field(response: requests.Response, key: str, scrub: Callable[[str], str] = _same) -> list[Any]:
    """The list under ``key`` in a JSON answer; an answer of another shape is retried, never read as empty."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    value = payload.get(key) if isinstance(payload, Mapping) else None
    if not isinstance(value, list):
        raise _Retryable(
            f"HTTP {response.status_code} without the expected {key!r} list: {_body_excerpt(response, scrub)!r}"
        )
    return value


def _read_bounded(response: requests.Response, limit: int) -> None:
    """Read an answer into ``response`` (``.content``, ``.json()`` as usual); one of more than ``limit`` bytes is
    left unread and retried like a 503, and one cut off midway is retried too."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(chunk_size=65_536):
            size += len(chunk)
            if size > limit:
                response.close()
                raise _Retryable(
                    f"HTTP {response.status_code} with an answer of more than {limit} bytes, not read: CloudZero's "
                    "answers are small, so something else answered in its place",
                    _retry_after_seconds(response.headers.get("Retry-After")),
                )
            chunks.append(chunk)
    except requests.exceptions.RequestException as exc:
        raise _Retryable(f"HTTP {response.status_code}, its answer cut off ({type(exc).__name__})") from None
    response._content = b"".join(chunks)


def _json_stream(response: requests.Response, scrub: Callable[[str], str] = _same) -> Iterator[bytes]:
    """The body of a streamed answer, in chunks, once its first bytes show a JSON object (a gateway's HTML page
    in CloudZero's place is retried like a 503, not read as a month without rows)."""
    chunks = response.iter_content(chunk_size=65_536)
    first = next(chunks, b"")
    if not first.lstrip().startswith(b"{"):
        raise _Retryable(
            f"HTTP {response.status_code} that is not a JSON object: "
            f"{_excerpt(first.decode('utf-8', 'replace'), 200, scrub)!r}"
        )
    return itertools.chain([first], chunks)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error_message(response: requests.Response, scrub: Callable[[str], str] = _same) -> str:
    """CloudZero's own message: ``{"error": {"message"}}`` for 400/404, ``{"message"}`` for 403/413; scrubbed,
    printable and at most 500 characters, whatever the answer holds."""
    try:
        payload = response.json()
    except ValueError:
        return _excerpt(response.text or response.reason or "", 500, scrub) or "(empty response)"
    error = payload.get("error") if isinstance(payload, Mapping) else None
    if isinstance(error, Mapping) and error.get("message"):
        kind = error.get("type")
        text = str(error["message"]) + (f" ({kind})" if kind else "")
    elif isinstance(payload, Mapping) and payload.get("message"):
        text = str(payload["message"])
    else:
        text = json.dumps(payload)
    return _excerpt(text, 500, scrub) or "(empty response)"


@dataclass(frozen=True)
class CloudZeroSettings:
    """
    What a ``cloudzero`` connection configures, resolved once per hook. The keys never show in its repr.

    :param base_url: API base URL without a trailing slash.
    :param api_key: The key, stripped, sent bare in ``Authorization``.
    :param connection_id: The AnyCost Stream connection, if the connection names one.
    :param metric_name: The unit-cost telemetry metric, if any.
    :param test_key: Sent as ``cloudzero-test-key``: requests run in CloudZero's one-hour test namespace.
    :param timeout: Timeout of one attempt: seconds, or ``(connect, read)``.
    :param max_attempts: Attempts per request, the first one included.
    :param max_wait: Longest single wait between attempts, in seconds.
    :param max_retry_time: Seconds after which retrying one request stops.
    :param verify: TLS verification: ``True``, ``False`` or a CA bundle path.
    :param proxies: requests' proxies mapping.
    :param allow_plain_http: The connection's opt-in to ``http://`` on a host that is not loopback.
    """

    base_url: str
    api_key: str = field(repr=False)
    connection_id: str | None
    metric_name: str | None
    test_key: str | None = field(repr=False)
    timeout: float | tuple[float, float]
    max_attempts: int
    max_wait: float
    max_retry_time: float
    verify: bool | str
    proxies: dict[str, str]
    allow_plain_http: bool = False


# An API key is visible ASCII: a space, line break, control or non-ASCII character inside one is a paste error,
# and some of them (CR/LF) would let the key split the request's headers.
_KEY_SAFE = re.compile(r"[\x21-\x7e]+")  # fullmatch: "$" would let a final "\n" through
# The test key is a namespace label chosen by the user: allow what an HTTP header value can carry (printable
# latin-1, inner spaces included), refuse control characters and anything http.client cannot encode.
_HEADER_VALUE_SAFE = re.compile(r"[\x20-\x7e\xa0-\xff]+")


def _base_url(host: str | None, schema: str | None, port: int | None, default: str = DEFAULT_API_BASE) -> str:
    """
    The API base URL of a connection, without a trailing slash.

    :param host: The connection's host: a full URL, a bare host name, or empty for ``default``.
    :param schema: The scheme to use when ``host`` has none; ``https`` when empty.
    :param port: Appended when ``host`` carries no port of its own.
    :param default: The URL used when ``host`` is empty.
    """
    url = (host or "").strip() or default
    if "://" not in url:
        # An API key must not travel in clear text by accident: without a scheme, https.
        url = f"{schema or 'https'}://{url}"
    if port and not urlparse(url).port:
        url = f"{url}:{port}"
    return url.rstrip("/")


class CloudZeroHook(HttpHook):
    """
    Talk to CloudZero's AnyCost Stream (billing drops) and unit-cost telemetry APIs.

    The ``cloudzero`` connection holds the API base URL in ``host`` (empty means
    ``https://api.cloudzero.com``), the API key in ``password`` and, in ``extra``, the AnyCost Stream
    ``connection_id`` and optionally the telemetry ``metric_name``.

    The key is sent bare in the ``Authorization`` header (CloudZero's keys are not bearer tokens). Transient
    failures -- 429 (honouring ``Retry-After``), 5xx, timeouts, dropped connections -- are retried with bounded
    exponential backoff; 400/403/404/413 raise :class:`CloudZeroAPIError` at once, which Airflow does not retry.

    Built on HttpHook's public surface, as the dbt Cloud hook is: ``get_conn`` builds the session from settings
    resolved once from the connection (:attr:`settings`), ``test_connection`` lists the stream's drops.

    :param cloudzero_conn_id: The Airflow connection of type ``cloudzero``.
    :param max_attempts: Attempts per request, the first one included.
    :param max_wait: Longest backoff between attempts, in seconds. A ``Retry-After`` from CloudZero is waited in
        full when it ends within ``max_retry_time``; a longer one hands over to Airflow's retry.
    :param max_retry_time: Give up retrying one request after this many seconds in total.
    :param timeout: ``(connect, read)`` timeout of one attempt in seconds.

    The connection's extra may override ``timeout``, ``max_attempts``, ``max_wait``, ``max_retry_time``,
    ``verify`` and ``proxies``; ``test_key`` runs requests in CloudZero's one-hour test namespace. The base URL
    must be ``https://`` (``http://`` only for loopback, or with the extra ``"allow_plain_http": true``).
    """

    conn_name_attr = "cloudzero_conn_id"
    default_conn_name = "cloudzero_default"
    conn_type = "cloudzero"
    hook_name = "CloudZero"
    default_host = DEFAULT_API_BASE

    def __init__(
        self,
        cloudzero_conn_id: str = default_conn_name,
        *,
        max_attempts: int = 6,
        max_wait: float = 30.0,
        max_retry_time: float = 300.0,
        timeout: float | tuple[float, float] = (10.0, 120.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(method="POST", http_conn_id=cloudzero_conn_id, **kwargs)
        self.cloudzero_conn_id = cloudzero_conn_id
        self._defaults = {
            "max_attempts": max_attempts,
            "max_wait": max_wait,
            "max_retry_time": max_retry_time,
            "timeout": timeout,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cloudzero_conn_id={self.cloudzero_conn_id!r})"

    # -- connection -------------------------------------------------------------------------------------

    @cached_property
    def connection(self) -> Any:
        """The Airflow connection, fetched once."""
        return self.get_connection(self.cloudzero_conn_id)

    @cached_property
    def settings(self) -> CloudZeroSettings:
        """
        The connection resolved once: base URL, key, AnyCost connection, retry and transport settings.

        Constructor arguments are the defaults; the connection's extras override them.

        :raises AirflowFailException: The connection has no API key, or a key or test key that an HTTP header
            cannot carry. The message never contains either key.
        """
        conn = self.connection
        extra = dict(conn.extra_dejson or {})
        # Pasted keys often carry a trailing newline or spaces: they are not part of the key.
        key = (conn.password or "").strip()
        if not key:
            raise AirflowFailException(
                f"Airflow connection {self.cloudzero_conn_id!r} has no API key: put the CloudZero API key "
                "in its password field (LiteLLM's CLOUDZERO_API_KEY)."
            )
        # Masked before it is checked, so that even a key refused here never shows in a task log.
        self._mask(key)
        if not _KEY_SAFE.fullmatch(key):
            raise AirflowFailException(
                f"The API key of Airflow connection {self.cloudzero_conn_id!r} holds a character an HTTP header "
                "cannot carry (a space, line break, control or non-ASCII character inside the key): paste the "
                "key again exactly as CloudZero shows it."
            )
        test_key = str(extra["test_key"]).strip() if extra.get("test_key") else None
        if test_key:
            self._mask(test_key)
            if not _HEADER_VALUE_SAFE.fullmatch(test_key):
                raise AirflowFailException(
                    f'The extra "test_key" of Airflow connection {self.cloudzero_conn_id!r} holds a character '
                    "an HTTP header cannot carry (a line break, control character or a character outside "
                    "latin-1): set it again."
                )

        def number(name: str, kind: type) -> Any:
            value = extra.get(name)
            return self._defaults[name] if value in (None, "") else kind(value)

        timeout = extra.get("timeout")
        if timeout in (None, ""):
            resolved_timeout: float | tuple[float, float] = self._defaults["timeout"]
        elif isinstance(timeout, (list, tuple)):
            resolved_timeout = (float(timeout[0]), float(timeout[-1]))
        else:
            resolved_timeout = float(timeout)
        return CloudZeroSettings(
            base_url=_base_url(conn.host, conn.schema, conn.port, self.default_host),
            api_key=key,
            connection_id=str(extra["connection_id"]) if extra.get("connection_id") else None,
            metric_name=str(extra["metric_name"]) if extra.get("metric_name") else None,
            test_key=test_key,
            timeout=resolved_timeout,
            max_attempts=number("max_attempts", int),
            max_wait=number("max_wait", float),
            max_retry_time=number("max_retry_time", float),
            verify=extra.get("verify", True),
            proxies=dict(extra.get("proxies") or {}),
            allow_plain_http=self._check_scheme(conn, extra),
        )

    def _check_scheme(self, conn: Any, extra: Mapping[str, Any]) -> bool:
        """
        Refuse ``http://`` to any host but loopback: the key would travel in clear text (and a redirect to
        https would already have sent it). A private network's double may opt in with the extra
        ``"allow_plain_http": true``.

        :return: Whether the connection opted in.
        """
        allowed = str(extra.get("allow_plain_http", "")).strip().lower() in ("true", "1", "yes")
        url = urlparse(_base_url(conn.host, conn.schema, conn.port, self.default_host))
        if url.scheme not in ("http", "https"):
            raise AirflowFailException(
                f"Airflow connection {self.cloudzero_conn_id!r}: the API base URL must use https://, "
                f"got scheme {url.scheme!r}."
            )
        if url.scheme == "http" and not _is_loopback(url.hostname) and not allowed:
            raise AirflowFailException(
                f"Airflow connection {self.cloudzero_conn_id!r} points at http://{url.hostname}: the API key "
                "would travel in clear text. Use https:// (plain http is accepted only for a loopback host such "
                'as the local CloudZero double, or with the extra "allow_plain_http": true on a private network).'
            )
        return allowed

    @property
    def connection_id(self) -> str:
        """The AnyCost Stream connection id from the connection's extra ``connection_id``."""
        value = self.settings.connection_id
        if not value:
            raise AirflowFailException(
                f"Airflow connection {self.cloudzero_conn_id!r} has no AnyCost connection id: set its extra "
                '"connection_id" (LiteLLM\'s CLOUDZERO_CONNECTION_ID).'
            )
        return value

    @property
    def metric_name(self) -> str | None:
        """The unit-cost telemetry metric from the connection's extra ``metric_name``, if any."""
        return self.settings.metric_name

    @property
    def max_attempts(self) -> int:
        """Attempts per request, the first one included (the connection's extra overrides the argument)."""
        return self.settings.max_attempts

    @property
    def max_wait(self) -> float:
        """Longest single wait between attempts, in seconds."""
        return self.settings.max_wait

    @property
    def max_retry_time(self) -> float:
        """Seconds after which retrying one request stops."""
        return self.settings.max_retry_time

    @property
    def timeout(self) -> float | tuple[float, float]:
        """The timeout of one attempt: seconds, or ``(connect, read)``."""
        return self.settings.timeout

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        """
        A session that sends the bare key; the connection's other extras never become headers.

        Sets :attr:`base_url`, as HttpHook's ``get_conn`` does, so that HttpHook's own ``run`` works too.

        :param headers: Extra headers for every request of the session.
        :param extra_options: Accepted for HttpHook's signature; the connection's settings already apply.
        """
        settings = self.settings
        self.base_url = settings.base_url
        session = requests.Session()
        # HttpHook's TCP keep-alive adapter (or the one given to the constructor): a read waiting minutes for
        # CloudZero's answer must not be cut by a NAT or load balancer dropping an idle connection.
        if self.adapter:
            session.mount(f"{urlparse(settings.base_url).scheme}://", self.adapter)
        elif self.keep_alive_adapter:
            session.mount("http://", self.keep_alive_adapter)
            session.mount("https://", self.keep_alive_adapter)
        session.verify = settings.verify
        if settings.proxies:
            session.proxies.update(settings.proxies)
        session.headers["Authorization"] = settings.api_key
        session.headers["Accept"] = "application/json"
        if settings.test_key:
            session.headers[TEST_KEY_HEADER] = settings.test_key
        if headers:
            session.headers.update(headers)
        return session

    @staticmethod
    def _mask(secret: str) -> None:
        """Register ``secret`` with Airflow's log masker."""
        try:
            from airflow.sdk.log import mask_secret

            mask_secret(secret)
        except Exception:  # masking is best effort outside a task; we never log the key anyway
            pass

    @cached_property
    def session(self) -> requests.Session:
        """One keep-alive session per hook: a window's requests reuse the TCP/TLS connection."""
        return self.get_conn()

    @cached_property
    def _secrets(self) -> tuple[str, ...]:
        """
        The key and test key in every form a message might carry them: raw, stripped and ``repr``-escaped.

        Read from the connection itself rather than :attr:`settings`, which refuses a key it cannot send:
        the raw value must be scrubbed all the same. Longest first, so no fragment of a secret survives.
        """
        extra = dict(self.connection.extra_dejson or {})
        raw = {self.connection.password or ""}
        if extra.get("test_key"):
            raw.add(str(extra["test_key"]))
        forms = set()
        for value in raw:
            for form in (value, value.strip()):
                forms |= {form, repr(form)[1:-1]}
        return tuple(sorted((f for f in forms if len(f) >= 4), key=len, reverse=True))

    def _scrub(self, text: str) -> str:
        """
        The text without the API key or test key, in any form they might appear.

        :param text: A message about to reach an exception or a log: requests' and CloudZero's texts may
            quote a header value.
        """
        try:
            secrets = self._secrets
        except Exception:  # no connection to read: nothing of it can be in the text either
            return text
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    # -- requests ---------------------------------------------------------------------------------------

    def _wait(self, retry_state: tenacity.RetryCallState) -> float:
        """Seconds before the next attempt: CloudZero's ``Retry-After`` in full, else jittered exponential backoff
        up to ``max_wait``."""
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return exc.retry_after
        backoff = min(self.settings.max_wait, 0.5 * 2 ** (retry_state.attempt_number - 1))
        return backoff * random.uniform(0.5, 1.0)

    def _stop(self, retry_state: tenacity.RetryCallState) -> bool:
        """Stop after ``max_attempts``, after ``max_retry_time``, or when CloudZero asks for a wait that would end
        past ``max_retry_time``: then Airflow's retry waits it out instead of the hook retrying early."""
        settings = self.settings
        if retry_state.attempt_number >= settings.max_attempts:
            return True
        elapsed = retry_state.seconds_since_start or 0.0
        if elapsed >= settings.max_retry_time:
            return True
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return (
            isinstance(exc, _Retryable)
            and exc.retry_after is not None
            and elapsed + exc.retry_after > settings.max_retry_time
        )

    def _attempt(
        self,
        session: requests.Session,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        accept: Callable[[requests.Response], Any] | None,
        stream: bool = False,
    ) -> tuple[requests.Response, Any]:
        """
        One attempt: a transient failure raises :class:`_Retryable`, any other requests failure fails.

        Redirects are never followed: requests would turn a redirected POST into a GET without its body (and
        send the key along), and the GET's 200 would read as success.

        :param accept: Reads a 2xx answer (a receipt, a list); raises :class:`_Retryable` when the answer is not
            what CloudZero sends, so a hollow 200 is retried like a 503, never taken as done.
        """
        url = self.settings.base_url + path
        try:
            response = session.request(
                method,
                url,
                data=body,
                headers=dict(headers),
                timeout=self.settings.timeout,
                allow_redirects=False,
                stream=True,  # read below, within MAX_ANSWER_BYTES, unless the caller streams a 2xx answer
            )
        except requests.exceptions.Timeout as exc:
            raise _Retryable(f"timed out ({type(exc).__name__})") from None
        except requests.exceptions.ConnectionError as exc:
            raise _Retryable(f"connection failed: {self._scrub(str(exc))[:300]}") from None
        except requests.exceptions.RequestException as exc:
            # e.g. InvalidHeader, whose text carries the header value: never let the key reach a log
            raise AirflowFailException(
                f"CloudZero {method} {path} could not be sent ({type(exc).__name__}): {self._scrub(str(exc))[:300]}"
            ) from None
        if not (stream and 200 <= response.status_code < 300):
            _read_bounded(response, MAX_ANSWER_BYTES)
        if response.status_code in TRANSIENT_STATUSES:
            raise _Retryable(
                f"HTTP {response.status_code}: {_error_message(response, self._scrub)}",
                _retry_after_seconds(response.headers.get("Retry-After")),
            )
        if 300 <= response.status_code < 400:
            # A gateway, proxy or captive portal in front of the API: nothing was applied. Retried like a 503 (it
            # may pass), and named, since a redirect that stays means the host is not the API's own URL.
            location = self._scrub(response.headers.get("Location") or "(no Location header)")[:300]
            raise _Retryable(
                f"HTTP {response.status_code}: redirected to {location!r}, not followed (a redirected POST loses its "
                "body); if this persists, set the connection's host to the API's own https:// URL",
                _retry_after_seconds(response.headers.get("Retry-After")),
            )
        if accept is not None and 200 <= response.status_code < 300:
            try:
                return response, accept(response)
            except _Retryable as exc:
                raise _Retryable(self._scrub(exc.description)) from None
        return response, None

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | None = None,
        idempotency_key: str | None = None,
        expect: Sequence[int] = (200,),
        accept: Callable[[requests.Response], Any] | None = None,
        stream: bool = False,
    ) -> tuple[requests.Response, Any]:
        """
        Send one request with in-task retries of transient failures, and check the answer.

        :param method: HTTP method.
        :param path: Path below the API base URL, starting with ``/``.
        :param json_body: A JSON-serialisable body (ignored when ``body`` is given).
        :param body: The exact bytes to send, for callers that measured the body's size themselves.
        :param idempotency_key: Sent as ``cloudzero-idempotency-key``: CloudZero replays its first answer.
        :param expect: Status codes returned to the caller rather than raised.
        :param accept: Reads a 2xx answer inside the retry loop (see :meth:`_attempt`).
        :param stream: Leave the body unread for ``accept`` to stream (a month of rows can be hundreds of MB).
        :return: The response, and what ``accept`` read from it (``None`` without ``accept``).
        :raises CloudZeroAPIError: A 4xx other than 429. Airflow does not retry it.
        :raises CloudZeroTransientError: Still failing after the in-task retries (429, 5xx, a redirect -- never
            followed, the message names where it pointed --, a 2xx that ``accept`` refuses, a timeout or a dropped
            connection), or CloudZero asked for a longer wait than ``max_retry_time`` (``retry_after`` says how
            long).
        """
        session = self.session  # built first: it resolves the connection's settings once
        headers: dict[str, str] = {}
        if body is None and json_body is not None:
            body = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
        if body is not None:
            headers["Content-Type"] = "application/json"
        if idempotency_key:
            headers[IDEMPOTENCY_HEADER] = idempotency_key

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.log.warning(
                "CloudZero %s %s: %s; retrying in %.1fs (attempt %d of %d)",
                method,
                path,
                getattr(exc, "description", exc),
                state.next_action.sleep if state.next_action else 0.0,
                state.attempt_number + 1,
                self.settings.max_attempts,
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retryable),
            stop=self._stop,
            wait=self._wait,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            response, accepted = retrying(self._attempt, session, method, path, body, headers, accept, stream)
        except _Retryable as exc:
            settings = self.settings
            if exc.retry_after is not None and exc.retry_after > settings.max_retry_time:
                raise CloudZeroTransientError(
                    f"CloudZero {method} {path}: {exc.description}; it asked to wait {exc.retry_after:.0f} s "
                    f"(Retry-After), longer than this task retries for (max_retry_time {settings.max_retry_time:.0f}"
                    f" s): handing over to Airflow's retry, which waits {exc.retry_after:.0f} s.",
                    retry_after=exc.retry_after,
                ) from None
            attempts = int(retrying.statistics.get("attempt_number", settings.max_attempts))
            raise CloudZeroTransientError(
                f"CloudZero {method} {path} still failing after {attempts} attempt{'s' if attempts != 1 else ''}: "
                f"{exc.description}. "
                "The task will be retried by Airflow; check CloudZero's status if this persists.",
                retry_after=exc.retry_after,
            ) from None
        if response.status_code in expect:
            return response, accepted
        status = response.status_code
        message = _error_message(response, self._scrub)
        error_cls = CloudZeroRequestTooLarge if status == 413 else CloudZeroAPIError
        if status < 400:
            message = f"unexpected answer: {message}"
        raise error_cls(status, message, method=method, path=path)

    # -- AnyCost Stream ---------------------------------------------------------------------------------

    @staticmethod
    def _body(body: bytes | Mapping[str, Any]) -> dict[str, Any]:
        """The keyword :meth:`request` takes for ``body``: exact bytes are sent as they are, never re-encoded."""
        return {"body": body} if isinstance(body, bytes) else {"json_body": dict(body)}

    def _drops_path(self, connection_id: str | None) -> str:
        """The billing-drops path of ``connection_id``, or of the Airflow connection's AnyCost connection."""
        return f"{ANYCOST_PATH}/{quote(connection_id or self.connection_id, safe='')}/billing_drops"

    def post_billing_drop(
        self,
        body: bytes | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        connection_id: str | None = None,
    ) -> dict[str, Any]:
        """
        Post one billing drop: ``{"month", "operation", "data": [CBF rows]}``.

        Counts as done only on CloudZero's receipt: a 2xx answer without a ``drop_id`` (a gateway or captive
        portal answering in CloudZero's place) is retried like a 503, and a redirect is an error.

        :param body: The request body, as a mapping or as the exact serialized bytes to send.
        :param idempotency_key: Makes a re-send of the same drop safe: CloudZero replays the first answer.
        :param connection_id: AnyCost connection; defaults to the Airflow connection's extra.
        :return: CloudZero's receipt as it came: ``drop_id`` and, when given, ``month`` and ``row_count``.
        """
        _, receipt = self.request(
            "POST",
            self._drops_path(connection_id),
            **self._body(body),
            idempotency_key=idempotency_key,
            accept=partial(_receipt, scrub=self._scrub),
        )
        return dict(receipt)

    def list_billing_drops(self, *, connection_id: str | None = None) -> list[dict[str, Any]]:
        """
        All billing drops of the AnyCost connection: ``drop_id``, ``month``, ``row_count``.

        :param connection_id: AnyCost connection; defaults to the Airflow connection's extra.
        """
        _, drops = self.request(
            "GET",
            self._drops_path(connection_id),
            accept=lambda r: _json_field(r, "billing_drops", self._scrub),
        )
        return list(drops)

    def get_billing_drop(
        self, month: str, *, connection_id: str | None = None
    ) -> list[dict[str, Any]] | None:
        """
        The CBF rows CloudZero holds for one month, or ``None`` when it holds none (404). Holds the whole month in
        memory: prefer :meth:`iter_billing_drop`.

        :param month: ``YYYY-MM``.
        :param connection_id: AnyCost connection; defaults to the Airflow connection's extra.
        """
        rows = self.iter_billing_drop(month, connection_id=connection_id)
        return None if rows is None else list(rows)

    def iter_billing_drop(self, month: str, *, connection_id: str | None = None) -> Iterator[Any] | None:
        """
        The rows CloudZero holds for one month, streamed one at a time as they arrive (memory holds one chunk and
        one row), or ``None`` when it holds none (404). Rows are not checked here: see :mod:`readback`.

        :param month: ``YYYY-MM``.
        :param connection_id: AnyCost connection; defaults to the Airflow connection's extra.
        :raises CloudZeroTransientError: While iterating, if the answer stops part-way.
        :raises ReadBackError: While iterating, if the answer is not a list of rows.
        """
        from cloudzero_provider.readback import iter_json_array

        path = f"{self._drops_path(connection_id)}/{quote(month, safe='')}"
        response, chunks = self.request(
            "GET", path, expect=(200, 404), accept=partial(_json_stream, scrub=self._scrub), stream=True
        )
        if response.status_code == 404:
            response.close()
            return None

        def rows() -> Iterator[Any]:
            try:
                yield from iter_json_array(chunks, "billing_drop")
            except requests.exceptions.RequestException as exc:
                raise CloudZeroTransientError(
                    f"CloudZero GET {path}: the answer stopped part-way ({type(exc).__name__}: "
                    f"{self._scrub(str(exc))[:200]}); the task will be retried by Airflow"
                ) from None
            finally:
                response.close()

        return rows()

    def validate_billing_drop(self, body: bytes | Mapping[str, Any]) -> dict[str, Any]:
        """
        Ask CloudZero to validate a billing drop without storing it: ``{"is_valid", "errors"}``.

        :param body: The request body, as a mapping or as the exact serialized bytes to send.
        """
        response, _ = self.request("POST", f"{ANYCOST_PATH}/validate_billing_drop", **self._body(body))
        try:
            answer = response.json().get("connection")
        except (ValueError, AttributeError):
            answer = None
        if not isinstance(answer, Mapping):
            raise CloudZeroTransientError(
                f"CloudZero answered the validation without a result: {_body_excerpt(response, self._scrub)!r}"
            )
        return dict(answer)

    # -- unit-cost telemetry -----------------------------------------------------------------------------

    def send_telemetry(
        self, metric_name: str, body: bytes | Mapping[str, Any], *, operation: str = "replace"
    ) -> dict[str, Any]:
        """
        Send unit-cost telemetry records: ``{"records": [{"timestamp", "value", "associated_cost"}]}``.

        :param metric_name: The unit metric (checked before anything is sent).
        :param body: The request body, as a mapping or the exact bytes to send.
        :param operation: ``replace`` (records matching the same day and dimensions are replaced: safe to
            repeat), ``sum`` (added) or ``delete``.
        """
        from cloudzero_provider.telemetry_records import check_metric_name

        if operation not in ("sum", "replace", "delete"):
            raise AirflowFailException(
                f"telemetry operation must be sum, replace or delete, got {operation!r}"
            )
        try:
            name = check_metric_name(metric_name)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        path = f"{TELEMETRY_PATH}/{quote(name, safe='')}/{operation}"
        response, _ = self.request("POST", path, **self._body(body))
        try:
            return dict(response.json())
        except ValueError:
            return {}

    # -- connection test --------------------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """
        List the drops of the configured AnyCost connection and say plainly what is wrong, if anything.

        :return: ``(ok, message)``, as Airflow's connection test expects; the message never holds the key.
        """
        resolved: CloudZeroSettings | None = None
        try:
            connection_id = self.connection_id
            resolved = self.settings
            # A connection test should answer in seconds, not ride out a long outage.
            self.settings = replace(resolved, max_attempts=2, max_retry_time=20.0)
            drops = self.list_billing_drops(connection_id=connection_id)
        except CloudZeroAPIError as exc:
            if exc.status == 403:
                return False, f"CloudZero rejected the API key (403 Forbidden): {exc.api_message}"
            if exc.status == 404:
                return False, (
                    f"CloudZero does not know AnyCost connection {connection_id!r} (404): {exc.api_message}"
                )
            return False, str(exc)
        except CloudZeroTransientError as exc:
            return False, f"CloudZero at {self.settings.base_url} is unreachable or unavailable: {exc}"
        except AirflowException as exc:
            return False, str(exc)
        except Exception as exc:
            return False, self._scrub(f"{type(exc).__name__}: {exc}")
        finally:
            if resolved is not None:  # later requests of this hook get the connection's own retry budget back
                self.settings = resolved
        return True, (
            f"CloudZero at {self.settings.base_url} accepted the key; AnyCost connection {connection_id!r} "
            f"has {len(drops)} billing drop(s)."
        )
