"""The PKCS#11 signer backend: asset keys that never leave a hardware token.

Keys are secp256k1 EC keys (`CKA_EC_PARAMS` = OID 1.3.132.0.10) created inside the
token, private, sensitive and non-extractable; the asset row keeps only the key's
`CKA_ID`, the token's label and the public key (`Asset.token_key_id`,
`Asset.token_label`, `Asset.public_key`). The token signs the 32-byte digest with
`CKM_ECDSA`; `evops.protocol.ethsig` turns the raw `r || s` into an Ethereum
signature (low s, recovery id found against the stored public key).

Sessions. `TokenPool` keeps up to `PKCS11_POOL_SIZE` open read-write sessions per
token, each used by one thread at a time, each with its own cache of key handles
(a key search costs milliseconds on a token with thousands of objects; a signature
with a known handle a fraction of one). The first session logs in; the others share
that login (PKCS#11 logins are per application). python-pkcs11 calls `C_Initialize`
without `CKF_OS_LOCKING_OK`, which allows a module to assume no two threads call it at
once (SoftHSM2 then switches its own locks off), so every call into the module holds
one process-wide lock: the listener's event loop, the database threads and the
console's request threads may all sign.

Failures. An unplugged, missing or locked token, a refused PIN, a closed session:
`TokenUnavailable`, transient (`permanent = False`), so the pipeline retries with
backoff and the heartbeat shows it (`token_health`). A refused PIN is not tried again
until the PIN itself changes: a real HSM locks the user after a few wrong PINs.
The PIN comes from `PKCS11_PIN_FILE` or the `PKCS11_PIN` environment variable, read
when a session is opened; it is never a Django setting (the debug page lists those),
never logged, and no message or `repr` here contains it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from assets.crypto import KeyCustodyError, address_of_public_key, eip191_digest
from evops.protocol import ethsig
from evops.protocol.errors import SignatureError

logger = logging.getLogger(__name__)

# DER of the named curve secp256k1 (OID 1.3.132.0.10), the value of CKA_EC_PARAMS.
SECP256K1_PARAMS = bytes.fromhex("06052b8104000a")
KEY_LABEL = "evops-asset"
KEY_ID_BYTES = 16
_KEY_CACHE_LIMIT = 100_000

PIN_ENV = "PKCS11_PIN"

TOKEN_UNAVAILABLE = "PKCS#11 token {label!r} is unavailable: {reason}"  # noqa: S105
NOT_CONFIGURED = (
    "the PKCS#11 backend is not configured: set PKCS11_MODULE, PKCS11_TOKEN_LABEL "
    "and PKCS11_PIN_FILE (or PKCS11_PIN)"
)
MODULE_UNLOADABLE = "cannot load the PKCS#11 module {path!r} ({reason})"
TOKEN_MISSING = "no token with this label is present (unplugged or not initialised)"  # noqa: S105
PIN_MISSING = "no PIN: set PKCS11_PIN_FILE or PKCS11_PIN"
PIN_UNREADABLE = "cannot read PKCS11_PIN_FILE ({reason})"
PIN_REFUSED = (
    "the token refused the PIN ({error}); evops will not try this PIN again, since "
    "a token locks its user after a few wrong PINs: fix PKCS11_PIN_FILE / PKCS11_PIN"
)
PIN_LOCKED = "the token's user PIN is locked; unlock it with the token's tools"
TOKEN_ERROR = "the token failed ({error})"  # noqa: S105
KEY_MISSING = (
    "the token {label!r} holds no private key with id {key_id} (wrong token, or the "
    "key was deleted)"
)
KEY_MISMATCH = (
    "the token key {key_id} does not sign as {address}: its public key differs from "
    "the one recorded for the asset"
)
KEY_READABLE = "the token created a key that is extractable or not sensitive"
LABEL_MISMATCH = (
    "the key of {address} lives in token {stored!r}, but PKCS11_TOKEN_LABEL is "
    "{configured!r}"
)


class TokenError(KeyCustodyError):
    """A PKCS#11 failure; `permanent` tells the pipeline whether retrying can help."""

    permanent = False


