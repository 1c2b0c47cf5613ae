"""deploy/: the systemd unit and the Kubernetes DaemonSet parse and agree with the agent's config keys."""
from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    cp.optionxform = str  # keys are case-sensitive in unit files
    cp.read_string((DEPLOY / "systemd" / "ingress.service").read_text())
    return cp


def test_systemd_unit_is_hardened_and_notifies():
    s = unit()["Service"]
    assert s["Type"] == "notify"
    assert s["ExecStart"] == "/usr/local/bin/ingress run -c /etc/ingress/agent.toml"
    for key, want in {"Restart": "on-failure", "ProtectSystem": "strict", "ProtectHome": "yes",
                      "PrivateTmp": "yes", "NoNewPrivileges": "yes", "StateDirectory": "ingress",
                      "UMask": "0077", "LimitCORE": "0"}.items():
        assert s[key] == want, key
    for key in ("WatchdogSec", "MemoryMax", "CPUQuota"):
        assert s[key]
    caps = {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
    assert set(s["CapabilityBoundingSet"].split()) == caps == set(s["AmbientCapabilities"].split())
    # `systemctl reload` is SIGHUP, which `ingress run` turns into a live reload
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "daemonset.yaml").read_text()) if d]


def test_daemonset_mounts_host_proc_and_sys_read_only():
    ds = next(d for d in docs() if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    c = spec["containers"][0]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    for name, host, at in (("proc", "/proc", "/host/proc"), ("sys", "/sys", "/host/sys")):
        assert mounts[name]["mountPath"] == at and mounts[name]["readOnly"] is True
        assert vols[name]["hostPath"]["path"] == host
    assert mounts["config"]["mountPath"] == "/etc/ingress"
    assert c["args"] == ["run", "-c", "/etc/ingress/agent.toml"]
    assert set(c["resources"]["limits"]) == {"cpu", "memory"}


def test_daemonset_config_passes_check_config(tmp_path):
    cm = next(d for d in docs() if d["kind"] == "ConfigMap")
    text = cm["data"]["agent.toml"]
    assert 'procfs = "/host/proc"' in text and 'sysfs = "/host/sys"' in text
    # the paths it names exist in the pod: check the file here with this machine's /proc and /sys
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text.replace("/host/proc", "/proc").replace("/host/sys", "/sys")
                   .replace("/var/lib/ingress", str(tmp_path / "data")))
    r = subprocess.run([sys.executable, "-m", "ingress", "check-config", "-c", str(cfg)], capture_output=True,
                       timeout=60)
    assert (r.returncode, r.stdout) == (0, b"ok\n"), r.stderr.decode()
    # and as written (the keys and values themselves are valid wherever /host/proc is absent)
    cfg.write_text(text)
    r = subprocess.run([sys.executable, "-m", "ingress", "check-config", "-c", str(cfg)], capture_output=True,
                       timeout=60)
    assert (r.returncode, r.stdout) == (0, b"ok\n"), r.stderr.decode()


def test_readme_names_the_paths():
    text = (DEPLOY / "README.md").read_text()
    assert "/etc/ingress/agent.toml" in text and "/var/lib/ingress" in text
