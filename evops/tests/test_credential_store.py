"""The credential store (evops/integrations/credential_store.py).

Against a real js-ipfs node and the cache-server stand-in over real HTTP; the answers
no healthy peer gives (junk bodies, non-UTF-8, hanging) through httpx.MockTransport.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.test import override_settings

from evops.integrations.cache_server import CacheServerClient
from evops.integrations.credential_store import (
    ERR_BAD_RESPONSE,
    ERR_CONTENT_MISMATCH,
    ERR_HTTP,
    ERR_TIMEOUT,
    ERR_UNREACHABLE,
    CacheServerStore,
    CredentialStore,
    CredentialStoreError,
    IpfsStore,
    confirm_stored,
    credential_store_from_settings,
)
from evops.protocol.cids import IPFS_CHUNK_BYTES
from evops.protocol.dids import DID
from evops.protocol.keys import LocalKeySigner
from evops.sandbox.cache_server import CacheServerStandIn
from evops.sandbox.peers import IpfsNode, free_port

ROOT = Path(__file__).resolve().parents[2]

# A JWT-shaped token with non-ASCII in it: the store must give back the same bytes.
TOKEN = (
    "eyJhbGciOiJFUzI1NksiLCJ0eXAiOiJKV1QifQ."
    "eyJzdWIiOiJkaWQ6ZXRocjp2b2x0YToweDEyMyIsIm5hbWUiOiJSw6lzZWF1IOKckyDwnZCeIn0."
    "c2lnbmF0dXJl-Réseau ✓ 𝄞 Ω"
)
# A CIDv0 no node in this test run holds: a cat for it can only time out.
MISSING_CID = "QmYAXgX8ARiriupMQsbGXtKdDyGzWry1YV3sycKw1qqmgH"


def _mock_client(handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


# --- IPFS, real node --------------------------------------------------------------


@pytest.fixture
async def ipfs(ipfs_node):
    async with IpfsStore(ipfs_node.api_url, timeout=10) as store:
        yield store


@pytest.mark.peers
async def test_ipfs_round_trip_returns_the_exact_token(ipfs):
    assert isinstance(ipfs, CredentialStore)
    cid = await ipfs.put(TOKEN)
    assert cid.startswith("Qm")
    assert len(cid) == 46
    got = await ipfs.get(cid)
    assert got == TOKEN
    assert got.encode("utf-8") == TOKEN.encode("utf-8")


@pytest.mark.peers
async def test_confirm_stored_against_ipfs(ipfs):
    cid = await ipfs.put(TOKEN)
    await confirm_stored(ipfs, cid, TOKEN)
    other = await ipfs.put(TOKEN + ".")
    with pytest.raises(CredentialStoreError) as info:
        await confirm_stored(ipfs, other, TOKEN)
    assert info.value.permanent is False
    assert str(info.value).startswith(ERR_CONTENT_MISMATCH)


@pytest.mark.peers
@pytest.mark.parametrize("version", [0, 1])
async def test_the_cid_a_token_gets_is_known_before_the_node_answers(
    ipfs_node, version
):
    """`expected_cid` against the real node: one byte, a token, multibyte text,
    exactly one block; past one block it does not guess."""
    async with IpfsStore(ipfs_node.api_url, timeout=10, cid_version=version) as store:
        for token in ("x", TOKEN, "Zählerstand ⚡ " * 300, "q" * IPFS_CHUNK_BYTES):
            assert store.expected_cid(token) == await store.put(token)
        assert store.expected_cid("q" * (IPFS_CHUNK_BYTES + 1)) is None
        assert store.expected_cid("") is None


@pytest.mark.peers
async def test_confirm_stored_reads_back_only_what_it_cannot_tell(ipfs, monkeypatch):
    reads: list[str] = []
    real_get = ipfs.get

    async def counted(cid: str) -> str:
        reads.append(cid)
        content: str = await real_get(cid)
        return content

    monkeypatch.setattr(ipfs, "get", counted)
    await confirm_stored(ipfs, await ipfs.put(TOKEN), TOKEN)
    assert reads == []  # the node's CID is the token's own: nothing to read
    big = "b" * (IPFS_CHUNK_BYTES + 10)
    cid = await ipfs.put(big)
    await confirm_stored(ipfs, cid, big)
    assert reads == [cid]  # more than one block: read back and compared
    with pytest.raises(CredentialStoreError) as info:
        await confirm_stored(ipfs, cid, TOKEN)
    assert str(info.value).startswith(ERR_CONTENT_MISMATCH)


def test_the_direct_add_sends_the_body_httpx_would():
    """The store's own pool is called without httpx; its multipart body is byte for
    byte the one httpx encodes for `files=` with the same boundary."""
    from evops.integrations import credential_store

    files = {"file": ("credential", TOKEN.encode(), "application/octet-stream")}
    boundary, body = credential_store._multipart(files)
    expected = httpx.Request(
        "POST",
        "http://ipfs.test/api/v0/add",
        files=files,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert body == expected.read()
    assert credential_store._multipart(files)[0] != boundary  # fresh every time


@pytest.mark.parametrize("url", ["ftp://ipfs.test:5001", "ipfs.test:5001", ""])
def test_a_store_url_that_is_not_http_is_refused_at_once(url):
    with pytest.raises(ValueError, match="must start with http"):
        IpfsStore(url)


async def test_confirm_stored_reads_back_a_cid_that_is_not_the_tokens():
    """A node answering another CID (other add settings, or a lie) is read back:
    accepted when it serves the token, refused when it serves anything else."""
    other_cid = "QmWfVY9y3xjsixTgbd9AorQxH7VtMpzfx2HaWtsoUYecaX"  # "hello"'s
    served = {"body": TOKEN}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v0/cat"
        assert request.url.params["arg"] == other_cid
        return httpx.Response(200, text=served["body"])

    store = IpfsStore("http://ipfs.test", client=_mock_client(handler))
    assert store.expected_cid(TOKEN) != other_cid
    await confirm_stored(store, other_cid, TOKEN)
    served["body"] = "hello"
    with pytest.raises(CredentialStoreError) as info:
        await confirm_stored(store, other_cid, TOKEN)
    assert info.value.permanent is False
    assert str(info.value).startswith(ERR_CONTENT_MISMATCH)


@pytest.mark.peers
async def test_ipfs_same_token_same_cid_other_token_other_cid(ipfs):
    first = await ipfs.put(TOKEN)
    assert await ipfs.put(TOKEN) == first
    assert await ipfs.put(TOKEN + ".") != first


@pytest.mark.peers
async def test_ipfs_add_pins_what_it_stores(ipfs, ipfs_node):
    cid = await ipfs.put(TOKEN + " pinned")
    async with httpx.AsyncClient(base_url=ipfs_node.api_url, timeout=10) as http:
        response = await http.post("/api/v0/pin/ls", params={"arg": cid})
    assert response.status_code == 200
    assert cid in response.text


@pytest.mark.peers
async def test_ipfs_cid_v1_is_base32_and_round_trips(ipfs_node):
    async with IpfsStore(f"{ipfs_node.api_url}/api/v0/", cid_version=1) as store:
        cid = await store.put(TOKEN)
        assert cid.startswith("baf")
        assert cid == cid.lower()
        assert await store.get(cid) == TOKEN


@pytest.mark.peers
async def test_ipfs_cat_of_an_unknown_cid_is_a_transient_error_not_a_hang(ipfs):
    # The client allows 10 s; the node's own 2 s search limit answers first.
    with pytest.raises(CredentialStoreError) as info:
        await ipfs.get(MISSING_CID)
    assert info.value.permanent is False
    assert ERR_HTTP in str(info.value)
    assert "HTTP 500" in str(info.value)
    assert "timed out" in str(info.value)


@pytest.mark.peers
async def test_ipfs_malformed_cid_is_a_permanent_error(ipfs):
    with pytest.raises(CredentialStoreError) as info:
        await ipfs.get("not-a-cid")
    assert info.value.permanent is True
    assert "HTTP 400" in str(info.value)


@pytest.mark.peers
async def test_ipfs_unknown_api_path_is_a_permanent_error(ipfs_node):
    async with IpfsStore(f"{ipfs_node.api_url}/no/such/prefix") as store:
        with pytest.raises(CredentialStoreError) as info:
            await store.put(TOKEN)
    assert info.value.permanent is True
    assert "HTTP 404" in str(info.value)
    assert TOKEN not in str(info.value)


async def test_ipfs_nothing_listening_is_a_transient_error():
    async with IpfsStore(f"http://127.0.0.1:{free_port()}", timeout=5) as store:
        with pytest.raises(CredentialStoreError) as info:
            await store.put(TOKEN)
    assert info.value.permanent is False
    assert ERR_UNREACHABLE in str(info.value)
    assert TOKEN not in str(info.value)


@pytest.mark.peers
async def test_ipfs_node_going_away_mid_call_is_a_transient_error():
    # Its own node: this test kills it. js-ipfs ignores SIGTERM while the cat is
    # open, so stop() ends with SIGKILL after the grace period.
    with IpfsNode(stop_grace=0.5) as node:
        async with IpfsStore(node.api_url, timeout=60, cat_timeout=30) as store:
            cid = await store.put(TOKEN)
            assert await store.get(cid) == TOKEN
            pending = asyncio.create_task(store.get(MISSING_CID))
            await asyncio.sleep(0.5)  # let the request reach the node
            assert not pending.done()
            await asyncio.to_thread(node.stop)
            with pytest.raises(CredentialStoreError) as info:
                await pending
            assert info.value.permanent is False
            assert ERR_UNREACHABLE in str(info.value)

            # And with the node gone, the next call fails the same way.
            with pytest.raises(CredentialStoreError) as again:
                await store.put(TOKEN)
            assert again.value.permanent is False


# --- IPFS, answers a healthy node does not give ------------------------------------


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(500, False), (502, False), (503, False), (429, False), (400, True), (403, True)],
)
async def test_ipfs_status_codes_decide_permanence(status, permanent):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"Message": "nope", "Code": 0})

    store = IpfsStore("http://ipfs.test", client=_mock_client(handler))
    with pytest.raises(CredentialStoreError) as info:
        await store.put(TOKEN)
    assert info.value.permanent is permanent
    assert f"HTTP {status} nope" in str(info.value)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"<html>proxy</html>", "body is not JSON"), (b'{"Name":"x"}', "no Hash")],
)
async def test_ipfs_unusable_add_answers_are_permanent(body, fragment):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    store = IpfsStore("http://ipfs.test", client=_mock_client(handler))
    with pytest.raises(CredentialStoreError) as info:
        await store.put(TOKEN)
    assert info.value.permanent is True
    assert ERR_BAD_RESPONSE in str(info.value)
    assert fragment in str(info.value)


async def test_ipfs_add_request_shape_and_ndjson_answer():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        # With progress on, the node streams one JSON object per line; the file's
        # own line comes last.
        return httpx.Response(
            200,
            content=b'{"Bytes":10}\n{"Name":"credential","Hash":"QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"}\n',
        )

    store = IpfsStore("http://ipfs.test:5001/", client=_mock_client(handler))
    assert await store.put(TOKEN) == "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
    request = seen[0]
    assert request.method == "POST"
    assert request.url.path == "/api/v0/add"
    assert request.url.params["pin"] == "true"
    assert request.url.params["cid-version"] == "0"
    assert TOKEN.encode("utf-8") in request.content


async def test_ipfs_cat_always_sends_a_node_side_timeout_below_ours():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=TOKEN.encode("utf-8"))

    store = IpfsStore("http://ipfs.test", timeout=3, client=_mock_client(handler))
    assert await store.get("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG") == TOKEN
    assert seen[0].url.params["arg"] == "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
    assert seen[0].url.params["timeout"] == "1.5s"


async def test_ipfs_cat_answer_that_is_not_utf8_is_permanent():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"\xff\xfe\x00junk")

    store = IpfsStore("http://ipfs.test", client=_mock_client(handler))
    with pytest.raises(CredentialStoreError) as info:
        await store.get("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG")
    assert info.value.permanent is True
    assert "not UTF-8" in str(info.value)


async def test_a_server_that_never_answers_is_a_transient_timeout():
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    store = IpfsStore("http://ipfs.test", timeout=0.2, client=_mock_client(handler))
    with pytest.raises(CredentialStoreError) as info:
        await store.get("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG")
    assert info.value.permanent is False
    assert ERR_TIMEOUT in str(info.value)


def test_ipfs_store_rejects_bad_arguments():
    with pytest.raises(ValueError):
        IpfsStore("http://x", cid_version=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        IpfsStore("http://x", timeout=0)


# --- cache server --------------------------------------------------------------------


@pytest.fixture
def stand_in():
    async def block_number() -> int:
        return 1000

    with CacheServerStandIn(None, None, block_number=block_number) as server:
        yield server


@pytest.fixture
async def cache_store(stand_in):
    """A CacheServerStore whose requests are authenticated as one asset."""
    signer = LocalKeySigner.generate()
    did = DID.for_address(signer.address).canonical

    async def block_number() -> int:
        return 1000

    async with CacheServerClient(stand_in.url, block_number=block_number) as client:
        yield CacheServerStore(client.store_requester(signer, did), timeout=10)


async def test_cache_server_round_trip_returns_the_exact_token(cache_store, stand_in):
    assert isinstance(cache_store, CredentialStore)
    cid = await cache_store.put(TOKEN)
    assert cid.startswith("b")
    assert stand_in.store[cid] == TOKEN
    assert await cache_store.get(cid) == TOKEN
    assert await cache_store.put(TOKEN) == cid


async def test_confirm_stored_against_the_stand_in(cache_store, stand_in):
    cid = await cache_store.put(TOKEN)
    await confirm_stored(cache_store, cid, TOKEN)
    stand_in.store[cid] = TOKEN + " "  # the store now serves other bytes
    with pytest.raises(CredentialStoreError) as info:
        await confirm_stored(cache_store, cid, TOKEN)
    assert info.value.permanent is False
    assert str(info.value).startswith(ERR_CONTENT_MISMATCH)


async def test_cache_server_store_survives_a_revoked_session(cache_store, stand_in):
    cid = await cache_store.put(TOKEN)
    stand_in.revoke_access_tokens()  # the next call answers 401: refresh, not fail
    assert await cache_store.get(cid) == TOKEN
    assert (stand_in.login_count, stand_in.refresh_count) == (1, 1)


async def test_factory_cache_server_store_round_trips_through_the_client(stand_in):
    """What the pipeline builds in cache-server mode, against the stand-in."""
    signer = LocalKeySigner.generate()
    did = DID.for_address(signer.address).canonical

    async def block_number() -> int:
        return 1000

    async with CacheServerClient(stand_in.url, block_number=block_number) as client:
        with override_settings(CREDENTIAL_STORE="cache-server"):
            store = credential_store_from_settings(
                cache_server=client.store_requester(signer, did)
            )
        cid = await store.put(TOKEN)
        assert await store.get(cid) == TOKEN


async def test_cache_server_unknown_cid_is_permanent(cache_store):
    with pytest.raises(CredentialStoreError) as info:
        await cache_store.get("bafkreimissing")
    assert info.value.permanent is True
    assert "HTTP 404" in str(info.value)


async def test_cache_server_failures_are_transient(cache_store, stand_in):
    stand_in.set_faults(fail_rate=1.0)
    with pytest.raises(CredentialStoreError) as info:
        await cache_store.put(TOKEN)
    assert info.value.permanent is False
    assert TOKEN not in str(info.value)


async def test_cache_server_store_with_an_httpx_client():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            assert request.url.path == "/v1/store"
            assert (
                request.read()
                == httpx.Request(
                    "POST", "http://x", json={"data": TOKEN, "type": "S3"}
                ).read()
            )
            return httpx.Response(
                201, text="bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
            )
        assert (
            request.url.path
            == "/v1/store/bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        )
        # NestJS may send a string as JSON: unwrap it.
        return httpx.Response(200, json=TOKEN)

    async with httpx.AsyncClient(
        base_url="http://cache.test", transport=httpx.MockTransport(handler)
    ) as http:
        store = CacheServerStore(http)
        assert (
            await store.put(TOKEN)
            == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        )
        assert (
            await store.get(
                "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
            )
            == TOKEN
        )


@pytest.mark.parametrize(
    ("response", "permanent"),
    [
        (httpx.Response(200, content=b""), True),  # empty: no such entry
        # a bogus CID is the store misbehaving for now: transient (issue 11)
        (httpx.Response(201, text="not a cid"), False),
        (httpx.Response(503), False),
        (httpx.Response(400, json={"message": ["data must be a string"]}), True),
    ],
)
async def test_cache_server_unusable_answers(response: httpx.Response, permanent):
    def handler(request: httpx.Request) -> httpx.Response:
        return response

    async with httpx.AsyncClient(
        base_url="http://cache.test", transport=httpx.MockTransport(handler)
    ) as http:
        store = CacheServerStore(http)
        with pytest.raises(CredentialStoreError) as info:
            if response.status_code == 200:
                await store.get(
                    "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
                )
            else:
                await store.put(TOKEN)
    assert info.value.permanent is permanent


class _AuthError(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@pytest.mark.parametrize("permanent", [True, False])
async def test_cache_server_requester_errors_keep_their_verdict(permanent):
    async def request(method: str, path: str, /, **kwargs) -> httpx.Response:
        raise _AuthError("login refused", permanent=permanent)

    with pytest.raises(CredentialStoreError) as info:
        await CacheServerStore(request).put(TOKEN)
    assert info.value.permanent is permanent
    assert "login refused" in str(info.value)


async def test_cache_server_requester_bugs_are_not_swallowed():
    async def request(method: str, path: str, /, **kwargs) -> httpx.Response:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await CacheServerStore(request).put(TOKEN)


# --- settings ------------------------------------------------------------------------


async def test_factory_builds_the_ipfs_store_from_settings():
    with override_settings(
        CREDENTIAL_STORE="ipfs",
        IPFS_API_URL="http://ipfs.example:5001",
        CREDENTIAL_STORE_TIMEOUT=7.0,
    ):
        store = credential_store_from_settings()
    assert isinstance(store, IpfsStore)
    assert (store.api_url, store.timeout, store.cid_version) == (
        "http://ipfs.example:5001",
        7.0,
        0,
    )
    await store.aclose()


def test_factory_builds_the_cache_server_store_with_the_callers_requester():
    async def request(method: str, path: str, /, **kwargs) -> httpx.Response:
        raise AssertionError("not called")

    with override_settings(
        CREDENTIAL_STORE="cache-server", CREDENTIAL_STORE_TIMEOUT=4.0
    ):
        store = credential_store_from_settings(cache_server=request)
        assert isinstance(store, CacheServerStore)
        assert store.timeout == 4.0
        with pytest.raises(ValueError, match="cache-server requester"):
            credential_store_from_settings()


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"CREDENTIAL_STORE": "s3"}, "CREDENTIAL_STORE"),
        ({"IPFS_API_URL": "127.0.0.1:5001"}, "IPFS_API_URL"),
        ({"CREDENTIAL_STORE_TIMEOUT": "soon"}, "CREDENTIAL_STORE_TIMEOUT"),
        ({"CREDENTIAL_STORE_TIMEOUT": "0"}, "CREDENTIAL_STORE_TIMEOUT"),
    ],
)
def test_malformed_credential_store_settings_name_the_variable(env, name):
    clean = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "SECRET_KEY": "x" * 60,
        "EVOPS_KEY_ENCRYPTION_KEYS": "k1:" + "A" * 43 + "=",
        **env,
    }
    result = subprocess.run(
        [sys.executable, "-c", "import evops.settings"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{name} must" in result.stderr
