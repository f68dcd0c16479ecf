"""A fault-injecting HTTP proxy in front of an S3 API (moto's server in the tests): it forwards every request and,
for the PUTs it is told to spoil, answers 503 without forwarding, drops the connection half-way through the body
(the store never gets the object), or forwards the PUT and drops the connection before the answer (the store has
the object; the client does not know). A real HTTP hop, as a store's load balancer would be."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
FAULTS = ("503", "torn", "lost")


class S3FaultProxy:
    """
    Forward to ``upstream``; ``plan(n)`` says what happens to the n-th PUT (1-based): ``None`` (forward), ``"503"``,
    ``"torn"`` or ``"lost"``. ``injected`` counts the faults dealt, ``spoiled``
    lists them with their paths, ``puts`` counts the PUTs seen.

    :param upstream: The S3 API's base URL (``http://127.0.0.1:<port>``).
    :param plan: The fault for the n-th PUT.
    """

    def __init__(self, upstream: str, plan: Callable[[int], str | None]) -> None:
        self.upstream = urlsplit(upstream)
        self.plan = plan
        self.injected: Counter[str] = Counter()
        self.spoiled: list[tuple[str, str]] = []  # (fault, path) in order
        self.puts = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _body(self, limit: int | None = None) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(parts)
                return self.rfile.read(length if limit is None else min(limit, length))

            def _handle(self) -> None:
                fault = None
                if self.command == "PUT":
                    with proxy._lock:
                        proxy.puts += 1
                        fault = proxy.plan(proxy.puts)
                        if fault:
                            proxy.injected[fault] += 1
                            proxy.spoiled.append((fault, self.path))
                if fault == "torn":
                    self._body(limit=max(1, int(self.headers.get("Content-Length") or 2) // 2))
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                body = self._body()
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.netloc, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                    headers["Content-Length"] = str(len(body))
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    payload = answer.read()
                finally:
                    upstream.close()
                if fault == "lost":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "date",
                        "server",
                    ):
                        self.send_header(key, value)
                # a HEAD's length is the object's, not the empty body's
                length = answer.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: no race for it
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
