"""The ERC-1056 encoding and the resolver against the real 0.0.3 registry on anvil.

Hand-built vectors prove we agree with ourselves; these prove we agree with the
shipped bytecode: our `setAttributeSigned` digest is what the contract recovers, our
calldata is what it executes, and real `DIDAttributeChanged` / `DIDDelegateChanged`
/ `DIDOwnerChanged` logs decode and resolve (two changes in one block included).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.types import RPCEndpoint, Wei

from evops.integrations.registry import registry_abi
from evops.protocol.dids import DID
from evops.protocol.erc1056 import (
    REGISTRY_ABI,
    REGISTRY_EVENTS,
    VALIDITY_FOREVER,
    AttributeChanged,
    DelegateChanged,
    OwnerChanged,
    RegistryEvent,
    attribute_name,
    decode_registry_log,
    service_value,
    set_attribute_calldata,
    set_attribute_signed_calldata,
    set_attribute_signed_digest,
    split_signature,
)
from evops.protocol.keys import LocalKeySigner
from evops.protocol.resolver import find_service_by_hash, resolve_did_document
from evops.protocol.tests.vectors import V

pytestmark = pytest.mark.peers

SVC = attribute_name()
VERI_KEY = attribute_name("veriKey")
GAS = 300_000  # explicit: estimates against `latest` fall short (the gas trap)


class ChainRegistry:
    """A minimal synchronous `RegistryReader` over web3 (test-only)."""

    def __init__(self, w3: Web3, address: str) -> None:
        self.w3 = w3
        self.address = to_checksum_address(address)
        self.contract = w3.eth.contract(address=self.address, abi=registry_abi())

    def changed(self, identity: str) -> int:
        return int(self.contract.functions.changed(identity).call())

    def nonce(self, identity: str) -> int:
        return int(self.contract.functions.nonce(identity).call())

    def identity_owner(self, identity: str) -> str:
        return str(self.contract.functions.identityOwner(identity).call())

    def raw_logs(self, identity: str, block_number: int) -> list[Any]:
        topic1 = "0x" + "00" * 12 + identity[2:].lower()
        return list(
            self.w3.eth.get_logs(
                {
                    "address": self.address,
                    "fromBlock": block_number,
                    "toBlock": block_number,
                    "topics": [None, topic1],
                }
            )
        )

    def logs(self, identity: str, block_number: int) -> Sequence[RegistryEvent]:
        return [
            decode_registry_log(
                [bytes(t) for t in log["topics"]],
                bytes(log["data"]),
                log["blockNumber"],
                log["logIndex"],
            )
            for log in self.raw_logs(identity, block_number)
        ]

    def send(self, sender: str, data: bytes) -> Any:
        tx_hash = self.w3.eth.send_transaction(
            {"from": sender, "to": self.address, "data": data, "gas": GAS}
        )
        return self.w3.eth.wait_for_transaction_receipt(tx_hash, poll_latency=0.05)

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])


@pytest.fixture
def chain(anvil: Any, registry_address: str) -> ChainRegistry:
    return ChainRegistry(anvil.web3(), registry_address)


@pytest.fixture
def relayer(chain: ChainRegistry) -> str:
    """An anvil account that pays the gas; never the identity."""
    accounts: list[str] = list(chain.w3.eth.accounts)
    return accounts[1]


@pytest.fixture
def funded(chain: ChainRegistry, relayer: str) -> Iterator[LocalKeySigner]:
    """A fresh identity with a little ETH, unlocked on anvil for direct writes."""
    signer = LocalKeySigner.generate()
    chain.w3.eth.wait_for_transaction_receipt(
        chain.w3.eth.send_transaction(
            {"from": relayer, "to": signer.address, "value": Wei(10**17)}
        )
    )
    chain.w3.manager.request_blocking(
        RPCEndpoint("anvil_impersonateAccount"), [signer.address]
    )
    yield signer
    chain.w3.manager.request_blocking(
        RPCEndpoint("anvil_stopImpersonatingAccount"), [signer.address]
    )


def _signed_write(
    chain: ChainRegistry,
    owner: LocalKeySigner,
    identity: str,
    value: bytes,
    *,
    nonce: int,
    registry: str | None = None,
    validity: int = VALIDITY_FOREVER,
) -> bytes:
    digest = set_attribute_signed_digest(
        registry=registry or chain.address,
        nonce=nonce,
        identity=identity,
        name=SVC,
        value=value,
        validity=validity,
    )
    v, r, s = split_signature(owner.sign_hash(digest))
    return set_attribute_signed_calldata(identity, v, r, s, SVC, value, validity)


def test_minimal_abi_agrees_with_the_shipped_artifact():
    shipped = {(e["type"], e["name"]): e for e in registry_abi() if "name" in e}
    for entry in REGISTRY_ABI:
        theirs = shipped[(entry["type"], entry["name"])]
        assert [i["type"] for i in entry["inputs"]] == [
            i["type"] for i in theirs["inputs"]
        ]
        if entry["type"] == "event":
            assert [i["indexed"] for i in entry["inputs"]] == [
                i["indexed"] for i in theirs["inputs"]
            ]
            signature = "{}({})".format(
                entry["name"], ",".join(i["type"] for i in theirs["inputs"])
            )
            assert REGISTRY_EVENTS[entry["name"]] == Web3.keccak(text=signature)


def test_signed_digest_is_what_the_registry_recovers(chain, relayer):
    asset = LocalKeySigner.generate()  # unfunded: it only signs
    value = V["service_value"]["json"].encode()
    nonce = chain.nonce(asset.address)
    assert nonce == 0
    calldata = _signed_write(chain, asset, asset.address, value, nonce=nonce)
    receipt = chain.send(relayer, calldata)
    assert receipt["status"] == 1
    assert chain.nonce(asset.address) == nonce + 1
    (log,) = chain.raw_logs(asset.address, receipt["blockNumber"])
    event = decode_registry_log(
        [bytes(t) for t in log["topics"]],
        bytes(log["data"]),
        log["blockNumber"],
        log["logIndex"],
    )
    assert isinstance(event, AttributeChanged)
    assert (event.identity, event.name, event.value) == (asset.address, SVC, value)
    block = chain.w3.eth.get_block(receipt["blockNumber"])
    assert event.valid_to == block["timestamp"] + VALIDITY_FOREVER
    assert event.previous_change == 0
    # replaying the same signature (nonce now used) reverts
    assert chain.send(relayer, calldata)["status"] == 0


@pytest.mark.parametrize("wrong", ["nonce", "registry", "validity", "signer"])
def test_a_digest_over_other_inputs_reverts(chain, relayer, wrong):
    asset = LocalKeySigner.generate()
    value = b'{"id":"x"}'
    kwargs: dict[str, Any] = {"nonce": 0}
    owner = asset
    if wrong == "nonce":
        kwargs["nonce"] = 1
    elif wrong == "registry":
        kwargs["registry"] = "0xC15D5A57A8Eb0e1dCBE5D88B8f9a82017e5Cc4AF"
    elif wrong == "signer":
        owner = LocalKeySigner.generate()
    calldata = _signed_write(chain, owner, asset.address, value, **kwargs)
    if wrong == "validity":
        # signed for validity 1, sent claiming VALIDITY_FOREVER
        digest = set_attribute_signed_digest(
            registry=chain.address,
            nonce=0,
            identity=asset.address,
            name=SVC,
            value=value,
            validity=1,
        )
        v, r, s = split_signature(asset.sign_hash(digest))
        calldata = set_attribute_signed_calldata(
            asset.address, v, r, s, SVC, value, VALIDITY_FOREVER
        )
    assert chain.send(relayer, calldata)["status"] == 0
    assert chain.changed(asset.address) == 0


def test_signed_write_uses_the_identity_nonce_after_an_owner_change(
    chain, relayer, funded
):
    """Pins which nonce the shipped 0.0.3 bytecode signs over (protocol.md §7)."""
    identity = funded.address
    new_owner = LocalKeySigner.generate()
    # make nonce(identity) and nonce(owner) differ: one signed write by the identity
    assert chain.send(
        relayer, _signed_write(chain, funded, identity, b'{"id":"a"}', nonce=0)
    )["status"]
    change = chain.contract.functions.changeOwner(identity, new_owner.address)
    receipt = chain.w3.eth.wait_for_transaction_receipt(
        change.transact({"from": identity, "gas": GAS})
    )
    assert receipt["status"] == 1
    assert chain.identity_owner(identity) == new_owner.address
    assert (chain.nonce(identity), chain.nonce(new_owner.address)) == (1, 0)
    value = b'{"id":"b"}'
    by_owner_nonce = _signed_write(chain, new_owner, identity, value, nonce=0)
    assert chain.send(relayer, by_owner_nonce)["status"] == 0
    by_identity_nonce = _signed_write(chain, new_owner, identity, value, nonce=1)
    assert chain.send(relayer, by_identity_nonce)["status"] == 1
    # the identity's nonce moved on (the owner's did not), so a replay reverts
    assert (chain.nonce(identity), chain.nonce(new_owner.address)) == (2, 0)
    assert chain.send(relayer, by_identity_nonce)["status"] == 0
    # the old owner's key no longer works
    stale = _signed_write(chain, funded, identity, value, nonce=chain.nonce(identity))
    assert chain.send(relayer, stale)["status"] == 0


def test_real_logs_of_all_three_events_decode_and_resolve(chain, relayer, funded):
    identity = funded.address
    did = DID.for_address(identity)
    sha = V["issued_token"]["sha256_hex"]
    value = service_value(service_id="svc-1", cid="QmOne", token_sha256=sha)
    delegate = LocalKeySigner.generate().address
    new_owner = LocalKeySigner.generate().address

    calls = [
        set_attribute_calldata(identity, SVC, value, VALIDITY_FOREVER),
        bytes.fromhex(
            chain.contract.encode_abi(
                "addDelegate", args=[identity, VERI_KEY, delegate, 3600]
            )[2:]
        ),
        bytes.fromhex(
            chain.contract.encode_abi("changeOwner", args=[identity, new_owner])[2:]
        ),
    ]
    blocks = []
    for data in calls:
        receipt = chain.send(identity, data)
        assert receipt["status"] == 1
        blocks.append(receipt["blockNumber"])

    decoded = [chain.logs(identity, block) for block in blocks]
    assert [type(events[0]) for events in decoded] == [
        AttributeChanged,
        DelegateChanged,
        OwnerChanged,
    ]
    attribute, delegated, owned = (events[0] for events in decoded)
    assert isinstance(attribute, AttributeChanged)
    assert (attribute.value, attribute.previous_change) == (value, 0)
    assert attribute.name_text == "did/svc/undefined"
    assert isinstance(delegated, DelegateChanged)
    assert (delegated.delegate, delegated.delegate_type_text) == (delegate, "veriKey")
    assert delegated.previous_change == blocks[0]
    assert delegated.valid_to == chain.w3.eth.get_block(blocks[1])["timestamp"] + 3600
    assert isinstance(owned, OwnerChanged)
    assert (owned.owner, owned.previous_change) == (new_owner, blocks[1])

    doc = resolve_did_document(did, chain, now=chain.now())
    assert doc["id"] == did.canonical
    assert doc["publicKey"][0]["ethereumAddress"] == new_owner
    assert [k.get("ethereumAddress") for k in doc["publicKey"][1:]] == [delegate]
    assert find_service_by_hash(doc, sha) == {
        "id": "svc-1",
        "serviceEndpoint": "QmOne",
        "hash": sha,
        "hashAlg": "SHA256",
    }
    # the delegate expires with chain time
    later = resolve_did_document(did, chain, now=chain.now() + 3600)
    assert later["publicKey"][1:] == []


def test_two_changes_in_one_block_revocation_and_overwrite(chain, relayer):
    """Signed writes with consecutive nonces mined together in one block."""
    asset = LocalKeySigner.generate()
    identity = asset.address
    sha1, sha2, sha3 = "11" * 32, "22" * 32, "33" * 32
    first = chain.send(
        relayer,
        _signed_write(
            chain,
            asset,
            identity,
            service_value(service_id="a", cid="Qm1", token_sha256=sha1),
            nonce=0,
        ),
    )
    assert first["status"] == 1

    w3 = chain.w3
    w3.manager.request_blocking(RPCEndpoint("evm_setAutomine"), [False])
    try:
        hashes = [
            w3.eth.send_transaction(
                {"from": relayer, "to": chain.address, "data": data, "gas": GAS}
            )
            for data in (
                _signed_write(  # revokes "a"
                    chain,
                    asset,
                    identity,
                    service_value(service_id="a", cid="Qm1", token_sha256=sha1),
                    nonce=1,
                    validity=0,
                ),
                _signed_write(
                    chain,
                    asset,
                    identity,
                    service_value(service_id="b", cid="Qm2", token_sha256=sha2),
                    nonce=2,
                ),
                _signed_write(  # overwrites "b" in the same block
                    chain,
                    asset,
                    identity,
                    service_value(service_id="b", cid="Qm3", token_sha256=sha3),
                    nonce=3,
                ),
            )
        ]
        w3.manager.request_blocking(RPCEndpoint("evm_mine"), [])
    finally:
        w3.manager.request_blocking(RPCEndpoint("evm_setAutomine"), [True])
    receipts = [w3.eth.wait_for_transaction_receipt(h) for h in hashes]
    assert [r["status"] for r in receipts] == [1, 1, 1]
    block = receipts[0]["blockNumber"]
    assert {r["blockNumber"] for r in receipts} == {block}

    events = chain.logs(identity, block)
    assert [e.previous_change for e in events] == [first["blockNumber"], block, block]
    assert [e.log_index for e in events] == sorted(e.log_index for e in events)

    doc = resolve_did_document(DID.for_address(identity), chain, now=chain.now())
    assert doc["service"] == [
        {"id": "b", "serviceEndpoint": "Qm3", "hash": sha3, "hashAlg": "SHA256"}
    ]
    assert find_service_by_hash(doc, sha1) is None
    assert find_service_by_hash(doc, sha2) is None
