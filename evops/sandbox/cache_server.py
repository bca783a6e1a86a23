"""A local stand-in for the Energy Web cache server ("SSI Hub"), protocol.md §4.

A real HTTP server on loopback (aiohttp) that behaves like the production peer, quirks
included, so the client is tested against the peer rather than against itself:

- identity-token login: the token must verify for its `iss` (or a veriKey delegate)
  and its `blockNumber` must be recent against the local chain, as passport-did-auth's
  LoginStrategy checks it (rejected once `latest - blocks_back >= blockNumber`);
- SIWE login (initiate / verify) with single-use nonces and the verify URI pinned;
- access tokens with an expiry, single-use refresh tokens, tokens also set as cookies
  (and the refresh endpoint preferring the cookie over its query parameter), 401 for a
  mismatching `Origin`, `/v1/auth/status`;
- seeded role definitions (unknown role: 200 with an empty body), claim requests
  validated and stored (bare-text id; same id again 400; pending duplicate 403 "Claim
  request already exists"; unknown role a bare 500), `GET /v1/claim/<id>` (unknown:
  200 empty), claims by subject, the issuer side (`/v1/claim/issue/<issuer>` verifies
  the issued token and the issuer against the role, then publishes the NATS
  `issue-credential` message; `/v1/claim/reject/<issuer>` likewise), a content-addressed
  `/v1/store` and `/v1/DID/<did>` through a pluggable resolver;
- fault injection for benchmarks and reliability tests: added latency, a fraction of
  calls answering 500/503, a fraction that never answer; all settable at run time.

Run in-process for tests (`CacheServerStandIn(...).start()` or as a context manager:
the server gets its own event loop in a background thread) or as a process:
`python -m evops.sandbox.cache_server --rpc-url ... --nats-url ... --role NS=ISSUER`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import importlib
import json
import logging
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from eth_utils.crypto import keccak

from evops.protocol import siwe
from evops.protocol.dids import DID, chain_id_for
from evops.protocol.errors import ProtocolError
from evops.protocol.jwt import (
    b64url_encode,
    decode_token,
    unverified_payload,
    verify_token,
)

logger = logging.getLogger(__name__)

Resolver = Callable[[str], Awaitable[dict[str, Any]]]

ACCESS_COOKIE = "token"
REFRESH_COOKIE = "refreshToken"
EXCHANGE_TOPIC = "claim-exchange"
OFF_CHAIN = "RegistrationTypes::OffChain"
ON_CHAIN = "RegistrationTypes::OnChain"

MSG_ALREADY_EXISTS = "Claim request already exists"
MSG_CRITERIA = "credential request criteria not met"
MSG_NOT_AUTHORIZED_SUBJECT = "Claim requester not authorized to request for subject"
MSG_SIGNATURE = "User signature not valid"
MSG_ISSUER = "Issuer is not authorized to issue this role"
MSG_ISSUANCE_CRITERIA = "claim issuance criteria not met"
MSG_REJECTION_CRITERIA = "claim rejection criteria not met"
MSG_OUTDATED = "Claim outdated"
MSG_SIWE_NOT_INITIATED = "Authentication with SIWE was not initiated"
MSG_SIWE_DONE = "Authentication with SIWE completed already"


# --- helpers -------------------------------------------------------------------------


def namehash(name: str) -> str:
    """ENS namehash of a role namespace, as the server stores it."""
    node = b"\x00" * 32
    if name:
        for label in reversed(name.split(".")):
            node = keccak(node + keccak(label.encode("utf-8")))
    return "0x" + node.hex()


def role_json(
    namespace: str,
    *,
    version: int = 1,
    issuer_dids: Iterable[str] = (),
    issuer_role: str | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    """A Role object as `GET /v1/role/<namespace>` returns it (for seeding)."""
    dids = list(issuer_dids)
    issuer: dict[str, Any] = (
        {"issuerType": "ROLE", "roleName": issuer_role}
        if issuer_role
        else {"issuerType": "DID", "did": dids}
    )
    name = namespace.split(".")[0]
    return {
        "id": abs(hash(namespace)) % 100_000,
        "name": name,
        "namespace": namespace,
        "namehash": namehash(namespace),
        "owner": owner or (dids[0] if dids else "did:ethr:volta:0x" + "0" * 40),
        "definition": {
            "version": version,
            "roleType": "custom",
            "roleName": name,
            "enrolmentPreconditions": [],
            "issuerFields": [],
            "requestorFields": [],
            "metadata": {},
            "issuer": issuer,
            "revoker": {"revokerType": "DID", "did": dids},
        },
    }


def cid_of(data: bytes) -> str:
    """CIDv1 (raw codec, sha2-256), base32: what IPFS/S3 stores would name `data`."""
    digest = hashlib.sha256(data).digest()
    raw = b"\x01\x55\x12\x20" + digest
    return "b" + base64.b32encode(raw).decode("ascii").lower().rstrip("=")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _now_iso() -> str:
    return siwe.format_time(datetime.now(UTC))


def _nest_error(status: int, message: str, error: str) -> web.Response:
    """An error body in NestJS's shape."""
    return web.json_response(
        {"statusCode": status, "message": message, "error": error}, status=status
    )


def _unauthorized(message: str = "Unauthorized") -> web.Response:
    return _nest_error(401, message, "Unauthorized")


def _bad_request(message: str) -> web.Response:
    return _nest_error(400, message, "Bad Request")


def _forbidden(message: str) -> web.Response:
    return _nest_error(403, message, "Forbidden")


def _internal_error() -> web.Response:
    # NestJS turns any non-HTTP exception into this generic body.
    return web.json_response(
        {"statusCode": 500, "message": "Internal server error"}, status=500
    )


def _empty_ok() -> web.Response:
    # Quirk: Nest answers `undefined`/`null` from a handler as 200 with no body.
    return web.Response(status=200, body=b"")


