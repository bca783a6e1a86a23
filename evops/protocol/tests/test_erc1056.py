from __future__ import annotations

import pytest
from eth_abi.abi import encode
from hypothesis import given, settings
from hypothesis import strategies as st

from evops.protocol import erc1056
from evops.protocol._crypto import keccak256, recover_address_bytes
from evops.protocol.erc1056 import (
    REGISTRY_EVENTS,
    VALIDITY_FOREVER,
    AttributeChanged,
    DelegateChanged,
    OwnerChanged,
    attribute_name,
    attribute_name_text,
    decode_registry_log,
    parse_service_value,
    service_value,
    set_attribute_calldata,
    set_attribute_signed_calldata,
    set_attribute_signed_digest,
    split_signature,
)
from evops.protocol.errors import EncodingError, ProtocolError
from evops.protocol.keys import LocalKeySigner
from evops.protocol.tests.vectors import ASSET, ISSUER, V

SERVICE_JSON = V["service_value"]["json"].encode()
CALL = V["set_attribute_calldata"]
VOLTA_REGISTRY = "0xC15D5A57A8Eb0e1dCBE5D88B8f9a82017e5Cc4AF"


def test_service_value_vector():
    value = service_value(
        service_id="8f2b6a4e-3c1d-4b7a-9e0f-112233445566",
        cid="QmExampleCidPlaceholder",
        token_sha256=V["issued_token"]["sha256_hex"],
    )
    assert value == SERVICE_JSON
    assert list(parse_service_value(value)) == [
        "id",
        "serviceEndpoint",
        "hash",
        "hashAlg",
    ]


def test_attribute_name_vector():
    assert attribute_name() == bytes.fromhex(CALL["name_bytes32"][2:])
    assert attribute_name(CALL["name_text"]) == attribute_name()
    assert attribute_name_text(attribute_name()) == "did/svc/undefined"
    assert attribute_name("did/svc/" + "x" * 24) != attribute_name()
    with pytest.raises(EncodingError, match=erc1056.ERR_NAME_TOO_LONG):
        attribute_name("did/svc/" + "x" * 25)


def test_set_attribute_calldata_vector():
    assert CALL["validity"] == VALIDITY_FOREVER
    calldata = set_attribute_calldata(
        CALL["identity"],
        attribute_name(CALL["name_text"]),
        SERVICE_JSON,
        CALL["validity"],
    )
    assert "0x" + calldata.hex() == CALL["calldata"]
    assert calldata[:4] == bytes.fromhex("7ad4b0a4")
    # any address case gives the same calldata
    assert (
        set_attribute_calldata(
            CALL["identity"].lower(), attribute_name(), SERVICE_JSON, VALIDITY_FOREVER
        )
        == calldata
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"service_id": "a", "cid": "Qm", "token_sha256": "AB" * 32},
        {"service_id": "a", "cid": "Qm", "token_sha256": "0x" + "ab" * 31},
        {"service_id": "a", "cid": "Qm", "token_sha256": "ab" * 31},
        {"service_id": "", "cid": "Qm", "token_sha256": "ab" * 32},
        {"service_id": "a", "cid": "", "token_sha256": "ab" * 32},
    ],
)
def test_service_value_rejects_bad_input(kwargs):
    with pytest.raises(EncodingError):
        service_value(**kwargs)


@pytest.mark.parametrize("value", [b"", b"\xff", b"[]", b'{"id":1}', b'"x"', b"{"])
def test_parse_service_value_rejects_non_objects(value):
    with pytest.raises(EncodingError, match=erc1056.ERR_SERVICE_VALUE):
        parse_service_value(value)


def test_encoders_reject_bad_arguments():
    name = attribute_name()
    with pytest.raises(EncodingError):
        set_attribute_calldata("0x1234", name, b"", 1)
    with pytest.raises(EncodingError, match=erc1056.ERR_BYTES32):
        set_attribute_calldata(ASSET["address"], b"short", b"", 1)
    with pytest.raises(EncodingError, match=erc1056.ERR_UINT):
        set_attribute_calldata(ASSET["address"], name, b"", -1)
    with pytest.raises(EncodingError, match=erc1056.ERR_UINT):
        set_attribute_signed_digest(
            registry=VOLTA_REGISTRY,
            nonce=2**256,
            identity=ASSET["address"],
            name=name,
            value=b"",
            validity=1,
        )
    with pytest.raises(EncodingError):
        set_attribute_signed_calldata(ASSET["address"], 256, name, name, name, b"", 1)
    with pytest.raises(EncodingError):
        split_signature(b"\x00" * 64)


def test_signed_digest_is_the_registry_tight_packing():
    name = attribute_name()
    digest = set_attribute_signed_digest(
        registry=VOLTA_REGISTRY,
        nonce=7,
        identity=ASSET["address"],
        name=name,
        value=SERVICE_JSON,
        validity=VALIDITY_FOREVER,
    )
    packed = (
        b"\x19\x00"
        + bytes.fromhex(VOLTA_REGISTRY[2:])
        + (7).to_bytes(32, "big")
        + bytes.fromhex(ASSET["address"][2:])
        + b"setAttribute"
        + name
        + SERVICE_JSON
        + VALIDITY_FOREVER.to_bytes(32, "big")
    )
    assert len(packed) == 2 + 20 + 32 + 20 + 12 + 32 + len(SERVICE_JSON) + 32
    assert digest == keccak256(packed)
    # a different registry or nonce gives a different digest (no cross-replay)
    assert digest != set_attribute_signed_digest(
        registry=VOLTA_REGISTRY,
        nonce=8,
        identity=ASSET["address"],
        name=name,
        value=SERVICE_JSON,
        validity=VALIDITY_FOREVER,
    )


