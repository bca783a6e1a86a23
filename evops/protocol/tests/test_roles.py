"""The role-chain verifier (issuerType ROLE) and the one publication check.

The peers are in-memory here (a dict of DID documents, a dict store, a dict of
role definitions), so every hostile shape of a chain can be built exactly; the
same verifier runs against the real stand-in, anvil and store in
`evops/sandbox/tests/test_role_chain_peers.py`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from evops.protocol import roles as roles_module
from evops.protocol import verification
from evops.protocol.cids import sha256_hex
from evops.protocol.credentials import AcceptedCredential, RejectedCredential
from evops.protocol.credentials import RejectionReason as R
from evops.protocol.dids import DID
from evops.protocol.errors import VerificationUnavailable
from evops.protocol.jwt import issued_token, sign_token
from evops.protocol.keys import LocalKeySigner
from evops.protocol.policy import TrustPolicy, effective_role
from evops.protocol.roles import RoleChainVerifier, RoleSources
from evops.protocol.verification import HubClaim, verify_for_publication
from evops.sandbox.cache_server import cid_of, role_json

NOW = datetime(2026, 6, 1, tzinfo=UTC)
PREQ = "prequalified.roles.tso.apps.elia.iam.ewc"
TSO = "tso.roles.elia.iam.ewc"
GRID = "grid.roles.elia.iam.ewc"
OPS = "ops.roles.elia.iam.ewc"


def did_of(signer: LocalKeySigner) -> str:
    return DID.for_address(signer.address).canonical


class StoreError(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass
class Peers:
    """A chain of DID documents, a store and a hub, all in memory."""

    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    store: dict[str, str] = field(default_factory=dict)
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)

    def publish(self, holder: str, token: str, *, content: str | None = None) -> str:
        """Put `token` in the store and a service entry for it in `holder`'s doc."""
        body = token if content is None else content
        cid = cid_of(body.encode())
        self.store[cid] = body
        document = self.documents.setdefault(holder, {"id": holder, "service": []})
        document["service"].append(
            {
                "id": str(uuid.uuid4()),
                "serviceEndpoint": cid,
                "hash": sha256_hex(token),
                "hashAlg": "SHA256",
            }
        )
        return cid

    async def fetch_role(self, namespace: str) -> Mapping[str, Any] | None:
        self.calls.append(f"role {namespace}")
        if "hub" in self.down:
            raise StoreError("hub down", permanent=False)
        return self.roles.get(namespace)

    async def resolve(self, did: DID) -> Mapping[str, Any]:
        self.calls.append(f"resolve {did}")
        if "chain" in self.down:
            raise TimeoutError("chain RPC timed out")
        return self.documents.get(did.canonical, {"id": did.canonical, "service": []})

    async def fetch(self, cid: str) -> str:
        self.calls.append(f"fetch {cid}")
        if "store" in self.down:
            raise StoreError("credential store unreachable", permanent=False)
        if cid not in self.store:
            raise StoreError("not found", permanent=True)
        return self.store[cid]

    @property
    def sources(self) -> RoleSources:
        return RoleSources(self.fetch_role, self.resolve, self.fetch)


def role_credential(issuer: LocalKeySigner, holder: str, role: str, **kw: Any) -> str:
    return issued_token(
        issuer,
        issuer_did=did_of(issuer),
        subject=holder,
        claim_data={"claimType": role, "claimTypeVersion": 1},
        **kw,
    )


@pytest.fixture
def world() -> dict[str, Any]:
    """PREQ issued by holders of TSO; TSO issued by ROOT (DID-listed)."""
    root, tso, asset = (LocalKeySigner.generate() for _ in range(3))
    peers = Peers()
    peers.roles[PREQ] = role_json(PREQ, issuer_role=TSO)
    peers.roles[TSO] = role_json(TSO, issuer_dids=[did_of(root)])
    peers.publish(did_of(tso), role_credential(root, did_of(tso), TSO))
    return {"root": root, "tso": tso, "asset": asset, "peers": peers}