def _text(value: str, status: int = 200) -> web.Response:
    # Express `res.send(string)`: text/html, the bare string.
    return web.Response(status=status, text=value, content_type="text/html")


async def eth_block_number(
    rpc_url: str, session: aiohttp.ClientSession | None = None
) -> int:
    """The latest block number over JSON-RPC (`eth_blockNumber`)."""
    payload = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        async with client.post(
            rpc_url, json=payload, timeout=aiohttp.ClientTimeout(total=5)
        ) as response:
            data = await response.json(content_type=None)
    finally:
        if own:
            await client.close()
    return int(data["result"], 16)


def minimal_did_document(did: str) -> dict[str, Any]:
    """The document of an identity with no registry changes (what resolvers return)."""
    parsed = DID.parse(did)
    return {
        "@context": "https://www.w3.org/ns/did/v1",
        "id": did,
        "authentication": [
            {
                "type": "owner",
                "validity": {"hex": "0x1fffffffffffff"},
                "publicKey": f"{did}#owner",
            }
        ],
        "publicKey": [
            {
                "id": f"{did}#owner",
                "type": "Secp256k1VerificationKey2018",
                "controller": did,
                "ethereumAddress": parsed.address,
            }
        ],
        "service": [],
    }


# --- state ---------------------------------------------------------------------------


@dataclass
class Faults:
    """Injected faults, read per request (set from any thread)."""

    latency: float = 0.0
    fail_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 3600.0