class TokenUnavailable(TokenError):
    """The token cannot be used now (unplugged, locked, PIN refused): transient."""


class TokenKeyMissing(TokenError):
    """The token has no key with the recorded id (another token may be plugged in)."""


class TokenKeyMismatch(TokenError):
    """The token's key signs as another address than the asset's: never retried."""

    permanent = True


@dataclass(frozen=True)
class TokenKey:
    """A key in the token as the asset row records it (no key material)."""

    label: str
    key_id: bytes
    public_key: bytes  # 64 bytes x || y

    @property
    def address(self) -> str:
        return address_of_public_key(self.public_key)


# --- the module and its lock ---------------------------------------------------------

# One lock for every call into any PKCS#11 module of this process (see the docstring).
MODULE_LOCK = threading.RLock()


def _pkcs11() -> Any:
    import pkcs11

    return pkcs11


def _load(path: str) -> Any:
    pkcs11 = _pkcs11()
    try:
        with MODULE_LOCK:
            return pkcs11.lib(path)
    except (OSError, RuntimeError) as exc:
        raise TokenUnavailable(
            MODULE_UNLOADABLE.format(path=path, reason=type(exc).__name__)
        ) from None


def _pin_fingerprint(pin: str) -> bytes:
    return hashlib.sha256(b"evops-pkcs11-pin|" + pin.encode()).digest()


@sensitive_variables()
def _read_pin() -> str:
    path = str(getattr(settings, "PKCS11_PIN_FILE", "") or "")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenUnavailable(
                PIN_UNREADABLE.format(reason=type(exc).__name__)
            ) from None
        pin = text.strip("\r\n")
    else:
        pin = os.environ.get(PIN_ENV, "")
    if not pin:
        raise TokenUnavailable(PIN_MISSING)
    return pin


def _ec_point(raw: bytes) -> bytes:
    """x || y from CKA_EC_POINT (DER OCTET STRING of 04||x||y, or the raw point)."""
    data = bytes(raw)
    if len(data) == 67 and data[:3] == b"\x04\x41\x04":
        return data[3:]
    if len(data) == 65 and data[0] == 4:
        return data[1:]
    raise TokenError(f"unexpected CKA_EC_POINT of {len(data)} bytes")


class _Session:
    """One open session and the key handles it has found."""

    __slots__ = ("enumerated", "generation", "keys", "session")

    def __init__(self, session: Any, generation: int) -> None:
        self.session = session
        self.generation = generation
        self.keys: dict[bytes, Any] = {}
        self.enumerated = False


_UNAVAILABLE_ERRORS = (
    "DeviceError",
    "DeviceMemory",
    "DeviceRemoved",
    "GeneralError",
    "FunctionFailed",
    "HostMemory",
    "SessionClosed",
    "SessionCount",
    "SessionHandleInvalid",
    "SlotIDInvalid",
    "TokenNotPresent",
    "TokenNotRecognised",
    "UserNotLoggedIn",
    "NoSuchToken",
    "ObjectHandleInvalid",
    "KeyHandleInvalid",
)


