"""outputs/protocol.py, the base otlp and remote_write share: tenant header rule, request template."""
import pytest
from hypothesis import given, settings, strategies as st

from ingress import wire
from ingress.errors import ConfigError, PermanentError
from ingress.outputs.base import OutgoingBatch
from ingress.outputs.otlp import OtlpOutput
from ingress.outputs.protocol import check_tenant_header
from ingress.outputs.remote_write import RemoteWriteOutput

TOKEN = "!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"


@given(st.text(max_size=40))
def test_tenant_header_is_a_token_or_one_line_naming_the_key(h):
    try:
        got = check_tenant_header("o1", h)
    except ConfigError as e:
        assert h and any(c not in TOKEN for c in h)
        msg = str(e)
        assert msg.startswith("outputs.o1.tenant_header: ") and "\n" not in msg
        return
    assert got == h and all(c in TOKEN for c in h)


@pytest.mark.parametrize("cls", [OtlpOutput, RemoteWriteOutput])
def test_both_outputs_refuse_a_bad_tenant_header_before_building(cls):
    with pytest.raises(ConfigError, match=r"^outputs\.o1\.tenant_header: 'X Org' is not a valid header name$"):
        cls("o1", "http://127.0.0.1:9/", tenant_header="X Org")


def _batch(payload: bytes, tenant: str = "acme") -> OutgoingBatch:
    return OutgoingBatch(tenant, bytes(range(16)), payload, 1, "h")


@pytest.mark.parametrize("cls", [OtlpOutput, RemoteWriteOutput])
def test_request_carries_the_tenant_header_and_one_cache_per_tenant(cls):
    out = cls("o1", "http://127.0.0.1:9/", tenant_header="X-Scope-OrgID")
    try:
        for tenant in ("acme", "zeta", "acme"):
            payload = wire.encode(tenant, "h", [("cpu.usage", {"cpu": "0"})], [0], [1_000_000_000], [1.5])
            body, headers = out.request(_batch(payload, tenant))
            assert body and headers["X-Scope-OrgID"] == tenant
        assert sorted(out._caches) == ["acme", "zeta"]
        assert out.needs_credential is False and out.tenant_header_names() == ("X-Scope-OrgID",)
    finally:
        out.close()


@pytest.mark.parametrize("cls", [OtlpOutput, RemoteWriteOutput])
@settings(max_examples=60, deadline=None)
@given(junk=st.binary(max_size=200))
def test_an_undecodable_batch_is_permanent_naming_output_and_batch(cls, junk):
    out = cls("o1", "http://127.0.0.1:9/", tenant_header="")
    try:
        try:
            wire.decode(junk)
        except Exception:  # noqa: BLE001 - only inputs the decoder refuses are this test's
            pass
        else:
            return
        with pytest.raises(PermanentError) as e:
            out.request(_batch(junk))
        assert str(e.value).startswith(f"{cls.type} output o1: batch {bytes(range(16)).hex()} cannot be decoded: ")
    finally:
        out.close()