def verifier(**kw: Any) -> RoleChainVerifier:
    return RoleChainVerifier(now=lambda: NOW.timestamp(), **kw)


POLICY = TrustPolicy.build(allowed_claim_types=[PREQ])


async def decide(
    world: dict[str, Any],
    issuer: LocalKeySigner | str,
    *,
    v: RoleChainVerifier | None = None,
    policy: TrustPolicy = POLICY,
    role: str = PREQ,
) -> Any:
    peers: Peers = world["peers"]
    effective = effective_role(peers.roles.get(role), claim_type=role, policy=policy)
    assert not isinstance(effective, RejectedCredential), effective
    issuer_did = issuer if isinstance(issuer, str) else did_of(issuer)
    return await (v or verifier()).check(issuer_did, effective, sources=peers.sources)


async def test_issuer_holding_the_role_through_one_level_is_allowed(world):
    decision = await decide(world, world["tso"])
    assert decision.allowed, decision
    assert decision.reason is None
    assert did_of(world["root"]) in decision.via[0]
    assert decision.via[-1] == roles_module.DETAIL_LISTED.format(
        issuer=did_of(world["root"])
    )


async def test_self_signed_role_credential_is_not_a_proof(world):
    # The issue's case 1: a random key claiming to hold the role.
    mallory = LocalKeySigner.generate()
    world["peers"].publish(
        did_of(mallory), role_credential(mallory, did_of(mallory), TSO)
    )
    decision = await decide(world, mallory)
    assert not decision.allowed
    assert decision.reason is R.ISSUER_ROLE_UNPROVEN
    assert did_of(mallory) in decision.detail


async def test_issuer_with_an_empty_document_is_unproven(world):
    decision = await decide(world, LocalKeySigner.generate())
    assert decision.reason is R.ISSUER_ROLE_UNPROVEN
    assert "0 service entries" in decision.detail


@pytest.mark.parametrize(
    "hostile",
    [
        "content_differs",  # the store returns other bytes than the hash says
        "other_subject",  # a genuine credential of someone else
        "other_role",  # a genuine credential for another role
        "expired",
        "not_yet_valid",
        "issued_in_future",
        "bad_signature",
        "garbage_token",
        "bogus_cid",
        "cid_with_newline",
        "bad_hash_field",
        "other_hash_alg",
        "missing_in_store",
    ],
)
async def test_hostile_role_credentials_prove_nothing(world, hostile):
    peers: Peers = world["peers"]
    root, mallory = world["root"], LocalKeySigner.generate()
    holder = did_of(mallory)
    now = int(NOW.timestamp())
    genuine = role_credential(root, holder, TSO)
    if hostile == "content_differs":
        peers.publish(holder, genuine, content=genuine + " ")
    elif hostile == "other_subject":
        peers.publish(holder, role_credential(root, did_of(world["tso"]), TSO))
    elif hostile == "other_role":
        peers.publish(holder, role_credential(root, holder, GRID))
    elif hostile == "expired":
        peers.publish(holder, role_credential(root, holder, TSO, exp=now - 1))
    elif hostile in ("not_yet_valid", "issued_in_future"):
        claim = "nbf" if hostile == "not_yet_valid" else "iat"
        payload = {
            "claimData": {"claimType": TSO, "claimTypeVersion": 1},
            "iss": did_of(root),
            "sub": holder,
            claim: now + 3600,
        }
        token = sign_token({"alg": "ES256K", "typ": "JWT"}, payload, root)
        peers.publish(holder, token)
    elif hostile == "bad_signature":
        forged = (
            genuine.rsplit(".", 1)[0]
            + "."
            + role_credential(mallory, holder, TSO).rsplit(".", 1)[1]
        )
        peers.publish(holder, forged)
    elif hostile == "garbage_token":
        peers.publish(holder, "not a token at all")
    else:
        cid = peers.publish(holder, genuine)
        entry = peers.documents[holder]["service"][-1]
        if hostile == "bogus_cid":
            entry["serviceEndpoint"] = "../../etc/passwd"
        elif hostile == "cid_with_newline":
            entry["serviceEndpoint"] = cid + "\n"
        elif hostile == "bad_hash_field":
            entry["hash"] = ["not", "a", "hash"]
        elif hostile == "other_hash_alg":
            entry["hashAlg"] = "KECCAK256"
        elif hostile == "missing_in_store":
            del peers.store[cid]
    decision = await decide(world, mallory)
    assert not decision.allowed
    assert decision.reason is R.ISSUER_ROLE_UNPROVEN


