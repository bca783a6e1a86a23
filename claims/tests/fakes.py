"""Small in-memory stand-ins for the integrations, for unit tests of the pipeline.

The end-to-end tests use the real peers; these fakes only let the state machine and
the pipeline be exercised one step at a time, with failures injected on demand.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from claims.integrations import Integrations
from evops.integrations.cache_server import ClaimRequestResult, Role, RoleClaim
from evops.integrations.chain import PublishResult
from evops.protocol.dids import DID
from evops.protocol.jwt import issued_token
from evops.protocol.keys import LocalKeySigner

ROLE = "prequalified.roles.tso.apps.test.iam.ewc"


class FakeError(Exception):
    def __init__(self, message: str, *, permanent: bool, tx_hash: str | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.tx_hash = tx_hash


@dataclass
class FakeCache:
    issuer: LocalKeySigner
    claims: dict[str, RoleClaim] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail_next: list[Exception] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    # namespace -> `definition` JSON served instead of the default DID-type one
    definitions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.fail_next:
            raise self.fail_next.pop(0)

    async def role(self, signer, did, namespace):
        self._maybe_fail()
        issuer = DID.for_address(self.issuer.address).canonical
        raw = {
            "namespace": namespace,
            "definition": self.definitions.get(
                namespace,
                {"version": 1, "issuer": {"issuerType": "DID", "did": [issuer]}},
            ),
        }
        return Role(
            namespace=namespace,
            name="prequalified",
            version=1,
            issuer_type="DID",
            issuer_dids=(issuer,),
            issuer_role=None,
            raw=raw,
        )

    async def request_claim(self, signer, did, *, role, subject=None, claim_id=None):
        self._maybe_fail()
        assert DID.parse(did).address == signer.address
        self.requests.append((did, role.namespace))
        if did in self.pending:
            return ClaimRequestResult(claim_id=self.pending[did], already_existed=True)
        claim_id = claim_id or f"claim-{len(self.requests)}"
        self.pending[did] = claim_id
        self.claims[claim_id] = claim(claim_id, did)
        return ClaimRequestResult(claim_id=claim_id, already_existed=False)

    async def get_claim(self, signer, did, claim_id):
        self._maybe_fail()
        return self.claims.get(claim_id)

    async def accepted_claims(self, signer, did):
        self._maybe_fail()
        return [c for c in self.claims.values() if c.subject == did and c.is_accepted]

    def issue(self, claim_id: str, *, token: str | None = None, **token_kw) -> str:
        """Play the TSO: sign and attach an issued token to a stored claim."""
        stored = self.claims[claim_id]
        token = token or make_token(self.issuer, stored.subject, **token_kw)
        self.claims[claim_id] = replace(stored, issued_token=token, is_accepted=True)
        self.pending.pop(stored.subject, None)
        return token

    def reject(self, claim_id: str, reason: str = "not eligible") -> None:
        stored = self.claims[claim_id]
        self.claims[claim_id] = replace(
            stored, is_rejected=True, rejection_reason=reason
        )

    async def aclose(self):
        return None


def claim(claim_id: str, did: str, claim_type: str = ROLE) -> RoleClaim:
    return RoleClaim(
        id=claim_id,
        requester=did,
        subject=did,
        claim_type=claim_type,
        claim_type_version=1,
        token="request-token",
        issued_token=None,
        is_accepted=False,
        is_rejected=False,
        rejection_reason=None,
        accepted_by=None,
        created_at=None,
        raw={},
    )


def make_token(
    issuer: LocalKeySigner,
    subject: str,
    *,
    claim_type: str = ROLE,
    exp: int | None = None,
) -> str:
    return issued_token(
        issuer,
        issuer_did=DID.for_address(issuer.address),
        subject=subject,
        claim_data={"claimType": claim_type, "claimTypeVersion": 1},
        exp=exp,
    )


@dataclass
class FakeStore:
    puts: list[str] = field(default_factory=list)
    fail_next: list[Exception] = field(default_factory=list)
    contents: dict[str, str] = field(default_factory=dict)

    async def put(self, token: str) -> str:
        if self.fail_next:
            raise self.fail_next.pop(0)
        self.puts.append(token)
        cid = fake_cid(token)
        self.contents[cid] = token
        return cid

    async def get(self, cid: str) -> str:
        return self.contents[cid]


def fake_cid(data: str) -> str:
    """A well-formed CIDv0 (sha256 multihash) of `data`, as a store returns."""
    import hashlib

    import base58

    digest = hashlib.sha256(data.encode()).digest()
    return str(base58.b58encode(b"\x12\x20" + digest).decode())


@dataclass
class FakeChain:
    documents: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    writes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail_next: list[Exception] = field(default_factory=list)
    fail_resolve: list[Exception] = field(default_factory=list)
    hide_writes: bool = False
    # identity address -> veriKey delegate addresses (listed in its document)
    delegates: dict[str, list[str]] = field(default_factory=dict)
    resolved: list[str] = field(default_factory=list)

    async def publish_attribute(self, asset_signer, *, name, value, validity):
        if self.fail_next:
            raise self.fail_next.pop(0)
        entry = json.loads(value)
        did = DID.for_address(asset_signer.address).address
        self.writes.append((did, entry))
        if not self.hide_writes:
            self.documents.setdefault(did, {})[entry["id"]] = entry
        return PublishResult(
            tx_hash="0x" + f"{len(self.writes):064x}",
            block_number=len(self.writes),
            gas_used=50000,
            mode="asset",
        )

    async def resolve_document(self, did: str) -> dict[str, Any]:
        if self.fail_resolve:
            raise self.fail_resolve.pop(0)
        address = DID.parse(did).address
        self.resolved.append(did)
        keys = [
            {
                "id": f"{did}#delegate-veriKey-{delegate}",
                "type": "veriKey",
                "controller": did,
                "ethereumAddress": delegate,
            }
            for delegate in self.delegates.get(address, [])
        ]
        return {
            "id": did,
            "publicKey": keys,
            "service": list(self.documents.get(address, {}).values()),
        }

    async def resolve_documents(self, dids: Sequence[str]) -> dict[str, Any]:
        if self.fail_resolve:
            raise self.fail_resolve.pop(0)
        return {
            DID.parse(did).canonical: await self.resolve_document(did) for did in dids
        }


def fake_integrations(
    issuer: LocalKeySigner, signers: dict[int, LocalKeySigner]
) -> tuple[Integrations, FakeCache, FakeStore, FakeChain]:
    cache, store, chain = FakeCache(issuer), FakeStore(), FakeChain()
    integrations = Integrations(
        cache=cache,
        store=store,
        chain=chain,
        signer_for=lambda asset: signers[asset.pk],
        prequalification_role=ROLE,
        allowed_claim_types=(ROLE,),
    )
    return integrations, cache, store, chain
