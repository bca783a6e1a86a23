from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evops.protocol import jwt
from evops.protocol._crypto import keccak256
from evops.protocol.dids import DID
from evops.protocol.errors import (
    DIDError,
    EncodingError,
    ProtocolError,
    SignatureError,
    TokenError,
)
from evops.protocol.jwt import (
    HEADER_ES256K,
    DecodedToken,
    b64url_decode,
    b64url_encode,
    claim_request_token,
    compact_json,
    decode_token,
    identity_token,
    issued_token,
    recover_addresses,
    sign_token,
    unverified_payload,
    verify_token,
)
from evops.protocol.keys import LocalKeySigner
from evops.protocol.tests.vectors import (
    ASSET,
    ISSUER,
    ROLE,
    SHARED_VECTORS_PATH,
    VECTORS_PATH,
    V,
)

ASSET_SIGNER = LocalKeySigner(ASSET["private_key"])
ISSUER_SIGNER = LocalKeySigner(ISSUER["private_key"])
CLAIM_DATA = {"claimType": ROLE["namespace"], "claimTypeVersion": ROLE["version"]}


def test_vectors_copy_is_current():
    if not SHARED_VECTORS_PATH.exists():
        pytest.skip("no shared checkout next to the repository")
    assert VECTORS_PATH.read_bytes() == SHARED_VECTORS_PATH.read_bytes()


# --- vectors, byte for byte -------------------------------------------------------


def test_identity_token_vector():
    token = identity_token(
        ASSET_SIGNER, did=ASSET["did"], block_number=V["identity_token"]["block_number"]
    )
    assert token == V["identity_token"]["token"]


def test_identity_token_from_legacy_lowercase_did_is_canonical():
    legacy = "did:ethr:" + ASSET["address"].lower()
    token = identity_token(
        ASSET_SIGNER, did=legacy, block_number=V["identity_token"]["block_number"]
    )
    assert token == V["identity_token"]["token"]


def test_claim_request_token_vector():
    token = claim_request_token(
        ASSET_SIGNER,
        did=ASSET["did"],
        subject=DID.parse(ASSET["did"]),
        claim_type=ROLE["namespace"],
        claim_type_version=ROLE["version"],
        iat_ms=V["claim_request_token"]["iat_ms"],
    )
    assert token == V["claim_request_token"]["token"]


def test_issued_token_vector():
    token = issued_token(
        ISSUER_SIGNER,
        issuer_did=ISSUER["did"],
        subject=ASSET["did"],
        claim_data=CLAIM_DATA,
    )
    assert token == V["issued_token"]["token"]


@pytest.mark.parametrize(
    ("name", "signer"),
    [
        ("identity_token", ASSET),
        ("claim_request_token", ASSET),
        ("issued_token", ISSUER),
    ],
)
def test_every_vector_token_verifies_to_its_signer(name, signer):
    token = V[name]["token"]
    decoded = verify_token(token, signer["did"])
    _direct, prefixed = recover_addresses(decoded)
    assert prefixed == signer["address"]
    other = ISSUER if signer is ASSET else ASSET
    with pytest.raises(SignatureError, match=jwt.ERR_SIGNER_MISMATCH):
        verify_token(token, other["did"])


def test_vector_key_orders_are_those_of_the_spec():
    decoded = decode_token(V["issued_token"]["token"])
    assert list(decoded.payload) == ["claimData", "did", "signer", "iss", "sub"]
    decoded = decode_token(V["claim_request_token"]["token"])
    assert list(decoded.payload) == ["did", "signer", "claimData", "iss", "sub", "iat"]
    assert decoded.header == {"alg": "ES256K", "typ": "JWT"}
    decoded = decode_token(V["identity_token"]["token"])
    assert decoded.header == {"alg": "ES256", "typ": "JWT"}
    assert decoded.payload == {
        "iss": ASSET["did"],
        "claimData": {"blockNumber": V["identity_token"]["block_number"]},
    }


def test_signature_segment_is_base64url_of_ascii_hex():
    segment = V["identity_token"]["token"].split(".")[2]
    text = b64url_decode(segment)
    assert text.startswith(b"0x")
    assert len(text) == 132
    assert text[-2:] in (b"1b", b"1c")