async def test_delegate_signed_role_credential_is_accepted(world):
    peers: Peers = world["peers"]
    root, delegate = world["root"], LocalKeySigner.generate()
    holder_signer = LocalKeySigner.generate()
    holder = did_of(holder_signer)
    # iss is the root, the signature the delegate's key
    payload = {
        "claimData": {"claimType": TSO, "claimTypeVersion": 1},
        "did": holder,
        "signer": did_of(root),
        "iss": did_of(root),
        "sub": holder,
    }
    payload_iss_root = sign_token({"alg": "ES256K", "typ": "JWT"}, payload, delegate)
    peers.publish(holder, payload_iss_root)
    assert (await decide(world, holder_signer)).reason is R.ISSUER_ROLE_UNPROVEN
    peers.documents[did_of(root)] = {
        "id": did_of(root),
        "publicKey": [
            {"type": "Secp256k1veriKey", "ethereumAddress": delegate.address}
        ],
        "service": [],
    }
    assert (await decide(world, holder_signer)).allowed


def chain_of(world: dict[str, Any], length: int) -> LocalKeySigner:
    """A chain of `length` role credentials ending at the DID-listed root.

    Roles R0 (issued by holders of R1), ..., R(length-1) listed by the root. The
    returned signer holds R0's issuer role, so the chain it shows has `length`
    credentials.
    """
    peers: Peers = world["peers"]
    root = world["root"]
    names = [f"r{i}.roles.chain.iam.ewc" for i in range(length)]
    for i, name in enumerate(names):
        if i + 1 < length:
            peers.roles[name] = role_json(name, issuer_role=names[i + 1])
        else:
            peers.roles[name] = role_json(name, issuer_dids=[did_of(root)])
    holders = [LocalKeySigner.generate() for _ in names]
    for i, name in enumerate(names):
        issuer = holders[i + 1] if i + 1 < length else root
        peers.publish(
            did_of(holders[i]), role_credential(issuer, did_of(holders[i]), name)
        )
    peers.roles[PREQ] = role_json(PREQ, issuer_role=names[0])
    return holders[0]


@pytest.mark.parametrize("length", [1, 2, 3])
async def test_chains_up_to_the_depth_limit_are_allowed(world, length):
    holder = chain_of(world, length)
    decision = await decide(world, holder, v=verifier(max_depth=3))
    assert decision.allowed, decision
    assert len(decision.via) == length + 1


async def test_chain_deeper_than_the_limit_is_refused(world):
    holder = chain_of(world, 4)
    decision = await decide(world, holder, v=verifier(max_depth=3))
    assert decision.reason is R.ROLE_CHAIN_TOO_DEEP
    assert "longer than 3" in decision.detail
    decision = await decide(world, chain_of(world, 2), v=verifier(max_depth=1))
    assert decision.reason is R.ROLE_CHAIN_TOO_DEEP


async def test_role_cycle_is_refused(world):
    peers: Peers = world["peers"]
    a, b = LocalKeySigner.generate(), LocalKeySigner.generate()
    # GRID is issued by holders of OPS, OPS by holders of GRID: a and b vouch for
    # each other and nobody leads to a DID-listed root.
    peers.roles[GRID] = role_json(GRID, issuer_role=OPS)
    peers.roles[OPS] = role_json(OPS, issuer_role=GRID)
    peers.roles[PREQ] = role_json(PREQ, issuer_role=GRID)
    peers.publish(did_of(a), role_credential(b, did_of(a), GRID))
    peers.publish(did_of(b), role_credential(a, did_of(b), OPS))
    decision = await decide(world, a, v=verifier(max_depth=10))
    assert decision.reason is R.ROLE_CHAIN_CYCLE
    assert not decision.allowed


