"""The credential store: where an issued token lives, addressed by its CID.

A published credential is a service entry in the asset's DID document whose
`serviceEndpoint` is a CID (protocol.md section 6); the token itself is kept in one of
two stores, chosen by the `CREDENTIAL_STORE` setting:

- `ipfs`: an IPFS node's HTTP API (kubo, or js-ipfs in the local peers). `add` pins
  what it stores; `cat` always carries a server-side `timeout`, because a node asked
  for a CID it does not hold searches forever.
- `cache-server`: the cache server's own store (`/v1/store`), through a request function
  the caller authenticates (cache_server.py owns sessions; this module only speaks the
  two calls).

Both return the CID on `put`, and `get` returns exactly the string that was put.
Every failure is a `CredentialStoreError` whose `permanent` flag tells the service
whether a retry can help: unreachable, timed out, 5xx and 429 are transient; other 4xx
and answers that make no sense are permanent. Messages never include the token.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol, Self, TypeVar, runtime_checkable
from urllib.parse import quote, urlencode

import httpx

from evops.integrations.http import AiohttpTransport, Reply, ResponseTooLarge
from evops.protocol.cids import CIDError, ipfs_file_cid, sha256_hex, validate_cid

DEFAULT_TIMEOUT = 10.0
# The IPFS node gives up on a CID it cannot find after this long; must stay below the
# client timeout so the node's answer arrives before we stop waiting.
DEFAULT_CAT_TIMEOUT = 2.0
_DETAIL_LIMIT = 200
# Connections one IpfsStore keeps open to its node (as many as listener workers).
_IPFS_CONNECTIONS = 100

ERR_UNREACHABLE = "credential store unreachable"
ERR_TIMEOUT = "credential store timed out"
ERR_HTTP = "credential store refused the request"
ERR_BAD_RESPONSE = "credential store sent an unusable response"
ERR_MISCONFIGURED = "credential store is misconfigured"
ERR_API_URL = "the IPFS API URL must start with http:// or https://, not {url!r}"
ERR_TOO_LARGE = "credential store sent an answer larger than the limit"
ERR_BAD_CID = "credential store returned an invalid CID"
ERR_CONTENT_MISMATCH = (
    "credential store returns other content for the CID than the token stored"
)
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024


class CredentialStoreError(Exception):
    """A store call failed; `permanent` says whether retrying it is futile."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent

    def __repr__(self) -> str:
        return f"CredentialStoreError({str(self)!r}, permanent={self.permanent})"


@runtime_checkable
class CredentialStore(Protocol):
    """Where issued tokens are kept; the CID goes into the DID document."""

    async def put(self, token: str) -> str:
        """Store `token` (pinned) and return its CID."""
        ...

    async def get(self, cid: str) -> str:
        """The exact token stored under `cid`."""
        ...


# A peer's answer: an `httpx.Response`, or the `Reply` of a direct exchange (the
# helpers below read only `status_code` and `content`).
Answer = httpx.Response | Reply
_A = TypeVar("_A")


def _multipart(files: Mapping[str, tuple[str, bytes, str]]) -> tuple[str, bytes]:
    """A multipart/form-data body of these files, as httpx encodes `files=`:
    (boundary, body)."""
    boundary = secrets.token_hex(16)
    parts = []
    for name, (filename, content, media_type) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {media_type}\r\n\r\n'.encode()
            + content
            + b"\r\n"
        )
    return boundary, b"".join(parts) + f"--{boundary}--\r\n".encode()