def test_issued_token_optional_fields_order():
    token = issued_token(
        ISSUER_SIGNER,
        issuer_did=ISSUER["did"],
        subject=ASSET["did"],
        claim_data=CLAIM_DATA,
        exp=1_900_000_000,
        credential_status={"id": "https://status/1", "type": "StatusList2021Entry"},
    )
    decoded = verify_token(token, ISSUER["did"])
    assert list(decoded.payload) == [
        "claimData",
        "did",
        "signer",
        "exp",
        "credentialStatus",
        "iss",
        "sub",
    ]


def test_raw_digest_signature_is_accepted():
    """Older signers signed the digest without the EIP-191 prefix; peers accept it."""
    signing_input = "{}.{}".format(
        b64url_encode(compact_json({"alg": "ES256K", "typ": "JWT"})),
        b64url_encode(compact_json({"iss": ASSET["did"]})),
    )
    digest = keccak256(signing_input.encode())
    signature = ASSET_SIGNER.sign_hash(digest)
    token = signing_input + "." + b64url_encode(b"0x" + signature.hex().encode())
    decoded = verify_token(token, ASSET["did"])
    direct, _prefixed = recover_addresses(decoded)
    assert direct == ASSET["address"]


# --- delegates -----------------------------------------------------------------------


def _document(did: str, entries: object) -> dict[str, object]:
    return {"@context": "https://www.w3.org/ns/did/v1", "id": did, "publicKey": entries}


def test_veri_key_delegate_by_address_is_accepted():
    token = V["issued_token"]["token"]  # signed by ISSUER
    doc = _document(
        ASSET["did"],
        [
            {
                "id": ASSET["did"] + "#delegate-veriKey-1",
                "type": "veriKey",
                "controller": ASSET["did"],
                "ethereumAddress": ISSUER["address"].lower(),
            }
        ],
    )
    assert verify_token(token, ASSET["did"], did_document=doc).payload["iss"]


def test_veri_key_delegate_by_public_key_hex_is_accepted():
    public_hex = ISSUER_SIGNER._key.public_key.format(compressed=True).hex()
    doc = _document(
        ASSET["did"],
        [
            {
                "id": "x#key-veriKey",
                "type": "Secp256k1veriKey",
                "publicKeyHex": public_hex,
            }
        ],
    )
    verify_token(V["issued_token"]["token"], ASSET["did"], did_document=doc)


@pytest.mark.parametrize(
    "doc",
    [
        # sigAuth delegates may authenticate, not sign credentials
        _document(
            ASSET["did"], [{"type": "sigAuth", "ethereumAddress": ISSUER["address"]}]
        ),
        # a document of another identity does not grant delegates
        _document(
            ISSUER["did"].replace(ISSUER["address"], "0x" + "11" * 20),
            [{"type": "veriKey", "ethereumAddress": ISSUER["address"]}],
        ),
        _document(ASSET["did"], [{"type": "veriKey", "ethereumAddress": "0xnothex"}]),
        _document(
            ASSET["did"], [{"type": "veriKey", "publicKeyHex": "02" + "00" * 32}]
        ),
        _document(ASSET["did"], "not a list"),
        {"id": "garbage", "publicKey": []},
    ],
)
def test_non_delegates_are_rejected(doc):
    with pytest.raises(SignatureError):
        verify_token(V["issued_token"]["token"], ASSET["did"], did_document=doc)


# --- strict decoding ------------------------------------------------------------------

GOOD = V["identity_token"]["token"]
H, P, S = GOOD.split(".")


def _seg(obj_bytes: bytes) -> str:
    return b64url_encode(obj_bytes)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (GOOD.encode(), jwt.ERR_NOT_STR),
        (GOOD + "." + S, jwt.ERR_SEGMENTS),
        (H + "." + P, jwt.ERR_SEGMENTS),
        (H + ".." + S, jwt.ERR_SEGMENTS),
        (H + "=." + P + "." + S, jwt.ERR_BASE64),
        (H + "." + P + "." + S + "=", jwt.ERR_BASE64),
        (H.replace("J", "+") + "." + P + "." + S, jwt.ERR_BASE64),
        (H + "." + P + " ." + S, jwt.ERR_BASE64),
        ("é" + GOOD, jwt.ERR_NOT_ASCII),
        ("a" * 70000, jwt.ERR_TOO_LARGE),
        (_seg(b"[1]") + "." + P + "." + S, jwt.ERR_JSON_OBJECT),
        (_seg(b"{bad") + "." + P + "." + S, jwt.ERR_JSON),
        (_seg(b'{"a":NaN}') + "." + P + "." + S, jwt.ERR_JSON),
        (_seg(b'{"a":1,"a":2}') + "." + P + "." + S, jwt.ERR_DUPLICATE_KEY),
        (_seg(b'{"a":1e400}') + "." + P + "." + S, jwt.ERR_JSON),
        (_seg(b'{"a":' + b"9" * 5000 + b"}") + "." + P + "." + S, jwt.ERR_JSON),
        (_seg(b"\xff\xfe{}") + "." + P + "." + S, jwt.ERR_JSON),
        (H + "." + P + "." + _seg(b"0x" + b"ab" * 65), jwt.ERR_SIGNATURE_SHAPE),
        (H + "." + P + "." + _seg(b"0x" + b"AB" * 64 + b"1b"), jwt.ERR_SIGNATURE_SHAPE),
        (H + "." + P + "." + _seg(b"ab" * 65 + b"1b"), jwt.ERR_SIGNATURE_SHAPE),
        (H + "." + P + "." + _seg(bytes(65)), jwt.ERR_SIGNATURE_SHAPE),
    ],
)
def test_decode_rejects_malformed_tokens(token, message):
    with pytest.raises(TokenError) as info:
        decode_token(token)
    assert str(info.value) == message


