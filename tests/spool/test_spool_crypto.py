"""Encryption at rest: keys, round trip, tampering, records moved between tenants."""
from __future__ import annotations

import logging
import os
import re
import shutil

import pytest
from spool_helpers import T0, bid, fill, ids, payload

from ingress.security import DecryptError, KeyFileError, KeyStore, TenantCipher
from ingress.security.crypto import NONCE_SIZE, OVERHEAD, fingerprint
from ingress.errors import SpoolError
from ingress.spool import TenantPolicy
from ingress.spool.segment import (
    FLAG_SEALED,
    REC_HEADER_SIZE,
    pack_record_header,
    unpack_record_header,
    unpack_segment_header,
)

ENC = TenantPolicy(encrypt=True)


def _tree(d):
    """Every file under ``d`` with its bytes and mtime: what "untouched" means."""
    return {p.relative_to(d): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


def test_cipher_round_trip_and_fresh_nonces():
    c = TenantCipher("acme", os.urandom(32))
    blob = c.seal(bid(1), b"hello batch", 3, T0)
    assert len(blob) == len(b"hello batch") + OVERHEAD
    assert c.open(bid(1), blob, 3, T0) == b"hello batch"
    assert c.seal(bid(1), b"hello batch", 3, T0)[:NONCE_SIZE] != blob[:NONCE_SIZE]


@pytest.mark.parametrize("tenant, batch_id, samples, ts", [
    ("beta", bid(1), 3, T0),  # moved to another tenant
    ("acme", bid(2), 3, T0),  # given another batch id
    ("acme", bid(1), 4, T0),  # sample count changed
    ("acme", bid(1), 3, T0 + 1),  # first timestamp changed
])
def test_associated_data_binds_tenant_and_header(tenant, batch_id, samples, ts):
    key = os.urandom(32)
    blob = TenantCipher("acme", key).seal(bid(1), b"payload", 3, T0)
    with pytest.raises(DecryptError, match=f"tenant '{tenant}': batch {batch_id.hex()} does not authenticate"):
        TenantCipher(tenant, key, "/k/x.key").open(batch_id, blob, samples, ts)


def test_tampered_ciphertext_does_not_decrypt():
    c = TenantCipher("acme", os.urandom(32))
    blob = bytearray(c.seal(bid(1), b"payload", 1, T0))
    blob[NONCE_SIZE + 2] ^= 1
    with pytest.raises(DecryptError):
        c.open(bid(1), bytes(blob), 1, T0)


def test_keystore_files_are_private_and_never_replaced(tmp_path):
    ks = KeyStore(tmp_path)
    key = ks.create("acme")
    p = tmp_path / "keys" / "acme.key"
    assert p.read_bytes() == key and len(key) == 32
    assert os.stat(p).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "keys").st_mode & 0o777 == 0o700
    with pytest.raises(KeyFileError, match=r"acme\.key: tenant 'acme': key file already exists"):
        ks.create("acme")
    assert ks.load("acme") == key
    assert list((tmp_path / "keys").iterdir()) == [p]  # no temp file left


def test_keystore_refusals_name_tenant_and_file(tmp_path):
    ks = KeyStore(tmp_path)
    with pytest.raises(KeyFileError, match=r"keys/beta\.key: tenant 'beta': key file is missing"):
        ks.load("beta")
    ks.create("acme")
    p = tmp_path / "keys" / "acme.key"
    os.chmod(p, 0o644)
    with pytest.raises(KeyFileError, match=r"acme\.key: tenant 'acme': key file mode is 0644"):
        ks.load("acme")
    os.chmod(p, 0o600)
    p.write_bytes(b"short")
    with pytest.raises(KeyFileError, match=r"acme\.key: tenant 'acme': key file holds 5 bytes, expected 32"):
        ks.load("acme")


def test_spool_round_trip_stores_only_ciphertext(open_spool, data_dir):
    sp = open_spool(tenants={"acme": ENC})
    secret = b"cpu.user host=web-1 " * 20
    ref = sp.append("acme", bid(1), secret, 5, T0)
    [rec] = sp.pending("acme", "out")
    assert rec.payload == secret and rec.batch_id == bid(1) and rec.sample_count == 5
    seg = next((data_dir / "spool" / "acme").glob("*.seg"))
    raw = seg.read_bytes()
    assert b"cpu.user" not in raw
    h = unpack_record_header(raw, ref.offset)
    assert h.flags & FLAG_SEALED and h.length == len(secret) + OVERHEAD
    key = (data_dir / "keys" / "acme.key").read_bytes()
    assert unpack_segment_header(raw).key_fp == fingerprint(key)
    assert os.stat(data_dir / "keys" / "acme.key").st_mode & 0o777 == 0o600
    assert os.stat(data_dir).st_mode & 0o777 == 0o700
    sp.close()
    sp2 = open_spool(tenants={"acme": ENC})
    assert sp2.pending("acme", "out")[0].payload == secret


def _reseal_tampered(seg, ref, flip_at):
    """Flip a ciphertext byte and fix both CRCs, as a deliberate attacker would."""
    raw = bytearray(seg.read_bytes())
    h = unpack_record_header(raw, ref.offset)
    start = ref.offset + REC_HEADER_SIZE
    stored = bytearray(raw[start:start + h.length])
    stored[flip_at] ^= 0x80
    raw[ref.offset:start + h.length] = pack_record_header(
        h.flags, bytes(stored), h.sample_count, h.first_ts_ns, h.append_ns, h.batch_id) + stored
    seg.write_bytes(bytes(raw))