def _detail(response: Answer) -> str:
    """A short reason from an error body (IPFS `Message`, NestJS `message`)."""
    text = response.content.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:_DETAIL_LIMIT]
    if isinstance(data, Mapping):
        for key in ("Message", "message", "error"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value[:_DETAIL_LIMIT]
            if isinstance(value, list):
                return "; ".join(str(v) for v in value)[:_DETAIL_LIMIT]
    return text[:_DETAIL_LIMIT]


def _check_status(response: Answer, what: str) -> None:
    status = response.status_code
    if status < 400:
        return
    # 408 and 429 are the server asking us to come back later; other 4xx will not
    # change on a retry. 5xx includes js-ipfs's 500 "request timed out" for a CID it
    # cannot find (yet): transient, as the content may still arrive.
    transient = status >= 500 or status in (408, 429)
    raise CredentialStoreError(
        f"{ERR_HTTP}: {what}: HTTP {status} {_detail(response)}".rstrip(),
        permanent=not transient,
    )


def _utf8(response: Answer, what: str) -> str:
    # Decode the raw bytes ourselves: httpx would guess a charset when the server
    # names none, and the token must come back byte for byte.
    try:
        return response.content.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialStoreError(
            f"{ERR_BAD_RESPONSE}: {what}: body is not UTF-8", permanent=True
        ) from None


async def _guarded(what: str, deadline: float, call: Callable[[], Awaitable[_A]]) -> _A:
    """Run one HTTP exchange under an overall deadline, mapping transport failures.

    httpx's timeouts bound each phase (connect, each read); the outer deadline bounds
    the whole exchange, so a server trickling bytes cannot hold a caller forever.
    """
    try:
        async with asyncio.timeout(deadline):
            return await call()
    except CredentialStoreError:
        raise
    except ResponseTooLarge as exc:
        raise CredentialStoreError(
            f"{ERR_TOO_LARGE}: {what}: {exc}", permanent=False
        ) from None
    except (TimeoutError, httpx.TimeoutException):
        raise CredentialStoreError(
            f"{ERR_TIMEOUT}: {what}: no answer within {deadline:g} s", permanent=False
        ) from None
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise CredentialStoreError(
            f"{ERR_MISCONFIGURED}: {what}: {exc}", permanent=True
        ) from None
    except httpx.DecodingError as exc:
        raise CredentialStoreError(
            f"{ERR_BAD_RESPONSE}: {what}: {exc}", permanent=True
        ) from None
    except httpx.TransportError as exc:
        # Connection refused, reset, or closed mid-response (the node went away).
        raise CredentialStoreError(
            f"{ERR_UNREACHABLE}: {what}: {type(exc).__name__}: {exc}".rstrip(": "),
            permanent=False,
        ) from None
    except Exception as exc:
        # An authenticated requester (cache_server.py) raises its own error type
        # carrying the same `permanent` flag; keep its verdict.
        permanent = getattr(exc, "permanent", None)
        if isinstance(permanent, bool):
            raise CredentialStoreError(f"{what}: {exc}", permanent=permanent) from exc
        raise


def _valid_cid(cid: str, what: str) -> str:
    """The CID a store returned, if it is one; else a transient error.

    Transient: a store answering garbage is broken or hijacked for now, and the
    claim must wait for it rather than fail for good (or, worse, be published with
    a pointer nobody can follow).
    """
    try:
        return validate_cid(cid)
    except CIDError as exc:
        raise CredentialStoreError(
            f"{ERR_BAD_CID}: {what}: {exc}", permanent=False
        ) from None


async def confirm_stored(store: CredentialStore, cid: str, token: str) -> None:
    """Check that `cid` is the token's before the chain write: its content address
    when the store can say what that is, otherwise by reading it back.

    The CID goes on chain for every reader to fetch; if what the store serves for
    it is not the token (a store that lies, a truncated write, a CID of something
    else), the service entry's `hash` would point nowhere. An IPFS node's CID is
    the hash of what it stored: when it equals the CID the token's own bytes give
    (`IpfsStore.expected_cid`), the node stored exactly the token and nothing need
    be read. Any other answer (a node with other add settings, a token of more than
    one block, the cache server's store) is read back and compared by sha256, the
    hash the service entry carries. Every failure is transient
    (`permanent=False`): storing again may fix it, and nothing was written on chain
    yet.
    """
    expected = getattr(store, "expected_cid", None)
    if expected is not None and expected(token) == cid:
        return  # a CID built here, valid by construction
    valid = _valid_cid(cid, "confirm")
    content = await store.get(valid)
    if sha256_hex(content) != sha256_hex(token):
        raise CredentialStoreError(f"{ERR_CONTENT_MISMATCH}: {valid}", permanent=False)


# --- IPFS ----------------------------------------------------------------------------


class IpfsStore:
    """The IPFS HTTP API (`/api/v0/add`, `/api/v0/cat`) of kubo or js-ipfs.

    CIDv0 (`Qm...`) by default, as the original clients wrote; with `cid_version=1`
    the node is asked for base32 (`bafy...`/`bafk...`), which is what kubo returns.
    Pass `client` to share a connection pool; otherwise the store owns one, closed by
    `aclose()` or `async with`.
    """

    def __init__(
        self,
        api_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        cid_version: Literal[0, 1] = 0,
        cat_timeout: float = DEFAULT_CAT_TIMEOUT,
        client: httpx.AsyncClient | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if cid_version not in (0, 1):
            raise ValueError(f"cid_version must be 0 or 1, not {cid_version!r}")
        if timeout <= 0 or cat_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if not api_url.lower().startswith(("http://", "https://")):
            raise ValueError(ERR_API_URL.format(url=api_url[:100]))
        base = api_url.rstrip("/")
        base = base.removesuffix("/api/v0")
        self.api_url = base
        self.timeout = timeout
        self.cid_version = cid_version
        # The node's own search limit stays under ours, so we get its answer.
        self.cat_timeout = min(cat_timeout, timeout / 2)
        self._owns_client = client is None
        # Its own pool is called directly (`_post`): httpx's request and response
        # models and its multipart encoder cost about 300 us of CPU per add, as much
        # as the exchange itself. A client given (shared, or a test's mock) is
        # called through httpx.
        self._direct = (
            AiohttpTransport(
                limit=_IPFS_CONNECTIONS,
                max_response_bytes=max_response_bytes,
                deadline=timeout,
            )
            if client is None
            else None
        )
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), transport=self._direct
        )

    def __repr__(self) -> str:
        return f"IpfsStore({self.api_url!r}, cid_version={self.cid_version})"

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _url(self, command: str) -> str:
        return f"{self.api_url}/api/v0/{command}"

    async def _post(
        self,
        command: str,
        params: Mapping[str, str],
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
    ) -> Answer:
        """One POST to the API: directly on the store's own pool, else via httpx."""
        if self._direct is None:
            return await self._client.post(
                self._url(command), params=params, files=files
            )
        headers: dict[str, str] = {}
        body = None
        if files:
            boundary, body = _multipart(files)
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        return await self._direct.exchange(
            "POST",
            f"{self._url(command)}?{urlencode(params)}",
            headers=headers,
            body=body,
            connect=self.timeout,
            read=self.timeout,
        )

    async def put(self, token: str) -> str:
        params = {"pin": "true", "cid-version": str(self.cid_version)}
        if self.cid_version == 1:
            params["cid-base"] = "base32"
        data = token.encode("utf-8")
        response = await _guarded(
            "ipfs add",
            self.timeout,
            lambda: self._post(
                "add",
                params,
                files={"file": ("credential", data, "application/octet-stream")},
            ),
        )
        _check_status(response, "ipfs add")
        return self._added_cid(response)

    @staticmethod
    def _added_cid(response: Answer) -> str:
        # `add` answers one JSON object per line (progress lines when asked for);
        # the last line describes the file.
        lines = [line for line in _utf8(response, "ipfs add").splitlines() if line]
        try:
            result: Any = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise CredentialStoreError(
                f"{ERR_BAD_RESPONSE}: ipfs add: body is not JSON", permanent=True
            ) from None
        cid = result.get("Hash") if isinstance(result, dict) else None
        if not isinstance(cid, str) or not cid:
            raise CredentialStoreError(
                f"{ERR_BAD_RESPONSE}: ipfs add: no Hash in the answer", permanent=True
            )
        return _valid_cid(cid, "ipfs add")

    def expected_cid(self, token: str) -> str | None:
        """The CID `put(token)` gets from a node with IPFS's default add settings
        (None when the token spans more than one block: the node's answer is then
        read back instead)."""
        return ipfs_file_cid(token.encode("utf-8"), self.cid_version)

    async def get(self, cid: str) -> str:
        what = f"ipfs cat {cid}"
        params = {"arg": cid, "timeout": f"{self.cat_timeout:g}s"}
        response = await _guarded(
            what,
            self.timeout,
            lambda: self._post("cat", params),
        )
        _check_status(response, what)
        return _utf8(response, what)


