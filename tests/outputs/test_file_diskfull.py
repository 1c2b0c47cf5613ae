"""The file output on a real, tiny, full filesystem: ENOSPC from the kernel, then space returns.

A 256 KiB tmpfs mounted in an unprivileged user+mount namespace (as in
tests/spool/test_spool_diskfull.py): the child fills it through the file
output, frees a ballast file and writes again; the parent checks what it saw.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(r"""
    import json, os, sys
    from ingress.outputs.base import OutgoingBatch
    from ingress.outputs.file import FileOutput, read_batches

    root, fmt = sys.argv[1], sys.argv[2]
    os.makedirs(root)
    ballast = os.path.join(root, "ballast")
    with open(ballast, "wb") as f:
        f.write(os.urandom(64 << 10))

    def batch(i):
        body = i.to_bytes(4, "big") + bytes([i % 251]) * (2000 + 37 * i)  # not page-aligned
        if fmt == "json":
            from ingress import wire
            body = wire.encode("acme", "h", [("m", {"k": "v" * 200})], [0] * 40, list(range(40)),
                               [float(i)] * 40, batch_id=i.to_bytes(16, "big"))
        return OutgoingBatch("acme", i.to_bytes(16, "big"), body, 1, "h")

    out = FileOutput("f", root, max_bytes=40 << 10, format=fmt)
    results = []  # per write: "ok" or "<ErrorType>: <message>"
    acked, i, failures = [], 0, 0

    def write(i):
        got = []
        out.submit(batch(i), lambda b, e: got.append(e))
        e = got[0]
        results.append("ok" if e is None else f"{type(e).__name__}: {e}")
        if e is None:
            acked.append(i)
        return e is None

    while failures < 4 and i < 2000:  # fill the disk, then fail a few more times
        if not write(i):
            failures += 1
        i += 1
    os.unlink(ballast)  # space returns
    resumed = [write(j) for j in range(i, i + 5)]
    out.close()
    if fmt == "json":
        got = [json.loads(line)["batch_id"] for p in out.files("acme") for line in p.read_text().split("\n")[:-1]]
        whole = all(p.read_bytes().endswith(b"\n") for p in out.files("acme"))
        files = list(dict.fromkeys(int(b, 16) for b in got))
        # every sample of a batch is in the file, in order
        whole = whole and got == [f"{k:032x}" for k in acked for _ in range(40)]
    else:
        recs = [b for p in out.files("acme") for b in read_batches(p, strict=True)]
        whole = all(b == batch(int.from_bytes(b[:4], "big")).payload for b in recs)
        files = [int.from_bytes(b[:4], "big") for b in recs]
    print(json.dumps({"results": results, "acked": acked, "resumed": resumed, "in_files": files,
                      "whole": whole, "nfiles": len(out.files("acme"))}))
""")


def run_on_tmpfs(tmp_path, script, *args):
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("unprivileged user and mount namespaces are not available on this host")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh = 'mount -t tmpfs -o size=262144 none "$1" && shift && exec "$@"'
    out = subprocess.run([unshare, "-rm", "sh", "-c", sh, "sh", str(mnt), sys.executable, "-c", script,
                          str(mnt / "data"), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("fmt", ["batch", "json"])
def test_file_output_on_a_full_tmpfs_fails_cleanly_and_resumes(tmp_path, fmt):
    res = run_on_tmpfs(tmp_path, CHILD, fmt)
    results = res["results"]
    errors = [r for r in results if r != "ok"]
    assert len(res["acked"]) > 5 and len(errors) == 4
    # Every failure is the output's retryable error naming the file and the cause; none is a closed file.
    suffix = ".ibatch" if fmt == "batch" else ".jsonl"
    assert all(e.startswith("RetryableError: file output f: ") and f"{suffix}: No space left on device" in e
               for e in errors), errors
    assert res["resumed"] == [True] * 5  # the first write after space returns succeeds
    # The files hold exactly the acknowledged batches, each whole, in order: nothing half-written.
    assert res["whole"] is True
    assert res["in_files"] == res["acked"]
    assert res["nfiles"] >= 2  # rotation happened on the way