def test_tampered_record_with_valid_crc_is_counted_not_returned(open_spool, data_dir, caplog):
    sp = open_spool(tenants={"acme": ENC})
    refs = fill(sp, "acme", 3)
    sp.close()
    seg = next((data_dir / "spool" / "acme").glob("*.seg"))
    _reseal_tampered(seg, refs[1], flip_at=NONCE_SIZE + 7)
    sp2 = open_spool(tenants={"acme": ENC})
    assert sp2.stats()["acme"]["corrupt_records"] == 0  # the CRCs are fine...
    with caplog.at_level(logging.ERROR, logger="ingress.spool"):
        recs = sp2.pending("acme", "out")
    assert ids(recs) == [0, 2]  # ...but authentication is not
    assert [r.payload for r in recs] == [payload(0), payload(2)]
    assert sp2.stats()["acme"]["corrupt_records"] == 1
    assert any("tenant 'acme'" in r.getMessage() and "does not authenticate" in r.getMessage()
               for r in caplog.records)


def test_segment_moved_to_another_tenant_is_refused_by_its_key(open_spool, data_dir):
    pol = {"acme": ENC, "beta": ENC}
    sp = open_spool(tenants=pol)
    fill(sp, "acme", 2)
    fill(sp, "beta", 1, start=10)
    sp.close()
    src = next((data_dir / "spool" / "acme").glob("*.seg"))
    shutil.copy(src, data_dir / "spool" / "beta" / "00000000000000000050.seg")
    before = _tree(data_dir / "spool" / "beta")
    sp = open_spool(tenants=pol)  # beta is held; acme works
    assert re.search(r"keys/beta\.key: tenant 'beta': this key \(fingerprint [0-9a-f]{16}\) "
                     r"is not the key .*beta/00000000000000000050\.seg was written with", sp.held["beta"])
    assert list(sp.held) == ["beta"] and ids(sp.pending("acme", "out")) == [0, 1]
    with pytest.raises(SpoolError, match="tenant 'beta' is held: .*is not the key"):
        sp.append("beta", bid(99), b"x", 1, T0)
    sp.close()
    assert _tree(data_dir / "spool" / "beta") == before  # not a byte changed


def test_records_moved_with_the_key_still_fail_the_tenant_binding(open_spool, data_dir):
    """Even an attacker who also copies the key cannot make acme's records pass as beta's."""
    pol = {"acme": ENC, "beta": ENC}
    sp = open_spool(tenants=pol)
    fill(sp, "acme", 3)
    sp.close()
    shutil.rmtree(data_dir / "spool" / "beta")
    shutil.copytree(data_dir / "spool" / "acme", data_dir / "spool" / "beta")
    shutil.copy(data_dir / "keys" / "acme.key", data_dir / "keys" / "beta.key")
    sp2 = open_spool(tenants=pol)
    assert sp2.pending("beta", "out") == []
    assert sp2.stats()["beta"]["corrupt_records"] == 3
    assert ids(sp2.pending("acme", "out")) == [0, 1, 2]


def test_missing_key_is_a_clear_error(open_spool, data_dir):
    sp = open_spool(tenants={"acme": ENC})
    fill(sp, "acme", 1)
    sp.close()
    os.unlink(data_dir / "keys" / "acme.key")
    before = _tree(data_dir / "spool" / "acme")
    for k, pol in enumerate((ENC, TenantPolicy(encrypt=False))):  # turning encryption off does not hide it
        sp = open_spool(tenants={"acme": pol, "beta": TenantPolicy()})
        assert re.fullmatch(r".*keys/acme\.key: tenant 'acme': key file is missing, but the "
                            r"tenant's spool in .*acme holds encrypted records.*", sp.held["acme"])
        for call in (lambda: sp.append("acme", bid(2), b"x", 1, T0), lambda: sp.pending("acme", "out")):
            with pytest.raises(SpoolError, match="tenant 'acme' is held: .*key file is missing"):
                call()
        sp.append("beta", bid(3 + k), b"y", 1, T0)  # the other tenant is not held back
        assert ids(sp.pending("beta", "out"))[-1] == 3 + k and "acme" not in sp.stats()
        sp.close()
        assert _tree(data_dir / "spool" / "acme") == before
    assert not (data_dir / "keys" / "acme.key").exists()  # no new key was invented


def test_wrong_key_is_a_clear_error(open_spool, data_dir):
    sp = open_spool(tenants={"acme": ENC})
    fill(sp, "acme", 1)
    sp.close()
    p = data_dir / "keys" / "acme.key"
    p.write_bytes(os.urandom(32))
    sp = open_spool(tenants={"acme": ENC})
    assert re.match(r".*acme\.key: tenant 'acme': this key .* is not the key", sp.held["acme"])
    sp.close()
    shutil.rmtree(data_dir / "spool" / "acme")
    open_spool(tenants={"acme": ENC}).close()


def test_switching_encryption_keeps_old_records_readable(open_spool, data_dir):
    sp = open_spool(tenants={"acme": ENC})
    fill(sp, "acme", 2)
    sp.close()
    sp = open_spool(tenants={"acme": TenantPolicy(encrypt=False)})
    ref = sp.append("acme", bid(5), b"plain now", 1, T0)
    assert ids(sp.pending("acme", "out")) == [0, 1, 5]
    sp.close()
    raw = (data_dir / "spool" / "acme" / f"{ref.segment:020d}.seg").read_bytes()
    assert b"plain now" in raw
    sp = open_spool(tenants={"acme": ENC})
    assert [r.payload for r in sp.pending("acme", "out")] == [payload(0), payload(1), b"plain now"]
