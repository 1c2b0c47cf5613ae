"""systemd notify protocol over a real unix datagram socket."""
import os
import socket

import pytest

from ingress.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    yield path, s
    s.close()


def test_ready_stopping_watchdog_reach_the_socket(listener):
    path, s = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert n.enabled and n.watchdog_s == 4.0
    assert n.ready("collecting 2 tenants")
    assert s.recv(4096) == b"READY=1\nSTATUS=collecting 2 tenants"
    assert n.watchdog()
    assert s.recv(4096) == b"WATCHDOG=1"
    assert n.status("line\nbreak")
    assert s.recv(4096) == b"STATUS=line break"
    assert n.stopping()
    assert s.recv(4096) == b"STOPPING=1"
    n.close()


def test_abstract_namespace_address():
    name = f"ingress-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert s.recv(100) == b"READY=1"
    finally:
        s.close()


def test_without_notify_socket_every_call_is_a_no_op():
    n = Notifier({})
    assert not n.enabled and n.watchdog_s is None
    assert n.ready() is False and n.watchdog() is False and n.stopping() is False


@pytest.mark.parametrize("env", [{"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "abc"}, {"WATCHDOG_USEC": "١٢"},
                                 {"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}])
def test_watchdog_only_for_a_valid_period_meant_for_this_process(env):
    assert Notifier({"NOTIFY_SOCKET": "/nonexistent", **env}).watchdog_s is None


def test_a_vanished_socket_is_reported_once_and_never_raises(tmp_path, caplog):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False
    assert n.watchdog() is False