class CacheServerStandIn:
    """The stand-in server. Use `start()`/`stop()` or `with CacheServerStandIn(...)`.

    `rpc_url` is the local chain (block numbers for login freshness); `nats_url` the
    NATS server it publishes claim-exchange messages on (None: record only, in
    `published`). `roles` are Role objects (see `role_json`) it is seeded with.
    `resolver` resolves DID documents (default: the registry on `rpc_url` when
    `registry_address` is given and the chain reader exists, else a minimal document).
    """

    def __init__(
        self,
        rpc_url: str | None,
        nats_url: str | None,
        *,
        roles: Iterable[Mapping[str, Any]] = (),
        env: str = "ewf-dev",
        blocks_back: int = 10,
        access_ttl: float = 900,
        refresh_ttl: float = 7 * 24 * 3600,
        host: str = "127.0.0.1",
        port: int = 0,
        chain: str = "volta",
        identity_login: bool = True,
        siwe_login: bool = True,
        resolver: Resolver | None = None,
        registry_address: str | None = None,
        block_number: Callable[[], Awaitable[int]] | None = None,
        latency: float = 0.0,
        fail_rate: float = 0.0,
        hang_rate: float = 0.0,
        seed: int | None = None,
        seed_endpoint: bool = False,
    ) -> None:
        if rpc_url is None and block_number is None:
            raise ValueError("give rpc_url or a block_number callable")
        self.rpc_url = rpc_url
        self.nats_url = nats_url
        self.seed_endpoint = seed_endpoint
        self.env = env
        self.blocks_back = blocks_back
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.host = host
        self.port = port
        self.chain = chain
        self.chain_id = chain_id_for(chain)
        self.identity_login = identity_login
        self.siwe_login = siwe_login
        self.registry_address = registry_address
        self.faults = Faults(latency=latency, fail_rate=fail_rate, hang_rate=hang_rate)
        self._random = random.Random(seed)
        self._block_number_fn = block_number
        self._resolver = resolver
        self._secret = secrets.token_bytes(32)

        self.roles: dict[str, dict[str, Any]] = {}
        for role in roles:
            self.add_role(role)
        self.claims: dict[str, dict[str, Any]] = {}
        # subject DID -> its claim ids: a login loads the user's claims, indexed as
        # the real server's database query is (no scan of every claim per login).
        self._claims_of: dict[str, list[str]] = {}
        self.store: dict[str, str] = {}
        self.refresh_tokens: dict[str, str] = {}  # tokenId -> user DID
        self.siwe_nonces: dict[str, tuple[bool, float]] = {}  # nonce -> (open, exp)
        self.published: list[tuple[str, dict[str, Any]]] = []
        # credentialId -> the StatusList2021Credential `GET /v1/status-list/<id>`
        # answers (absent: 204, not revoked).
        self.status_lists: dict[str, dict[str, Any]] = {}

        self.login_count = 0
        self.siwe_login_count = 0
        # What every login costs the real server beyond checking the signature
        # (passport-did-auth's LoginStrategy and the hub's role lookup): the user's
        # DID document resolved, the latest block read, the user's claims loaded.
        self.login_resolve_count = 0
        self.refresh_count = 0
        self.request_count = 0
        self.faults_injected = 0
        self.origin_headers_seen = 0
        self._serial = 0
        self._revoked_before = 0

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._nats: Any = None
        self._chain: Any = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # --- configuration at run time ---------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL (without `/v1`)."""
        return f"http://{self.host}:{self.port}"

    def add_role(self, role: Mapping[str, Any]) -> None:
        """Seed (or replace) a role definition."""
        namespace = role.get("namespace")
        if not isinstance(namespace, str):
            raise ValueError("role needs a namespace")
        self.roles[namespace] = dict(role)

    def put_content(self, data: str) -> str:
        """Put `data` in the store (as `POST /v1/store` does) and return its CID.

        For seeding what a role-chain proof fetches: an issuer's role credential,
        which the issuer's DID document on chain points at by this CID.
        """
        cid = cid_of(data.encode("utf-8"))
        self.store[cid] = data
        return cid

    def add_accepted_claim(
        self,
        *,
        subject: str,
        claim_type: str,
        issued_token: str,
        accepted_by: str,
        version: int = 1,
        claim_id: str | None = None,
    ) -> str:
        """Record a claim as issued and accepted, without the NATS notice.

        What the server holds after an issuer issued `claim_type` to `subject` (an
        issuer's own role claim, say, granted long before a test starts): it makes
        `subject` an allowed issuer of every role whose issuer is `issuerType: ROLE`
        with that `roleName`. Returns the claim id.
        """
        claim_id = claim_id or str(uuid.uuid4())
        self._index_claim(claim_id, subject)
        self.claims[claim_id] = {
            "id": claim_id,
            "requester": subject,
            "subject": subject,
            "claimType": claim_type,
            "claimTypeVersion": str(version),
            "registrationTypes": [OFF_CHAIN],
            "token": None,
            "subjectAgreement": None,
            "createdAt": _now_iso(),
            "isRejected": False,
            "rejectionReason": None,
            "namespace": ".".join(claim_type.split(".")[2:]),
            "redirectUri": None,
            "issuedToken": issued_token,
            "onChainProof": None,
            "acceptedBy": accepted_by,
            "isAccepted": True,
        }
        return claim_id

    def status_entry(
        self, credential_id: str | None = None, index: int = 0
    ) -> dict[str, Any]:
        """A `credentialStatus` pointing at this server's status list, for a token.

        As iam-client-lib 6+ writes it (`StatusList2021Entry`, the index a string).
        """
        credential_id = credential_id or f"urn:uuid:{uuid.uuid4()}"
        url = f"{self.url}/v1/status-list/{credential_id}"
        return {
            "id": f"{url}#list",
            "type": "StatusList2021Entry",
            "statusPurpose": "revocation",
            "statusListIndex": str(index),
            "statusListCredential": url,
        }

    def revoke_credential(
        self, credential_id: str, *, revoker: str, index: int = 0, size: int = 1
    ) -> None:
        """Mark the credential revoked in its status list, as the hub does when a
        revoker revokes it: the list (one byte per entry, 1 = revoked) is kept as a
        `StatusList2021Credential` whose issuer is the revoker. No NATS message."""
        from evops.protocol.status_list import encode_list

        entries = bytearray(max(size, index + 1))
        existing = self.status_lists.get(credential_id)
        if existing is not None:
            from evops.protocol.status_list import decode_list

            old = decode_list(existing["credentialSubject"]["encodedList"])
            entries[: len(old)] = old
        entries[index] = 1
        url = f"{self.url}/v1/status-list/{credential_id}"
        self.status_lists[credential_id] = {
            "@context": [
                "https://www.w3.org/2018/credentials/v1",
                "https://w3id.org/vc/status-list/2021/v1",
            ],
            "id": url,
            "type": ["VerifiableCredential", "StatusList2021Credential"],
            "issuer": revoker,
            "issuanceDate": _now_iso(),
            "credentialSubject": {
                "id": f"{url}#list",
                "type": "StatusList2021",
                "statusPurpose": "revocation",
                "encodedList": encode_list(bytes(entries)),
            },
        }

    def revoke_access_tokens(self) -> None:
        """Invalidate every access token issued so far; refresh tokens stay valid.

        What a server-side key rotation or session purge looks like to a client: its
        next call answers 401 although the token has not expired.
        """
        self._revoked_before = self._serial

    def set_faults(
        self,
        *,
        latency: float | None = None,
        fail_rate: float | None = None,
        hang_rate: float | None = None,
        hang_seconds: float | None = None,
    ) -> None:
        """Change the injected faults; takes effect for the next request."""
        if latency is not None:
            self.faults.latency = latency
        if fail_rate is not None:
            self.faults.fail_rate = fail_rate
        if hang_rate is not None:
            self.faults.hang_rate = hang_rate
        if hang_seconds is not None:
            self.faults.hang_seconds = hang_seconds

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> CacheServerStandIn:
        """Serve from a background thread with its own event loop."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(
            target=self._thread_main, name="cache-server-stand-in", daemon=True
        )
        self._thread.start()
        self._started.wait(timeout=30)
        if self._start_error is not None:
            raise RuntimeError("stand-in failed to start") from self._start_error
        if not self._started.is_set():
            raise RuntimeError("stand-in did not start within 30 s")
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self.astop(), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)
        self._thread = None
        self._loop = None

    def __enter__(self) -> CacheServerStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.astart())
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(
                    asyncio.gather(*pending, return_exceptions=True)
                )
            loop.close()

    async def astart(self) -> None:
        """Start on the running loop (the process entry point uses this directly)."""
        self._http = aiohttp.ClientSession()
        if self.nats_url:
            import nats

            self._nats = await nats.connect(
                self.nats_url, connect_timeout=5, allow_reconnect=True
            )
        app = web.Application(middlewares=[self._faults_middleware])
        self._routes(app)
        self._runner = web.AppRunner(
            app, shutdown_timeout=0.5, handler_cancellation=True, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        logger.info("cache-server stand-in on %s", self.url)

    async def astop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._nats is not None:
            with contextlib.suppress(Exception):
                await self._nats.drain()
            self._nats = None
        if self._chain is not None:
            with contextlib.suppress(Exception):
                await self._chain.aclose()
            self._chain = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- routing ---------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/login", self._login)
        r.add_post("/v1/login/siwe/initiate", self._siwe_initiate)
        r.add_post("/v1/login/siwe/verify", self._siwe_verify)
        r.add_get("/v1/refresh_token", self._refresh)
        r.add_get("/v1/auth/status", self._auth_status)
        r.add_get("/v1/role/{namespace}", self._auth(self._role))
        r.add_post("/v1/claim/request", self._auth(self._claim_request))
        r.add_post("/v1/claim/issue/{did}", self._auth(self._claim_issue))
        r.add_post("/v1/claim/reject/{did}", self._auth(self._claim_reject))
        r.add_get("/v1/claim/subject/{did}", self._auth(self._claims_of_subject))
        r.add_get("/v1/claim/{id}", self._auth(self._claim_by_id))
        r.add_post("/v1/store", self._auth(self._store_put))
        r.add_get("/v1/store/{cid}", self._auth(self._store_get))
        r.add_get("/v1/DID/{did}", self._auth(self._did_document))
        r.add_get("/v1/status-list/{credential_id}", self._status_list)
        if self.seed_endpoint:
            # Benchmarks only (`--seed-endpoint`): claims issued and accepted long
            # ago, for a stand-in running in a process of its own.
            r.add_post("/sandbox/accepted-claims", self._seed_accepted)

    async def _seed_accepted(self, request: web.Request) -> web.StreamResponse:
        try:
            items = await request.json()
            ids = [
                self.add_accepted_claim(
                    subject=item["subject"],
                    claim_type=item["claimType"],
                    issued_token=item["issuedToken"],
                    accepted_by=item["acceptedBy"],
                )
                for item in items
            ]
        except (ValueError, TypeError, KeyError):
            return _bad_request(
                "a list of {subject, claimType, issuedToken, acceptedBy}"
            )
        return web.json_response(ids, status=201)

    @web.middleware
    async def _faults_middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        self.request_count += 1
        if "Origin" in request.headers:
            self.origin_headers_seen += 1
        faults = self.faults
        dice = self._random.random()
        if dice < faults.hang_rate:
            self.faults_injected += 1
            await asyncio.sleep(faults.hang_seconds)
        elif dice < faults.hang_rate + faults.fail_rate:
            self.faults_injected += 1
            if self._random.random() < 0.5:
                return _internal_error()
            return _nest_error(503, "Service Unavailable", "Service Unavailable")
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception(
                "stand-in handler failed: %s %s", request.method, request.path
            )
            return _internal_error()

    # --- tokens ----------------------------------------------------------------------

    def _sign(self, payload: Mapping[str, Any]) -> str:
        header = b64url_encode(b'{"alg":"HS256","typ":"JWT"}')
        body = b64url_encode(json.dumps(payload, separators=(",", ":")).encode())
        mac = hmac.new(self._secret, f"{header}.{body}".encode(), hashlib.sha256)
        return f"{header}.{body}.{b64url_encode(mac.digest())}"

    def _verify(self, token: str) -> dict[str, Any] | None:
        """Payload of one of our tokens if its MAC and `exp` are good, else None."""
        try:
            header, body, mac = token.split(".")
            expected = hmac.new(
                self._secret, f"{header}.{body}".encode(), hashlib.sha256
            ).digest()
            if not hmac.compare_digest(_b64url_decode(mac), expected):
                return None
            payload = json.loads(_b64url_decode(body))
        except (ValueError, TypeError):
            return None
        if not isinstance(payload, dict):
            return None
        exp = payload.get("exp")
        if not isinstance(exp, int | float) or exp <= time.time():
            return None
        return payload

    def _index_claim(self, claim_id: str, subject: str) -> None:
        ids = self._claims_of.setdefault(subject, [])
        if claim_id not in ids:
            ids.append(claim_id)

    async def _login_work(
        self, did: str, *, block_read: bool = False
    ) -> list[dict[str, str]]:
        """The real server's work on every login, done here too so benchmarks pay it.

        Resolves the user's DID document (a chain read when the stand-in knows the
        registry), reads the latest block, and loads the user's accepted claims for
        the access token's `verifiedRoles`, as the SSI Hub does on each login.
        """
        self.login_resolve_count += 1
        await self.resolve(did)
        if not block_read:  # the identity-token login has read it already
            await self.latest_block()
        return [
            {
                "name": claim["claimType"].split(".", 1)[0],
                "namespace": claim["claimType"],
            }
            for claim_id in self._claims_of.get(did, ())
            if (claim := self.claims.get(claim_id)) is not None and claim["isAccepted"]
        ]

    def _issue_pair(
        self,
        did: str,
        origin: str | None,
        verified_roles: list[dict[str, str]] | None = None,
    ) -> dict[str, str]:
        now = int(time.time())
        self._serial += 1
        access: dict[str, Any] = {
            "did": did,
            "verifiedRoles": verified_roles or [],
            "jti": self._serial,
        }
        if origin is not None:
            access["origin"] = origin
        access.update({"iat": now, "exp": now + int(self.access_ttl)})
        token_id = str(uuid.uuid4())
        self.refresh_tokens[token_id] = did
        refresh = {
            "tokenId": token_id,
            "userDid": did,
            "iat": now,
            "exp": now + int(self.refresh_ttl),
        }
        return {"token": self._sign(access), "refreshToken": self._sign(refresh)}

    async def _login_response(
        self, did: str, origin: str | None, *, block_read: bool = False
    ) -> web.Response:
        roles = await self._login_work(did, block_read=block_read)
        pair = self._issue_pair(did, origin, roles)
        response = web.json_response(pair, status=201)
        response.set_cookie(ACCESS_COOKIE, pair["token"], httponly=True)
        response.set_cookie(REFRESH_COOKIE, pair["refreshToken"], httponly=True)
        return response

    def _bearer(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header:
            return header.replace("Bearer ", "")
        return request.cookies.get(ACCESS_COOKIE)

    def _auth(
        self, handler: Callable[[web.Request, str], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """The `@Auth()` guard: a valid, unexpired access token, and the Origin rule."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            token = self._bearer(request)
            if not token:
                return _unauthorized()
            payload = self._verify(token)
            if payload is None or payload.get("jti", 0) <= self._revoked_before:
                return _unauthorized()
            # The server remembers the login's Origin in the token: a browser request
            # from another origin is refused; server-to-server calls send none.
            origin = request.headers.get("Origin")
            if origin is not None and origin != payload.get("origin"):
                return _unauthorized()
            did = payload.get("did")
            if not isinstance(did, str):
                return _unauthorized()
            return await handler(request, did)

        return guarded

    # --- chain, DID documents, NATS --------------------------------------------------

    async def latest_block(self) -> int:
        if self._block_number_fn is not None:
            return await self._block_number_fn()
        assert self.rpc_url is not None
        return await eth_block_number(self.rpc_url, self._http)

    async def resolve(self, did: str) -> dict[str, Any]:
        """The DID document, through the pluggable resolver."""
        if self._resolver is not None:
            return await self._resolver(did)
        chain_resolver = self._chain_resolver()
        if chain_resolver is not None:
            return await chain_resolver(did)
        return minimal_did_document(did)

    def _chain_resolver(self) -> Resolver | None:
        """Resolve from the local registry through evops' chain reader, if present."""
        if not (self.rpc_url and self.registry_address):
            return None
        try:
            # Imported by name: the chain module is optional for the stand-in.
            chain = importlib.import_module("evops.integrations.chain")
            self._chain = chain.Chain(
                self.rpc_url,
                chain_id=self.chain_id,
                registry_address=self.registry_address,
                max_fee_gwei=1,
            )
            resolve_document: Resolver = self._chain.resolve_document
        except (ImportError, AttributeError, TypeError):
            return None
        self._resolver = resolve_document
        return resolve_document

    async def _publish(self, kind: str, did: str, claim_id: str) -> None:
        subject = f"{kind}.{EXCHANGE_TOPIC}.{did}.{self.env}"
        message = {"type": kind, "claimId": claim_id}
        self.published.append((subject, message))
        if self._nats is None:
            return
        try:
            # Compact, as the real server's JSON.stringify writes it (no spaces).
            payload = json.dumps(message, separators=(",", ":")).encode()
            await self._nats.publish(subject, payload)
            await self._nats.flush(timeout=5)
        except Exception:
            # The real server queues and publishes with core NATS, at most once.
            logger.exception("stand-in could not publish %s", subject)

    # --- auth endpoints --------------------------------------------------------------

    async def _json(self, request: web.Request) -> dict[str, Any] | None:
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if not self.identity_login:
            return _nest_error(404, "Cannot POST /v1/login", "Not Found")
        body = await self._json(request) or {}
        token = body.get("identityToken") or request.query.get("identityToken")
        if not isinstance(token, str):
            return _unauthorized()
        try:
            payload = decode_token(token).payload
        except ProtocolError:
            return _unauthorized()
        claim_data = payload.get("claimData")
        iss = payload.get("iss")
        if not isinstance(iss, str) or not isinstance(claim_data, dict):
            return _unauthorized("Token payload is not valid")
        block_raw = claim_data.get("blockNumber")
        try:
            if isinstance(block_raw, bool):
                raise ValueError
            # The server still accepts numeric strings (backward compatibility).
            claim_block = int(block_raw)  # type: ignore[arg-type]
            did = DID.parse(iss, default_chain=self.chain)
        except (TypeError, ValueError, ProtocolError):
            return _unauthorized("Token payload is not valid")
        # didUnification: a legacy `did:ethr:0x..` is taken as this server's chain.
        user_did = iss if iss.count(":") == 3 else f"did:ethr:{self.chain}:{iss[9:]}"
        if not await self._signed_by(token, did.canonical):
            return _unauthorized("Not Verified: User signature is not valid")
        latest = await self.latest_block()
        if latest - self.blocks_back >= claim_block:
            return _unauthorized(MSG_OUTDATED)
        self.login_count += 1
        return await self._login_response(
            user_did, request.headers.get("Origin"), block_read=True
        )

    async def _signed_by(self, token: str, did: str) -> bool:
        try:
            verify_token(token, did)
            return True
        except ProtocolError:
            pass
        # Delegates (veriKey) are listed in the DID document.
        try:
            document = await self.resolve(did)
            verify_token(token, did, did_document=document)
            return True
        except Exception:
            return False

    async def _siwe_initiate(self, request: web.Request) -> web.StreamResponse:
        if not self.siwe_login:
            return _nest_error(404, "Cannot POST /v1/login/siwe/initiate", "Not Found")
        nonce = siwe.generate_nonce()
        now = time.time()
        for key, (_, expires) in list(self.siwe_nonces.items()):
            if expires < now:
                del self.siwe_nonces[key]
        self.siwe_nonces[nonce] = (True, now + 600)
        return web.json_response({"nonce": nonce}, status=201)

    async def _siwe_verify(self, request: web.Request) -> web.StreamResponse:
        if not self.siwe_login:
            return _nest_error(404, "Cannot POST /v1/login/siwe/verify", "Not Found")
        body = await self._json(request) or {}
        message, signature = body.get("message"), body.get("signature")
        if not isinstance(message, str) or not isinstance(signature, str):
            return _unauthorized()
        try:
            parsed = siwe.SiweMessage.parse(message)
        except siwe.SiweError:
            return _unauthorized()
        state = self.siwe_nonces.get(parsed.nonce)
        if state is None or state[1] < time.time():
            return _unauthorized(MSG_SIWE_NOT_INITIATED)
        if not state[0]:
            return _unauthorized(MSG_SIWE_DONE)
        self.siwe_nonces[parsed.nonce] = (False, state[1])
        # passport-did-auth pins the URI to the server's own verify endpoint.
        expected_uri = f"{self.url}/v1/login/siwe/verify"
        if parsed.uri != expected_uri or parsed.chain_id != self.chain_id:
            return _unauthorized("Invalid SIWE message")
        try:
            siwe.verify(message, signature)
        except siwe.SiweError as exc:
            return _unauthorized(str(exc))
        self.login_count += 1
        self.siwe_login_count += 1
        user_did = f"did:ethr:{self.chain}:{parsed.address}"
        return await self._login_response(user_did, request.headers.get("Origin"))

    async def _refresh(self, request: web.Request) -> web.StreamResponse:
        # Quirk kept: a refresh-token cookie wins over the query parameter.
        token = request.cookies.get(REFRESH_COOKIE) or request.query.get(
            "refresh_token"
        )
        if not token:
            return _unauthorized("Refresh token was not set")
        if request.headers.get("Origin") is not None:
            return _unauthorized()
        claims = unverified_payload(token) or {}
        token_id = claims.get("tokenId")
        if not isinstance(token_id, str):
            return _unauthorized()
        payload = self._verify(token)
        if payload is None:
            self.refresh_tokens.pop(token_id, None)
            return _unauthorized()
        user_did = self.refresh_tokens.get(token_id)
        if user_did is None or user_did != payload.get("userDid"):
            return _unauthorized()
        # Single use: the presented token is revoked as the new pair is made.
        del self.refresh_tokens[token_id]
        self.refresh_count += 1
        pair = self._issue_pair(user_did, None)
        response = web.json_response(pair, status=200)
        response.set_cookie(ACCESS_COOKIE, pair["token"], httponly=True)
        response.set_cookie(REFRESH_COOKIE, pair["refreshToken"], httponly=True)
        return response

    async def _auth_status(self, request: web.Request) -> web.StreamResponse:
        token = self._bearer(request)
        payload = self._verify(token) if token else None
        if payload is not None and payload.get("jti", 0) <= self._revoked_before:
            payload = None
        user = payload.get("did") if payload else None
        return web.json_response({"user": user if isinstance(user, str) else None})

    # --- roles and claims ------------------------------------------------------------

    async def _role(self, request: web.Request, user: str) -> web.StreamResponse:
        role = self.roles.get(request.match_info["namespace"])
        if role is None:
            return _empty_ok()  # quirk: unknown role is 200 with an empty body
        return web.json_response(role)

    async def _claim_request(
        self, request: web.Request, user: str
    ) -> web.StreamResponse:
        body = await self._json(request)
        if body is None:
            return _bad_request("body must be a JSON object")
        requester, token = body.get("requester"), body.get("token")
        if not isinstance(requester, str) or not isinstance(token, str):
            return _bad_request("requester and token must be strings")
        try:
            payload = decode_token(token).payload
        except ProtocolError:
            return _bad_request("token must be a JWT")
        sub = payload.get("sub")
        claim_data = payload.get("claimData")
        if not isinstance(sub, str) or not isinstance(claim_data, dict):
            return _bad_request("token has no sub or claimData")
        if requester != sub:
            return _forbidden(MSG_NOT_AUTHORIZED_SUBJECT)
        try:
            verify_token(token, requester)
        except ProtocolError:
            return _forbidden(MSG_SIGNATURE)
        claim_id = body.get("id")
        claim_type = claim_data.get("claimType")
        version_raw = claim_data.get("claimTypeVersion")
        body_version = body.get("claimTypeVersion")
        registration = body.get("registrationTypes", [OFF_CHAIN])
        errors = []
        if not isinstance(claim_id, str):
            errors.append("id must be a string")
        if not isinstance(claim_type, str) or body.get("claimType") != claim_type:
            errors.append("claimType must match the token")
        if not (isinstance(body_version, str) and body_version.isdigit()):
            errors.append("claimTypeVersion must be a number string")
        elif str(version_raw).split(".")[0] != body_version:
            errors.append("claimTypeVersion must match the token")
        if not isinstance(registration, list) or not all(
            item in (OFF_CHAIN, ON_CHAIN) for item in registration
        ):
            errors.append("each value in registrationTypes must be a valid enum value")
        if errors:
            return _nest_error(400, "; ".join(errors), "Bad Request")
        assert isinstance(claim_id, str) and isinstance(claim_type, str)
        assert isinstance(body_version, str)
        if claim_id in self.claims:
            return _bad_request(MSG_CRITERIA)
        if claim_type not in self.roles:
            return _internal_error()  # quirk: unknown role is a bare 500
        for claim in self.claims.values():
            if (
                claim["subject"] == sub
                and claim["claimType"] == claim_type
                and claim["claimTypeVersion"] == body_version
                and not claim["isAccepted"]
                and not claim["isRejected"]
            ):
                return _forbidden(MSG_ALREADY_EXISTS)
        issuers = body.get("claimIssuer")
        self._index_claim(claim_id, sub)
        self.claims[claim_id] = {
            "id": claim_id,
            "requester": requester,
            "subject": sub,
            "claimType": claim_type,
            "claimTypeVersion": body_version,
            "registrationTypes": registration,
            "token": token,
            "subjectAgreement": body.get("subjectAgreement"),
            "onChainProof": None,
            "issuedToken": None,
            "isAccepted": False,
            "createdAt": _now_iso(),
            "acceptedBy": None,
            "isRejected": False,
            "rejectionReason": None,
            "namespace": ".".join(claim_type.split(".")[2:]),
            "redirectUri": request.headers.get("Origin"),
        }
        for issuer in issuers if isinstance(issuers, list) else []:
            if isinstance(issuer, str):
                await self._publish("request-credential", issuer, claim_id)
        return _text(claim_id, status=201)

    def _issuer_allowed(self, issuer: str, claim_type: str) -> bool:
        role = self.roles.get(claim_type)
        if role is None:
            return False
        definition = role.get("definition") or {}
        spec = definition.get("issuer") or {}
        if str(spec.get("issuerType", "")).upper() == "ROLE":
            held = spec.get("roleName")
            return any(
                c["subject"] == issuer and c["claimType"] == held and c["isAccepted"]
                for c in self.claims.values()
            )
        dids = spec.get("did") or []
        return issuer in dids

    async def _claim_issue(self, request: web.Request, user: str) -> web.StreamResponse:
        issuer = request.match_info["did"]
        body = await self._json(request)
        if body is None:
            return _bad_request("body must be a JSON object")
        issued = body.get("issuedToken")
        if issued is not None and (
            not isinstance(issued, str) or not await self._signed_by(issued, issuer)
        ):
            return _forbidden(MSG_SIGNATURE)
        claim_id, requester = body.get("id"), body.get("requester")
        if not isinstance(claim_id, str) or not isinstance(requester, str):
            return _bad_request("id and requester must be strings")
        if not issued and not body.get("onChainProof"):
            return _bad_request("issuedToken or onChainProof is required")
        sub: str | None = None
        issued_data: dict[str, Any] = {}
        if isinstance(issued, str):
            payload = decode_token(issued).payload
            sub = payload.get("sub") if isinstance(payload.get("sub"), str) else None
            data = payload.get("claimData")
            issued_data = data if isinstance(data, dict) else {}
        claim = self.claims.get(claim_id)
        if claim is not None and claim["isRejected"]:
            return _bad_request(MSG_ISSUANCE_CRITERIA)
        if claim is None:
            claim_type = issued_data.get("claimType") or body.get("claimType")
            version = issued_data.get("claimTypeVersion") or body.get(
                "claimTypeVersion"
            )
            if not isinstance(claim_type, str) or version is None:
                return _bad_request("claim type or version not provided")
            if not self._issuer_allowed(issuer, claim_type):
                return _forbidden(MSG_ISSUER)
            claim = {
                "id": claim_id,
                "requester": requester,
                "subject": requester,
                "claimType": claim_type,
                "claimTypeVersion": str(version).split(".")[0],
                "registrationTypes": [OFF_CHAIN],
                "token": None,
                "subjectAgreement": None,
                "createdAt": _now_iso(),
                "isRejected": False,
                "rejectionReason": None,
                "namespace": ".".join(claim_type.split(".")[2:]),
                "redirectUri": None,
            }
            self._index_claim(claim_id, requester)
            self.claims[claim_id] = claim
        elif not self._issuer_allowed(issuer, claim["claimType"]):
            return _forbidden(MSG_ISSUER)
        claim.update(
            {
                "issuedToken": issued,
                "onChainProof": body.get("onChainProof"),
                "acceptedBy": issuer,
                "isAccepted": True,
            }
        )
        # As the real server: one message per DID in [requester, token subject],
        # duplicates included when they are the same DID.
        for did in [requester, *([sub] if sub else [])]:
            await self._publish("issue-credential", did, claim_id)
        return web.json_response({"isSuccessful": True, "details": ""}, status=201)

    async def _claim_reject(
        self, request: web.Request, user: str
    ) -> web.StreamResponse:
        issuer = request.match_info["did"]
        body = await self._json(request)
        if body is None:
            return _bad_request("body must be a JSON object")
        claim_id, issuers = body.get("id"), body.get("claimIssuer")
        if (
            not isinstance(claim_id, str)
            or not isinstance(issuers, list)
            or not isinstance(body.get("requester"), str)
            or not isinstance(body.get("isRejected"), bool)
        ):
            return _bad_request(
                "id, claimIssuer, requester and isRejected are required"
            )
        claim = self.claims.get(claim_id)
        if claim is None or claim["isAccepted"] or not body["isRejected"]:
            return _bad_request(MSG_REJECTION_CRITERIA)
        # As for issuing: only an issuer the role names may reject its requests.
        if not self._issuer_allowed(issuer, claim["claimType"]):
            return _forbidden(MSG_ISSUER)
        reason = body.get("rejectionReason")
        claim.update(
            {
                "isRejected": True,
                "rejectionReason": reason if isinstance(reason, str) else None,
            }
        )
        for issuer in issuers:
            if isinstance(issuer, str):
                await self._publish("reject-credential", issuer, claim_id)
        return web.Response(status=201)

    async def _claim_by_id(self, request: web.Request, user: str) -> web.StreamResponse:
        claim = self.claims.get(request.match_info["id"])
        if claim is None:
            return _empty_ok()  # quirk: unknown id is 200 with an empty body
        return web.json_response(claim)

    def _related(self, claim: Mapping[str, Any], user: str) -> bool:
        """filterUserRelatedClaims: own claims, or claims of roles the user issues."""
        if user in (claim["subject"], claim["requester"]):
            return True
        return self._issuer_allowed(user, claim["claimType"])

    async def _claims_of_subject(
        self, request: web.Request, user: str
    ) -> web.StreamResponse:
        subject = request.match_info["did"]
        accepted_raw = request.query.get("isAccepted")
        accepted = None if accepted_raw is None else accepted_raw == "true"
        namespace = request.query.get("namespace")
        found = [
            claim
            for claim_id in self._claims_of.get(subject, ())
            if (claim := self.claims[claim_id])["subject"] == subject
            and self._related(claim, user)
            and (accepted is None or claim["isAccepted"] == accepted)
            and (namespace is None or claim["namespace"] == namespace)
        ]
        return web.json_response(found)

    # --- store and DID documents -----------------------------------------------------

    async def _store_put(self, request: web.Request, user: str) -> web.StreamResponse:
        body = await self._json(request)
        data = body.get("data") if body else None
        if not isinstance(data, str):
            return _bad_request("data must be a string")
        cid = cid_of(data.encode("utf-8"))
        self.store[cid] = data
        return _text(cid, status=201)

    async def _store_get(self, request: web.Request, user: str) -> web.StreamResponse:
        data = self.store.get(request.match_info["cid"])
        if data is None:
            return _nest_error(404, "Credential not found", "Not Found")
        return _text(data)

    async def _status_list(self, request: web.Request) -> web.StreamResponse:
        """Public, as on the hub: 204 while not revoked, else the signed list."""
        found = self.status_lists.get(request.match_info["credential_id"])
        if found is None:
            return web.Response(status=204)
        return web.json_response(found)

    async def _did_document(
        self, request: web.Request, user: str
    ) -> web.StreamResponse:
        did = request.match_info["did"]
        try:
            DID.parse(did, default_chain=self.chain)
        except ProtocolError:
            return _bad_request("invalid DID")
        document = dict(await self.resolve(did))
        services = []
        for entry in document.get("service") or []:
            merged = dict(entry) if isinstance(entry, dict) else entry
            token = (
                self.store.get(entry.get("serviceEndpoint", ""))
                if isinstance(entry, dict)
                else None
            )
            if token is not None and isinstance(merged, dict):
                # The server merges the decoded claim of each service it can fetch.
                with contextlib.suppress(ProtocolError):
                    payload = decode_token(token).payload
                    claim_data = payload.get("claimData")
                    merged.update(claim_data if isinstance(claim_data, dict) else {})
                    merged.update(
                        {
                            k: payload[k]
                            for k in ("iss", "sub", "did", "signer")
                            if k in payload
                        }
                    )
            services.append(merged)
        document["service"] = services
        return web.json_response(document)