def test_decode_rejects_non_canonical_trailing_bits():
    # "Jw" and "Jx" decode to the same byte; only the canonical one is accepted.
    assert base64.urlsafe_b64decode("Jw==") == base64.urlsafe_b64decode("Jx==")
    with pytest.raises(TokenError, match=jwt.ERR_BASE64):
        b64url_decode("Jx")
    assert b64url_decode("Jw") == b"'"


def test_max_size_is_configurable():
    with pytest.raises(TokenError, match=jwt.ERR_TOO_LARGE):
        decode_token(GOOD, max_size=len(GOOD) - 1)
    assert decode_token(GOOD, max_size=len(GOOD)).payload["iss"] == ASSET["did"]


def test_signature_that_does_not_recover_is_a_signature_error():
    zero_sig = _seg(b"0x" + b"00" * 64 + b"1b")
    with pytest.raises(SignatureError):
        verify_token(H + "." + P + "." + zero_sig, ASSET["did"])


def test_verify_rejects_malformed_signer_did():
    with pytest.raises(DIDError):
        verify_token(GOOD, "did:web:example.com")


def test_sign_rejects_unencodable_payloads():
    with pytest.raises(EncodingError):
        sign_token({"alg": "ES256K"}, {"x": float("nan")}, ASSET_SIGNER)
    with pytest.raises(EncodingError):
        sign_token({"alg": "ES256K"}, {"x": "\ud800"}, ASSET_SIGNER)
    with pytest.raises(EncodingError):
        sign_token({"alg": "ES256K"}, {"x": object()}, ASSET_SIGNER)


def test_sign_rejects_a_signer_returning_garbage():
    class BadSigner:
        address = ASSET["address"]

        def sign_message(self, message):
            return b"\x00" * 64

        def sign_hash(self, digest):
            return b"\x00" * 64

        def sign_transaction(self, transaction):
            return b""

    with pytest.raises(EncodingError, match=jwt.ERR_SIGNATURE_BYTES):
        sign_token({"alg": "ES256K"}, {}, BadSigner())


def test_compact_json_matches_javascript_stringify():
    value = {"b": "ü/\n\u0001", "a": [1, True, None], "n": -5}
    assert (
        compact_json(value) == '{"b":"ü/\\n\\u0001","a":[1,true,null],"n":-5}'.encode()
    )


# --- properties -----------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.text(st.characters(codec="utf-8"), max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
payloads = st.dictionaries(st.text(max_size=10), json_values, max_size=6)
# the whole secp256k1 scalar range, edges included (1 and n - 1)
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
private_keys = st.integers(min_value=1, max_value=SECP256K1_N - 1).map(
    lambda n: n.to_bytes(32, "big")
)


@settings(max_examples=60, deadline=None)
@given(key=private_keys, payload=payloads)
def test_sign_then_verify_round_trips(key, payload):
    signer = LocalKeySigner(key)
    header = {"alg": "ES256K", "typ": "JWT"}
    token = sign_token(header, payload, signer)
    decoded = verify_token(token, DID.for_address(signer.address))
    assert decoded.header == header
    assert decoded.payload == payload
    assert list(decoded.payload) == list(payload)
    assert recover_addresses(decoded)[1] == signer.address