def test_signed_calldata_round_trip():
    signer = LocalKeySigner(ASSET["private_key"])
    name = attribute_name()
    digest = set_attribute_signed_digest(
        registry=VOLTA_REGISTRY,
        nonce=0,
        identity=ASSET["address"],
        name=name,
        value=SERVICE_JSON,
        validity=VALIDITY_FOREVER,
    )
    signature = signer.sign_hash(digest)
    assert (
        recover_address_bytes(digest, signature).hex() == ASSET["address"][2:].lower()
    )
    v, r, s = split_signature(signature)
    calldata = set_attribute_signed_calldata(
        ASSET["address"], v, r, s, name, SERVICE_JSON, VALIDITY_FOREVER
    )
    selector = keccak256(
        b"setAttributeSigned(address,uint8,bytes32,bytes32,bytes32,bytes,uint256)"
    )[:4]
    assert calldata[:4] == selector
    expected = encode(
        ["address", "uint8", "bytes32", "bytes32", "bytes32", "bytes", "uint256"],
        [ASSET["address"], v, r, s, name, SERVICE_JSON, VALIDITY_FOREVER],
    )
    assert calldata[4:] == expected


def _topic(address: str) -> bytes:
    return b"\x00" * 12 + bytes.fromhex(address[2:])


def test_event_topics():
    assert REGISTRY_EVENTS["DIDAttributeChanged"] == keccak256(
        b"DIDAttributeChanged(address,bytes32,bytes,uint256,uint256)"
    )
    assert REGISTRY_EVENTS["DIDDelegateChanged"] == keccak256(
        b"DIDDelegateChanged(address,bytes32,address,uint256,uint256)"
    )
    assert REGISTRY_EVENTS["DIDOwnerChanged"] == keccak256(
        b"DIDOwnerChanged(address,address,uint256)"
    )


def test_decode_attribute_changed():
    data = encode(
        ["bytes32", "bytes", "uint256", "uint256"],
        [attribute_name(), SERVICE_JSON, 2**60, 41],
    )
    event = decode_registry_log(
        [REGISTRY_EVENTS["DIDAttributeChanged"], _topic(ASSET["address"].lower())],
        data,
        42,
        3,
    )
    assert event == AttributeChanged(
        ASSET["address"], attribute_name(), SERVICE_JSON, 2**60, 41, 42, 3
    )
    assert isinstance(event, AttributeChanged)
    assert event.name_text == "did/svc/undefined"


def test_decode_delegate_and_owner_changed():
    data = encode(
        ["bytes32", "address", "uint256", "uint256"],
        [attribute_name("veriKey"), ISSUER["address"], 100, 0],
    )
    event = decode_registry_log(
        [REGISTRY_EVENTS["DIDDelegateChanged"], _topic(ASSET["address"])], data, 5, 0
    )
    assert event == DelegateChanged(
        ASSET["address"], attribute_name("veriKey"), ISSUER["address"], 100, 0, 5, 0
    )
    assert isinstance(event, DelegateChanged)
    assert event.delegate_type_text == "veriKey"
    data = encode(["address", "uint256"], [ISSUER["address"], 5])
    event = decode_registry_log(
        [REGISTRY_EVENTS["DIDOwnerChanged"], _topic(ASSET["address"])], data, 9, 1
    )
    assert event == OwnerChanged(ASSET["address"], ISSUER["address"], 5, 9, 1)


@pytest.mark.parametrize(
    ("topics", "data", "message"),
    [
        ([REGISTRY_EVENTS["DIDOwnerChanged"]], b"", erc1056.ERR_UNKNOWN_EVENT),
        ([b"\x01" * 32, _topic(ASSET["address"])], b"", erc1056.ERR_UNKNOWN_EVENT),
        (
            [REGISTRY_EVENTS["DIDOwnerChanged"], b"\x01" * 32],
            b"\x00" * 64,
            erc1056.ERR_LOG_DATA,
        ),
        (
            [REGISTRY_EVENTS["DIDOwnerChanged"], _topic(ASSET["address"])],
            b"\x00" * 63,
            erc1056.ERR_LOG_DATA,
        ),
        (
            [REGISTRY_EVENTS["DIDAttributeChanged"], _topic(ASSET["address"])],
            b"\x00" * 32 + (2**200).to_bytes(32, "big") + b"\x00" * 64,
            erc1056.ERR_LOG_DATA,
        ),
    ],
)
def test_decode_rejects_malformed_logs(topics, data, message):
    with pytest.raises(EncodingError, match=message):
        decode_registry_log(topics, data, 1, 0)


@settings(max_examples=200, deadline=None)
@given(
    event=st.sampled_from(list(REGISTRY_EVENTS.values())) | st.binary(max_size=40),
    topic1=st.binary(max_size=40),
    data=st.binary(max_size=300),
)
def test_log_decoder_raises_only_protocol_errors(event, topic1, data):
    try:
        decoded = decode_registry_log([event, topic1], data, 1, 0)
    except ProtocolError as exc:
        assert isinstance(exc, EncodingError)
    else:
        assert decoded.block_number == 1


@settings(max_examples=100, deadline=None)
@given(
    service_id=st.text(min_size=1, max_size=40),
    cid=st.text(min_size=1, max_size=60),
    digest=st.binary(min_size=32, max_size=32),
)
def test_service_value_round_trips(service_id, cid, digest):
    try:
        value = service_value(service_id=service_id, cid=cid, token_sha256=digest.hex())
    except EncodingError:
        return  # lone surrogates cannot be UTF-8 encoded
    assert parse_service_value(value) == {
        "id": service_id,
        "serviceEndpoint": cid,
        "hash": digest.hex(),
        "hashAlg": "SHA256",
    }
