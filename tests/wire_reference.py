"""A slow, simple, pure-Python encoder/decoder of batch format v1: the test oracle.

It follows docs/wire-format.md line by line, with plain ints and bytes, so the
compiled codec (ingress._core._codec + ingress.wire) can be checked against it
byte for byte in both directions. Not a product; never imported by ingress.
"""
from __future__ import annotations

import re
import struct
import zlib

import lz4.block

MAGIC = b"INGB"
VERSION = 1
FIXED = struct.Struct("<4sBBBB16sIIIII")
M64 = (1 << 64) - 1
TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class RefError(Exception):
    pass


# -------------------------------------------------------------- primitives
def zigzag(v: int) -> int:
    v = to_signed(v & M64)
    return ((v << 1) ^ (v >> 63)) & M64


def unzigzag(u: int) -> int:
    return to_signed((u >> 1) ^ (-(u & 1) & M64))


def to_signed(u: int) -> int:
    u &= M64
    return u - (1 << 64) if u >> 63 else u


def varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def varint(self) -> int:
        r = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise RefError("truncated varint")
            b = self.data[self.pos]
            self.pos += 1
            if shift == 63 and b > 1:
                raise RefError("varint past 64 bits")
            r |= (b & 0x7F) << shift
            if b < 0x80:
                return r
            shift += 7

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise RefError("truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def f2b(v: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", v))[0]