async def test_self_loop_is_a_cycle(world):
    peers: Peers = world["peers"]
    a = LocalKeySigner.generate()
    peers.roles[PREQ] = role_json(PREQ, issuer_role=GRID)
    peers.roles[GRID] = role_json(GRID, issuer_role=GRID)
    peers.publish(did_of(a), role_credential(a, did_of(a), GRID))
    assert (await decide(world, a)).reason is R.ROLE_CHAIN_CYCLE


async def test_too_many_service_entries_are_not_all_fetched(world):
    peers: Peers = world["peers"]
    mallory = LocalKeySigner.generate()
    for _ in range(500):
        peers.publish(did_of(mallory), "junk " + uuid.uuid4().hex)
    v = verifier(max_services=20)
    decision = await decide(world, mallory, v=v)
    assert decision.reason is R.ISSUER_ROLE_UNPROVEN
    assert v.fetches == 20


@pytest.mark.parametrize("peer", ["chain", "store", "hub"])
async def test_a_lookup_failure_is_transient_never_allowed(world, peer):
    peers: Peers = world["peers"]
    peers.down.add(peer)
    with pytest.raises(VerificationUnavailable) as caught:
        await decide(world, world["tso"])
    assert caught.value.permanent is False
    assert {"chain": "resolve", "store": "fetch", "hub": "role"}[peer] in str(
        caught.value
    )


async def test_an_unreadable_candidate_beside_a_bad_one_is_transient(world):
    peers: Peers = world["peers"]
    mallory = LocalKeySigner.generate()
    peers.publish(did_of(mallory), "junk")
    cid = peers.publish(
        did_of(mallory), role_credential(world["root"], did_of(mallory), TSO)
    )

    async def flaky(wanted: str) -> str:
        if wanted == cid:
            raise StoreError("timeout", permanent=False)
        return peers.store[wanted]

    sources = RoleSources(peers.fetch_role, peers.resolve, flaky)
    effective = effective_role(peers.roles[PREQ], claim_type=PREQ, policy=POLICY)
    assert not isinstance(effective, RejectedCredential)
    with pytest.raises(VerificationUnavailable):
        await verifier().check(did_of(mallory), effective, sources=sources)


async def test_proofs_and_definitions_are_cached_within_the_ttl(world):
    peers: Peers = world["peers"]
    v = verifier(cache_ttl=300)
    assert (await decide(world, world["tso"], v=v)).allowed
    before = len(peers.calls)
    assert (await decide(world, world["tso"], v=v)).allowed
    assert len(peers.calls) == before  # nothing fetched again
    v.clear()
    assert (await decide(world, world["tso"], v=v)).allowed
    assert len(peers.calls) > before


async def test_refusals_are_not_cached(world):
    peers: Peers = world["peers"]
    newcomer = LocalKeySigner.generate()
    v = verifier(cache_ttl=300)
    assert (await decide(world, newcomer, v=v)).reason is R.ISSUER_ROLE_UNPROVEN
    peers.publish(
        did_of(newcomer), role_credential(world["root"], did_of(newcomer), TSO)
    )
    assert (await decide(world, newcomer, v=v)).allowed


async def test_cache_expires(world):
    peers: Peers = world["peers"]
    v = verifier(cache_ttl=0)
    await decide(world, world["tso"], v=v)
    before = len(peers.calls)
    await decide(world, world["tso"], v=v)
    assert len(peers.calls) == 2 * before


async def test_pinned_trust_list_decides_role_type_without_proof(world):
    peers: Peers = world["peers"]
    stranger = LocalKeySigner.generate()
    pinned = TrustPolicy.build(
        allowed_claim_types=[PREQ], trusted_issuers=[did_of(stranger)]
    )
    decision = await decide(world, stranger, policy=pinned)
    assert decision.allowed
    assert peers.calls == []  # no peer asked
    # the genuine role holder, not pinned: the pinned list is closed
    decision = await decide(world, world["tso"], policy=pinned)
    assert decision.reason is R.ISSUER_NOT_TRUSTED


