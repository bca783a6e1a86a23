"""The Energy Web cache server ("SSI Hub") REST API, as one asset sees it.

protocol.md §4. evops logs in *as each asset* (its key signs the login), so the client
keeps one session per asset DID: access token, single-use refresh token and the access
token's expiry. Sessions live in a bounded LRU so thousands of assets do not each log
in per operation, and a per-asset lock makes concurrent calls for one asset share a
single login or refresh.

Failures raise `CacheServerError` whose `permanent` flag tells services whether a retry
can help. Transient ones (connect errors, timeouts, 5xx, 429) are already retried here,
as the retry policy's `cache_server` part says (`evops.integrations.retry`: jittered
exponential backoff, a 429's `Retry-After` honoured), before they surface.

Peer quirks handled here, each named where it is handled: empty 200 bodies for unknown
roles and claims, the claim id returned as bare text, 403 "Claim request already
exists" for a pending duplicate, 500 for a claim request naming an unknown role, the
refresh endpoint preferring a refresh *cookie* over its query parameter, and the Origin
rule (no `Origin` header is ever sent).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
from tenacity import RetryCallState

from evops.integrations.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    AiohttpTransport,
    Reply,
    ResponseTooLarge,
)
from evops.integrations.retry import DEFAULT_RETRY, RetryableAnswer, RetryPolicy
from evops.protocol import siwe
from evops.protocol.dids import DID
from evops.protocol.jwt import (
    claim_request_token,
    identity_token,
    unverified_payload,
)
from evops.protocol.signer import Signer

logger = logging.getLogger(__name__)

LOGIN_IDENTITY = "identity"
LOGIN_SIWE = "siwe"
LOGIN_AUTO = "auto"
LOGIN_MODES = (LOGIN_IDENTITY, LOGIN_SIWE, LOGIN_AUTO)

# The placeholder issuer iam-client-lib sends: the server notifies the role's issuers.
NULL_ISSUER = "did:ethr:volta:0x0000000000000000000000000000000000000000"
OFF_CHAIN = "RegistrationTypes::OffChain"
ALREADY_EXISTS = "Claim request already exists"

ERR_UNKNOWN_ROLE = "the cache server has no role"
ERR_LOGIN_REJECTED = "the cache server rejected the login"
ERR_NO_LOGIN = "the cache server offers neither identity-token nor SIWE login"
ERR_UNAUTHORIZED = "the cache server still answers 401 after a fresh login"
ERR_TRANSIENT = "the cache server is unavailable"
ERR_BAD_RESPONSE = "the cache server sent an unexpected response"
ERR_CLAIM_REJECTED = "the cache server rejected the claim request"
ERR_PERMANENT = "the cache server refused the request"
ERR_TOO_LARGE = "the cache server sent an answer larger than the limit"
ERR_DEADLINE = "the cache server did not answer within the deadline"
# The server's word for an identity token whose block aged past its window.
_OUTDATED = "outdated"

# Renew the access token this long before it expires (the server's default lifetime
# is 15 minutes), so a call never starts with a token about to lapse in flight.
_REFRESH_MARGIN_SECONDS = 30.0
# Lifetime assumed when an access token carries no readable `exp`.
_DEFAULT_TOKEN_LIFETIME = 300.0
# How long one read of the chain's block number serves identity-token logins.
_BLOCK_MAX_AGE_SECONDS = 1.0
_ACCEPT = "application/json, text/plain, */*"


def _json_dumps(value: Any) -> bytes:
    """A request body as httpx encodes one (compact, UTF-8, no NaN)."""
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


# `CacheServerClient.store_requester`: one authenticated request of one asset.
StoreRequester = Callable[..., Awaitable[httpx.Response]]


class CacheServerError(Exception):
    """A cache-server call failed; `permanent` says whether retrying can help."""

    def __init__(
        self, message: str, *, permanent: bool, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status


class UnknownRoleError(CacheServerError):
    """The role namespace is not defined on the cache server (always permanent)."""

    def __init__(self, namespace: str, *, status: int | None = None) -> None:
        super().__init__(
            f"{ERR_UNKNOWN_ROLE} {namespace!r}", permanent=True, status=status
        )
        self.namespace = namespace


# --- typed responses -----------------------------------------------------------------


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int_version(value: Any) -> int:
    """Role and claim versions arrive as 1, 1.0, "1" or "1.0"; the major is kept."""
    if isinstance(value, bool):
        raise ValueError("version is a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value.split(".")[0])
    raise ValueError(f"version {value!r} is not a number")


@dataclass(frozen=True)
class Role:
    """A role definition (`GET /v1/role/<namespace>`)."""

    namespace: str
    name: str
    version: int
    issuer_type: str
    issuer_dids: tuple[str, ...]
    issuer_role: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> Role:
        """Parse the server's Role object; unknown fields are ignored."""
        if not isinstance(data, Mapping):
            raise ValueError("role is not a JSON object")
        definition = data.get("definition")
        if not isinstance(definition, Mapping):
            raise ValueError("role has no definition")
        issuer = definition.get("issuer")
        issuer = issuer if isinstance(issuer, Mapping) else {}
        dids = issuer.get("did")
        namespace = data.get("namespace")
        if not isinstance(namespace, str):
            raise ValueError("role has no namespace")
        return cls(
            namespace=namespace,
            name=_str_or_none(data.get("name")) or namespace.split(".")[0],
            version=_int_version(definition.get("version", 1)),
            issuer_type=_str_or_none(issuer.get("issuerType")) or "",
            issuer_dids=tuple(d for d in dids if isinstance(d, str))
            if isinstance(dids, list)
            else (),
            issuer_role=_str_or_none(issuer.get("roleName")),
            raw=dict(data),
        )


