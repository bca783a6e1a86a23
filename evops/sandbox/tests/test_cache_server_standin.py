"""The cache-server stand-in over raw HTTP: its auth rules and quirks (protocol.md §4).

These pin the peer's behaviour independently of evops' client, so the client tests
below it cannot pass by the two agreeing on a mistake.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import nats
import pytest

from evops.protocol import siwe
from evops.protocol.jwt import claim_request_token, identity_token, issued_token
from evops.protocol.keys import LocalKeySigner
from evops.sandbox.cache_server import (
    MSG_ALREADY_EXISTS,
    MSG_CRITERIA,
    MSG_ISSUER,
    MSG_OUTDATED,
    MSG_SIGNATURE,
    MSG_SIWE_DONE,
    MSG_SIWE_NOT_INITIATED,
    CacheServerStandIn,
    cid_of,
    eth_block_number,
    issue_claim,
    namehash,
    stand_in_process,
)

from .conftest import ENV, ROLE


async def login(
    client: httpx.AsyncClient, signer: LocalKeySigner, did: str, rpc_url: str
) -> dict[str, str]:
    block = await eth_block_number(rpc_url)
    token = identity_token(signer, did=did, block_number=block)
    response = await client.post("/v1/login", json={"identityToken": token})
    assert response.status_code == 201, response.text
    pair: dict[str, str] = response.json()
    return pair


def claim_body(
    signer: LocalKeySigner,
    did: str,
    *,
    claim_id: str | None = None,
    role: str = ROLE,
    version: int = 1,
    token_signer: LocalKeySigner | None = None,
) -> dict[str, Any]:
    token = claim_request_token(
        token_signer or signer,
        did=did,
        subject=did,
        claim_type=role,
        claim_type_version=version,
        iat_ms=int(time.time() * 1000),
    )
    return {
        "id": claim_id or str(uuid.uuid4()),
        "requester": did,
        "token": token,
        "claimType": role,
        "claimTypeVersion": str(version),
        "claimIssuer": ["did:ethr:volta:0x0000000000000000000000000000000000000000"],
        "registrationTypes": ["RegistrationTypes::OffChain"],
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def http(stand_in: CacheServerStandIn):
    async with httpx.AsyncClient(base_url=stand_in.url, timeout=10) as client:
        yield client


# --- identity-token login ------------------------------------------------------------


async def test_identity_login_returns_tokens_and_cookies(
    http, stand_in, asset, asset_did, rpc_url
):
    pair = await login(http, asset, asset_did, rpc_url)
    assert set(pair) == {"token", "refreshToken"}
    assert http.cookies.get("token") == pair["token"]
    assert http.cookies.get("refreshToken") == pair["refreshToken"]
    status = await http.get("/v1/auth/status", headers=bearer(pair["token"]))
    assert status.json() == {"user": asset_did}
    assert stand_in.login_count == 1


async def test_auth_status_without_token_is_null_user(http):
    response = await http.get("/v1/auth/status")
    assert response.status_code == 200
    assert response.json() == {"user": None}


async def test_stale_identity_token_is_rejected(http, asset, asset_did, rpc_url):
    latest = await eth_block_number(rpc_url)
    # passport-did-auth: rejected once `latest - blocksBack >= blockNumber`.
    stale = identity_token(asset, did=asset_did, block_number=latest - 10)
    response = await http.post("/v1/login", json={"identityToken": stale})
    assert response.status_code == 401
    assert response.json()["message"] == MSG_OUTDATED
    fresh_enough = identity_token(asset, did=asset_did, block_number=latest - 9)
    response = await http.post("/v1/login", json={"identityToken": fresh_enough})
    assert response.status_code == 201


async def test_forged_identity_token_is_rejected(http, asset_did, rpc_url):
    attacker = LocalKeySigner.generate()
    block = await eth_block_number(rpc_url)
    forged = identity_token(attacker, did=asset_did, block_number=block)
    response = await http.post("/v1/login", json={"identityToken": forged})
    assert response.status_code == 401


async def test_garbage_identity_token_is_rejected(http):
    for body in ({"identityToken": "not.a.token"}, {}, {"identityToken": 5}):
        response = await http.post("/v1/login", json=body)
        assert response.status_code == 401


async def test_identity_login_can_be_disabled(make_stand_in, asset, asset_did, rpc_url):
    server = make_stand_in(identity_login=False)
    async with httpx.AsyncClient(base_url=server.url) as client:
        block = await eth_block_number(rpc_url)
        token = identity_token(asset, did=asset_did, block_number=block)
        response = await client.post("/v1/login", json={"identityToken": token})
    assert response.status_code == 404


# --- the Origin rule, expiry, refresh ------------------------------------------------


async def test_mismatching_origin_is_401(http, asset, asset_did, rpc_url):
    pair = await login(http, asset, asset_did, rpc_url)
    http.cookies.clear()
    path = f"/v1/role/{ROLE}"
    ok = await http.get(path, headers=bearer(pair["token"]))
    assert ok.status_code == 200
    wrong = await http.get(
        path, headers={**bearer(pair["token"]), "Origin": "https://evil.example"}
    )
    assert wrong.status_code == 401


async def test_calls_without_token_or_with_bad_token_are_401(http):
    assert (await http.get(f"/v1/role/{ROLE}")).status_code == 401
    response = await http.get(f"/v1/role/{ROLE}", headers=bearer("a.b.c"))
    assert response.status_code == 401


async def test_expired_access_token_is_401(make_stand_in, asset, asset_did, rpc_url):
    server = make_stand_in(access_ttl=1)
    async with httpx.AsyncClient(base_url=server.url) as client:
        pair = await login(client, asset, asset_did, rpc_url)
        client.cookies.clear()
        await asyncio.sleep(2.1)
        response = await client.get(f"/v1/role/{ROLE}", headers=bearer(pair["token"]))
    assert response.status_code == 401


async def test_refresh_token_is_single_use(http, stand_in, asset, asset_did, rpc_url):
    pair = await login(http, asset, asset_did, rpc_url)
    http.cookies.clear()
    query = {"refresh_token": pair["refreshToken"]}
    first = await http.get("/v1/refresh_token", params=query)
    assert first.status_code == 200
    assert set(first.json()) == {"token", "refreshToken"}
    http.cookies.clear()
    second = await http.get("/v1/refresh_token", params=query)
    assert second.status_code == 401
    renewed = await http.get(f"/v1/role/{ROLE}", headers=bearer(first.json()["token"]))
    assert renewed.status_code == 200
    assert stand_in.refresh_count == 1


async def test_refresh_cookie_wins_over_query_parameter(
    http, asset, asset_did, rpc_url
):
    """The real server's quirk that makes a shared cookie jar dangerous."""
    other = LocalKeySigner.generate()
    other_did = f"did:ethr:volta:{other.address}"
    theirs = await login(http, other, other_did, rpc_url)
    http.cookies.clear()
    await login(http, asset, asset_did, rpc_url)  # leaves the asset's cookies set
    response = await http.get(
        "/v1/refresh_token", params={"refresh_token": theirs["refreshToken"]}
    )
    assert response.status_code == 200
    http.cookies.clear()
    status = await http.get("/v1/auth/status", headers=bearer(response.json()["token"]))
    assert status.json() == {"user": asset_did}