# --- an issuer for tests and the sandbox ---------------------------------------------


async def issue_claim(
    base_url: str,
    issuer_signer: Any,
    *,
    issuer_did: str,
    claim_id: str,
    requester: str,
    issued_token: str,
    block_number: int,
    reject: bool = False,
    rejection_reason: str = "",
) -> int:
    """Act as the TSO: log in as the issuer, then issue (or reject) a claim.

    Returns the HTTP status of the issue/reject call. Used by tests and the sandbox to
    drive the issuer side over real HTTP, as the TSO's UI does.
    """
    from evops.protocol.jwt import identity_token

    async with aiohttp.ClientSession() as session:
        login = identity_token(issuer_signer, did=issuer_did, block_number=block_number)
        async with session.post(
            f"{base_url}/v1/login", json={"identityToken": login}
        ) as response:
            if response.status not in (200, 201):
                return response.status
            token = (await response.json())["token"]
        session.cookie_jar.clear()
        headers = {"Authorization": f"Bearer {token}"}
        if reject:
            path = f"{base_url}/v1/claim/reject/{issuer_did}"
            body: dict[str, Any] = {
                "id": claim_id,
                "requester": requester,
                "claimIssuer": [issuer_did],
                "isRejected": True,
                "rejectionReason": rejection_reason,
            }
        else:
            path = f"{base_url}/v1/claim/issue/{issuer_did}"
            body = {
                "id": claim_id,
                "requester": requester,
                "issuedToken": issued_token,
                "acceptedBy": issuer_did,
            }
        async with session.post(path, json=body, headers=headers) as response:
            await response.read()
            return response.status


