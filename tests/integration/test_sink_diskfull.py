"""The sink on a real, tiny, full filesystem, over real HTTP on loopback.

A 256 KiB tmpfs in an unprivileged user+mount namespace holds the sink's data
directory. The child starts the sink, POSTs real batches until the disk is
full, checks every refusal is an answered ``503 storage_unavailable``, frees a
ballast file and POSTs again; the parent checks what it saw.
"""
from __future__ import annotations

import textwrap

import pytest

from outputs.test_file_diskfull import run_on_tmpfs

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent(r"""
    import hashlib, http.client, json, os, random, sys
    from ingress import wire
    from ingress.sink import SinkServer
    from ingress.outputs.file import read_batches

    root = sys.argv[1]
    os.makedirs(root)
    ballast = os.path.join(root, "ballast")
    with open(ballast, "wb") as f:
        f.write(os.urandom(64 << 10))
    sink = SinkServer("127.0.0.1:0", os.path.join(root, "sink"), {"acme": hashlib.sha256(b"k").digest()},
                      ).start()
    rnd = random.Random(7)

    def batch(i):
        n = 150 + 7 * i
        return wire.encode("acme", "web-1", [("cpu.user", {"cpu": "0"})], [0] * n, list(range(n)),
                           [rnd.random() for _ in range(n)], batch_id=i.to_bytes(16, "big"))

    bodies = {}

    def post(i):
        body = bodies.setdefault(i, batch(i))
        c = http.client.HTTPConnection(*sink.address, timeout=30)
        try:
            c.request("POST", "/v1/batches", body=body, headers={
                "Content-Type": "application/vnd.ingress.batch.v1", "X-Tenant-ID": "acme",
                "Authorization": "Bearer k", "Idempotency-Key": i.to_bytes(16, "big").hex()})
            r = c.getresponse()
            obj = json.loads(r.read())
            return [r.status, obj.get("status") or obj["error"]["code"]]
        except (OSError, http.client.HTTPException) as e:
            return [None, f"no answer: {type(e).__name__}: {e}"]
        finally:
            c.close()

    answers, i, refused = {}, 0, []
    while len(refused) < 3 and i < 2000:  # fill the disk, then three more refusals
        a = answers[i] = post(i)
        if a[0] != 200:
            refused.append(i)
        i += 1
    first_stored = next(k for k, a in answers.items() if a[1] == "stored")
    dup_while_full = post(first_stored)
    os.unlink(ballast)  # space returns
    retried = {k: post(k) for k in refused}  # the client's retries
    fresh = {k: post(k) for k in range(i, i + 3)}
    again = {k: post(k) for k in refused}
    sink.stop()
    d = os.path.join(root, "sink", "acme")
    files = sorted(p for p in os.listdir(d) if p.endswith(".ibatch"))
    recs = [b for p in files for b in read_batches(os.path.join(d, p), strict=True)]
    stored_ids = [wire.peek(b).batch_id for b in recs]
    stored_ids = [int.from_bytes(bytes.fromhex(x) if isinstance(x, str) else bytes(x), "big") for x in stored_ids]
    seen = open(os.path.join(d, "seen.ids"), "rb").read()
    print(json.dumps({
        "answers": answers, "refused": refused, "dup_while_full": dup_while_full, "retried": retried,
        "fresh": fresh, "again": again, "stored_ids": stored_ids,
        "whole": all(b == bodies[k] for b, k in zip(recs, stored_ids)),
        "seen": sorted(int.from_bytes(seen[j:j + 16], "big") for j in range(0, len(seen), 16)),
        "seen_len": len(seen)}))
""")


def test_sink_on_a_full_tmpfs_answers_503_and_stores_again_when_space_returns(tmp_path):
    res = run_on_tmpfs(tmp_path, CHILD)
    answers = {int(k): v for k, v in res["answers"].items()}
    refused = res["refused"]
    stored_while_filling = [k for k, a in answers.items() if a == [200, "stored"]]
    assert len(stored_while_filling) > 5 and len(refused) == 3
    # Every refusal is an answer, the documented one; never a dropped connection.
    assert all(answers[k] == [503, "storage_unavailable"] for k in refused), answers
    assert res["dup_while_full"] == [200, "duplicate"]
    # Once space returns, the same tenant's requests succeed again: the retries are stored once.
    assert res["retried"] == {str(k): [200, "stored"] for k in refused}
    assert all(a == [200, "stored"] for a in res["fresh"].values())
    assert res["again"] == {str(k): [200, "duplicate"] for k in refused}
    # The batch files hold exactly the stored batches, whole, each once; seen.ids only whole ids, the same set.
    expected = stored_while_filling + refused + sorted(int(k) for k in res["fresh"])
    assert res["stored_ids"] == expected
    assert res["whole"] is True
    assert res["seen_len"] % 16 == 0
    assert res["seen"] == sorted(expected)