async def test_revoked_access_token_is_401_but_refresh_still_works(
    http, stand_in, asset, asset_did, rpc_url
):
    pair = await login(http, asset, asset_did, rpc_url)
    http.cookies.clear()
    stand_in.revoke_access_tokens()
    response = await http.get(f"/v1/role/{ROLE}", headers=bearer(pair["token"]))
    assert response.status_code == 401
    refreshed = await http.get(
        "/v1/refresh_token", params={"refresh_token": pair["refreshToken"]}
    )
    assert refreshed.status_code == 200


# --- SIWE ----------------------------------------------------------------------------


def siwe_message(stand_in: CacheServerStandIn, signer, nonce: str, **over) -> str:
    fields = {
        "domain": stand_in.url.split("//")[1],
        "address": signer.address,
        "uri": f"{stand_in.url}/v1/login/siwe/verify",
        "chain_id": 73799,
        "nonce": nonce,
        "issued_at": siwe.format_time(datetime.now(UTC)),
    }
    fields.update(over)
    return siwe.SiweMessage(**fields).prepare()


async def test_siwe_login_and_nonce_single_use(http, stand_in, asset, asset_did):
    nonce = (await http.post("/v1/login/siwe/initiate")).json()["nonce"]
    text = siwe_message(stand_in, asset, nonce)
    signature = "0x" + asset.sign_message(text.encode()).hex()
    body = {"message": text, "signature": signature}
    response = await http.post("/v1/login/siwe/verify", json=body)
    assert response.status_code == 201, response.text
    http.cookies.clear()
    status = await http.get("/v1/auth/status", headers=bearer(response.json()["token"]))
    assert status.json() == {"user": asset_did}
    replay = await http.post("/v1/login/siwe/verify", json=body)
    assert replay.status_code == 401
    assert replay.json()["message"] == MSG_SIWE_DONE
    assert stand_in.siwe_login_count == 1


