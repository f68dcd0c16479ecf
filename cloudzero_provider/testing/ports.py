"""Loopback ports for the servers the testing helpers start, without racing other processes for them.

A port found free by binding port 0 is free only until someone else binds it. A server in this process binds port 0
itself and reads its port back (the CloudZero double). An external server (PostgreSQL, Redis, ``airflow
api-server``) must be told its port before it starts and cannot take a socket from us; holding the port until just
before it starts would only narrow the race, since a server binds seconds after it is spawned. So its start is
retried on another port when the one chosen was taken in between (it exits saying the address is in use), and
whether it listens is read from its own process tree, never from a connection, which whoever took the port could
answer as well.
"""

from __future__ import annotations

import socket

import psutil

# Starts on a new port before giving up: each retry needs another process to take the port first.
ATTEMPTS = 5


def candidate_port(host: str = "127.0.0.1") -> int:
    """A TCP port free at this moment on ``host``: a candidate only (see the module's docstring)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` or one of its descendants listens on TCP ``port``."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for proc in family:
        try:
            connections = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections):
            return True
    return False


def address_in_use(log: str) -> bool:
    """Whether a server's log says it could not bind its port because another process holds it.

    PostgreSQL, Redis and uvicorn (``airflow api-server``) all say so in these words (errno ``EADDRINUSE``).
    """
    return "address already in use" in log.lower()
