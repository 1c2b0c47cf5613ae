"""Process hardening, checked in a child process so the test runner keeps its own state."""
import json
import os
import subprocess
import sys

import pytest

from ingress import hardening


def run_child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_harden_sets_umask_no_core_dumps_and_no_new_privs(tmp_path):
    got = run_child(f"""
import json, os, resource
from ingress import hardening
os.umask(0o022)
done = hardening.harden()
p = {str(tmp_path / 'made')!r}
open(p, 'w').close()
os.mkdir(p + '.d')
print(json.dumps({{"done": done, "file": oct(os.stat(p).st_mode & 0o777),
                  "dir": oct(os.stat(p + '.d').st_mode & 0o777),
                  "core": resource.getrlimit(resource.RLIMIT_CORE), "nnp": hardening.no_new_privs()}}))
""")
    assert got["file"] == "0o600" and got["dir"] == "0o700"
    assert got["core"] == [0, 0] and got["done"]["core_dumps"] == "off"
    assert got["nnp"] is True and got["done"]["no_new_privs"] == "on"


def test_no_new_privs_is_off_in_a_plain_process():
    got = run_child("import json; from ingress import hardening; print(json.dumps(hardening.no_new_privs()))")
    assert got is False


def test_drop_privileges_is_a_no_op_without_a_target():
    assert hardening.drop_privileges(None, None) == "unchanged"


def test_drop_privileges_to_self_is_allowed_without_root():
    import grp
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    assert hardening.drop_privileges(me, group).endswith("(already)")


def test_unknown_user_and_group_are_named():
    with pytest.raises(KeyError, match="no user 'no-such-user-xyz'"):
        hardening.drop_privileges("no-such-user-xyz", None)
    with pytest.raises(KeyError, match="no group 'no-such-group-xyz'"):
        hardening.drop_privileges(None, "no-such-group-xyz")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root; CI runs as root")
def test_drop_privileges_as_root_switches_in_a_child():
    got = run_child("""
import json, os
from ingress import hardening
d = hardening.drop_privileges('nobody', None)
print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(), "d": d}))
""")
    import pwd

    nobody = pwd.getpwnam("nobody")
    assert got["uid"] == got["euid"] == nobody.pw_uid
    assert got["groups"] == [nobody.pw_gid]