async def test_siwe_rejects_uninitiated_nonce_bad_uri_and_bad_signature(
    http, stand_in, asset
):
    text = siwe_message(stand_in, asset, "abcdefgh12345678")
    signature = "0x" + asset.sign_message(text.encode()).hex()
    response = await http.post(
        "/v1/login/siwe/verify", json={"message": text, "signature": signature}
    )
    assert response.status_code == 401
    assert response.json()["message"] == MSG_SIWE_NOT_INITIATED

    nonce = (await http.post("/v1/login/siwe/initiate")).json()["nonce"]
    text = siwe_message(stand_in, asset, nonce, uri="https://elsewhere/v1/x")
    signature = "0x" + asset.sign_message(text.encode()).hex()
    response = await http.post(
        "/v1/login/siwe/verify", json={"message": text, "signature": signature}
    )
    assert response.status_code == 401

    nonce = (await http.post("/v1/login/siwe/initiate")).json()["nonce"]
    text = siwe_message(stand_in, asset, nonce)
    forged = "0x" + LocalKeySigner.generate().sign_message(text.encode()).hex()
    response = await http.post(
        "/v1/login/siwe/verify", json={"message": text, "signature": forged}
    )
    assert response.status_code == 401


# --- roles and claims ----------------------------------------------------------------


@pytest.fixture
async def session(http, asset, asset_did, rpc_url):
    pair = await login(http, asset, asset_did, rpc_url)
    http.cookies.clear()
    return bearer(pair["token"])


async def test_role_known_and_unknown(http, session, issuer_did):
    known = await http.get(f"/v1/role/{ROLE}", headers=session)
    assert known.status_code == 200
    role = known.json()
    assert role["namespace"] == ROLE
    assert role["namehash"] == namehash(ROLE)
    assert role["definition"]["issuer"] == {"issuerType": "DID", "did": [issuer_did]}
    unknown = await http.get("/v1/role/nothing.roles.x.iam.ewc", headers=session)
    assert unknown.status_code == 200
    assert unknown.content == b""


async def test_claim_request_quirks(http, session, asset, asset_did):
    body = claim_body(asset, asset_did)
    created = await http.post("/v1/claim/request", json=body, headers=session)
    assert created.status_code == 201
    assert created.text == body["id"]  # the bare id, not JSON
    again = await http.post("/v1/claim/request", json=body, headers=session)
    assert again.status_code == 400
    assert again.json()["message"] == MSG_CRITERIA
    duplicate = await http.post(
        "/v1/claim/request", json=claim_body(asset, asset_did), headers=session
    )
    assert duplicate.status_code == 403
    assert duplicate.json()["message"] == MSG_ALREADY_EXISTS
    other_version = await http.post(
        "/v1/claim/request",
        json=claim_body(asset, asset_did, version=2),
        headers=session,
    )
    assert other_version.status_code == 201
    unknown_role = await http.post(
        "/v1/claim/request",
        json=claim_body(asset, asset_did, role="nothing.roles.x.iam.ewc"),
        headers=session,
    )
    assert unknown_role.status_code == 500


async def test_claim_request_validation(http, session, asset, asset_did):
    forged = claim_body(asset, asset_did, token_signer=LocalKeySigner.generate())
    response = await http.post("/v1/claim/request", json=forged, headers=session)
    assert response.status_code == 403
    assert response.json()["message"] == MSG_SIGNATURE

    mismatched = claim_body(asset, asset_did)
    mismatched["claimType"] = "other.roles.x.iam.ewc"
    response = await http.post("/v1/claim/request", json=mismatched, headers=session)
    assert response.status_code == 400

    wrong_version = claim_body(asset, asset_did)
    wrong_version["claimTypeVersion"] = "7"
    response = await http.post("/v1/claim/request", json=wrong_version, headers=session)
    assert response.status_code == 400

    not_json = await http.post("/v1/claim/request", content=b"[1]", headers=session)
    assert not_json.status_code == 400


