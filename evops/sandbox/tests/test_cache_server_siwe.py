"""EIP-4361 messages as the cache server's SIWE login reads them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from evops.protocol import siwe
from evops.protocol.keys import LocalKeySigner

# The example message of EIP-4361 itself.
EIP_EXAMPLE = (
    "service.invalid wants you to sign in with your Ethereum account:\n"
    "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2\n"
    "\n"
    "I accept the ServiceOrg Terms of Service: https://service.invalid/tos\n"
    "\n"
    "URI: https://service.invalid/login\n"
    "Version: 1\n"
    "Chain ID: 1\n"
    "Nonce: 32891756\n"
    "Issued At: 2021-09-30T16:25:24Z\n"
    "Resources:\n"
    "- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/\n"
    "- https://example.com/my-web2-claim.json"
)


def test_eip_example_round_trips_byte_for_byte():
    message = siwe.SiweMessage.parse(EIP_EXAMPLE)
    assert message.domain == "service.invalid"
    assert message.chain_id == 1
    assert message.nonce == "32891756"
    assert (message.statement or "").startswith("I accept")
    assert len(message.resources) == 2
    assert message.prepare() == EIP_EXAMPLE


def test_without_statement_keeps_the_blank_lines():
    message = siwe.SiweMessage(
        domain="127.0.0.1:3000",
        address="0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2",
        uri="http://127.0.0.1:3000/v1/login/siwe/verify",
        chain_id=73799,
        nonce="abcdefgh1234",
        issued_at="2024-01-01T00:00:00.000Z",
        expiration_time="2024-01-01T00:10:00.000Z",
    )
    text = message.prepare()
    assert "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2\n\n\nURI: " in text
    assert siwe.SiweMessage.parse(text) == message


@pytest.mark.parametrize(
    "broken",
    [
        "",
        EIP_EXAMPLE.replace(" wants you", " would like you"),
        EIP_EXAMPLE.replace("0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2", "0x1234"),
        EIP_EXAMPLE.replace("Version: 1", "Version: 2"),
        EIP_EXAMPLE.replace("Chain ID: 1", "Chain ID: one"),
        EIP_EXAMPLE.replace("Nonce: 32891756", "Nonce: short"),
        EIP_EXAMPLE.replace("Issued At: 2021-09-30T16:25:24Z", "Issued At: yesterday"),
        EIP_EXAMPLE.replace("URI: https://service.invalid/login\n", ""),
        EIP_EXAMPLE.replace("- https://example", "https://example"),
    ],
)
def test_malformed_messages_are_refused(broken):
    with pytest.raises(siwe.SiweError):
        siwe.SiweMessage.parse(broken)


def _message(signer: LocalKeySigner, **over: object) -> siwe.SiweMessage:
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "domain": "localhost",
        "address": signer.address,
        "uri": "http://localhost/v1/login/siwe/verify",
        "chain_id": 73799,
        "nonce": siwe.generate_nonce(),
        "issued_at": siwe.format_time(now),
    }
    fields.update(over)
    return siwe.SiweMessage(**fields)  # type: ignore[arg-type]


def test_sign_and_verify():
    signer = LocalKeySigner.generate()
    message = _message(signer)
    signature = siwe.sign_message(signer, message)
    assert signature.startswith("0x") and len(signature) == 132
    assert siwe.verify(message.prepare(), signature) == message
    assert siwe.recover_address(message.prepare(), signature) == signer.address


def test_verify_refuses_other_signer_tampering_and_time_window():
    signer = LocalKeySigner.generate()
    message = _message(signer)
    other = siwe.sign_message(LocalKeySigner.generate(), message)
    with pytest.raises(siwe.SiweError, match=siwe.ERR_SIGNATURE):
        siwe.verify(message.prepare(), other)
    good = siwe.sign_message(signer, message)
    with pytest.raises(siwe.SiweError, match=siwe.ERR_SIGNATURE):
        siwe.verify(message.prepare().replace("localhost", "evil.host", 1), good)
    with pytest.raises(siwe.SiweError):
        siwe.verify(message.prepare(), "0x1234")
    past = _message(
        signer, expiration_time=siwe.format_time(datetime.now(UTC) - timedelta(1))
    )
    with pytest.raises(siwe.SiweError, match=siwe.ERR_EXPIRED):
        siwe.verify(past.prepare(), siwe.sign_message(signer, past))
    future = _message(
        signer, not_before=siwe.format_time(datetime.now(UTC) + timedelta(1))
    )
    with pytest.raises(siwe.SiweError, match=siwe.ERR_NOT_YET_VALID):
        siwe.verify(future.prepare(), siwe.sign_message(signer, future))


def test_nonces_are_alphanumeric_and_distinct():
    nonces = {siwe.generate_nonce() for _ in range(50)}
    assert len(nonces) == 50
    assert all(n.isalnum() and len(n) == 17 for n in nonces)


def test_format_time_is_js_iso_string():
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert siwe.format_time(moment) == "2024-05-06T07:08:09.123Z"
