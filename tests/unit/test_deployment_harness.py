"""The deployment harness's own mechanics, without a deployment: waits and ports."""

from __future__ import annotations

import shutil
import socket

import pytest

from cloudzero_provider.testing.ports import candidate_port
from tests.deployment import harness
from tests.deployment.harness import Deployment


@pytest.fixture
def deployment():
    d = Deployment()
    yield d
    d.stop()
    shutil.rmtree(d.home, ignore_errors=True)


def test_a_bug_in_a_predicate_surfaces_at_once(deployment):
    def buggy():
        return {}["state"]

    # Retried, it would end in a TimeoutError a minute later instead.
    with pytest.raises(KeyError, match="state"):
        deployment.wait_for(buggy, 60, "a buggy predicate", every=0.05)


def test_not_ready_yet_is_retried_until_ready(deployment):
    answers = iter([ConnectionRefusedError(), harness.NotReady("HTTP 503"), None, "ready"])

    def starting():
        answer = next(answers)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert deployment.wait_for(starting, 30, "a starting component", every=0.01) == "ready"


def test_a_timeout_names_the_wait_and_prints_every_components_log_tail(deployment):
    (deployment.home / "proc-scheduler.log").write_text("line 1\nthe scheduler's last words\n")
    with pytest.raises(TimeoutError) as info:
        deployment.wait_for(lambda: None, 0.2, "the catchup", every=0.05)
    assert "gave up after 0s waiting for the catchup" in str(info.value)
    assert "--- proc-scheduler.log (last 2 lines)\nline 1\nthe scheduler's last words" in str(info.value)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_a_port_taken_before_the_server_binds_it_is_given_up_for_another(deployment, monkeypatch):
    with socket.socket() as holder:
        # Another process takes the chosen port between its choice and the server's bind: this socket.
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        chosen = iter([taken])
        monkeypatch.setattr(harness, "candidate_port", lambda: next(chosen, None) or candidate_port())
        port = deployment.start_redis()
        assert port != taken
        assert "Address already in use" in (deployment.home / "proc-redis.log").read_text(), "it met the race"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"INFO server\r\n")
            info = sock.recv(65536).decode()
        assert deployment.redis is not None and f"process_id:{deployment.redis.pid}\r\n" in info, (
            "the server answering is the one started on the new port"
        )