def b2f(b: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", b & M64))[0]


# -------------------------------------------------------------- value codecs
def dec_ok(v: float, d: int) -> bool:
    x = v * 10.0 ** d
    if not abs(x) < 2.0 ** 53:
        return False
    m = round(x)  # round half to even, like C rint()
    return f2b(m / 10.0 ** d) == f2b(v)


def pack(vals: list[int], w: int) -> bytes:
    acc = 0
    for j, v in enumerate(vals):
        acc |= v << (j * w)
    return acc.to_bytes((len(vals) * w + 7) // 8, "little")


def unpack(r: Reader, c: int, w: int) -> list[int]:
    acc = int.from_bytes(r.take((c * w + 7) // 8), "little")
    return [(acc >> (j * w)) & ((1 << w) - 1) for j in range(c)]


def xor_bytes(x: int) -> int:
    """Bytes the XOR codec spends on x: its control byte plus significant bytes."""
    if x == 0:
        return 1
    tz = (x & -x).bit_length() - 1
    return 1 + (x.bit_length() + 7) // 8 - tz // 8


def encode_series(vals: list[float]) -> tuple[int, bytes]:
    bits = [f2b(v) for v in vals]
    c = len(vals)
    if c > 1 and all(b == bits[0] for b in bits):
        return 0x00, struct.pack("<Q", bits[0])
    d = 0
    for v in vals:
        while not dec_ok(v, d):
            d += 1
            if d > 15:
                break
        if d > 15:
            break
    if d <= 15 and all(dec_ok(v, d) for v in vals):
        ms = [round(v * 10.0 ** d) for v in vals]
        deltas = [ms[0]] + [ms[j] - ms[j - 1] for j in range(1, c)]
        size_var = sum(len(varint(zigzag(x))) for x in deltas)
        if c > 1:
            dmin, dmax = min(deltas[1:]), max(deltas[1:])
            w = (dmax - dmin).bit_length()
            size_for = (len(varint(zigzag(deltas[0]))) + len(varint(zigzag(dmin))) + 1
                        + ((c - 1) * w + 7) // 8)
            if size_for < size_var:
                return 0x30 | d, (varint(zigzag(deltas[0])) + varint(zigzag(dmin)) + bytes([w])
                                  + pack([x - dmin for x in deltas[1:]], w))
        return 0x20 | d, b"".join(varint(zigzag(x)) for x in deltas)
    xs = [bits[0]] + [bits[j] ^ bits[j - 1] for j in range(1, c)]
    size_var = sum(xor_bytes(x) for x in xs)
    rest = [x for x in xs[1:] if x]
    tz = min(((x & -x).bit_length() - 1 for x in rest), default=0)
    ored = 0
    for x in rest:
        ored |= x
    w = (ored >> tz).bit_length()
    if c > 1 and 10 + ((c - 1) * w + 7) // 8 < size_var:
        return 0x40, (struct.pack("<Q", xs[0]) + bytes([tz, w])
                      + pack([x >> tz for x in xs[1:]], w))
    out = bytearray()
    for x in xs:
        if x == 0:
            out.append(0)
            continue
        tzb = ((x & -x).bit_length() - 1) // 8
        n = (x.bit_length() + 7) // 8 - tzb
        out.append(tzb << 4 | n)
        out += (x >> (8 * tzb)).to_bytes(n, "little")
    return 0x10, bytes(out)


def decode_series(r: Reader, codec: int, count: int) -> list[float]:
    if codec == 0x00:
        (b,) = struct.unpack("<Q", r.take(8))
        return [b2f(b)] * count
    if codec & 0xF0 == 0x20:
        d, m, out = codec & 0x0F, 0, []
        for _ in range(count):
            m = to_signed(m + unzigzag(r.varint()))
            out.append(float(m) / 10.0 ** d)
        return out
    if codec & 0xF0 == 0x30:
        d = codec & 0x0F
        m = unzigzag(r.varint())
        out = [float(m) / 10.0 ** d]
        if count > 1:
            dmin = r.varint()
            w = r.take(1)[0]
            if w > 64:
                raise RefError("width")
            for x in unpack(r, count - 1, w):
                m = to_signed(m + unzigzag(dmin) + x)
                out.append(float(m) / 10.0 ** d)
        return out
    if codec == 0x10:
        bits, out = 0, []
        for _ in range(count):
            ctrl = r.take(1)[0]
            if ctrl:
                tz, n = ctrl >> 4, ctrl & 0x0F
                if n == 0 or tz + n > 8:
                    raise RefError("bad xor ctrl")
                bits ^= int.from_bytes(r.take(n), "little") << (8 * tz)
            out.append(b2f(bits))
        return out
    if codec == 0x40:
        (bits,) = struct.unpack("<Q", r.take(8))
        out = [b2f(bits)]
        if count > 1:
            tz, w = r.take(2)
            if tz + w > 64:
                raise RefError("width")
            for x in unpack(r, count - 1, w):
                bits ^= (x << tz) & M64
                out.append(b2f(bits))
        return out
    raise RefError(f"codec {codec:#x}")


# -------------------------------------------------------------- batch
def encode(tenant, host, series, series_index, timestamps, values, batch_id) -> bytes:
    idx = [int(i) for i in series_index]
    ts = [int(t) for t in timestamps]
    vals = [float(v) for v in values]
    n, nser = len(idx), len(series)
    assert len(ts) == n == len(vals) and len(batch_id) == 16
    assert all(0 <= i < nser for i in idx)
    # dictionary
    table: dict[str, int] = {}
    names, ntags, keys, values = [], [], [], []

    def sid(s: str) -> int:
        return table.setdefault(s, len(table))

    for name, tags in series:
        names.append(sid(name))
        ntags.append(len(tags))
        for k, v in dict(tags).items():
            keys.append(sid(k))
            values.append(sid(v))
    body = bytearray(varint(len(table)))
    for s in table:
        u = s.encode("utf-8")
        body += varint(len(u)) + u
    for x in names + ntags + keys:
        body += varint(x)
    last = [0] * len(table)
    for k, v in zip(keys, values):
        body += varint(zigzag(v - last[k]))
        last[k] = v
    # index column
    prev = 0
    for i in idx:
        body += varint(zigzag(i - prev))
        prev = i
    # timestamps
    runs: list[list[int]] = []
    for t in ts:
        if runs and runs[-1][0] == t:
            runs[-1][1] += 1
        else:
            runs.append([t, 1])
    prev_t = prev_d = 0
    if 2 * len(runs) > n:
        body.append(1)
        for t in ts:
            d = (t - prev_t) & M64
            body += varint(zigzag(d - prev_d))
            prev_t, prev_d = t, d
    else:
        body.append(0)
        body += varint(len(runs))
        for t, length in runs:
            d = (t - prev_t) & M64
            body += varint(length) + varint(zigzag(d - prev_d))
            prev_t, prev_d = t, d
    # values
    per: list[list[float]] = [[] for _ in range(nser)]
    for i, v in zip(idx, vals):
        per[i].append(v)
    codecs, streams = bytearray(), bytearray()
    for vs in per:
        if vs:
            c, s = encode_series(vs)
            codecs.append(c)
            streams += s
    body += codecs + streams
    return frame(bytes(body), tenant, host, batch_id, n, nser)


def frame(raw: bytes, tenant: str, host: str, batch_id: bytes, n: int, nser: int,
          compress: bool | None = None, **override) -> bytes:
    """Header + (lz4) body with valid checksums around any raw body.

    ``compress=None`` applies the encoder's rule (lz4 when it is smaller);
    ``override`` replaces header fields (flags, raw_len, body_len, version, magic,
    tenant_len, host_len) before the checksums are computed, for hostile tests.
    """
    flags, stored = 0, raw
    if raw and compress is not False:
        packed = lz4.block.compress(raw, store_size=False)
        if compress or len(packed) < len(raw):
            flags, stored = 1, packed
    tb = tenant if isinstance(tenant, bytes) else tenant.encode("utf-8")
    hb = host if isinstance(host, bytes) else host.encode("utf-8")
    f = dict(magic=MAGIC, version=VERSION, flags=flags, tenant_len=len(tb), host_len=len(hb),
             n=n, nser=nser, raw_len=len(raw), body_len=len(stored))
    f.update(override)
    head = FIXED.pack(f["magic"], f["version"], f["flags"], f["tenant_len"], f["host_len"],
                      bytes(batch_id), f["n"], f["nser"], f["raw_len"], f["body_len"],
                      zlib.crc32(stored)) + tb + hb
    return head + struct.pack("<I", zlib.crc32(head)) + stored


def _lz4_len(extra: int) -> bytes:
    return b"\xff" * (extra // 255) + bytes([extra % 255])


def lz4_run_block(prefix: bytes, fill: int, run: int, suffix: bytes) -> bytes:
    """An lz4 block (no size prefix) of ``prefix + bytes([fill]) * run + suffix``, made by hand.

    Two sequences: ``prefix`` and one ``fill`` byte as literals, a match of
    offset 1 that repeats it ``run - 1`` times (255 bytes of output per stored
    byte), then ``suffix`` as the closing literals. So a run of 50 M costs
    about 200 KB and nothing is ever as large as the output. Falls back to
    ``lz4.block.compress`` when the run or the suffix is too short for that
    shape (lz4 ends a block with at least 12 literal bytes).
    """
    if run < 5 or len(suffix) < 12:
        return lz4.block.compress(prefix + bytes([fill]) * run + suffix, store_size=False)
    lit = prefix + bytes([fill])
    ml = run - 1 - 4
    out = bytearray([(min(len(lit), 15) << 4) | min(ml, 15)])
    if len(lit) >= 15:
        out += _lz4_len(len(lit) - 15)
    out += lit + b"\x01\x00"
    if ml >= 15:
        out += _lz4_len(ml - 15)
    out.append(min(len(suffix), 15) << 4)
    if len(suffix) >= 15:
        out += _lz4_len(len(suffix) - 15)
    return bytes(out + suffix)


def bomb(n: int, tenant: str = "acme", batch_id: bytes = bytes(16), value: float = 1.5) -> bytes:
    """A valid batch of n samples of one series, its lz4 block made by hand (~n / 255 bytes).

    Index bytes all zero (series 0), one timestamp run (ts 5), one CONST value:
    the decompression bomb of issue 8. Nothing here is ever n bytes long.
    """
    dictionary = varint(1) + varint(1) + b"m" + varint(0) + varint(0)
    suffix = (b"\x00" + varint(1) + varint(n) + varint(zigzag(5))
              + b"\x00" + struct.pack("<d", value))
    block = lz4_run_block(dictionary, 0, n, suffix)
    raw_len = len(dictionary) + n + len(suffix)
    return frame(block, tenant, "h", batch_id, n, 1, compress=False, flags=1, raw_len=raw_len)


def quantities(data: bytes) -> dict:
    """What each decode limit (``wire.DecodeLimits`` field) bounds, read from a valid batch."""
    fields, raw = unframe(data)
    raw_len, body_len = struct.unpack_from("<II", data, 32)
    r = Reader(raw)
    n_strings = r.varint()
    string_bytes = sum(len(r.take(r.varint())) for _ in range(n_strings))
    for _ in range(fields["nser"]):
        r.varint()
    tags = sum(r.varint() for _ in range(fields["nser"]))
    return dict(max_samples=fields["n"], max_series=fields["nser"], max_tags=tags,
                max_strings=n_strings, max_string_bytes=string_bytes, max_raw_bytes=raw_len,
                max_ratio=raw_len / body_len)


def unframe(data: bytes) -> tuple[dict, bytes]:
    """Header fields and the raw (decompressed) body of a valid batch."""
    magic, ver, flags, tl, hl, bid, n, nser, raw_len, body_len, crc = FIXED.unpack_from(data)
    off = FIXED.size + tl + hl
    stored = data[off + 4:]
    raw = lz4.block.decompress(stored, uncompressed_size=raw_len) if flags & 1 else stored
    fields = dict(tenant=data[FIXED.size:FIXED.size + tl].decode(), batch_id=bid,
                  host=data[FIXED.size + tl:off].decode(), n=n, nser=nser)
    return fields, raw


def decode(data: bytes) -> dict:
    """Returns a dict of plain lists; raises RefError for anything invalid."""
    if len(data) < FIXED.size + 5:
        raise RefError("short")
    magic, ver, flags, tl, hl, bid, n, nser, raw_len, body_len, crc = FIXED.unpack_from(data)
    if magic != MAGIC or ver != VERSION:
        raise RefError("magic/version")
    off = FIXED.size + tl + hl
    if len(data) < off + 4 or struct.unpack_from("<I", data, off)[0] != zlib.crc32(data[:off]):
        raise RefError("header crc")
    if flags & ~1 or len(data) - off - 4 != body_len:
        raise RefError("flags/length")
    tenant = data[FIXED.size:FIXED.size + tl].decode("ascii", "replace")
    if not TENANT.fullmatch(tenant):
        raise RefError("tenant")
    try:
        host = data[FIXED.size + tl:off].decode("utf-8")
    except UnicodeDecodeError:
        raise RefError("host") from None
    stored = data[off + 4:]
    if zlib.crc32(stored) != crc:
        raise RefError("body crc")
    if flags & 1:
        if raw_len > 255 * body_len:
            raise RefError("ratio")
        try:
            raw = lz4.block.decompress(stored, uncompressed_size=raw_len)
        except lz4.block.LZ4BlockError:
            raise RefError("lz4") from None
        if len(raw) != raw_len:
            raise RefError("raw_len")
    elif raw_len != body_len:
        raise RefError("raw_len")
    else:
        raw = stored
    r = Reader(raw)
    strings = []
    for _ in range(r.varint()):
        try:
            strings.append(r.take(r.varint()).decode("utf-8"))
        except UnicodeDecodeError:
            raise RefError("utf-8") from None
    names = [r.varint() for _ in range(nser)]
    ntags = [r.varint() for _ in range(nser)]
    keys = [r.varint() for _ in range(sum(ntags))]
    if any(x >= len(strings) for x in names + keys):
        raise RefError("sid")
    last = [0] * len(strings)
    series, t = [], 0
    for name_sid, nt in zip(names, ntags):
        tags = {}
        for _ in range(nt):
            k = keys[t]
            v = to_signed(last[k] + unzigzag(r.varint()))
            if not 0 <= v < len(strings):
                raise RefError("value sid")
            last[k] = v
            tags[strings[k]] = strings[v]
            t += 1
        if len(tags) != nt:
            raise RefError("dup tag")
        series.append((strings[name_sid], tags))
    idx, cur = [], 0
    for _ in range(n):
        cur = to_signed(cur + unzigzag(r.varint()))
        if not 0 <= cur < nser:
            raise RefError("index")
        idx.append(cur)
    mode = r.take(1)[0]
    ts, prev_t, prev_d = [], 0, 0
    if mode == 1:
        for _ in range(n):
            prev_d = (prev_d + unzigzag(r.varint())) & M64
            prev_t = (prev_t + prev_d) & M64
            ts.append(to_signed(prev_t))
    elif mode == 0:
        for _ in range(r.varint()):
            length = r.varint()
            prev_d = (prev_d + unzigzag(r.varint())) & M64
            prev_t = (prev_t + prev_d) & M64
            if length == 0 or len(ts) + length > n:
                raise RefError("runs")
            ts += [to_signed(prev_t)] * length
        if len(ts) != n:
            raise RefError("runs")
    else:
        raise RefError("ts mode")
    counts = [0] * nser
    for i in idx:
        counts[i] += 1
    active = [s for s in range(nser) if counts[s]]
    codecs = r.take(len(active))
    per = {s: decode_series(r, c, counts[s]) for s, c in zip(active, codecs)}
    if r.pos != len(raw):
        raise RefError("trailing")
    pos = [0] * nser
    vals = []
    for i in idx:
        vals.append(per[i][pos[i]])
        pos[i] += 1
    return {"tenant": tenant, "host": host, "batch_id": bid, "series": series,
            "series_index": idx, "timestamps": ts, "values": vals}