# --- cache server ------------------------------------------------------------------


# One authenticated request: `request(method, path, **httpx_kwargs) -> httpx.Response`.
_RequestFn = Callable[..., Awaitable[httpx.Response]]


@runtime_checkable
class _HasRequest(Protocol):
    """An object with such a `request` method, e.g. `httpx.AsyncClient`."""

    @property
    def request(self) -> _RequestFn: ...


Requester = _RequestFn | _HasRequest


class CacheServerStore:
    """The cache server's store (`POST /v1/store`, `GET /v1/store/<cid>`).

    `requester` sends one authenticated request: an `httpx.AsyncClient`-like object
    (its `request(method, path, **kw)` is used, with `base_url` and auth already set)
    or an async callable with that signature: normally
    `CacheServerClient.store_requester(signer, did)`, bound to one asset's session.
    Errors it raises with a boolean `permanent` attribute keep their verdict.
    `timeout` bounds each whole call.
    """

    def __init__(
        self, requester: Requester, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._request: _RequestFn = (
            requester.request if isinstance(requester, _HasRequest) else requester
        )
        self.timeout = timeout

    def __repr__(self) -> str:
        return "CacheServerStore()"

    async def put(self, token: str) -> str:
        response = await _guarded(
            "cache-server store",
            self.timeout,
            lambda: self._request(
                "POST", "/v1/store", json={"data": token, "type": "S3"}
            ),
        )
        _check_status(response, "cache-server store")
        cid = self._text(response, "cache-server store").strip()
        if not cid:
            raise CredentialStoreError(
                f"{ERR_BAD_RESPONSE}: cache-server store: no CID in the answer",
                permanent=True,
            )
        return _valid_cid(cid, "cache-server store")

    async def get(self, cid: str) -> str:
        what = f"cache-server store {cid}"
        response = await _guarded(
            what,
            self.timeout,
            lambda: self._request("GET", f"/v1/store/{quote(cid, safe='')}"),
        )
        _check_status(response, what)
        if not response.content:
            # The server answers 200 with an empty body for what it does not hold.
            raise CredentialStoreError(
                f"{ERR_BAD_RESPONSE}: {what}: empty answer", permanent=True
            )
        return self._text(response, what)

    @staticmethod
    def _text(response: httpx.Response, what: str) -> str:
        """The body as text; a JSON string body (NestJS JSON reply) is unwrapped."""
        text = _utf8(response, what)
        if response.headers.get("content-type", "").startswith("application/json"):
            try:
                value = json.loads(text)
            except ValueError:
                return text
            if isinstance(value, str):
                return value
        return text


# --- from settings -----------------------------------------------------------------


def credential_store_from_settings(
    *, cache_server: Requester | None = None
) -> CredentialStore:
    """The store the settings select (`CREDENTIAL_STORE`), read at call time.

    For `cache-server` the caller passes the authenticated requester, i.e.
    `cache_server=client.store_requester(signer, did)` (sessions are per asset and
    live in cache_server.py), so the store is built per asset.
    """
    from django.conf import settings

    timeout = float(settings.CREDENTIAL_STORE_TIMEOUT)
    kind = settings.CREDENTIAL_STORE
    if kind == "ipfs":
        return IpfsStore(
            settings.IPFS_API_URL,
            timeout=timeout,
            max_response_bytes=settings.CREDENTIAL_STORE_MAX_RESPONSE_BYTES,
        )
    if kind == "cache-server":
        if cache_server is None:
            raise ValueError(
                "CREDENTIAL_STORE=cache-server needs an authenticated cache-server "
                "requester (cache_server=...)."
            )
        return CacheServerStore(cache_server, timeout=timeout)
    raise ValueError(f"Unknown CREDENTIAL_STORE {kind!r}.")
