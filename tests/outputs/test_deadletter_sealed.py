"""Dead letters of an encrypting tenant are sealed with its key; every dead-letter
directory is 0700 and every file 0600; ``ingress decode`` reads them back with the key."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingress import wire
from ingress.errors import PermanentError, SpoolError
from ingress.security.crypto import (
    DecryptError,
    KeyFileError,
    TenantCipher,
    dead_letter_header,
    open_dead_letter,
    seal_dead_letter,
)
from ingress.spool import Spool, TenantPolicy

from .fakes import wait_for
from .test_delivery import ScriptedOutput, mk

T0 = time.time_ns()  # the spool is opened with the real clock: retention must keep these


def batch(tenant: str, i: int) -> tuple[bytes, bytes]:
    bid = i.to_bytes(16, "big")
    data = wire.encode(tenant, "web-1", [("mem.used", {"secret_tag": "very-secret-value"})],
                       np.array([0], np.uint32), np.array([T0], np.int64), np.array([42.0 + i]),
                       batch_id=bid)
    return bid, data


def dead_letter_everything(tmp_path, tenant: str, encrypt: bool, n: int = 2):
    """A real spool and delivery whose output refuses every batch for good."""
    sp = Spool(tmp_path, {tenant: TenantPolicy(encrypt=encrypt)}, ["o1"], write_mb_s=None,
               maintain_every_s=None)
    sent = []
    for i in range(n):
        bid, data = batch(tenant, i)
        sp.append(tenant, bid, data, 1, T0)
        sent.append((bid, data))
    out = ScriptedOutput("o1", lambda b: PermanentError("HTTP 400: bad batch"))
    old = os.umask(0o022)  # the usual umask: mkdir(parents=True) would make 0755 directories
    try:
        d = mk(sp, [out], tmp_path, tenants=(tenant,))
        try:
            assert wait_for(lambda: not sp.pending(tenant, "o1"))
        finally:
            d.stop(5)
    finally:
        os.umask(old)
        sp.close()
    return sent, tmp_path / "deadletter" / tenant / "o1"


def modes(tmp_path, folder):
    dirs = [tmp_path / "deadletter", folder.parent, folder]
    return ([stat.S_IMODE(os.stat(p).st_mode) for p in dirs],
            {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in folder.iterdir()})


def test_dead_letters_of_an_encrypting_tenant_are_sealed_and_private(tmp_path):
    sent, folder = dead_letter_everything(tmp_path, "acme", encrypt=True)
    dir_modes, file_modes = modes(tmp_path, folder)
    assert dir_modes == [0o700, 0o700, 0o700]
    assert set(file_modes.values()) == {0o600} and len(file_modes) == 4
    for bid, data in sent:
        raw = (folder / f"{bid.hex()}.batch").read_bytes()
        assert raw != data and b"very-secret-value" not in raw and b"mem.used" not in raw
        assert dead_letter_header(raw)[:2] == ("acme", bid)
        assert open_dead_letter(raw, folder / f"{bid.hex()}.batch") == data
        meta = json.loads((folder / f"{bid.hex()}.json").read_text())
        assert meta["encrypted"] is True and meta["batch_id"] == bid.hex()


def test_dead_letters_of_a_plain_tenant_stay_the_batch_and_private(tmp_path):
    sent, folder = dead_letter_everything(tmp_path, "beta", encrypt=False)
    dir_modes, file_modes = modes(tmp_path, folder)
    assert dir_modes == [0o700, 0o700, 0o700] and set(file_modes.values()) == {0o600}
    for bid, data in sent:
        raw = (folder / f"{bid.hex()}.batch").read_bytes()
        assert raw == data and open_dead_letter(raw, None) == data
        assert json.loads((folder / f"{bid.hex()}.json").read_text())["encrypted"] is False


def test_an_open_dead_letter_directory_is_tightened(tmp_path):
    (tmp_path / "deadletter" / "acme").mkdir(parents=True, mode=0o755)
    os.chmod(tmp_path / "deadletter", 0o755)
    _, folder = dead_letter_everything(tmp_path, "acme", encrypt=False, n=1)
    assert modes(tmp_path, folder)[0] == [0o700, 0o700, 0o700]


def decode(path_or_dash, input=None):
    return subprocess.run([sys.executable, "-m", "ingress", "decode", str(path_or_dash)], capture_output=True,
                          input=input, timeout=60)


def one_line(p):
    err = p.stderr.decode()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err.strip()


def test_ingress_decode_reads_sealed_dead_letters_with_the_key_and_says_why_it_cannot(tmp_path):
    sent, folder = dead_letter_everything(tmp_path, "acme", encrypt=True, n=1)
    bid, data = sent[0]
    path = folder / f"{bid.hex()}.batch"
    ok = decode(path)
    assert ok.returncode == 0, ok.stderr.decode()
    rows = [json.loads(x) for x in ok.stdout.decode().splitlines()]
    assert [(r["tenant"], r["name"], r["value"], r["batch_id"]) for r in rows] == [("acme", "mem.used", 42.0, bid.hex())]
    # plaintext input still decodes as before
    plain = tmp_path / "plain.batch"
    plain.write_bytes(data)
    assert decode(plain).stdout == ok.stdout
    # from stdin, or copied away from its data_dir: no key to be found
    p = decode("-", input=path.read_bytes())
    assert p.returncode == 2 and p.stdout == b""
    assert one_line(p).startswith("<stdin>: cannot decrypt: encrypted dead letter of tenant 'acme'")
    elsewhere = tmp_path / "copy.batch"
    shutil.copy(path, elsewhere)
    p = decode(elsewhere)
    assert p.returncode == 2 and "its key is found from where it lies" in one_line(p)
    # tampered
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    p = decode(path)
    assert p.returncode == 2 and "does not authenticate" in one_line(p)
    # the key gone
    os.unlink(tmp_path / "keys" / "acme.key")
    p = decode(path)
    assert p.returncode == 2 and one_line(p).endswith("tenant 'acme': key file is missing")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=200), flip=st.integers(0, 10_000))
def test_open_dead_letter_never_fails_other_than_by_its_errors(tmp_path, blob, flip):
    """Any bytes, and any sealed dead letter with one byte changed: the plain batch itself,
    or KeyFileError/DecryptError, never another exception and never wrong plaintext."""
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700, exist_ok=True)
    key = b"k" * 32
    (key_dir / "acme.key").write_bytes(key)
    os.chmod(key_dir / "acme.key", 0o600)
    folder = tmp_path / "deadletter" / "acme" / "o1"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "x.batch"
    for candidate in (blob, b"IDLS\x01" + blob):
        try:
            got = open_dead_letter(candidate, path)
        except (KeyFileError, DecryptError):
            continue
        assert got == candidate  # not sealed: passed through
    sealed = bytearray(seal_dead_letter(TenantCipher("acme", key), b"b" * 16, b"the batch"))
    assert open_dead_letter(bytes(sealed), path) == b"the batch"
    sealed[flip % len(sealed)] ^= 0x40
    try:
        got = open_dead_letter(bytes(sealed), path)
    except SpoolError:
        return
    assert got == bytes(sealed)  # the change broke the magic: it is no sealed dead letter any more