@dataclass(frozen=True)
class RoleClaim:
    """A claim as the cache server stores it; unknown fields are ignored."""

    id: str
    requester: str
    subject: str
    claim_type: str
    claim_type_version: int | None
    token: str | None
    issued_token: str | None
    is_accepted: bool
    is_rejected: bool
    rejection_reason: str | None
    accepted_by: str | None
    created_at: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> RoleClaim:
        if not isinstance(data, Mapping):
            raise ValueError("claim is not a JSON object")
        claim_id = data.get("id")
        if not isinstance(claim_id, str):
            raise ValueError("claim has no id")
        version: int | None
        try:
            version = _int_version(data.get("claimTypeVersion"))
        except ValueError:
            version = None
        return cls(
            id=claim_id,
            requester=_str_or_none(data.get("requester")) or "",
            subject=_str_or_none(data.get("subject")) or "",
            claim_type=_str_or_none(data.get("claimType")) or "",
            claim_type_version=version,
            token=_str_or_none(data.get("token")),
            issued_token=_str_or_none(data.get("issuedToken")),
            is_accepted=data.get("isAccepted") is True,
            is_rejected=data.get("isRejected") is True,
            rejection_reason=_str_or_none(data.get("rejectionReason")),
            accepted_by=_str_or_none(data.get("acceptedBy")),
            created_at=_str_or_none(data.get("createdAt")),
            raw=dict(data),
        )


@dataclass(frozen=True)
class ClaimRequestResult:
    """Outcome of `request_claim`.

    `already_existed` is True when the server already held a pending request for the
    same subject, role and version (its 403 quirk); `claim_id` is then the existing
    request's id when it could be found, else None.
    """

    claim_id: str | None
    already_existed: bool


# --- sessions ------------------------------------------------------------------------


@dataclass
class _Session:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    token: str | None = None
    refresh_token: str | None = None
    expires_at: float = 0.0


def _token_expiry(token: str) -> float:
    """The `exp` of an access token (unverified: only the server checks it)."""
    payload = unverified_payload(token)
    exp = payload.get("exp") if payload is not None else None
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return float(exp)
    return time.time() + _DEFAULT_TOKEN_LIFETIME


@functools.lru_cache(maxsize=65536)
def _canonical_text(did: str) -> tuple[str, str]:
    parsed = DID.parse(did)
    return parsed.canonical, parsed.address


def _canonical(did: DID | str) -> tuple[str, str]:
    """(canonical DID, address); cached, since every call of every asset needs it."""
    if isinstance(did, DID):
        return did.canonical, did.address
    return _canonical_text(did)


def _retryable(response: Reply, reason: str) -> RetryableAnswer:
    """A 5xx or 429 answer as a retryable outcome (a 429's Retry-After kept)."""
    status = response.status_code
    retry_after = response.headers.get("Retry-After", "") if status == 429 else ""
    return RetryableAnswer(reason, status=status, retry_after=retry_after)


class _NoCookies(DefaultCookiePolicy):
    """Refuse every cookie.

    The server also sets the tokens as cookies, and its refresh endpoint prefers a
    refresh *cookie* over the query parameter. One pooled client serves thousands of
    assets, so a stored cookie would make asset B refresh with asset A's token.
    """

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False


