"""``ingress._fs.write_atomic``, the one atomic write: whole or not at all, no temp file
left, directory synced; and every file written through it survives short writes."""
from __future__ import annotations

import errno
import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingress import _fs
from ingress._fs import write_atomic
from ingress.security.crypto import KeyStore as TenantKeys
from ingress.security.keys import KeyStore as ControlKeys
from ingress.spool import Spool, TenantPolicy
from short_writes import shorten_tmp_writes

STEPS = ("open", "fchmod", "write", "fsync", "replace", "link", "dirfsync")


def _fail_at(monkeypatch, step: str, code: int) -> None:
    """Make the ``step`` syscall of the next write_atomic fail with ``code`` (the fsync of the
    file and the one of its directory are told apart by whether the fd is a directory)."""
    def boom(*a, **kw):
        raise OSError(code, os.strerror(code))

    if step in ("fsync", "dirfsync"):
        real = os.fsync

        def fsync(fd):
            if stat.S_ISDIR(os.fstat(fd).st_mode) == (step == "dirfsync"):
                boom()
            return real(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    elif step == "open":
        real_open = os.open
        monkeypatch.setattr(os, "open", lambda p, f, *a, **kw: boom() if os.fspath(p).endswith(".tmp")
                            else real_open(p, f, *a, **kw))
    else:
        monkeypatch.setattr(os, step, boom)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(old=st.none() | st.binary(max_size=64), new=st.binary(max_size=300),
       chunk=st.integers(1, 400), replace=st.booleans(),
       fail=st.none() | st.sampled_from(STEPS), code=st.sampled_from([errno.ENOSPC, errno.EIO, errno.EDQUOT]))
def test_whole_or_not_at_all_whatever_fails(tmp_path_factory, old, new, chunk, replace, fail, code):
    d = tmp_path_factory.mktemp("aw")
    p = d / "state.json"
    if old is not None:
        p.write_bytes(old)
    with pytest.MonkeyPatch.context() as mp:
        shorten_tmp_writes(mp, chunk)
        if fail is not None:
            _fail_at(mp, fail, code)
        try:
            write_atomic(p, new, replace=replace)
            raised = None
        except OSError as e:
            raised = e
    names = sorted(os.listdir(d))
    assert not [n for n in names if n.endswith(".tmp")], names  # never a temp file left behind
    got = p.read_bytes() if p.exists() else None
    if raised is None:
        if not replace and old is not None:
            pytest.fail("an existing file was replaced although replace=False")
        assert got == new and stat.S_IMODE(os.stat(p).st_mode) == 0o600
    elif isinstance(raised, FileExistsError):
        assert not replace and old is not None and got == old
    else:
        # Only a failing fsync of the directory comes after the new content is in place.
        assert got == old or (fail == "dirfsync" and got == new), (fail, got)


def test_the_directory_is_synced_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_replace, real_fsync_dir = os.replace, _fs.fsync_dir
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    monkeypatch.setattr(_fs, "fsync_dir", lambda p: (events.append(("fsync_dir", str(p))), real_fsync_dir(p))[1])
    write_atomic(tmp_path / "x", b"1")
    assert events == ["replace", ("fsync_dir", str(tmp_path))]


# ---- every caller: a short write used to leave a truncated file in place --------------

def test_control_keys_file_is_whole_after_short_writes(tmp_path, monkeypatch):
    ks = ControlKeys(tmp_path / "data")
    (tmp_path / "data").mkdir(mode=0o700)
    asked = shorten_tmp_writes(monkeypatch, 5)
    rec, token = ks.create("acme", name="n")
    monkeypatch.undo()
    assert max(asked) > 5  # the short writes were hit
    assert [r.id for r in ControlKeys(tmp_path / "data").records()] == [rec.id]


def test_tenant_at_rest_key_is_whole_after_short_writes(tmp_path, monkeypatch):
    asked = shorten_tmp_writes(monkeypatch, 5)
    key = TenantKeys(tmp_path).create("acme")
    monkeypatch.undo()
    assert max(asked) > 5
    assert TenantKeys(tmp_path).load("acme") == key and len(key) == 32
    assert not [n for n in os.listdir(tmp_path / "keys") if n.endswith(".tmp")]


def test_spool_loss_counters_are_whole_after_short_writes(tmp_path, monkeypatch):
    pol = {"acme": TenantPolicy(max_bytes=8192)}
    sp = Spool(tmp_path, pol, ["out"], write_mb_s=None, maintain_every_s=None, clock=lambda: 2)
    asked = shorten_tmp_writes(monkeypatch, 5)
    for i in range(40):  # past the quota: segments dropped, counters saved
        sp.append("acme", i.to_bytes(16, "big"), b"x" * 500, 3, 1)
    dropped = sp.stats()["acme"]["dropped_batches"]
    sp.close()
    monkeypatch.undo()
    assert dropped > 0 and max(asked) > 5
    sp2 = Spool(tmp_path, pol, ["out"], write_mb_s=None, maintain_every_s=None, clock=lambda: 2)
    s = sp2.stats()["acme"]
    sp2.close()
    assert (s["dropped_batches"], s["damaged_files"]) == (dropped, 0)