# --- process entry point -------------------------------------------------------------


@contextlib.contextmanager
def stand_in_process(
    rpc_url: str, *options: str
) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """This module's command line on a free port, in a process of its own.

    A stand-in under load must not share the caller's GIL. Yields its base URL, the
    line it printed once listening, and the process, which gets SIGTERM (a clean
    stop) on exit and is waited for. `options` are further command-line options.
    """
    # Imported here: the command line itself never needs the peers (web3 and more).
    from evops.sandbox.peers import PROJECT_DIR, free_port

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "evops.sandbox.cache_server",
            "--rpc-url",
            rpc_url,
            "--port",
            str(port),
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=PROJECT_DIR,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        yield f"http://127.0.0.1:{port}", line, process
    finally:
        process.terminate()
        process.wait(timeout=10)


def _parse_role(text: str) -> dict[str, Any]:
    """`NAMESPACE[@VERSION]=DID[,DID...]` or `NAMESPACE[@VERSION]=role:ROLENAME`."""
    head, _, issuers = text.partition("=")
    namespace, _, version = head.partition("@")
    if issuers.startswith("role:"):
        return role_json(
            namespace, version=int(version or 1), issuer_role=issuers[len("role:") :]
        )
    dids = [d for d in issuers.split(",") if d]
    return role_json(namespace, version=int(version or 1), issuer_dids=dids)