async def test_get_claim_unknown_is_empty_200(http, session):
    response = await http.get(f"/v1/claim/{uuid.uuid4()}", headers=session)
    assert response.status_code == 200
    assert response.content == b""


async def test_issue_verifies_issuer_and_publishes_on_nats(
    http, stand_in, session, asset, asset_did, issuer, issuer_did, rpc_url, cache_nats
):
    body = claim_body(asset, asset_did)
    await http.post("/v1/claim/request", json=body, headers=session)
    token = issued_token(
        issuer,
        issuer_did=issuer_did,
        subject=asset_did,
        claim_data={"claimType": ROLE, "claimTypeVersion": 1},
    )
    received: list[tuple[str, dict[str, Any]]] = []
    raw: list[bytes] = []
    connection = await nats.connect(cache_nats.url)
    try:

        async def on_message(msg) -> None:
            received.append((msg.subject, json.loads(msg.data)))
            raw.append(msg.data)

        await connection.subscribe(f"*.claim-exchange.{asset_did}.{ENV}", cb=on_message)
        await connection.flush()

        # An issuer the role does not list is refused.
        stranger = LocalKeySigner.generate()
        stranger_did = f"did:ethr:volta:{stranger.address}"
        foreign = issued_token(
            stranger,
            issuer_did=stranger_did,
            subject=asset_did,
            claim_data={"claimType": ROLE, "claimTypeVersion": 1},
        )
        block = await eth_block_number(rpc_url)

        async def issue(signer: LocalKeySigner, did: str, issued: str) -> int:
            return await issue_claim(
                stand_in.url,
                signer,
                issuer_did=did,
                claim_id=body["id"],
                requester=asset_did,
                issued_token=issued,
                block_number=block,
            )

        assert await issue(stranger, stranger_did, foreign) == 403
        # A token not signed by the issuer named in the path is refused.
        assert await issue(stranger, stranger_did, token) == 403
        assert await issue(issuer, issuer_did, token) == 201
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.05)
    finally:
        await connection.close()
    expected = (
        f"issue-credential.claim-exchange.{asset_did}.{ENV}",
        {"type": "issue-credential", "claimId": body["id"]},
    )
    assert received and set(map(json.dumps, received)) == {json.dumps(expected)}
    # Byte for byte what the real server sends (JSON.stringify: no spaces).
    assert set(raw) == {
        b'{"type":"issue-credential","claimId":"' + body["id"].encode() + b'"}'
    }
    claim = (await http.get(f"/v1/claim/{body['id']}", headers=session)).json()
    assert claim["isAccepted"] is True
    assert claim["issuedToken"] == token
    assert claim["acceptedBy"] == issuer_did
    accepted = await http.get(
        f"/v1/claim/subject/{asset_did}", params={"isAccepted": "true"}, headers=session
    )
    assert [c["id"] for c in accepted.json()] == [body["id"]]
    pending = await http.get(
        f"/v1/claim/subject/{asset_did}",
        params={"isAccepted": "false"},
        headers=session,
    )
    assert pending.json() == []


async def test_issue_by_unlisted_issuer_message(stand_in, asset_did, rpc_url):
    stranger = LocalKeySigner.generate()
    stranger_did = f"did:ethr:volta:{stranger.address}"
    token = issued_token(
        stranger,
        issuer_did=stranger_did,
        subject=asset_did,
        claim_data={"claimType": ROLE, "claimTypeVersion": 1},
    )
    async with httpx.AsyncClient(base_url=stand_in.url) as client:
        pair = await login(client, stranger, stranger_did, rpc_url)
        client.cookies.clear()
        response = await client.post(
            f"/v1/claim/issue/{stranger_did}",
            json={
                "id": str(uuid.uuid4()),
                "requester": asset_did,
                "issuedToken": token,
            },
            headers=bearer(pair["token"]),
        )
    assert response.status_code == 403
    assert response.json()["message"] == MSG_ISSUER


