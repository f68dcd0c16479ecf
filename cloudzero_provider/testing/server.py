"""A real HTTP server in front of :class:`CloudZeroDouble`, with fault injection.

Run it from the command line (``cloudzero-double --port 8123 --api-key KEY``) for dry runs and demos, or start
it in a thread from tests with :class:`CloudZeroDoubleServer`. Besides CloudZero's endpoints it serves a small
control API under ``/_double/`` (no auth; it binds to loopback by default):

- ``GET /_double/state``: streams, metrics and the request log as JSON;
- ``POST /_double/reset``: forget everything;
- ``DELETE /_double/faults``: drop every queued and periodic fault, keep the data and the request log;
- ``POST /_double/faults``: queue faults, e.g. ``{"status": 503, "count": 2}``, ``{"status": 429,
  "retry_after": "1"}``, ``{"kind": "slow", "seconds": 5}``, ``{"kind": "lose_response"}`` (apply the request,
  then close the connection without answering), ``{"kind": "drop"}`` (close without applying),
  ``{"kind": "redirect", "status": 301, "location": "..."}`` or ``{"kind": "hollow"}`` (a 200 page with no
  receipt, as a gateway or captive portal answers; neither applies anything); add ``"method"``,
  ``"path_contains"`` to target requests and ``"after": n`` to let n of them through first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from cloudzero_provider.testing.double import DEFAULT_MAX_BODY, CloudZeroDouble, Reply


@dataclass
class Fault:
    """One injected failure, used by the next matching request."""

    kind: str = "status"  # status | slow | lose_response | drop | redirect | hollow
    status: int = 503
    retry_after: str | None = None
    location: str | None = None
    message: str | None = None  # a status fault's {"message"} (default: names the fault)
    seconds: float = 0.0
    method: str | None = None  # only requests with this method; None matches any
    path_contains: str | None = None
    after: int = 0  # let this many matching requests through first

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path_contains is None or self.path_contains in path
        )


def _copies(fault: Fault, count: int) -> list[Fault]:
    """``count`` faults in a row: only the first waits ``after`` requests, the rest follow it directly."""
    return [Fault(**{**fault.__dict__, "after": fault.after if i == 0 else 0}) for i in range(count)]


class _Handler(BaseHTTPRequestHandler):
    server: _DoubleHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the double keeps its own request log
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _send(self, reply: Reply) -> None:
        payload = reply.body if isinstance(reply.body, bytes) else reply.encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "text/html" if isinstance(reply.body, bytes) else "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _hang_up(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _serve(self, method: str) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        double = self.server.double
        if length > double.max_body_bytes and path.startswith("/v2/"):
            # Like a real front end: refuse before reading a body that is too large.
            self.rfile.read(length)
            with double.lock:  # recorded before answering: a client that saw the answer sees the record
                double.requests.append(
                    {"method": method, "path": path, "status": 413, "content_length": length}
                )
            self._send(Reply(413, {"message": f"Request entity too large: {length} bytes"}))
            return
        body = self.rfile.read(length) if length else b""
        if path.startswith("/_double/"):
            self._send(self.server.control(method, path, body))
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        fault = self.server.take_fault(method, path)
        if fault is not None and fault.kind == "drop":
            self._hang_up()
            return
        stream = double.stream_of(method, path, headers.get("cloudzero-test-key", ""))
        if stream is not None:
            with double.lock:
                if double.in_flight[stream] > 0:
                    double.concurrent_requests += 1
                double.in_flight[stream] += 1
        try:
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.seconds)
            if fault is not None and fault.kind in ("status", "redirect", "hollow"):
                if fault.kind == "redirect":
                    reply = Reply(
                        fault.status, b"", {"Location": fault.location or f"https://127.0.0.1:9{path}"}
                    )
                elif fault.kind == "hollow":
                    reply = Reply(200, b"<html><body>Sign in to continue to the network</body></html>")
                else:
                    reply = Reply(
                        fault.status, {"message": fault.message or f"injected fault: HTTP {fault.status}"}
                    )
                if fault.retry_after is not None:
                    reply.headers["Retry-After"] = fault.retry_after
                with double.lock:
                    double.requests.append(
                        {
                            "method": method,
                            "path": path,
                            "status": reply.status,
                            "injected": True,
                            "idempotency_key": headers.get("cloudzero-idempotency-key"),
                        }
                    )
            else:
                reply = double.handle(method, path, headers, body)
        finally:
            if stream is not None:
                with double.lock:
                    double.in_flight[stream] -= 1
        if fault is not None and fault.kind == "lose_response":
            self._hang_up()
            return
        self._send(reply)


class _DoubleHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], double: CloudZeroDouble) -> None:
        super().__init__(address, _Handler)
        self.double = double
        self.faults: deque[Fault] = deque()
        self.periodic: list[tuple[int, Fault]] = []
        self.matched: dict[int, int] = {}
        self.fault_lock = threading.Lock()

    def clear_faults(self) -> None:
        with self.fault_lock:
            self.faults.clear()
            self.periodic.clear()
            self.matched.clear()

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.fault_lock:
            for index, fault in enumerate(self.faults):
                if fault.matches(method, path):
                    if fault.after > 0:
                        fault.after -= 1
                        return None
                    del self.faults[index]
                    return fault
            chosen = None
            for index, (every, fault) in enumerate(self.periodic):
                if fault.matches(method, path):
                    self.matched[index] = self.matched.get(index, 0) + 1
                    if chosen is None and self.matched[index] % every == 0:
                        chosen = fault
            return chosen

    def control(self, method: str, path: str, body: bytes) -> Reply:
        if path == "/_double/state" and method == "GET":
            return Reply(200, self.double.state())
        if path == "/_double/reset" and method == "POST":
            self.double.reset()
            self.clear_faults()
            return Reply(200, {"reset": True})
        if path == "/_double/faults" and method == "DELETE":
            self.clear_faults()
            return Reply(200, {"queued": 0, "periodic": 0})
        if path == "/_double/faults" and method == "POST":
            spec = json.loads(body or b"{}")
            specs = spec if isinstance(spec, list) else [spec]
            for item in specs:
                item = dict(item)
                count = int(item.pop("count", 1))
                with self.fault_lock:
                    self.faults.extend(_copies(Fault(**item), count))
            return Reply(200, {"queued": len(self.faults)})
        return Reply(404, {"message": f"no control route {method} {path}", "body_bytes": len(body)})


class CloudZeroDoubleServer:
    """
    The double on a real socket, served from a background thread.

    Use as a context manager; ``url`` is the base URL to put in the ``cloudzero`` connection's host.

    :param double: The state to serve; a fresh :class:`CloudZeroDouble` when omitted.
    :param host: Interface to bind; loopback by default.
    :param port: TCP port; 0 picks a free one.
    """

    def __init__(
        self, double: CloudZeroDouble | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.double = double or CloudZeroDouble()
        self.httpd = _DoubleHTTPServer((host, port), self.double)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def fail_next(
        self,
        count: int,
        status: int = 503,
        *,
        retry_after: str | None = None,
        message: str | None = None,
        **match: Any,
    ) -> None:
        """The next ``count`` matching requests get ``status`` (and ``{"message": message}``) without being
        applied."""
        self._queue(count, Fault("status", status=status, retry_after=retry_after, message=message, **match))

    def redirect_next(
        self, count: int = 1, *, status: int = 301, location: str | None = None, **match: Any
    ) -> None:
        """The next ``count`` matching requests are redirected (``Location``: ``location``, by default the same path
        on https) without being applied, as a proxy in front of the API may answer."""
        self._queue(count, Fault("redirect", status=status, location=location, **match))

    def hollow_next(self, count: int = 1, **match: Any) -> None:
        """The next ``count`` matching requests get a 200 HTML page without a receipt and are not applied, as a
        gateway or captive portal answers in CloudZero's place."""
        self._queue(count, Fault("hollow", **match))

    def slow_next(self, count: int, seconds: float, **match: Any) -> None:
        """The next ``count`` matching requests wait ``seconds`` before being handled."""
        self._queue(count, Fault("slow", seconds=seconds, **match))

    def lose_next_response(self, count: int = 1, **match: Any) -> None:
        """The next ``count`` matching requests are applied, then the connection closes without an answer."""
        self._queue(count, Fault("lose_response", **match))

    def drop_next(self, count: int = 1, **match: Any) -> None:
        """The next ``count`` matching requests see the connection closed before anything is applied."""
        self._queue(count, Fault("drop", **match))

    def fail_every(self, every: int, fault: Fault) -> None:
        """Every ``every``-th matching request meets ``fault`` until :meth:`clear_faults` (the first of several
        periodic faults due on one request wins)."""
        with self.httpd.fault_lock:
            self.httpd.periodic.append((every, fault))

    def clear_faults(self) -> None:
        """Drop every fault still queued and every periodic one; what the double holds and its request log stay,
        so that a test can undo the faults it injected and leave the state to the next."""
        self.httpd.clear_faults()

    def _queue(self, count: int, fault: Fault) -> None:
        with self.httpd.fault_lock:
            self.httpd.faults.extend(_copies(fault, count))

    def start(self) -> CloudZeroDoubleServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="cloudzero-double",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> CloudZeroDoubleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local CloudZero API double (AnyCost Stream + telemetry).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--api-key", default="cz-double-key", help="the one API key the double accepts")
    parser.add_argument(
        "--connection",
        action="append",
        help="an AnyCost connection id that exists (repeatable; default: any id)",
    )
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY)
    args = parser.parse_args(argv)
    double = CloudZeroDouble(
        args.api_key,
        connections=set(args.connection) if args.connection else None,
        max_body_bytes=args.max_body_bytes,
    )
    server = CloudZeroDoubleServer(double, host=args.host, port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"CloudZero double listening on {server.url} (state at {server.url}/_double/state)", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