async def _serve(args: argparse.Namespace, roles: list[dict[str, Any]]) -> None:
    stand_in = CacheServerStandIn(
        args.rpc_url,
        args.nats_url,
        roles=roles,
        env=args.env,
        blocks_back=args.blocks_back,
        access_ttl=args.access_ttl,
        host=args.host,
        port=args.port,
        identity_login=not args.no_identity_login,
        registry_address=args.registry_address,
        latency=args.latency,
        fail_rate=args.fail_rate,
        hang_rate=args.hang_rate,
        seed_endpoint=args.seed_endpoint,
    )
    await stand_in.astart()
    print(f"cache-server stand-in listening on {stand_in.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await stand_in.astop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rpc-url", required=True)
    parser.add_argument("--nats-url", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--env", default="ewf-dev")
    parser.add_argument("--blocks-back", type=int, default=10)
    parser.add_argument("--access-ttl", type=float, default=900)
    parser.add_argument("--registry-address", default=None)
    parser.add_argument("--role", action="append", default=[], metavar="NS[@V]=DIDS")
    parser.add_argument("--roles-json", default=None)
    parser.add_argument("--no-identity-login", action="store_true")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--hang-rate", type=float, default=0.0)
    parser.add_argument(
        "--seed-endpoint",
        action="store_true",
        help="benchmarks: accept POST /sandbox/accepted-claims (never on a hub)",
    )
    args = parser.parse_args(argv)
    roles = [_parse_role(item) for item in args.role]
    if args.roles_json:
        roles.extend(json.loads(Path(args.roles_json).read_text(encoding="utf-8")))
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_serve(args, roles))


if __name__ == "__main__":
    main()