class _RedactRefreshToken(logging.Filter):
    """Keep refresh tokens out of httpx's request log (they travel in the query)."""

    _pattern = re.compile(r"(refresh_token=)[^&\s\"']+")

    @classmethod
    def redact(cls, text: str) -> str:
        return cls._pattern.sub(r"\1[redacted]", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "refresh_token=" in message:
            record.msg = self.redact(message)
            record.args = ()
        return True


_REDACTOR = _RedactRefreshToken()


def _json_body(response: Reply) -> Any:
    """The JSON body, or None for the server's empty 200 bodies."""
    if not response.content.strip():
        return None
    try:
        return response.json()
    except ValueError:
        raise CacheServerError(
            f"{ERR_BAD_RESPONSE}: body is not JSON",
            permanent=False,
            status=response.status_code,
        ) from None


def _text_body(response: Reply) -> str:
    """A bare-text answer (claim id, CID, stored token); tolerate a JSON string."""
    text = response.text.strip()
    if text.startswith('"'):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, str):
            return value
    return text


def _error_message(response: Reply) -> str:
    """NestJS error bodies are `{"statusCode", "message", "error"}`."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(data, Mapping):
        message = data.get("message")
        if isinstance(message, list):
            return "; ".join(str(m) for m in message)[:200]
        if isinstance(message, str):
            return message[:200]
    return response.text[:200]


class _RecentBlock:
    """The chain's latest block number, one read shared by the logins of a moment.

    An identity token signs a block number the server accepts only if it is at most
    `STRATEGY_NUM_BLOCKS_BACK` blocks (10, about 50 s on Volta) behind its own
    (protocol.md §4). A burst of a thousand logins therefore needs one read, not a
    thousand: concurrent callers share the read in flight, and a value read less
    than `max_age` seconds ago (counted from the start of the read) is reused.
    `fresh=True`, the second attempt after a 401, never takes a stored value.
    """

    def __init__(self, read: Callable[[], Awaitable[int]], max_age: float) -> None:
        self._read = read
        self._max_age = max_age
        self._value: int | None = None
        self._read_at = 0.0
        self._inflight: asyncio.Future[int] | None = None

    async def get(self, *, fresh: bool = False) -> int:
        if (
            not fresh
            and self._value is not None
            and time.monotonic() - self._read_at < self._max_age
        ):
            return self._value
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._read_now())
        # Shielded: one caller giving up must not cancel the others' read.
        return await asyncio.shield(self._inflight)

    async def _read_now(self) -> int:
        started = time.monotonic()
        try:
            value = await self._read()
        finally:
            self._inflight = None
        self._value, self._read_at = value, started
        return value


class CacheServerClient:
    """Async client for one cache server, shared by all assets.

    `block_number` reads the chain's latest block number (identity-token login signs
    it just before sending; one read serves the logins of `block_max_age` seconds).
    `login_mode` is "identity", "siwe" or "auto" (identity token, falling back to
    SIWE once the server answers 404 for it).
    """

    def __init__(
        self,
        base_url: str,
        *,
        block_number: Callable[[], Awaitable[int]],
        timeout: float = 10.0,
        max_concurrency: int = 50,
        retry: RetryPolicy = DEFAULT_RETRY,
        login_mode: str = LOGIN_AUTO,
        max_sessions: int = 10_000,
        chain_id: int | None = None,
        refresh_margin: float = _REFRESH_MARGIN_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
        block_max_age: float = _BLOCK_MAX_AGE_SECONDS,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        deadline: float | None = None,
    ) -> None:
        if login_mode not in LOGIN_MODES:
            raise ValueError(f"login_mode must be one of {LOGIN_MODES}")
        if max_concurrency < 1 or max_sessions < 1:
            raise ValueError("max_concurrency and max_sessions must be positive")
        self._base = base_url.rstrip("/").removesuffix("/v1")
        parts = urlsplit(self._base)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._domain = parts.netloc
        self._block = _RecentBlock(block_number, block_max_age)
        self._retry = retry.cache_server
        # One call, its retries included, ends by `deadline` (default: room for a
        # few full attempts); each attempt ends by `timeout` however slowly the
        # server drips its answer.
        self._deadline = deadline if deadline is not None else 3 * timeout + 5
        self.max_response_bytes = max_response_bytes
        self._login_mode = login_mode
        self._identity_login_missing = False
        self._chain_id = chain_id
        self._refresh_margin = refresh_margin
        self._max_sessions = max_sessions
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._timeout = timeout
        # Without a `transport` (the tests' httpx ones), every call goes straight to
        # the pooled aiohttp transport (`_direct`): httpx's request and response
        # models cost more CPU per call than the exchange itself.
        self._pool = AiohttpTransport(
            limit=max_concurrency,
            max_response_bytes=max_response_bytes,
            deadline=timeout,
        )
        self._http = httpx.AsyncClient(
            base_url=self._base,
            timeout=httpx.Timeout(timeout),
            # A bare CookieJar: httpx copies an `httpx.Cookies` into a fresh jar,
            # which would drop the policy.
            cookies=CookieJar(policy=_NoCookies()),
            headers={"Accept": _ACCEPT},
            transport=transport or self._pool,
            follow_redirects=False,
        )
        self._exchange = self._via_httpx if transport is not None else self._direct
        self.logins = 0
        self.refreshes = 0
        httpx_logger = logging.getLogger("httpx")
        if _REDACTOR not in httpx_logger.filters:
            httpx_logger.addFilter(_REDACTOR)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()
        await self._pool.aclose()

    async def __aenter__(self) -> CacheServerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- transport with retries ------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        retry_statuses: bool = True,
        retries: int | None = None,
    ) -> Reply:
        """One HTTP exchange with transient-failure retries; no auth handling.

        Returns any response that is not transient (including 4xx); raises a transient
        `CacheServerError` once the retries are spent (`retries`, default the
        client's limit; 0 for a request that must not be repeated). With
        `retry_statuses` False, 5xx and 429 answers are returned for the caller to
        interpret.
        """
        deadline = asyncio.timeout(self._deadline)
        try:
            async with deadline:
                return await self._send_with_retries(
                    method,
                    path,
                    token=token,
                    json_body=json_body,
                    params=params,
                    retry_statuses=retry_statuses,
                    retries=retries,
                )
        except TimeoutError:
            if not deadline.expired():
                raise
            raise CacheServerError(
                f"{ERR_DEADLINE}: {method} {path}: {self._deadline:g} s",
                permanent=False,
            ) from None

    async def _send_with_retries(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        json_body: Any,
        params: Mapping[str, str] | None,
        retry_statuses: bool,
        retries: int | None,
    ) -> Reply:
        headers = {"Authorization": f"Bearer {token}"} if token else None

        def log(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            logger.info(
                "cache server %s %s: %s; retry %d",
                method,
                path,
                error,
                state.attempt_number,
            )

        try:
            return await self._retry.call(
                lambda: self._attempt(
                    method,
                    path,
                    json_body=json_body,
                    params=params,
                    headers=headers,
                    retry_statuses=retry_statuses,
                ),
                retries=retries,
                log=log,
            )
        except RetryableAnswer as exc:
            raise CacheServerError(
                f"{ERR_TRANSIENT}: {method} {path}: {exc.reason}",
                permanent=False,
                status=exc.status,
            ) from None

    async def _attempt(
        self,
        method: str,
        path: str,
        *,
        json_body: Any,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        retry_statuses: bool,
    ) -> Reply:
        """One exchange; raises `RetryableAnswer` for what a retry may mend."""
        try:
            async with self._semaphore:
                response = await self._exchange(
                    method, path, json_body, params, headers
                )
        except ResponseTooLarge as exc:
            # Not retried: the same request would bring the same flood.
            raise CacheServerError(
                f"{ERR_TOO_LARGE}: {method} {path}: {exc}", permanent=False
            ) from None
        except httpx.TimeoutException as exc:
            raise RetryableAnswer(f"timeout ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise RetryableAnswer(f"connection failed ({type(exc).__name__})") from None
        status = response.status_code
        if (status < 500 and status != 429) or not retry_statuses:
            return response
        raise _retryable(response, f"HTTP {status}")

    async def _direct(
        self,
        method: str,
        path: str,
        json_body: Any,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> Reply:
        """One exchange on the pooled aiohttp transport (its size and time limits)."""
        url = self._base + path
        if params:
            url = f"{url}?{urlencode(params)}"
        sent = {"Accept": _ACCEPT, **headers} if headers else {"Accept": _ACCEPT}
        body = None
        if json_body is not None:
            body = _json_dumps(json_body)
            sent["Content-Type"] = "application/json"
        reply = await self._pool.exchange(
            method,
            url,
            headers=sent,
            body=body,
            connect=self._timeout,
            read=self._timeout,
        )
        if logger.isEnabledFor(logging.DEBUG):
            # What httpx's request log said, refresh tokens redacted likewise.
            logger.debug(
                "HTTP Request: %s %s %d",
                method,
                _RedactRefreshToken.redact(url),
                reply.status_code,
            )
        return reply

    async def _via_httpx(
        self,
        method: str,
        path: str,
        json_body: Any,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> Reply:
        """One exchange through httpx and the `transport` given (tests)."""
        response = await self._http.request(
            method, path, json=json_body, params=params, headers=headers
        )
        return Reply(response.status_code, response.content, response.headers)

    # --- sessions --------------------------------------------------------------------

    def _session(self, did: str) -> _Session:
        session = self._sessions.get(did)
        if session is None:
            session = _Session()
            self._sessions[did] = session
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(did)
        return session

    def forget_session(self, did: str) -> None:
        """Drop an asset's session (after its key changed, for instance)."""
        self._sessions.pop(DID.coerce(did).canonical, None)

    async def _access_token(self, signer: Signer, did: str) -> str:
        session = self._session(did)
        if session.token and session.expires_at - self._refresh_margin > time.time():
            return session.token
        async with session.lock:
            now = time.time()
            if session.token and session.expires_at - self._refresh_margin > now:
                return session.token
            if session.refresh_token and await self._refresh(session):
                assert session.token is not None
                return session.token
            await self._login(signer, did, session)
            assert session.token is not None
            return session.token

    async def _renew_after_401(self, signer: Signer, did: str, rejected: str) -> None:
        """On 401: refresh once, then log in again (protocol.md §4)."""
        session = self._session(did)
        async with session.lock:
            if session.token and session.token != rejected:
                return  # another task renewed it while we waited
            session.token = None
            if session.refresh_token and await self._refresh(session):
                return
            await self._login(signer, did, session)

    def _store(self, session: _Session, data: Any) -> None:
        if not isinstance(data, Mapping) or not isinstance(data.get("token"), str):
            raise CacheServerError(
                f"{ERR_BAD_RESPONSE}: no token in the login answer", permanent=False
            )
        session.token = data["token"]
        refresh = data.get("refreshToken")
        session.refresh_token = refresh if isinstance(refresh, str) else None
        session.expires_at = _token_expiry(data["token"])

    async def _refresh(self, session: _Session) -> bool:
        """Trade the refresh token for a new pair; False when the server refuses it.

        Refresh tokens are single use, so the old one is dropped before the call:
        after a failure the next step is a fresh login, never a replay.
        """
        refresh_token, session.refresh_token = session.refresh_token, None
        assert refresh_token is not None
        response = await self._send(
            "GET", "/v1/refresh_token", params={"refresh_token": refresh_token}
        )
        if response.status_code not in (200, 201):
            logger.info("cache server refused a refresh: HTTP %d", response.status_code)
            return False
        self._store(session, _json_body(response))
        self.refreshes += 1
        return True

    async def _login(self, signer: Signer, did: str, session: _Session) -> None:
        use_siwe = self._login_mode == LOGIN_SIWE or (
            self._login_mode == LOGIN_AUTO and self._identity_login_missing
        )
        if not use_siwe:
            response = await self._identity_login(signer, did)
            if response.status_code == 404 and self._login_mode == LOGIN_AUTO:
                logger.info("cache server has no identity-token login; using SIWE")
                self._identity_login_missing = True
                use_siwe = True
            elif response.status_code == 401:
                # The block may have aged past the server's window between our read
                # and its check (slow chain reads, busy server): sign once more,
                # with a block number read now.
                response = await self._identity_login(signer, did, fresh_block=True)
        if use_siwe:
            response = await self._siwe_login(signer, did)
        if response.status_code not in (200, 201):
            message = _error_message(response)
            # Every 4xx here is permanent, 404 included: in "identity" mode it means
            # the deployment has no identity-token login (a setting to change, not
            # an outage). 5xx and 429 were retried by `_send` and raised as transient.
            # Except a block-number race: the server's window of a few blocks can
            # pass between our read and its check even on the fresh re-sign (a fast
            # chain, several listeners, a busy server); a later try succeeds.
            outdated = response.status_code == 401 and _OUTDATED in message.lower()
            raise CacheServerError(
                f"{ERR_LOGIN_REJECTED} of {did}: HTTP {response.status_code} {message}",
                permanent=not outdated,
                status=response.status_code,
            )
        self._store(session, _json_body(response))
        self.logins += 1

    async def _identity_login(
        self, signer: Signer, did: str, *, fresh_block: bool = False
    ) -> Reply:
        # The block number is read (or taken from a read of the last second) right
        # before signing: the server rejects tokens more than a few blocks old, and
        # `_send`'s retries would reuse a stale one.
        block = await self._block.get(fresh=fresh_block)
        token = identity_token(signer, did=did, block_number=block)
        return await self._send("POST", "/v1/login", json_body={"identityToken": token})

    async def _siwe_login(self, signer: Signer, did: str) -> Reply:
        response = await self._send("POST", "/v1/login/siwe/initiate")
        if response.status_code == 404:
            raise CacheServerError(ERR_NO_LOGIN, permanent=True, status=404)
        data = _json_body(response)
        if response.status_code not in (200, 201) or not isinstance(data, Mapping):
            raise CacheServerError(
                f"{ERR_LOGIN_REJECTED}: SIWE initiate HTTP {response.status_code}",
                permanent=response.status_code < 500,
                status=response.status_code,
            )
        nonce = data.get("nonce")
        if not isinstance(nonce, str):
            raise CacheServerError(
                f"{ERR_BAD_RESPONSE}: no SIWE nonce", permanent=False
            )
        parsed = DID.parse(did)
        message = siwe.SiweMessage(
            domain=self._domain,
            address=signer.address,
            # The server's passport strategy pins the URI to its own verify endpoint.
            uri=f"{self._origin}/v1/login/siwe/verify",
            chain_id=self._chain_id or parsed.chain_id,
            nonce=nonce,
            issued_at=siwe.format_time(datetime.now(UTC)),
        )
        # The nonce is single use: a verify repeated after a lost answer would be
        # refused ("completed already", a 401 that reads as a permanent rejection),
        # so it is sent once; a transient failure surfaces and the next call starts
        # a new SIWE round.
        return await self._send(
            "POST",
            "/v1/login/siwe/verify",
            json_body={
                "message": message.prepare(),
                "signature": siwe.sign_message(signer, message),
            },
            retries=0,
        )

    # --- authenticated calls ---------------------------------------------------------

    async def _call(
        self,
        signer: Signer,
        did: DID | str,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        retry_statuses: bool = True,
    ) -> Reply:
        """An authenticated call: session handling, 401 recovery, error mapping.

        Returns 2xx responses and 4xx ones other than 401/429, which the caller
        interprets (several carry protocol meaning); everything else raises.
        """
        did_text, address = _canonical(did)
        if signer.address != address:
            raise ValueError("signer does not hold the key of this DID")
        token = await self._access_token(signer, did_text)
        response = await self._send(
            method,
            path,
            token=token,
            json_body=json_body,
            params=params,
            retry_statuses=retry_statuses,
        )
        if response.status_code == 401:
            await self._renew_after_401(signer, did_text, token)
            token = await self._access_token(signer, did_text)
            response = await self._send(
                method,
                path,
                token=token,
                json_body=json_body,
                params=params,
                retry_statuses=retry_statuses,
            )
            if response.status_code == 401:
                raise CacheServerError(
                    f"{ERR_UNAUTHORIZED}: {method} {path}", permanent=True, status=401
                )
        return response

    @staticmethod
    def _raise_for_status(response: Reply, what: str) -> None:
        if response.status_code >= 400:
            raise CacheServerError(
                f"{ERR_PERMANENT}: {what}: HTTP {response.status_code} "
                f"{_error_message(response)}",
                permanent=True,
                status=response.status_code,
            )

    async def role(self, signer: Signer, did: DID | str, namespace: str) -> Role:
        """The role definition; `UnknownRoleError` for the server's empty 200."""
        response = await self._call(
            signer, did, "GET", f"/v1/role/{quote(namespace, safe='')}"
        )
        self._raise_for_status(response, f"role {namespace}")
        data = _json_body(response)
        if data is None:  # quirk: an unknown role is 200 with an empty body
            raise UnknownRoleError(namespace, status=response.status_code)
        try:
            return Role.from_json(data)
        except ValueError as exc:
            raise CacheServerError(
                f"{ERR_BAD_RESPONSE}: role {namespace}: {exc}", permanent=True
            ) from None

    async def request_claim(
        self,
        signer: Signer,
        did: DID | str,
        *,
        role: Role,
        subject: DID | str | None = None,
        claim_id: str | None = None,
    ) -> ClaimRequestResult:
        """Post a claim request for `role` signed by the asset (protocol.md §4).

        Quirks: 201 with the bare id as text; a pending request for the same subject,
        role and version answers 403 "Claim request already exists", which is success;
        the same id again answers 400 (a retry whose first attempt landed, checked by
        reading the claim back); an unknown role answers a generic 500, told apart from
        an outage by reading the role.
        """
        did_text = DID.coerce(did).canonical
        subject_text = DID.coerce(subject).canonical if subject else did_text
        claim_id = claim_id or str(uuid.uuid4())
        token = claim_request_token(
            signer,
            did=did_text,
            subject=subject_text,
            claim_type=role.namespace,
            claim_type_version=role.version,
            iat_ms=int(time.time() * 1000),
        )
        body = {
            "id": claim_id,
            "requester": did_text,
            "token": token,
            "claimType": role.namespace,
            "claimTypeVersion": str(role.version),
            "claimIssuer": [NULL_ISSUER],
            "registrationTypes": [OFF_CHAIN],
        }
        try:
            response = await self._retry.call(
                lambda: self._post_claim_request(signer, did_text, body, role)
            )
        except RetryableAnswer as exc:
            raise CacheServerError(
                f"{ERR_TRANSIENT}: claim request: {exc.reason}",
                permanent=False,
                status=exc.status,
            ) from None
        status = response.status_code
        if status in (200, 201):
            return ClaimRequestResult(
                claim_id=_text_body(response) or claim_id, already_existed=False
            )
        message = _error_message(response)
        if status == 403 and ALREADY_EXISTS.lower() in message.lower():
            existing = await self._pending_claim_id(
                signer, did_text, subject_text, role
            )
            return ClaimRequestResult(claim_id=existing, already_existed=True)
        if status == 400:
            stored = await self.get_claim(signer, did_text, claim_id)
            if stored is not None:
                # Our id is taken: by this very request if an earlier attempt
                # landed before its answer was lost, else by an older one.
                return ClaimRequestResult(
                    claim_id=claim_id, already_existed=stored.token != token
                )
        raise CacheServerError(
            f"{ERR_CLAIM_REJECTED}: HTTP {status} {message}",
            permanent=True,
            status=status,
        )

    async def _post_claim_request(
        self, signer: Signer, did: str, body: Mapping[str, Any], role: Role
    ) -> Reply:
        """One POST of the claim request; raises `RetryableAnswer` on 5xx and 429.

        Quirk: an unknown role is a bare 500. The role is read then: that raises
        `UnknownRoleError` when it is missing; otherwise the 500 was an outage.
        """
        response = await self._call(
            signer,
            did,
            "POST",
            "/v1/claim/request",
            json_body=body,
            retry_statuses=False,
        )
        status = response.status_code
        if status >= 500 or status == 429:
            if status == 500:
                await self.role(signer, did, role.namespace)
            raise _retryable(response, f"HTTP {status} {_error_message(response)}")
        return response

    async def _pending_claim_id(
        self, signer: Signer, did: str, subject: str, role: Role
    ) -> str | None:
        """Best effort: the id of the pending request the 403 refers to."""
        try:
            response = await self._call(
                signer, did, "GET", f"/v1/claim/subject/{quote(subject, safe=':')}"
            )
            data = _json_body(response) if response.status_code == 200 else None
        except CacheServerError:
            return None
        for item in data if isinstance(data, list) else []:
            try:
                claim = RoleClaim.from_json(item)
            except ValueError:
                continue
            if (
                claim.claim_type == role.namespace
                and claim.claim_type_version == role.version
                and not claim.is_accepted
                and not claim.is_rejected
            ):
                return claim.id
        return None

    async def get_claim(
        self, signer: Signer, did: DID | str, claim_id: str
    ) -> RoleClaim | None:
        """One claim; None for the server's empty 200 (unknown id)."""
        response = await self._call(
            signer, did, "GET", f"/v1/claim/{quote(claim_id, safe='')}"
        )
        self._raise_for_status(response, f"claim {claim_id}")
        data = _json_body(response)
        if data is None:
            return None
        try:
            return RoleClaim.from_json(data)
        except ValueError as exc:
            raise CacheServerError(
                f"{ERR_BAD_RESPONSE}: claim {claim_id}: {exc}", permanent=True
            ) from None

    async def accepted_claims(self, signer: Signer, did: DID | str) -> list[RoleClaim]:
        """The asset's accepted claims (reconciliation's source of truth)."""
        did_text, _ = _canonical(did)
        response = await self._call(
            signer,
            did_text,
            "GET",
            f"/v1/claim/subject/{quote(did_text, safe=':')}",
            params={"isAccepted": "true"},
        )
        self._raise_for_status(response, f"claims of {did_text}")
        data = _json_body(response)
        if data is None:
            return []
        if not isinstance(data, list):
            raise CacheServerError(
                f"{ERR_BAD_RESPONSE}: claims of {did_text} is not a list",
                permanent=True,
            )
        claims: list[RoleClaim] = []
        for item in data:
            try:
                claims.append(RoleClaim.from_json(item))
            except ValueError:
                logger.warning("skipping a malformed claim of %s", did_text)
        return claims

    async def did_document(
        self, signer: Signer, did: DID | str, *, of: DID | str | None = None
    ) -> dict[str, Any]:
        """The DID document of `of` (default: the asset itself) as the cache sees it."""
        target = DID.coerce(of).canonical if of else DID.coerce(did).canonical
        response = await self._call(
            signer, did, "GET", f"/v1/DID/{quote(target, safe=':')}"
        )
        self._raise_for_status(response, f"DID document of {target}")
        data = _json_body(response)
        if not isinstance(data, dict):
            raise CacheServerError(
                f"{ERR_BAD_RESPONSE}: DID document of {target}", permanent=True
            )
        return data

    def store_requester(self, signer: Signer, did: DID | str) -> StoreRequester:
        """One authenticated request function bound to this asset's session.

        For `credential_store.CacheServerStore` (`CREDENTIAL_STORE=cache-server`):
        `CacheServerStore(client.store_requester(signer, did))`. The returned
        `request(method, path, *, json=None, params=None)` goes through the same
        session handling as every call here (cached login, refresh, one 401
        recovery, transient retries) and returns the `httpx.Response` for 2xx and
        4xx other than 401/429; anything else raises `CacheServerError`, whose
        `permanent` flag the store keeps.
        """
        did_text, address = _canonical(did)
        if signer.address != address:
            raise ValueError("signer does not hold the key of this DID")

        async def request(
            method: str,
            path: str,
            /,
            *,
            json: Any = None,
            params: Mapping[str, str] | None = None,
        ) -> httpx.Response:
            reply = await self._call(
                signer, did_text, method, path, json_body=json, params=params
            )
            # The store reads an httpx response (its other requester is an
            # `httpx.AsyncClient`); not a hot path.
            return reply.to_httpx()

        return request

    async def store_put(self, signer: Signer, did: DID | str, token: str) -> str:
        """Store a token in the server's credential store; returns its CID."""
        response = await self._call(
            signer, did, "POST", "/v1/store", json_body={"data": token, "type": "S3"}
        )
        self._raise_for_status(response, "store")
        cid = _text_body(response)
        if not cid:
            raise CacheServerError(f"{ERR_BAD_RESPONSE}: no CID", permanent=False)
        return cid

    async def store_get(self, signer: Signer, did: DID | str, cid: str) -> str:
        """Read back what `store_put` wrote."""
        response = await self._call(
            signer, did, "GET", f"/v1/store/{quote(cid, safe='')}"
        )
        self._raise_for_status(response, f"store {cid}")
        return _text_body(response)

    async def auth_status(self, signer: Signer, did: DID | str) -> str | None:
        """The DID the server sees behind the asset's session (`/v1/auth/status`)."""
        response = await self._call(signer, did, "GET", "/v1/auth/status")
        self._raise_for_status(response, "auth status")
        data = _json_body(response)
        user = data.get("user") if isinstance(data, Mapping) else None
        return user if isinstance(user, str) else None


def cache_server_client_from_settings(
    block_number: Callable[[], Awaitable[int]],
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> CacheServerClient:
    """A client configured from Django settings (read lazily, here only)."""
    from django.conf import settings

    return CacheServerClient(
        settings.CACHE_SERVER_URL,
        block_number=block_number,
        timeout=settings.CACHE_SERVER_TIMEOUT,
        max_concurrency=settings.CACHE_SERVER_MAX_CONCURRENCY,
        max_sessions=settings.CACHE_SERVER_MAX_SESSIONS,
        login_mode=settings.CACHE_SERVER_LOGIN,
        max_response_bytes=settings.CACHE_SERVER_MAX_RESPONSE_BYTES,
        deadline=settings.CACHE_SERVER_DEADLINE,
        retry=retry,
    )
