"""Process hardening applied by ``ingress run`` before anything is opened.

* ``umask 077``: every file and directory the agent creates (spool, keys,
  audit log, file outputs, dead letters) is private to its user, whatever the
  caller's umask.
* no core dumps (``RLIMIT_CORE`` 0): a crash must not write tenant
  credentials, data keys or samples to disk.
* ``PR_SET_NO_NEW_PRIVS``: neither the agent nor anything it could be tricked
  into executing can gain privileges through set-uid binaries or file
  capabilities.
* optionally :func:`drop_privileges` to another user and group once what needs
  privilege is open.

Each step reports what it did; a step the platform refuses is reported, not
fatal, because the agent must still run where a sandbox forbids ``prctl``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource

__all__ = ["harden", "drop_privileges", "no_new_privs"]

PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39


def _prctl(option: int, arg: int = 0) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    r = libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                   ctypes.c_ulong(0))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def no_new_privs() -> bool:
    """Whether ``PR_SET_NO_NEW_PRIVS`` is set for this process."""
    return _prctl(PR_GET_NO_NEW_PRIVS) == 1


def harden() -> dict[str, str]:
    """Apply umask 077, no core dumps and no new privileges; ``{step: outcome}``."""
    done: dict[str, str] = {}
    os.umask(0o077)
    done["umask"] = "077"
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        done["core_dumps"] = "off"
    except (OSError, ValueError) as e:
        done["core_dumps"] = f"unchanged ({e})"
    try:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        done["no_new_privs"] = "on"
    except (OSError, AttributeError) as e:
        done["no_new_privs"] = f"unavailable ({e})"
    return done


def drop_privileges(user: str | None, group: str | None) -> str:
    """Switch to ``user`` (and ``group``, default the user's primary group).

    Supplementary groups are replaced by the target group only. Returns a
    description for the ``started`` line.

    Raises
    ------
    PermissionError
        Not running as root while asked to switch to another user.
    KeyError
        The user or group does not exist (the message names it).
    """
    import grp
    import pwd

    if user is None and group is None:
        return "unchanged"
    pw = None
    if user is not None:
        try:
            pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise KeyError(f"agent.user: no user {user!r}") from None
    if group is not None:
        try:
            gid = (grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)).gr_gid
        except KeyError:
            raise KeyError(f"agent.group: no group {group!r}") from None
    else:
        gid = pw.pw_gid if pw is not None else os.getgid()
    uid = pw.pw_uid if pw is not None else os.getuid()
    if (uid, gid) == (os.getuid(), os.getgid()):
        return f"uid={uid} gid={gid} (already)"
    if os.geteuid() != 0:
        raise PermissionError(f"cannot switch to uid {uid} gid {gid}: the agent is not running as root")
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)
    return f"uid={uid} gid={gid}"