async def test_role_definition_without_role_name_or_with_bad_type(world):
    peers: Peers = world["peers"]
    peers.roles[PREQ] = {
        "namespace": PREQ,
        "definition": {"issuer": {"issuerType": "ROLE"}},
    }
    refused = effective_role(peers.roles[PREQ], claim_type=PREQ, policy=POLICY)
    assert isinstance(refused, RejectedCredential)
    assert refused.reason is R.ISSUER_ROLE_UNPROVEN
    # an intermediate role with an unknown issuer type refuses the chain
    peers.roles[PREQ] = role_json(PREQ, issuer_role=TSO)
    peers.roles[TSO] = {
        "namespace": TSO,
        "definition": {"issuer": {"issuerType": "ANY"}},
    }
    assert (await decide(world, world["tso"])).reason is R.ISSUER_ROLE_UNPROVEN
    # an intermediate role the hub does not know
    del peers.roles[TSO]
    assert (await decide(world, world["tso"])).reason is R.ISSUER_ROLE_UNPROVEN


# --- the one publication check ---------------------------------------------------


def hub_claim(token: str | None, asset: str, **kw: Any) -> HubClaim:
    fields: dict[str, Any] = {
        "id": "claim-1",
        "subject": asset,
        "claim_type": PREQ,
        "issued_token": token,
        "is_accepted": True,
        "is_rejected": False,
    }
    fields.update(kw)
    return HubClaim(**fields)


async def publish_check(
    world: dict[str, Any], claim: HubClaim | None, **kw: Any
) -> Any:
    peers: Peers = world["peers"]
    kwargs: dict[str, Any] = {
        "claim_id": "claim-1",
        "asset_did": did_of(world["asset"]),
        "policy": POLICY,
        "now": NOW,
        "roles": verifier(),
        "sources": peers.sources,
    }
    kwargs.update(kw)
    return await verify_for_publication(claim, **kwargs)


def preq_token(
    world: dict[str, Any], issuer: LocalKeySigner | None = None, **kw: Any
) -> str:
    return role_credential(issuer or world["tso"], did_of(world["asset"]), PREQ, **kw)


async def test_publication_check_accepts_a_genuine_role_chain_credential(world):
    token = preq_token(world)
    asset = did_of(world["asset"])
    result = await publish_check(world, hub_claim(token, asset))
    assert isinstance(result, AcceptedCredential), result
    assert result.issuer == did_of(world["tso"])
    assert result.issuer_proof
    # a legacy message presenting the same token, and reconciliation by hash
    assert (
        await publish_check(world, hub_claim(token, asset), presented_token=token)
    ).accepted
    assert (
        await publish_check(
            world, hub_claim(token, asset), presented_sha256=sha256_hex(token).upper()
        )
    ).accepted


async def test_publication_check_refuses_each_case_of_the_issue(world):
    asset = did_of(world["asset"])
    token = preq_token(world)
    mallory = LocalKeySigner.generate()
    forged = preq_token(world, issuer=mallory)
    cases: list[tuple[HubClaim | None, dict[str, Any], R]] = [
        # 1: ROLE-type role, self-signed token, legacy message; the hub holds it too
        (hub_claim(forged, asset), {"presented_token": forged}, R.ISSUER_ROLE_UNPROVEN),
        # 2: legacy token for a claim the hub does not know
        (None, {"presented_token": token}, R.CLAIM_UNKNOWN),
        # 2b: legacy token that is not the hub's token for that claim
        (hub_claim(token, asset), {"presented_token": token + "x"}, R.TOKEN_MISMATCH),
        (hub_claim(token, asset), {"presented_sha256": "00" * 32}, R.TOKEN_MISMATCH),
        # 3: hub reports isAccepted false with an issued token
        (hub_claim(token, asset, is_accepted=False), {}, R.CLAIM_NOT_ACCEPTED),
        (hub_claim(token, asset, is_rejected=True), {}, R.CLAIM_REJECTED),
        (hub_claim(None, asset), {}, R.CLAIM_NOT_ACCEPTED),
        # 4: token says type X, hub labels the claim Y (both allowed)
        (
            hub_claim(token, asset, claim_type=GRID),
            {"policy": TrustPolicy.build(allowed_claim_types=[PREQ, GRID])},
            R.CLAIM_TYPE_MISMATCH,
        ),
        # the claim is another asset's
        (hub_claim(token, did_of(mallory)), {}, R.CLAIM_SUBJECT_MISMATCH),
        (hub_claim(token, "garbage"), {}, R.CLAIM_SUBJECT_MISMATCH),
        # the hub answers another claim than the one asked for
        (hub_claim(token, asset, id="claim-2"), {}, R.CLAIM_UNKNOWN),
        # type not allowed locally, even though the hub defines it
        (
            hub_claim(token, asset),
            {"policy": TrustPolicy.build(allowed_claim_types=[GRID])},
            R.UNEXPECTED_CLAIM_TYPE,
        ),
    ]
    for claim, extra, reason in cases:
        result = await publish_check(world, claim, **extra)
        assert isinstance(result, RejectedCredential), (reason, result)
        assert result.reason is reason, (reason, result)
        assert result.detail