class TokenPool:
    """Sessions on one token, shared by every thread of the process."""

    def __init__(self, *, module: str, label: str, size: int = 4) -> None:
        self.module = module
        self.label = label
        self.size = max(1, size)
        self._cond = threading.Condition()
        self._idle: list[_Session] = []
        self._open = 0
        self._anchor: Any = None
        self._generation = 0
        self._refused_pin: bytes | None = None
        self.last_error = ""

    def __repr__(self) -> str:
        return f"TokenPool(module={self.module!r}, label={self.label!r})"

    # --- opening and closing ----------------------------------------------------------

    def _unavailable(self, reason: str) -> TokenUnavailable:
        self.last_error = reason
        return TokenUnavailable(
            TOKEN_UNAVAILABLE.format(label=self.label, reason=reason)
        )

    def _token(self) -> Any:
        lib = _load(self.module)
        pkcs11 = _pkcs11()
        try:
            return lib.get_token(token_label=self.label)
        except pkcs11.exceptions.NoSuchToken:
            raise self._unavailable(TOKEN_MISSING) from None
        except pkcs11.exceptions.PKCS11Error as exc:
            raise self._unavailable(
                TOKEN_ERROR.format(error=type(exc).__name__)
            ) from None

    @sensitive_variables()
    def _open_session(self) -> Any:
        """Open a session (the first one logs in); call with MODULE_LOCK held."""
        pkcs11 = _pkcs11()
        token = self._token()
        if self._anchor is not None:
            try:
                return token.open(rw=True)
            except pkcs11.exceptions.PKCS11Error as exc:
                raise self._classify(exc) from None
        pin = _read_pin()
        fingerprint = _pin_fingerprint(pin)
        if self._refused_pin == fingerprint:
            raise self._unavailable(PIN_REFUSED.format(error="earlier"))
        try:
            session = token.open(rw=True, user_pin=pin)
        except pkcs11.exceptions.UserAlreadyLoggedIn:
            # Another part of this process logged in to the token: share it.
            session = token.open(rw=True)
        except (pkcs11.exceptions.PinIncorrect, pkcs11.exceptions.PinInvalid) as exc:
            self._refused_pin = fingerprint
            raise self._unavailable(
                PIN_REFUSED.format(error=type(exc).__name__)
            ) from None
        except pkcs11.exceptions.PinLocked:
            raise self._unavailable(PIN_LOCKED) from None
        except pkcs11.exceptions.PKCS11Error as exc:
            raise self._classify(exc) from None
        self._refused_pin = None
        self._anchor = session
        return session

    def _classify(self, exc: BaseException) -> TokenError:
        name = type(exc).__name__
        if name == "PinLocked":
            return self._unavailable(PIN_LOCKED)
        if name in _UNAVAILABLE_ERRORS:
            return self._unavailable(TOKEN_ERROR.format(error=name))
        return TokenError(
            TOKEN_UNAVAILABLE.format(
                label=self.label, reason=TOKEN_ERROR.format(error=name)
            )
        )

    def reset(self) -> None:
        """Drop every session (the token went away); the next use opens new ones."""
        with self._cond:
            self._generation += 1
            idle, self._idle = self._idle, []
            anchor, self._anchor = self._anchor, None
            # Sessions in use now belong to the old generation: closed when released.
            self._open = 0
            self._cond.notify_all()
        with MODULE_LOCK:
            for held in idle:
                if held.session is not anchor:
                    with contextlib.suppress(Exception):
                        held.session.close()
            if anchor is not None:
                with contextlib.suppress(Exception):
                    anchor.close()  # logs out

    def close(self) -> None:
        self.reset()

    @contextlib.contextmanager
    def session(self, timeout: float = 30.0) -> Iterator[_Session]:
        """A session for this thread alone; token failures reset the pool."""
        held = self._acquire(timeout)
        broken = False
        pkcs11 = _pkcs11()
        try:
            yield held
        except pkcs11.exceptions.PKCS11Error as exc:
            error = self._classify(exc)
            broken = isinstance(error, TokenUnavailable)
            raise error from None
        finally:
            self._release(held, broken)
        self.last_error = ""

    def _acquire(self, timeout: float) -> _Session:
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._open < self.size:
                    self._open += 1
                    generation = self._generation
                    break
                if not self._cond.wait(timeout):
                    raise self._unavailable("no free session (all busy)")
        try:
            with MODULE_LOCK:
                return _Session(self._open_session(), generation)
        except BaseException:
            with self._cond:
                if generation == self._generation:
                    self._open -= 1
                self._cond.notify()
            raise

    def _release(self, held: _Session, broken: bool) -> None:
        if broken and held.generation == self._generation:
            self.reset()
        with self._cond:
            if held.generation == self._generation:
                self._idle.append(held)
                self._cond.notify()
                return
        with MODULE_LOCK, contextlib.suppress(Exception):
            held.session.close()

    # --- keys -------------------------------------------------------------------------

    def _find(self, held: _Session, key_id: bytes) -> Any:
        key = held.keys.get(key_id)
        if key is not None:
            return key
        pkcs11 = _pkcs11()
        attribute, object_class = pkcs11.Attribute, pkcs11.ObjectClass
        with MODULE_LOCK:
            if not held.enumerated:
                # One pass over the token's private keys is far cheaper than one
                # search per key on a token holding thousands.
                held.enumerated = True
                for found in held.session.get_objects(
                    {attribute.CLASS: object_class.PRIVATE_KEY}
                ):
                    with contextlib.suppress(pkcs11.exceptions.PKCS11Error):
                        held.keys[bytes(found[attribute.ID])] = found
                key = held.keys.get(key_id)
            if key is None:
                matches = list(
                    held.session.get_objects(
                        {
                            attribute.CLASS: object_class.PRIVATE_KEY,
                            attribute.ID: key_id,
                        }
                    )
                )
                if not matches:
                    raise TokenKeyMissing(
                        KEY_MISSING.format(label=self.label, key_id=key_id.hex())
                    )
                key = matches[0]
        if len(held.keys) >= _KEY_CACHE_LIMIT:
            held.keys.clear()
        held.keys[key_id] = key
        return key

    def sign_digest(self, key_id: bytes, digest: bytes) -> bytes:
        """Raw `CKM_ECDSA` signature (64 bytes r || s) of a 32-byte digest."""
        pkcs11 = _pkcs11()
        with self.session() as held:
            key = self._find(held, key_id)
            with MODULE_LOCK:
                try:
                    return bytes(
                        key.sign(bytes(digest), mechanism=pkcs11.Mechanism.ECDSA)
                    )
                except pkcs11.exceptions.PKCS11Error as exc:
                    if type(exc).__name__ in (
                        "ObjectHandleInvalid",
                        "KeyHandleInvalid",
                    ):
                        held.keys.pop(key_id, None)
                    raise

    def _new_id(self) -> bytes:
        return secrets.token_bytes(KEY_ID_BYTES)

    def _private_template(self) -> dict[Any, Any]:
        attribute = _pkcs11().Attribute
        return {
            attribute.TOKEN: True,
            attribute.PRIVATE: True,
            attribute.SENSITIVE: True,
            attribute.EXTRACTABLE: False,
            attribute.SIGN: True,
            attribute.LABEL: KEY_LABEL,
        }

    def generate(self) -> TokenKey:
        """A fresh secp256k1 key pair made inside the token; the private half stays."""
        pkcs11 = _pkcs11()
        attribute = pkcs11.Attribute
        key_id = self._new_id()
        with self.session() as held, MODULE_LOCK:
            public, private = held.session.generate_keypair(
                pkcs11.KeyType.EC,
                0,
                store=True,
                id=key_id,
                label=KEY_LABEL,
                public_template={
                    attribute.EC_PARAMS: SECP256K1_PARAMS,
                    attribute.TOKEN: True,
                    attribute.VERIFY: True,
                },
                private_template=self._private_template(),
            )
            if private[attribute.EXTRACTABLE] or not private[attribute.SENSITIVE]:
                private.destroy()
                public.destroy()
                raise TokenError(KEY_READABLE)
            point = _ec_point(public[attribute.EC_POINT])
            held.keys[key_id] = private
        return TokenKey(label=self.label, key_id=key_id, public_key=point)

    @sensitive_variables()
    def create_from_secret(self, secret: bytes, public_key: bytes) -> TokenKey:
        """Store an existing private key in the token (sensitive, non-extractable).

        Called by `assets.crypto.move_into_token` only, which holds the plaintext.
        """
        pkcs11 = _pkcs11()
        attribute = pkcs11.Attribute
        key_id = self._new_id()
        template = {
            attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY,
            attribute.KEY_TYPE: pkcs11.KeyType.EC,
            attribute.EC_PARAMS: SECP256K1_PARAMS,
            attribute.VALUE: bytes(secret),
            attribute.ID: key_id,
            **self._private_template(),
        }
        with self.session() as held, MODULE_LOCK:
            private = held.session.create_object(template)
            held.keys[key_id] = private
        return TokenKey(label=self.label, key_id=key_id, public_key=public_key)

    def destroy(self, key_ids: Iterable[bytes]) -> int:
        """Delete the token's objects (private and public) with these ids; how many."""
        pkcs11 = _pkcs11()
        removed = 0
        with self.session() as held, MODULE_LOCK:
            for key_id in key_ids:
                held.keys.pop(key_id, None)
                for found in list(
                    held.session.get_objects({pkcs11.Attribute.ID: bytes(key_id)})
                ):
                    found.destroy()
                    removed += 1
        # Other sessions' cached handles to these keys are now invalid.
        with self._cond:
            for idle in self._idle:
                for key_id in key_ids:
                    idle.keys.pop(bytes(key_id), None)
        return removed

    def health(self) -> dict[str, Any]:
        """Whether the token answers now: {"ok", "token", "error"}."""
        pkcs11 = _pkcs11()
        try:
            with self.session(timeout=5.0) as held, MODULE_LOCK:
                try:
                    held.session.generate_random(64)
                except pkcs11.exceptions.RandomNoRNG:
                    list(held.session.get_objects({pkcs11.Attribute.ID: b"\0"}))
        except TokenError as exc:
            return {"ok": False, "token": self.label, "error": str(exc)}
        return {"ok": True, "token": self.label, "error": ""}