_TOKEN_FOR_MUTATION = issued_token(
    ISSUER_SIGNER,
    issuer_did=ISSUER["did"],
    subject=ASSET["did"],
    claim_data=CLAIM_DATA,
    exp=1_900_000_000,
)
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _padded_token(extra: str) -> str:
    """An asset-signed token whose payload segment length is set by `extra`."""
    return sign_token(HEADER_ES256K, {"iss": ASSET["did"], "x": extra}, ASSET_SIGNER)


def _mutation_tokens() -> list[str]:
    """Vector tokens plus tokens covering every unpadded base64url length class.

    Segment length mod 4 decides how many unused trailing bits the last character
    carries (2 -> 4 bits, 3 -> 2 bits, 0 -> none): the class where a lenient
    decoder maps two different strings to the same bytes.
    """
    tokens = [
        V["identity_token"]["token"],
        V["claim_request_token"]["token"],
        V["issued_token"]["token"],
        _TOKEN_FOR_MUTATION,
    ]
    tokens += [_padded_token("y" * n) for n in range(3)]
    return tokens


MUTATION_TOKENS = _mutation_tokens()


def _signer_did(token: str) -> str:
    payload_b64 = token.split(".")[1]
    return str(json.loads(b64url_decode(payload_b64))["iss"])


def _segment_bounds(token: str) -> list[tuple[int, int]]:
    bounds, start = [], 0
    for segment in token.split("."):
        bounds.append((start, start + len(segment)))
        start += len(segment) + 1
    return bounds


def _trailing_bit_twin(char: str) -> str:
    """The alphabet character that differs from `char` only in its lowest bit."""
    return _B64_ALPHABET[_B64_ALPHABET.index(char) ^ 1]


def _assert_rejected(mutated: str, signer_did: str) -> None:
    with pytest.raises((TokenError, SignatureError)):
        verify_token(mutated, signer_did)


def test_mutation_tokens_cover_every_segment_length_class():
    classes = {
        (index, len(segment) % 4)
        for token in MUTATION_TOKENS
        for index, segment in enumerate(token.split("."))
    }
    # header ES256 (0) and ES256K (2); payload 0, 2 and 3; signature always 176 chars
    assert {(0, 0), (0, 2), (1, 0), (1, 2), (1, 3), (2, 0)} <= classes


@pytest.mark.parametrize("token", MUTATION_TOKENS)
def test_every_position_change_fails(token):
    """Every position of every segment, the dots and the segment edges, exhaustively.

    Each position gets its trailing-bit twin (the change a non-canonical decoder
    would not see at a segment's last character); the first and last character of
    each segment and both dots get every other base64url character plus '=', '.',
    space and a non-ASCII byte.
    """
    signer_did = _signer_did(token)
    verify_token(token, signer_did)
    edges = {i for start, end in _segment_bounds(token) for i in (start, end - 1)}
    dots = {i for i, char in enumerate(token) if char == "."}
    tried = 0
    for position, char in enumerate(token):
        if position in dots:
            replacements = set(_B64_ALPHABET) | {"=", " ", "\x80"}
        elif position in edges:
            replacements = (set(_B64_ALPHABET) | {"=", ".", " ", "\x80"}) - {char}
        else:
            replacements = {_trailing_bit_twin(char)}
        for replacement in sorted(replacements):
            mutated = token[:position] + replacement + token[position + 1 :]
            _assert_rejected(mutated, signer_did)
            tried += 1
    assert tried >= len(token)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=private_keys,
    extra=st.text(max_size=40),
    data=st.data(),
)
def test_any_single_byte_change_fails(key, extra, data):
    """Random signers and payloads; the position drawn per class, then any byte."""
    signer = LocalKeySigner(key)
    did = DID.for_address(signer.address).canonical
    token = data.draw(
        st.sampled_from(MUTATION_TOKENS)
        | st.just(sign_token(HEADER_ES256K, {"iss": did, "x": extra}, signer))
    )
    signer_did = _signer_did(token)
    (h0, h1), (p0, p1), (s0, s1) = _segment_bounds(token)
    position = data.draw(
        st.one_of(
            st.integers(h0, h1 - 1),  # header
            st.integers(p0, p1 - 1),  # payload
            st.integers(s0, s1 - 1),  # signature segment
            st.sampled_from([h1, p1]),  # the dots
            st.sampled_from([h1 - 1, p1 - 1, s1 - 1]),  # unpadded base64 edges
            st.integers(s1 - 4, s1 - 1),  # the v byte's hex digits
        )
    )
    replacement = data.draw(
        st.integers(min_value=0, max_value=255).filter(
            lambda b: b != ord(token[position])
        )
    )
    raw = bytearray(token.encode())
    raw[position] = replacement
    _assert_rejected(raw.decode("latin-1"), signer_did)


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1"))
)
def test_decoder_on_arbitrary_text_raises_only_protocol_errors(text):
    try:
        decoded = decode_token(text)
    except ProtocolError as exc:
        assert str(exc)
    else:
        assert isinstance(decoded, DecodedToken)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.binary(max_size=120).map(b64url_encode) | st.text(max_size=40),
        min_size=3,
        max_size=3,
    )
)
def test_decoder_on_token_shaped_input_raises_only_protocol_errors(parts):
    try:
        decoded = verify_token(".".join(parts), ASSET["did"])
    except ProtocolError as exc:
        assert str(exc)
    else:  # pragma: no cover - would need a forged signature
        assert isinstance(decoded, DecodedToken)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_on_bytes_raises_only_protocol_errors(data):
    with pytest.raises(ProtocolError):
        decode_token(data)  # bytes are not a token