async def test_publication_check_uses_the_role_definition_of_the_tokens_type(world):
    peers: Peers = world["peers"]
    asset = did_of(world["asset"])
    # The hub's definition for PREQ lists the attacker directly, but names another
    # namespace: a definition for type Y must not vouch for type X.
    mallory = LocalKeySigner.generate()
    peers.roles[PREQ] = role_json(GRID, issuer_dids=[did_of(mallory)])
    token = preq_token(world, issuer=mallory)
    result = await publish_check(world, hub_claim(token, asset))
    assert result.reason is R.ROLE_MISMATCH


async def test_publication_check_is_transient_when_the_chain_is_down(world):
    world["peers"].down.add("chain")
    asset = did_of(world["asset"])
    with pytest.raises(VerificationUnavailable):
        await publish_check(world, hub_claim(preq_token(world), asset))


async def test_publication_check_unknown_role_is_refused(world):
    world["peers"].roles.pop(PREQ)
    asset = did_of(world["asset"])
    result = await publish_check(world, hub_claim(preq_token(world), asset))
    assert result.reason is R.ISSUER_NOT_ALLOWED


def test_detail_constants_are_formatted_without_key_material():
    assert "{claim_id!r}" in verification.DETAIL_CLAIM_UNKNOWN


async def test_a_cached_proof_is_not_reused_past_its_credentials_expiry(world):
    peers: Peers = world["peers"]
    holder = LocalKeySigner.generate()
    clock = {"now": NOW.timestamp()}
    expires = int(NOW.timestamp()) + 60
    peers.publish(
        did_of(holder),
        role_credential(world["root"], did_of(holder), TSO, exp=expires),
    )
    v = RoleChainVerifier(cache_ttl=3600, now=lambda: clock["now"])
    decision = await decide(world, holder, v=v)
    assert decision.allowed
    assert decision.valid_until == expires
    clock["now"] = expires + 1  # within the cache TTL, past the credential
    decision = await decide(world, holder, v=v)
    assert decision.reason is R.ISSUER_ROLE_UNPROVEN


async def test_concurrent_misses_fetch_a_role_definition_once(world):
    peers: Peers = world["peers"]
    release = asyncio.Event()
    original = peers.fetch_role

    async def slow(namespace: str) -> Mapping[str, Any] | None:
        await release.wait()
        return await original(namespace)

    sources = RoleSources(slow, peers.resolve, peers.fetch)
    v = verifier(cache_ttl=300)

    async def release_after_all_missed() -> None:
        release.set()  # gather started the callers first: all have missed

    *definitions, _ = await asyncio.gather(
        *(v.role_definition(PREQ, sources=sources) for _ in range(100)),
        release_after_all_missed(),
    )
    assert peers.calls.count(f"role {PREQ}") == 1
    assert all(d == definitions[0] for d in definitions)
    assert definitions[0] is not None