# --- the process's pools -------------------------------------------------------------

_pools: dict[tuple[str, str], TokenPool] = {}
_pools_lock = threading.Lock()


def configured_label() -> str:
    return str(getattr(settings, "PKCS11_TOKEN_LABEL", "") or "")


def pool_for(label: str | None = None) -> TokenPool:
    """The pool of token `label` (default `PKCS11_TOKEN_LABEL`), made on first use."""
    module = str(getattr(settings, "PKCS11_MODULE", "") or "")
    label = label or configured_label()
    if not module or not label:
        raise TokenUnavailable(NOT_CONFIGURED)
    with _pools_lock:
        pool = _pools.get((module, label))
        if pool is None:
            pool = _pools[(module, label)] = TokenPool(
                module=module,
                label=label,
                size=int(getattr(settings, "PKCS11_POOL_SIZE", 4)),
            )
        return pool


def close_pools() -> None:
    """Close every session (tests; process shutdown)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


# --- the signer ----------------------------------------------------------------------


class TokenSigner:
    """`Signer` whose key lives in a PKCS#11 token; holds only ids and a public key."""

    __slots__ = ("_address", "_key_id", "_label", "_public_key")

    def __init__(
        self, *, address: str, label: str, key_id: bytes, public_key: bytes
    ) -> None:
        self._address = address
        self._label = label
        self._key_id = bytes(key_id)
        self._public_key = bytes(public_key)

    @property
    def address(self) -> str:
        return self._address

    @property
    def location(self) -> str:
        return f"token {self._label!r}, key id {self._key_id.hex()}"

    def sign_hash(self, digest: bytes) -> bytes:
        digest = bytes(digest)
        if len(digest) != 32:
            raise ValueError("sign_hash needs exactly 32 bytes")
        raw = pool_for(self._label).sign_digest(self._key_id, digest)
        try:
            return ethsig.to_ethereum_signature(raw, digest, self._public_key)
        except SignatureError:
            raise TokenKeyMismatch(
                KEY_MISMATCH.format(key_id=self._key_id.hex(), address=self._address)
            ) from None

    def sign_message(self, message: bytes) -> bytes:
        return self.sign_hash(eip191_digest(bytes(message)))

    def sign_transaction(self, transaction: Mapping[str, Any]) -> bytes:
        return ethsig.sign_transaction_with(self.sign_hash, transaction)

    def __repr__(self) -> str:
        return (
            f"TokenSigner(address={self._address!r}, token={self._label!r}, "
            f"key_id={self._key_id.hex()!r})"
        )


def token_health() -> dict[str, Any]:
    """The configured token's state for the heartbeat (`{"ok", "token", "error"}`)."""
    try:
        pool = pool_for()
    except TokenError as exc:
        return {"ok": False, "token": configured_label(), "error": str(exc)}
    return pool.health()
