from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evops.protocol import dids
from evops.protocol.dids import (
    DID,
    chain_id_for,
    chain_name_for,
    normalize_address,
    register_chain,
)
from evops.protocol.errors import DIDError, ProtocolError
from evops.protocol.tests.vectors import ASSET

ADDRESS = ASSET["address"]
CANONICAL = ASSET["did"]


@pytest.mark.parametrize(
    "text",
    [
        CANONICAL,
        "did:ethr:" + ADDRESS,
        "did:ethr:" + ADDRESS.lower(),
        "did:ethr:0x" + ADDRESS[2:].upper(),
        "did:ethr:volta:" + ADDRESS.lower(),
        "did:ethr:0x12047:" + ADDRESS,  # 73799 in hex, ethr-did-resolver style
        "did:ethr:0x012047:" + ADDRESS.lower(),
    ],
)
def test_accepted_forms_normalise_to_canonical(text):
    did = DID.parse(text)
    assert did == DID(ADDRESS, "volta")
    assert str(did) == CANONICAL
    assert did.canonical == CANONICAL
    assert did.chain_id == 73799


def test_ewc_forms():
    did = DID.parse("did:ethr:ewc:" + ADDRESS.lower())
    assert str(did) == "did:ethr:ewc:" + ADDRESS
    assert DID.parse("did:ethr:0xf6:" + ADDRESS) == did
    assert DID.parse("did:ethr:" + ADDRESS, default_chain="ewc") == did
    assert did.chain_id == 246
    assert did.same_identity(DID.parse(CANONICAL))
    assert did != DID.parse(CANONICAL)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("did:web:example.com", dids.ERR_NOT_ETHR),
        ("DID:ETHR:" + ADDRESS, dids.ERR_NOT_ETHR),
        ("did:ethr:", dids.ERR_ADDRESS),
        ("did:ethr:" + ADDRESS[:-1], dids.ERR_ADDRESS),
        ("did:ethr:" + ADDRESS + "0", dids.ERR_ADDRESS),
        ("did:ethr:" + ADDRESS[2:], dids.ERR_ADDRESS),
        ("did:ethr:0X" + ADDRESS[2:], dids.ERR_ADDRESS),
        ("did:ethr:volta:" + ADDRESS + " ", dids.ERR_ADDRESS),
        ("did:ethr:" + ADDRESS.replace("c", "C", 1), dids.ERR_CHECKSUM),
        ("did:ethr:a:b:" + ADDRESS, dids.ERR_SHAPE),
        ("did:ethr:Volta:" + ADDRESS, dids.ERR_SHAPE),
        ("did:ethr:" + "x" * 300, dids.ERR_SHAPE),
    ],
)
def test_malformed_dids_raise_with_a_reason(text, message):
    with pytest.raises(DIDError) as info:
        DID.parse(text)
    assert str(info.value) == message


def test_unknown_chains_are_rejected():
    with pytest.raises(DIDError, match=dids.ERR_UNKNOWN_CHAIN):
        DID.parse("did:ethr:mainnet:" + ADDRESS)
    with pytest.raises(DIDError, match=dids.ERR_UNKNOWN_CHAIN_ID):
        DID.parse("did:ethr:0x1:" + ADDRESS)
    with pytest.raises(DIDError, match=dids.ERR_UNKNOWN_CHAIN):
        DID.parse("did:ethr:" + ADDRESS, default_chain="nowhere")
    with pytest.raises(DIDError, match=dids.ERR_NOT_A_STRING):
        DID.parse(None)  # type: ignore[arg-type]


def test_direct_construction_validates():
    with pytest.raises(DIDError):
        DID(ADDRESS.lower(), "volta")
    with pytest.raises(DIDError):
        DID(ADDRESS, "nowhere")
    with pytest.raises(DIDError):
        DID("not an address")


def test_chain_mapping_and_registration():
    assert chain_id_for("volta") == 73799
    assert chain_id_for("ewc") == 246
    assert chain_name_for(73799) == "volta"
    assert chain_name_for(246) == "ewc"
    register_chain("proto-test-net", 987654321)
    register_chain("proto-test-net", 987654321)  # idempotent
    assert DID.parse("did:ethr:0x3ade68b1:" + ADDRESS).chain == "proto-test-net"
    assert str(DID.for_address(ADDRESS.lower(), "proto-test-net")).startswith(
        "did:ethr:proto-test-net:0x2c75"
    )
    # a second name for volta's id does not change volta's canonical name
    register_chain("proto-anvil", 73799)
    assert chain_name_for(73799) == "volta"
    with pytest.raises(ValueError, match="already registered"):
        register_chain("volta", 1)
    for bad_name in ("", "Upper", "0xabc", "has space"):
        with pytest.raises(ValueError):
            register_chain(bad_name, 5)
    with pytest.raises(ValueError):
        register_chain("proto-zero", 0)
    with pytest.raises(DIDError):
        chain_id_for("unregistered")
    with pytest.raises(DIDError):
        chain_name_for(123456789123)


def test_coerce_and_normalize_address():
    did = DID.parse(CANONICAL)
    assert DID.coerce(did) is did
    assert DID.coerce("did:ethr:" + ADDRESS.lower()) == did
    assert normalize_address(ADDRESS.lower()) == ADDRESS
    with pytest.raises(DIDError, match=dids.ERR_ADDRESS):
        normalize_address(ADDRESS.lower()[:-2])


addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
cases = st.sampled_from([str.lower, str.upper, lambda s: s])


@settings(max_examples=200, deadline=None)
@given(
    address=addresses,
    case=cases,
    prefix=st.sampled_from(["did:ethr:", "did:ethr:volta:", "did:ethr:ewc:"]),
)
def test_normalisation_is_idempotent(address, case, prefix):
    hexpart = case(address[2:])
    did = DID.parse(prefix + "0x" + hexpart)
    again = DID.parse(str(did))
    assert again == did
    assert str(again) == str(did)
    assert did.address.lower() == address.lower()


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=120)
    | st.from_regex(r"did:ethr:([a-z0-9x]{1,8}:)?0x[0-9a-fA-F]{38,42}")
)
def test_parser_raises_only_did_errors(text):
    try:
        did = DID.parse(text)
    except ProtocolError as exc:
        assert isinstance(exc, DIDError)
    else:
        assert DID.parse(str(did)) == did