signature_texts = (
    st.binary(max_size=140)
    | st.binary(min_size=65, max_size=65).map(lambda b: b"0x" + b.hex().encode())
    | st.tuples(st.binary(min_size=64, max_size=64), st.integers(0, 255)).map(
        lambda rv: b"0x" + (rv[0] + bytes((rv[1],))).hex().encode()
    )
    | st.text(alphabet="0123456789abcdefABCDEFx", max_size=140).map(str.encode)
)


@settings(max_examples=300, deadline=None)
@given(
    header=json_values.map(lambda v: compact_json({"v": v})) | st.binary(max_size=60),
    payload=payloads.map(compact_json) | st.binary(max_size=60),
    signature=signature_texts,
)
def test_decoder_past_the_json_stage_raises_only_protocol_errors(
    header, payload, signature
):
    """Valid base64url everywhere, so the JSON, signature-shape and recovery stages
    (not only the segment splitter) see arbitrary input."""
    token = ".".join(b64url_encode(part) for part in (header, payload, signature))
    try:
        decoded = verify_token(token, ASSET["did"])
    except ProtocolError as exc:
        assert isinstance(exc, TokenError | SignatureError)
        assert str(exc)
    else:  # pragma: no cover - would need a forged signature
        assert isinstance(decoded, DecodedToken)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("claim_type_version", {"claim_type_version": "1"}),
        ("claim_type_version", {"claim_type_version": True}),
        ("iat_ms", {"iat_ms": 1.65e12}),
        ("iat_ms", {"iat_ms": "1650000000000"}),
    ],
)
def test_claim_request_refuses_non_int_fields(field, kwargs):
    arguments = {
        "did": ASSET["did"],
        "subject": ASSET["did"],
        "claim_type": ROLE["namespace"],
        "claim_type_version": ROLE["version"],
        "iat_ms": V["claim_request_token"]["iat_ms"],
        **kwargs,
    }
    with pytest.raises(EncodingError) as info:
        claim_request_token(ASSET_SIGNER, **arguments)
    assert str(info.value) == jwt.ERR_INT_FIELD.format(field=field)


@pytest.mark.parametrize("bad", ["5", 5.0, True])
def test_identity_and_issued_tokens_refuse_non_int_numbers(bad):
    with pytest.raises(EncodingError, match="block_number"):
        identity_token(ASSET_SIGNER, did=ASSET["did"], block_number=bad)
    with pytest.raises(EncodingError, match="exp"):
        issued_token(
            ISSUER_SIGNER,
            issuer_did=ISSUER["did"],
            subject=ASSET["did"],
            claim_data=CLAIM_DATA,
            exp=bad,
        )


def test_unverified_payload_reads_foreign_tokens_leniently():
    body = b64url_encode(b'{"exp":1700000000,"did":"d"}')
    assert unverified_payload(f"h.{body}.mac") == {"exp": 1700000000, "did": "d"}
    # Padding, which decode_token refuses, is tolerated here.
    padded = base64.urlsafe_b64encode(b'{"a":1}').decode()
    assert padded.endswith("=")
    assert unverified_payload(f"h.{padded}.mac") == {"a": 1}


@pytest.mark.parametrize(
    "token",
    ["", "no-dots", "h.!!!.s", f"h.{b64url_encode(b'[1]')}.s", "h.\u00e9.s"],
)
def test_unverified_payload_is_none_for_unreadable_tokens(token):
    assert unverified_payload(token) is None
