"""agent.allow_destinations: outputs and health checks may reach only the listed destinations."""
from __future__ import annotations

import ipaddress
import json
from fnmatch import fnmatchcase

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingress import destinations
from ingress.config import ConfigError, loads


def _cfg(allow: str, outputs: str, health: str = "") -> str:
    return (f"[agent]\nallow_destinations = {allow}\n\n"
            "[[tenants]]\nid = \"acme\"\napi_key_env = \"ACME_KEY\"\n"
            + ("collectors = [\"cpu\", \"health\"]\n" + health if health else "")
            + "\n" + outputs)


KAFKA = '[[outputs]]\ntype = "kafka"\nbrokers = "k1.corp:9092,10.1.2.3:9093"\n'
HTTP = '[[outputs]]\ntype = "http"\nurl = "https://ingest.example.com/v1"\n'


def test_empty_allows_any():
    s = loads(_cfg("[]", KAFKA + HTTP))
    assert s.agent.allow_destinations == ()


def test_allowed_outputs_load():
    s = loads(_cfg('["*.corp:9092", "10.0.0.0/8", "ingest.example.com:443"]', KAFKA + HTTP))
    assert s.agent.allow_destinations == ("*.corp:9092", "10.0.0.0/8", "ingest.example.com:443")


def test_kafka_broker_refused_names_output_and_destination():
    with pytest.raises(ConfigError) as e:
        loads(_cfg('["*.corp:9092"]', KAFKA), "a.toml")
    assert str(e.value) == ("a.toml:10: outputs[0].brokers: output 'kafka-0': destination '10.1.2.3:9093' "
                            "is not in agent.allow_destinations")


def test_http_url_default_port_refused():
    with pytest.raises(ConfigError) as e:
        loads(_cfg('["ingest.example.com:80"]', HTTP), "a.toml")
    assert str(e.value) == ("a.toml:10: outputs[0].url: output 'http-0': destination "
                            "'ingest.example.com:443' is not in agent.allow_destinations")


@pytest.mark.parametrize("otype", ["otlp", "remote_write"])
def test_protocol_outputs_checked(otype):
    out = f'[[outputs]]\ntype = "{otype}"\nurl = "http://10.9.9.9:4318/v1"\n'
    loads(_cfg('["10.0.0.0/8"]', out))
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.url: output .*'10\.9\.9\.9:4318'"):
        loads(_cfg('["192.168.0.0/16"]', out))


def test_file_output_has_no_destination():
    loads(_cfg('["nowhere:1"]', '[[outputs]]\ntype = "file"\n'))


@pytest.mark.parametrize("check,dest", [('url = "http://db.internal:8080/health"', "db.internal:8080"),
                                        ('tcp = "127.0.0.1:5432"', "127.0.0.1:5432")])
def test_health_checks_refused(check, dest):
    health = f'[[tenants.health]]\nname = "api"\n{check}\n'
    with pytest.raises(ConfigError) as e:
        loads(_cfg('["*.corp:*"]', '[[outputs]]\ntype = "file"\n', health), "a.toml")
    msg = str(e.value)
    assert msg.startswith("a.toml:10: tenants[0].health[0].") and f"destination {dest!r}" in msg
    assert "health check 'api'" in msg and "\n" not in msg
    loads(_cfg(f'["{dest}"]', '[[outputs]]\ntype = "file"\n', health))


@pytest.mark.parametrize("bad", ["", "host", "host:", "host:99999", "host:x", "10.0.0.0/33",
                                 "a b:1", "::1:80", "300.1.1.1/8"])
def test_bad_patterns_refused(bad):
    with pytest.raises(ConfigError, match=r"^a\.toml:2: agent\.allow_destinations\[0\]: "):
        loads(_cfg(json.dumps([bad]), '[[outputs]]\ntype = "file"\n'), "a.toml")


def test_refusal_is_a_security_event_while_the_agent_runs(tmp_path, caplog):
    from ingress.security import audit

    audit.open_default(tmp_path)
    try:
        with pytest.raises(ConfigError):
            loads(_cfg('["*.corp:9092"]', KAFKA))
    finally:
        audit.close_default()
    events = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    ev = [e for e in events if e["action"] == "security.destination_refused"]
    assert ev and ev[0]["destination"] == "10.1.2.3:9093" and ev[0]["outcome"] == "refused"
    assert any("destination refused" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- properties

_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
_hosts = st.lists(_label, min_size=1, max_size=3).map(".".join)
_ports = st.integers(0, 65535)


@given(_hosts, _ports, st.sampled_from(["exact", "star-port", "glob-host", "other-port", "other-host"]))
def test_host_port_patterns(host, port, how):
    if how == "exact":
        pat, want = f"{host}:{port}", True
    elif how == "star-port":
        pat, want = f"{host}:*", True
    elif how == "glob-host":
        pat, want = f"*{host[-1]}:{port}", True
    elif how == "other-port":
        pat, want = f"{host}:{(port + 1) % 65536}", False
    else:
        pat, want = f"x{host}:{port}", False
    assert destinations.allowed([pat], f"{host}:{port}") is want
    assert destinations.allowed([], f"{host}:{port}") is True


@given(st.ip_addresses(), st.integers(0, 128), _ports)
def test_cidrs_match_exactly_the_addresses_inside(ip, prefix, port):
    prefix = min(prefix, ip.max_prefixlen)
    net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    dest = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    assert destinations.allowed([str(net)], dest)
    other = ipaddress.ip_address((int(net.network_address) - 1) % (2 ** ip.max_prefixlen)) \
        if prefix > 0 else None
    if other is not None and other not in net:
        odest = f"[{other}]:{port}" if ip.version == 6 else f"{other}:{port}"
        assert not destinations.allowed([str(net)], odest)
    assert not destinations.allowed([str(net)], f"h{port}.example:{port}")  # names never match a CIDR


@settings(max_examples=300)
@given(st.text(max_size=30))
def test_any_pattern_text_parses_or_is_refused_with_one_line(text):
    try:
        p = destinations.parse(text)
    except ValueError as e:
        assert "\n" not in str(e) and str(e)
        return
    # an accepted host:port pattern agrees with fnmatch on its own host part
    if p.net is None:
        assert p.port is None or 0 <= p.port <= 65535
        assert fnmatchcase(p.host, p.host) or any(c in p.host for c in "*?[")
