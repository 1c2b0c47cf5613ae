"""Recovery at open: how the spool reads a tenant's directory back after a stop or a crash.

Rule (writer). Remove ``*.tmp`` and ``*.deleting`` (a crash while saving the
counters or while deleting a segment); scan every segment
(:func:`ingress.spool.segment.scan`): corrupt regions in the middle are skipped
and counted, a torn or corrupt tail is counted and truncated; segment files
shorter than their header (a crash while creating) are removed. Then replay
each output's ledger (ledger recovery rule in :mod:`ingress.spool.ledger`),
remove ledgers of segments that no longer exist, delete segments that are
empty or fully acknowledged, and apply retention. Whatever is not acknowledged
by an output is returned by ``pending`` for that output again.

Order. Everything is first read and judged without changing a byte: entry
types, segments, counters and the key. A problem that makes the tenant
unusable (its key missing or not the one its segments were written with, a
directory where the spool keeps a file, an unreadable directory) raises before
anything changed, and the tenant is *held* with its directory exactly as it
was. Only then does the writer remove leftovers, truncate torn tails and set
damaged state files aside (``<name>.damaged``).

The read-only view (``ingress spool stats``) applies the same reading and
changes nothing: it does not count torn tails (a running writer may be in the
middle of that record) and only compares key fingerprints.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ingress._fs import fsync_dir, unlink_quiet
from ingress.errors import SpoolError
from ingress.logs import get_logger
from ingress.security.crypto import KeyFileError, fingerprint
from ingress.spool.counters import (
    _COUNTER_KEYS,
    COUNTERS,
    DAMAGED_SUFFIX,
    _set_aside,
    counters_of,
    read_counters,
    save_counters,
)
from ingress.spool.index import TenantPolicy, _Segment, _Tenant
from ingress.spool.ledger import parse_ledger_name, read_ledger
from ingress.spool.segment import FLAG_SEALED, SEG_HEADER_SIZE, parse_segment_name, scan

log = get_logger("ingress.spool")


class _Recovery:
    """Spool mixin: cleaning leftovers and loading (and repairing) one tenant at open."""

    def _clean_leftovers(self, skip: set[str]) -> None:
        """Temp files and half-deleted segments of a previous crash in the directories of
        tenants that are not configured (a configured tenant's are removed by its load)."""
        for entry in os.scandir(self.dir):
            if entry.name in skip or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                with os.scandir(entry.path) as it:
                    for f in it:
                        if (f.name.endswith(".tmp") or f.name.endswith(".deleting")) \
                                and f.is_file(follow_symlinks=False):
                            unlink_quiet(Path(f.path))
            except OSError as e:
                log.warning(f"{entry.path}: cannot clean leftovers: {e.strerror or e}", tenant=entry.name,
                            path=entry.path)

    def _load_tenant(self, tid: str, policy: TenantPolicy, outputs: tuple[str, ...] | None,
                     segment_bytes: int) -> _Tenant:
        """Read one tenant's directory, then (writer) repair it.

        First everything is read and judged without changing a byte: entry
        types, segments (scan), counters, and the key. A problem that makes the
        tenant unusable raises (SpoolError or OSError) before anything on disk
        changed, so a held tenant's spool stays exactly as it was. Only then
        does the writer remove leftovers, truncate torn tails and set damaged
        state files aside.
        """
        ro = self._readonly
        d = self.dir / tid
        try:
            st = os.stat(d)  # a symlink to a directory elsewhere is fine
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise SpoolError(f"{d}: the tenant's spool path is not a directory; move it away")
        if st is None and not ro:
            d.mkdir(mode=0o700)
        seg_names: dict[int, str] = {}
        ledgers: list[tuple[int, str, str]] = []
        leftovers: list[str] = []
        odd: list[str] = []
        max_seq = 0
        entries = []
        if st is not None:
            with os.scandir(d) as it:
                entries = [(e.name, e.is_file(follow_symlinks=False)) for e in it]
        for name, regular in entries:
            if name.endswith(DAMAGED_SUFFIX):
                continue  # set aside earlier; kept for whoever investigates
            leftover = name.endswith(".tmp") or name.endswith(".deleting")
            ours = leftover or name == COUNTERS or name.endswith(".seg") or name.endswith(".ack")
            if not ours:
                continue  # not a name the spool uses: left alone
            if not regular:
                raise SpoolError(f"{d / name}: is a directory or another non-regular file where the "
                                 f"spool keeps a file; move it away")
            if leftover:
                leftovers.append(name)
                if name.endswith(".seg.deleting"):
                    seq = parse_segment_name(name[:-len(".deleting")])
                    if seq is not None:
                        max_seq = max(max_seq, seq)
                continue
            if name == COUNTERS:
                continue
            seq = parse_segment_name(name)
            if seq is not None:
                seg_names[seq] = name
                max_seq = max(max_seq, seq)
                continue
            led = parse_ledger_name(name)
            if led is not None:
                ledgers.append((led[0], led[1], name))
            else:
                odd.append(name)  # a .seg or .ack name that is not one the spool writes
        if outputs is None:  # read-only discovery
            outputs = tuple(sorted({o for _, o, _ in ledgers}))
        t = _Tenant(tid, policy, d, outputs, segment_bytes)
        t.next_seq = max_seq + 1
        counters, counters_damage = read_counters(t, ro)
        seen = counters.get("corrupt_by_segment", {})
        encrypted_segs: list[tuple[_Segment, bytes, Path]] = []
        any_sealed_records = False
        torn_created: list[Path] = []
        truncations: list[tuple[Path, int]] = []
        regions_now: dict[int, int] = {}
        new_corrupt = 0
        for seq in sorted(seg_names):
            path = d / seg_names[seq]
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue  # deleted by the writer while a read-only view looked
            if len(data) < SEG_HEADER_SIZE:
                torn_created.append(path)
                continue
            res = scan(data)
            size = len(data)
            already = seen.get(seq, 0)
            if res.corrupt_regions:
                regions_now[seq] = res.corrupt_regions
                fresh = max(0, res.corrupt_regions - already)
                new_corrupt += fresh
                before = "" if fresh == res.corrupt_regions else f" ({res.corrupt_regions - fresh} counted before)"
                log.warning(f"{path}: skipped {res.corrupt_regions} corrupt region(s){before}; the other "
                            "records stay usable", tenant=tid, path=str(path), regions=res.corrupt_regions)
                if fresh:
                    from ingress.security.events import event

                    event("security.tamper_suspected", f"{fresh} spool region(s) failed their checksum",
                          tenant=tid, path=str(path))
            if res.tail_bytes and not ro:
                # A region this segment's count already holds (found on read) is not counted twice.
                if already <= res.corrupt_regions:
                    new_corrupt += 1
                t.new_torn += 1
                truncations.append((path, res.valid_end))
                size = res.valid_end
            uid = res.header.uid if res.header is not None else bytes(8)
            seg = _Segment(seq, uid, path, size, outputs)
            for k in range(len(res.offsets)):
                seg.add(res.offsets[k], res.lengths[k], res.samples[k], res.first_ts[k])
                any_sealed_records = any_sealed_records or bool(res.flags[k] & FLAG_SEALED)
            if res.header is not None:
                seg.first_append_ns = res.header.created_ns
                if res.header.encrypted:
                    encrypted_segs.append((seg, res.header.key_fp, path))
            t.segments.append(seg)
            t.by_seq[seq] = seg
            t.bytes += size
        self._setup_cipher(t, encrypted_segs, any_sealed_records)
        # ---- from here on the writer changes the directory; nothing above did
        t.dropped_b = counters.get("dropped_batches", 0)
        t.dropped_s = counters.get("dropped_samples", 0)
        t.torn_tails = counters.get("torn_tails", 0)
        t.corrupt = counters.get("corrupt_records", 0) + new_corrupt
        t.damaged = counters.get("damaged_files", 0) + counters_damage + len(odd)
        t.corrupt_seen = regions_now
        for name in odd:
            aside = "" if ro else f"; set aside as {name}{DAMAGED_SUFFIX}"
            log.warning(f"{d / name}: not a name the spool writes (segment number out of range or "
                        f"malformed){aside}", tenant=tid, path=str(d / name))
        if not ro:
            for name in leftovers:
                unlink_quiet(d / name)
            for path in torn_created:
                log.info(f"{path}: removing segment torn while it was created", tenant=tid, path=str(path))
                unlink_quiet(path)
            for path, end in truncations:
                log.warning(f"{path}: torn or corrupt tail after offset {end}: truncated", tenant=tid, path=str(path),
                            offset=end)
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, end)
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            for name in odd:
                _set_aside(d / name)
            if counters_damage:
                _set_aside(d / COUNTERS)
        self._replay_ledgers(t, ledgers)
        for seg in t.segments:
            for i in range(seg.n):
                full = True
                for o in outputs:
                    if not seg.is_acked(o, i):
                        t.pend_b[o] += 1
                        t.pend_s[o] += seg.samples[i]
                        full = False
                if full and outputs:
                    seg.nfull += 1
                else:
                    t.union_b += 1
                    t.union_s += seg.samples[i]
        t.torn_tails += t.new_torn
        t.new_torn = 0
        if not ro:
            was = {k: counters.get(k, 0) for k in _COUNTER_KEYS}
            if counters.get("corrupt_by_segment"):
                was["corrupt_by_segment"] = counters["corrupt_by_segment"]
            if counters_damage or was != counters_of(t):
                save_counters(t)
            with t.wlock, t.mlock:
                for seg in list(t.segments):
                    if seg.n == 0 or seg.fully_acked():
                        self._delete_segment(t, seg, reason=None)
                self._expire(t, self._clock())
            fsync_dir(d)
        return t

    def _setup_cipher(self, t: _Tenant, encrypted_segs, any_sealed_records: bool) -> None:
        """Load (writer: create when allowed) the tenant's key and check it against its segments.

        The read-only view only checks, by fingerprint, and never imports the AES bindings.
        """
        if not (t.policy.encrypt or encrypted_segs or any_sealed_records):
            return
        key_path = self._keys.path(t.id)
        if self._keys.exists(t.id):
            if self._readonly:
                fp = fingerprint(self._keys.load(t.id))
            else:
                t.cipher = self._keys.cipher(t.id)
                fp = t.cipher.fingerprint
        elif encrypted_segs or any_sealed_records:
            raise KeyFileError(
                f"{key_path}: tenant {t.id!r}: key file is missing, but the tenant's spool in {t.dir} "
                f"holds encrypted records; restore the key or move that directory away")
        elif self._readonly:
            return
        else:
            t.cipher = self._keys.cipher(t.id, create=True)
            log.info(f"{key_path}: created the at-rest key of tenant {t.id!r}", tenant=t.id, path=str(key_path))
            fp = t.cipher.fingerprint
        for seg, sfp, path in encrypted_segs:
            if sfp != fp:
                raise KeyFileError(
                    f"{key_path}: tenant {t.id!r}: this key (fingerprint {fp.hex()}) is not "
                    f"the key {path} was written with (fingerprint {sfp.hex()})")

    def _replay_ledgers(self, t: _Tenant, ledgers: list[tuple[int, str, str]]) -> None:
        ro = self._readonly
        for seq, out, name in ledgers:
            path = t.dir / name
            seg = t.by_seq.get(seq)
            if seg is None:
                if not ro:
                    unlink_quiet(path)  # orphan of a segment deleted by a crashed process
                continue
            if out not in seg.acked:
                continue  # an output not configured now: its ledger waits for it
            got = read_ledger(path, seg.uid)
            if got is None:
                t.damaged += 1
                what = "its acks are lost" if ro else "removed, its acks are lost"
                log.warning(f"{path}: ledger is damaged or belongs to another segment; {what} (batches go "
                            "out again)", tenant=t.id, output=out, path=str(path))
                if not ro:
                    unlink_quiet(path)
                continue
            offsets, whole = got
            if not ro and whole < os.path.getsize(path):
                os.truncate(path, whole)
            for off in offsets:
                i = seg.index(off)
                if i >= 0:
                    seg.set_acked(out, i)