async def test_reject_marks_rejected_and_publishes(
    http, stand_in, session, asset, asset_did, issuer, issuer_did, rpc_url
):
    body = claim_body(asset, asset_did)
    await http.post("/v1/claim/request", json=body, headers=session)
    # An issuer the role does not list may not reject it either.
    stranger = LocalKeySigner.generate()
    status = await issue_claim(
        stand_in.url,
        stranger,
        issuer_did=f"did:ethr:volta:{stranger.address}",
        claim_id=body["id"],
        requester=asset_did,
        issued_token="",
        block_number=await eth_block_number(rpc_url),
        reject=True,
    )
    assert status == 403
    pending = (await http.get(f"/v1/claim/{body['id']}", headers=session)).json()
    assert pending["isRejected"] is False
    assert not [s for s, _ in stand_in.published if s.startswith("reject-")]

    status = await issue_claim(
        stand_in.url,
        issuer,
        issuer_did=issuer_did,
        claim_id=body["id"],
        requester=asset_did,
        issued_token="",
        block_number=await eth_block_number(rpc_url),
        reject=True,
        rejection_reason="not eligible",
    )
    assert status == 201
    claim = (await http.get(f"/v1/claim/{body['id']}", headers=session)).json()
    assert claim["isRejected"] is True
    assert claim["rejectionReason"] == "not eligible"
    assert (
        f"reject-credential.claim-exchange.{issuer_did}.{ENV}",
        {"type": "reject-credential", "claimId": body["id"]},
    ) in stand_in.published
    # A rejected request no longer blocks a new one.
    again = await http.post(
        "/v1/claim/request", json=claim_body(asset, asset_did), headers=session
    )
    assert again.status_code == 201


# --- store, DID documents, faults ----------------------------------------------------


async def test_store_is_content_addressed(http, session):
    data = "header.payload.signature"
    put = await http.post(
        "/v1/store", json={"data": data, "type": "S3"}, headers=session
    )
    assert put.status_code == 201
    assert put.text == cid_of(data.encode())
    assert put.text.startswith("bafkrei")
    again = await http.post(
        "/v1/store", json={"data": data, "type": "S3"}, headers=session
    )
    assert again.text == put.text
    got = await http.get(f"/v1/store/{put.text}", headers=session)
    assert got.text == data
    missing = await http.get(f"/v1/store/{cid_of(b'other')}", headers=session)
    assert missing.status_code == 404


async def test_did_document_uses_the_pluggable_resolver(
    make_stand_in, asset, asset_did, rpc_url
):
    calls: list[str] = []

    async def resolver(did: str) -> dict[str, Any]:
        calls.append(did)
        return {"@context": "x", "id": did, "service": [], "publicKey": []}

    server = make_stand_in(resolver=resolver)
    async with httpx.AsyncClient(base_url=server.url) as client:
        pair = await login(client, asset, asset_did, rpc_url)
        client.cookies.clear()
        response = await client.get(
            f"/v1/DID/{asset_did}", headers=bearer(pair["token"])
        )
    assert response.json()["id"] == asset_did
    # Once for the login (the real server resolves the user on every login), once
    # for the document request.
    assert calls == [asset_did, asset_did]


async def test_fault_injection_fails_and_recovers(http, stand_in: CacheServerStandIn):
    stand_in.set_faults(fail_rate=1.0)
    statuses = {(await http.get("/v1/auth/status")).status_code for _ in range(20)}
    assert statuses <= {500, 503} and statuses
    stand_in.set_faults(fail_rate=0.0)
    assert (await http.get("/v1/auth/status")).status_code == 200
    assert stand_in.faults_injected == 20


async def test_hang_injection_never_answers_within_timeout(
    stand_in: CacheServerStandIn,
):
    stand_in.set_faults(hang_rate=1.0)
    async with httpx.AsyncClient(base_url=stand_in.url, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/v1/auth/status")


def test_stand_in_runs_as_a_process(rpc_url, issuer_did):
    with stand_in_process(rpc_url, "--role", f"{ROLE}@2={issuer_did}") as (
        url,
        line,
        process,
    ):
        assert url in line
        response = httpx.get(f"{url}/v1/auth/status")
        assert response.json() == {"user": None}
    assert process.returncode == 0


def test_role_json_shapes():
    from evops.sandbox.cache_server import _parse_role

    by_role = _parse_role(f"{ROLE}=role:issuer.roles.x.iam.ewc")
    assert by_role["definition"]["issuer"] == {
        "issuerType": "ROLE",
        "roleName": "issuer.roles.x.iam.ewc",
    }
    assert _parse_role(f"{ROLE}@3=did:ethr:volta:0x1")["definition"]["version"] == 3
