"""Django settings for evops, read from the environment with django-environ.

Every variable is documented in `.env.example` and the README. A `.env` file beside
`manage.py` is read when present (the sandbox writes one); real environment wins.
A missing or malformed mandatory variable stops start-up with `ImproperlyConfigured`
naming it; rules that span several settings are system checks (`evops/checks.py`).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

import environ
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured
from django.templatetags.static import static

from evops.channel_layer import REDIS_LAYER_BLOCKING_SECONDS, channel_layer_config

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# EVOPS_ENV_FILE names another file; set it empty to read none (the tests do).
_dotenv = os.environ.get("EVOPS_ENV_FILE", str(BASE_DIR / ".env"))
if _dotenv and Path(_dotenv).is_file():
    environ.Env.read_env(_dotenv, overwrite=False)


def _bool(name: str, default: bool) -> bool:
    raw: str = env.str(name, default="")
    if raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}.")


def _int(name: str, default: int, *, minimum: int = 0) -> int:
    raw: str = env.str(name, default="")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}.") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}.")
    return value


_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def parse_key_encryption_keys(raw: str) -> list[tuple[str, bytes]]:
    """Parse `EVOPS_KEY_ENCRYPTION_KEYS`: `id:base64key[,id:base64key...]`.

    The first key encrypts; every key decrypts. Each key is 32 bytes (AES-256), given as
    standard or URL-safe base64. The key id is stored beside each ciphertext so that a
    rotation can tell which key a row was sealed with. The error never echoes key bytes.
    """
    name = "EVOPS_KEY_ENCRYPTION_KEYS"
    keys: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for position, item in enumerate(raw.split(","), start=1):
        item = item.strip()
        if not item:
            continue
        key_id, sep, material = item.partition(":")
        if not sep or not _KEY_ID.match(key_id):
            raise ImproperlyConfigured(
                f"{name}: entry {position} must look like 'id:base64key' with an id of "
                "1-32 letters, digits, '-' or '_'."
            )
        if key_id in seen:
            raise ImproperlyConfigured(f"{name}: key id {key_id!r} appears twice.")
        try:
            padded = material.strip() + "=" * (-len(material.strip()) % 4)
            key = base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
        except (binascii.Error, ValueError):
            raise ImproperlyConfigured(
                f"{name}: key {key_id!r} is not valid base64."
            ) from None
        if len(key) != 32:
            raise ImproperlyConfigured(
                f"{name}: key {key_id!r} must decode to 32 bytes, not {len(key)}."
            )
        seen.add(key_id)
        keys.append((key_id, key))
    if not keys:
        raise ImproperlyConfigured(f"Set the {name} environment variable.")
    return keys


# --- Core Django ---------------------------------------------------------------------

# Read lazily: commands that need nothing (help, generate_encryption_key, --version)
# run on a fresh checkout. Django refuses an empty SECRET_KEY where it is used, and the
# system check evops.E002 (every command that runs checks) and the ASGI entry point
# (`evops.startup`) refuse to start without it.
SECRET_KEY: str = env.str("SECRET_KEY", default="").strip()
DEBUG = _bool("DEBUG", False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    # Before django.contrib.admin: its templates replace the admin's.
    "unfold",
    "unfold.contrib.filters",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",  # login throttling and the failed-login audit
    "django_otp",  # optional TOTP second factor for staff (ADMIN_OTP_REQUIRED)
    "django_otp.plugins.otp_totp",
    "evops",
    "assets",
    "claims",
    "console",  # last: its post_migrate creates the groups once all permissions exist
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files straight after the security headers, before sessions and auth.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: it turns a lockout into the lockout response.
    "axes.middleware.AxesMiddleware",
]

# django-axes first: it refuses a locked-out login before the password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "evops.urls"
WSGI_APPLICATION = "evops.wsgi.application"
ASGI_APPLICATION = "evops.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_DATABASE_SCHEMES = ("sqlite:", "postgres://", "postgresql://", "pgsql://")
if not env.str("DATABASE_URL", default="sqlite:").startswith(_DATABASE_SCHEMES):
    raise ImproperlyConfigured(
        "DATABASE_URL is malformed: use sqlite:///path or postgres://user@host:port/name."
    )
try:
    DATABASES = {
        "default": env.db_url(
            "DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
        )
    }
except (ImproperlyConfigured, KeyError, ValueError) as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is malformed: {exc}") from None
DATABASES["default"].setdefault("CONN_MAX_AGE", _int("DATABASE_CONN_MAX_AGE", 60))
# psycopg's server-side prepared statements: a statement is prepared on a connection
# after this many runs (empty or 0: off, as Django leaves them, so that a PgBouncer in
# transaction mode before 1.21 works). Without such a pooler, 5 cut PostgreSQL's CPU
# in a request burst by about a quarter (bench/README.md).
_PREPARE_THRESHOLD = _int("DATABASE_PREPARE_THRESHOLD", 0)
if _PREPARE_THRESHOLD and DATABASES["default"]["ENGINE"].endswith("postgresql"):
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = (
        _PREPARE_THRESHOLD
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The local default has two writers (the listener and the console): WAL lets
    # readers run beside a writer, IMMEDIATE transactions take the write lock up front
    # instead of failing on upgrade, and the timeout waits for the lock instead of
    # "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation."
        "UserAttributeSimilarityValidator"
    },
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
# One date format everywhere in the console, to the second, with the zone.
DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = DATETIME_FORMAT
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = DATE_FORMAT
TIME_FORMAT = "H:i:s"
FORMAT_MODULE_PATH = ["evops.formats"]
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where `manage.py collectstatic` puts the admin's CSS and scripts; WhiteNoise serves
# them from there (compressed, with far-future cache headers) in the console process.
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        # Hashed names (cacheable forever) once collected; in DEBUG the plain storage,
        # so the sandbox and tests need no collectstatic.
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Security (production defaults; relaxed only when DEBUG is on) ------------------

SECURE_SSL_REDIRECT = _bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = _bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = _bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = _int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = _bool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if _bool("BEHIND_TLS_PROXY", False) else None
)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Check ids to silence, comma-separated (e.g. evops.E004 for a plain-http peer on a
# private network you trust).
SILENCED_SYSTEM_CHECKS = env.list("SILENCED_SYSTEM_CHECKS", default=[])

# Content-Security-Policy (django-csp 4): scripts only from this origin or inline with
# the per-response nonce (the live-update script); styles from this origin or inline
# (the admin and the console set style attributes); nothing framed, no plugins.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        # 'unsafe-eval': django-unfold's Alpine.js (standard build; unfold ships no
        # CSP build) evaluates its x-data / x-on attributes with the Function
        # constructor. Inline <script> still needs the response's nonce.
        "script-src": [SELF, NONCE, "'unsafe-eval'"],
        "style-src": [SELF, "'unsafe-inline'"],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# Login throttling (django-axes): after LOGIN_FAILURE_LIMIT wrong passwords for one
# user name from one address, that pair is locked out for LOGIN_COOLOFF_MINUTES. Every
# failure is logged (logger `axes`) and kept in the database; a superuser sees the
# attempts and lockouts in the console (Axes section) and can delete one to unlock.
AXES_FAILURE_LIMIT = _int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=_int("LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_ENABLE_ACCESS_FAILURE_LOG = True
AXES_LOCKOUT_TEMPLATE = "evops/lockout.html"
# The audit log names the user name and address of each failure (never the password,
# which django-axes always masks); a masked log could not say who was attacked.
AXES_SENSITIVE_PARAMETERS: list[str] = []
AXES_VERBOSE = False  # no start-up banner on every command; failures are still logged

# Staff second factor (django-otp, TOTP): when true the console admits only users
# verified by a TOTP device, asked for at login. Add each staff user's device (admin:
# TOTP devices) before turning it on.
ADMIN_OTP_REQUIRED = _bool("ADMIN_OTP_REQUIRED", False)
OTP_TOTP_ISSUER = "evops"

# --- Key custody ---------------------------------------------------------------------

# [(key id, 32-byte AES key), ...]; the first encrypts, all decrypt. A malformed value
# stops start-up here; an unset one is an empty list, so commands that need no key run
# bare: `assets.crypto` raises ImproperlyConfigured naming the variable where a key is
# used, system check evops.E003 stops every command that runs checks, and the ASGI
# entry point refuses to start (`evops.startup`).
EVOPS_KEY_ENCRYPTION_KEYS: list[tuple[str, bytes]] = (
    parse_key_encryption_keys(env.str("EVOPS_KEY_ENCRYPTION_KEYS", default=""))
    if env.str("EVOPS_KEY_ENCRYPTION_KEYS", default="").strip()
    else []
)

# --- Cache server (SSI Hub) --------------------------------------------------------


def _float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw: str = env.str(name, default="")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}.") from None
    if not value > minimum:
        raise ImproperlyConfigured(f"{name} must be more than {minimum}, not {raw}.")
    return value


# Base URL of the Energy Web cache server; a trailing /v1 is accepted and ignored.
CACHE_SERVER_URL = env.str(
    "CACHE_SERVER_URL", default="https://identitycache-dev.energyweb.org"
).rstrip("/")
if not CACHE_SERVER_URL.startswith(("https://", "http://")):
    raise ImproperlyConfigured("CACHE_SERVER_URL must be an http(s) URL.")
CACHE_SERVER_TIMEOUT = _float("CACHE_SERVER_TIMEOUT", 10.0)
CACHE_SERVER_MAX_CONCURRENCY = _int("CACHE_SERVER_MAX_CONCURRENCY", 50, minimum=1)
# Logged-in asset sessions kept (LRU, about 1.5 KB each): at least the fleet's size,
# or each reconciliation pass logs the oldest assets in again.
CACHE_SERVER_MAX_SESSIONS = _int("CACHE_SERVER_MAX_SESSIONS", 50_000, minimum=1)
CACHE_SERVER_LOGIN = env.str("CACHE_SERVER_LOGIN", default="auto").strip().lower()
if CACHE_SERVER_LOGIN not in {"identity", "siwe", "auto"}:
    raise ImproperlyConfigured(
        "CACHE_SERVER_LOGIN must be identity, siwe or auto, "
        f"not {CACHE_SERVER_LOGIN!r}."
    )
# The role evops requests for each asset, and the claim types it accepts as issued.
PREQUALIFICATION_ROLE = env.str(
    "PREQUALIFICATION_ROLE", default="prequalified.roles.tso.apps.elia.iam.ewc"
).strip()
if not PREQUALIFICATION_ROLE:
    raise ImproperlyConfigured("Set the PREQUALIFICATION_ROLE environment variable.")
ALLOWED_CLAIM_TYPES = [
    item.strip()
    for item in env.list("ALLOWED_CLAIM_TYPES", default=[PREQUALIFICATION_ROLE])
    if item.strip()
]
if PREQUALIFICATION_ROLE not in ALLOWED_CLAIM_TYPES:
    ALLOWED_CLAIM_TYPES.insert(0, PREQUALIFICATION_ROLE)
# Issuers evops accepts, pinned locally (DIDs in any form, or addresses). Empty: the
# hub's role definitions decide (a DID listing, or the issuer's role chain). Set:
# only these issuers pass, and a hub listing can narrow the list, never widen it.
TRUSTED_ISSUERS = [
    item.strip() for item in env.list("TRUSTED_ISSUERS", default=[]) if item.strip()
]
for _issuer in TRUSTED_ISSUERS:
    if not re.match(r"^(did:ethr:([a-z0-9_-]+:)?)?0x[0-9a-fA-F]{40}$", _issuer):
        raise ImproperlyConfigured(
            f"TRUSTED_ISSUERS: {_issuer[:80]!r} is not a did:ethr DID or an address."
        )
# Most role credentials a role chain may take (issuerType ROLE, protocol.md §8).
ROLE_CHAIN_MAX_DEPTH = _int("ROLE_CHAIN_MAX_DEPTH", 3, minimum=1)
# Service entries of one DID document examined when looking for a role credential.
ROLE_PROOF_MAX_SERVICES = _int("ROLE_PROOF_MAX_SERVICES", 50, minimum=1)
# Seconds a fetched role definition or a proven role holding is reused.
ROLE_CACHE_SECONDS = _int("ROLE_CACHE_SECONDS", 300)
# Role definitions and issuer proofs kept (each a bounded TTL cache of this size).
ROLE_CACHE_SIZE = _int("ROLE_CACHE_SIZE", 10_000, minimum=1)
# Seconds of clock difference tolerated for a credential's `nbf` and `iat`.
CLOCK_SKEW_SECONDS = _int("CLOCK_SKEW_SECONDS", 60)
# Largest cache-server answer read (bytes), and seconds one cache-server call may
# take in all, its retries included (CACHE_SERVER_TIMEOUT bounds each attempt).
CACHE_SERVER_MAX_RESPONSE_BYTES = _int(
    "CACHE_SERVER_MAX_RESPONSE_BYTES", 8 * 1024 * 1024, minimum=1024
)
CACHE_SERVER_DEADLINE = _float("CACHE_SERVER_DEADLINE", 30.0)

# --- Chain (ERC-1056 DID registry) ------------------------------------------------

_DEFAULT_DID_REGISTRY = {
    73799: "0xC15D5A57A8Eb0e1dCBE5D88B8f9a82017e5Cc4AF",  # Energy Web Volta
    246: "0xE29672f34e92b56C9169f9D485fFc8b9A136BCE4",  # Energy Web Chain
}
_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")


def _chain_decimal(name: str, default: str) -> Decimal:
    raw: str = env.str(name, default="").strip() or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}.") from None
    if not value.is_finite() or value < 0:
        raise ImproperlyConfigured(f"{name} must be a non-negative number, not {raw}.")
    return value


# JSON-RPC endpoint of the EVM chain holding the DID registry (Volta by default).
CHAIN_RPC_URL = env.str("CHAIN_RPC_URL", default="https://volta-rpc.energyweb.org")
if not CHAIN_RPC_URL.startswith(("https://", "http://")):
    raise ImproperlyConfigured("CHAIN_RPC_URL must be an http(s) URL.")
CHAIN_ID = _int("CHAIN_ID", 73799, minimum=1)
DID_REGISTRY_ADDRESS = env.str(
    "DID_REGISTRY_ADDRESS", default=""
).strip() or _DEFAULT_DID_REGISTRY.get(CHAIN_ID, "")
if not DID_REGISTRY_ADDRESS:
    raise ImproperlyConfigured(
        f"Set the DID_REGISTRY_ADDRESS environment variable (no default for chain "
        f"{CHAIN_ID})."
    )
if not _ADDRESS_RE.match(DID_REGISTRY_ADDRESS):
    raise ImproperlyConfigured("DID_REGISTRY_ADDRESS must be a 0x-prefixed address.")
# asset: each asset signs and pays for its own setAttribute; relay: the asset signs
# setAttributeSigned and the operator account sends it and pays.
CHAIN_WRITE_MODE = env.str("CHAIN_WRITE_MODE", default="asset").strip().lower()
if CHAIN_WRITE_MODE not in {"asset", "relay"}:
    raise ImproperlyConfigured(
        f"CHAIN_WRITE_MODE must be asset or relay, not {CHAIN_WRITE_MODE!r}."
    )
# Highest fee per gas (EIP-1559 maxFeePerGas, or legacy gasPrice) evops will pay.
CHAIN_MAX_FEE_GWEI = _chain_decimal("CHAIN_MAX_FEE_GWEI", "50")
CHAIN_CONFIRMATIONS = _int("CHAIN_CONFIRMATIONS", 0)
CHAIN_RECEIPT_TIMEOUT = _int("CHAIN_RECEIPT_TIMEOUT", 120, minimum=1)
# Seconds one JSON-RPC call may take in all, and the largest answer read (bytes).
CHAIN_RPC_TIMEOUT = _float("CHAIN_RPC_TIMEOUT", 10.0)
CHAIN_RPC_MAX_RESPONSE_BYTES = _int(
    "CHAIN_RPC_MAX_RESPONSE_BYTES", 8 * 1024 * 1024, minimum=1024
)
# Most JSON-RPC calls sent together in one batch (1: every call on its own).
CHAIN_RPC_BATCH = _int("CHAIN_RPC_BATCH", 50, minimum=1)
# Fraction added to every gas estimate (estimates can be short; see test-stack.md).
CHAIN_GAS_MARGIN = float(_chain_decimal("CHAIN_GAS_MARGIN", "0.25"))
# Reading many DID documents (reconciliation; its calls batched by CHAIN_RPC_BATCH):
# identities whose registry history is kept (rebuilt while `changed` is unchanged).
CHAIN_DOCUMENT_CACHE_SIZE = _int("CHAIN_DOCUMENT_CACHE_SIZE", 50_000, minimum=0)

# --- Relay operator account (assets) -------------------------------------------------
# The operator account that sends relayed writes (CHAIN_WRITE_MODE=relay). Empty: the
# only operator stored for the chain (generate_operator_key / import_operator_key).
CHAIN_OPERATOR_ADDRESS = env.str("CHAIN_OPERATOR_ADDRESS", default="").strip()
if CHAIN_OPERATOR_ADDRESS and not _ADDRESS_RE.match(CHAIN_OPERATOR_ADDRESS):
    raise ImproperlyConfigured("CHAIN_OPERATOR_ADDRESS must be a 0x-prefixed address.")

# --- Signer backend (assets) ---------------------------------------------------------
# Where new asset keys are made (generate_asset_keys, the sandbox): `local` (sealed in
# the database) or `pkcs11` (in the token below). Each asset row records where its own
# key lives, so both kinds can be used at once. The PIN is read by assets.pkcs11 from
# PKCS11_PIN_FILE or the PKCS11_PIN environment variable when a session opens; it is
# deliberately not a Django setting (settings are listed on the debug page).
SIGNER_BACKEND = env.str("SIGNER_BACKEND", default="local").strip().lower()
if SIGNER_BACKEND not in {"local", "pkcs11"}:
    raise ImproperlyConfigured(
        f"SIGNER_BACKEND must be local or pkcs11, not {SIGNER_BACKEND!r}."
    )
PKCS11_MODULE = env.str("PKCS11_MODULE", default="").strip()
PKCS11_TOKEN_LABEL = env.str("PKCS11_TOKEN_LABEL", default="").strip()
if len(PKCS11_TOKEN_LABEL) > 32:
    raise ImproperlyConfigured("PKCS11_TOKEN_LABEL is at most 32 characters.")
PKCS11_PIN_FILE = env.str("PKCS11_PIN_FILE", default="").strip()
PKCS11_POOL_SIZE = _int("PKCS11_POOL_SIZE", 4, minimum=1)

# --- Pipeline (NATS listener, claim lifecycle, reconciliation) --------------------


def _seconds(name: str, default: float) -> float:
    raw: str = env.str(name, default="")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}.") from None
    if not value >= 0:
        raise ImproperlyConfigured(f"{name} must be zero or more, not {raw}.")
    return value


NATS_URL = env.str("NATS_URL", default="nats://127.0.0.1:4222")
if not NATS_URL.startswith(("nats://", "tls://", "ws://", "wss://")):
    raise ImproperlyConfigured("NATS_URL must be a nats:// or tls:// URL.")
NATS_USER = env.str("NATS_USER", default="")
NATS_PASSWORD = env.str("NATS_PASSWORD", default="")
NATS_CREDS = env.str("NATS_CREDS", default="")
NATS_TLS_CA = env.str("NATS_TLS_CA", default="")
NATS_PREQUALIFICATION_SUBJECT = env.str(
    "NATS_PREQUALIFICATION_SUBJECT", default="*.prequalification.exchange"
)
NATS_CLAIM_EXCHANGE_SUBJECTS = env.list(
    "NATS_CLAIM_EXCHANGE_SUBJECTS", default=["*.claim-exchange.*.*", "*.claim.exchange"]
)
# Empty: core NATS (reconciliation covers downtime). A stream name: JetStream mode,
# a durable consumer on that stream (created with the subjects above if missing).
NATS_JETSTREAM_STREAM = env.str("NATS_JETSTREAM_STREAM", default="")
NATS_JETSTREAM_DURABLE = env.str("NATS_JETSTREAM_DURABLE", default="evops-listener")
NATS_QUEUE_GROUP = env.str("NATS_QUEUE_GROUP", default="")
RECONCILE_INTERVAL = _int("RECONCILE_INTERVAL", 900)
RECONCILE_CONCURRENCY = _int("RECONCILE_CONCURRENCY", 20, minimum=1)
# Messages and claims one listener has in hand at once. Each mostly waits on a peer,
# and the peers have their own limits (CACHE_SERVER_MAX_CONCURRENCY, at most 10
# database threads), so this can be well above them: a burst's waits overlap.
WORKER_CONCURRENCY = _int("WORKER_CONCURRENCY", 100, minimum=1)
MAX_ATTEMPTS = _int("MAX_ATTEMPTS", 10, minimum=1)
RETRY_BASE_SECONDS = _seconds("RETRY_BASE_SECONDS", 2.0)
RETRY_MAX_SECONDS = _seconds("RETRY_MAX_SECONDS", 600.0)
# Leases of what a worker holds; the holding listener's heartbeat renews them, so
# they run out only when it stopped beating (a crash): then others take over.
PUBLISH_LEASE_SECONDS = _seconds("PUBLISH_LEASE_SECONDS", 30.0)
INBOX_LEASE_SECONDS = _seconds("INBOX_LEASE_SECONDS", 30.0)
# Received messages waiting to be stored, at most (core NATS); past it they are
# dropped, counted, and the listener reports unhealthy.
INTAKE_QUEUE_LIMIT = _int("INTAKE_QUEUE_LIMIT", 50000, minimum=100)
# How long a dropped message keeps the listener's health red (seconds).
HEALTH_DROP_WINDOW = _seconds("HEALTH_DROP_WINDOW", 300.0)
# JetStream mode: the oldest message the stream keeps (seconds; an outage longer
# than this loses messages, which reconciliation then recovers).
NATS_JETSTREAM_MAX_AGE = _seconds("NATS_JETSTREAM_MAX_AGE", 7 * 24 * 3600.0)
INBOUND_PAYLOAD_LIMIT = _int("INBOUND_PAYLOAD_LIMIT", 65536, minimum=256)
DUPLICATE_WINDOW_SECONDS = _seconds("DUPLICATE_WINDOW_SECONDS", 300.0)
HEARTBEAT_INTERVAL = _seconds("HEARTBEAT_INTERVAL", 5.0)
DRAIN_TIMEOUT = _seconds("DRAIN_TIMEOUT", 30.0)
METRICS_PORT = _int("METRICS_PORT", 0)
# The credential after publication (claims.lifecycle): how often the listener sweeps
# (seconds; 0: never, run `manage.py lifecycle_sweep` instead), how long before its
# expiry a credential is renewed, how many records are checked at once, and the
# on-chain ClaimsRevocationRegistry to ask (empty: none; Volta
# 0x9876d992D124f8E05e3eB35132226a819aaC840A, EWC
# 0xd72B4c8D5B1a1A4C7085259548bDF1A175CFc48D).
LIFECYCLE_INTERVAL = _seconds("LIFECYCLE_INTERVAL", 300.0)
RENEWAL_WINDOW_SECONDS = _seconds("RENEWAL_WINDOW_SECONDS", 14 * 24 * 3600.0)
LIFECYCLE_CONCURRENCY = _int("LIFECYCLE_CONCURRENCY", 10, minimum=1)
REVOCATION_REGISTRY_ADDRESS = env.str("REVOCATION_REGISTRY_ADDRESS", default="").strip()
if REVOCATION_REGISTRY_ADDRESS and not _ADDRESS_RE.match(REVOCATION_REGISTRY_ADDRESS):
    raise ImproperlyConfigured(
        "REVOCATION_REGISTRY_ADDRESS must be empty or a 0x-prefixed address, not "
        f"{REVOCATION_REGISTRY_ADDRESS!r}."
    )

# --- Credential store ----------------------------------------------------------------

# Where issued tokens are kept (protocol.md section 6): `ipfs` (an IPFS node's HTTP API)
# or `cache-server` (the cache server's own /v1/store). The cache server must be able to
# read the CID, so match what the deployment's cache server is configured with.
CREDENTIAL_STORE = env.str("CREDENTIAL_STORE", default="ipfs").strip().lower()
if CREDENTIAL_STORE not in {"ipfs", "cache-server"}:
    raise ImproperlyConfigured(
        f"CREDENTIAL_STORE must be ipfs or cache-server, not {CREDENTIAL_STORE!r}."
    )
# Base URL of the IPFS HTTP API (kubo's default port is 5001); `/api/v0` is appended.
IPFS_API_URL = env.str("IPFS_API_URL", default="http://127.0.0.1:5001").strip()
if not re.match(r"^https?://[^/\s]+(/\S*)?$", IPFS_API_URL):
    raise ImproperlyConfigured(
        f"IPFS_API_URL must be an http(s) URL such as http://127.0.0.1:5001, "
        f"not {IPFS_API_URL!r}."
    )
# Seconds one store call may take in all before it counts as a (transient) timeout.
CREDENTIAL_STORE_TIMEOUT = _float("CREDENTIAL_STORE_TIMEOUT", 10.0)
# Largest answer read from the store (bytes); a token is at most 64 KiB.
CREDENTIAL_STORE_MAX_RESPONSE_BYTES = _int(
    "CREDENTIAL_STORE_MAX_RESPONSE_BYTES", 1024 * 1024, minimum=1024
)

# --- Operator console (admin, live updates) ------------------------------------------

# Empty: an in-memory channel layer (live updates within one process; the console
# also polls the claim history so changes made by the listener process still show).
# redis://host:port/db: channels-redis, shared by the listener and the web process.
CHANNEL_LAYER_URL = env.str("CHANNEL_LAYER_URL", default="").strip()
if CHANNEL_LAYER_URL and not CHANNEL_LAYER_URL.startswith(
    ("redis://", "rediss://", "unix://")
):
    raise ImproperlyConfigured("CHANNEL_LAYER_URL must be a redis:// URL or empty.")
# channels-redis waits for a message with BZPOPMIN for up to 5 s; redis-py 8 reads
# with a 5 s socket timeout by default, so an idle socket timed out after 5 s and the
# console's websocket consumer crashed. The read timeout must outlast that wait.
CHANNEL_LAYER_SOCKET_TIMEOUT = _float("CHANNEL_LAYER_SOCKET_TIMEOUT", 30.0)
if CHANNEL_LAYER_SOCKET_TIMEOUT <= REDIS_LAYER_BLOCKING_SECONDS:
    raise ImproperlyConfigured(
        "CHANNEL_LAYER_SOCKET_TIMEOUT must be more than "
        f"{REDIS_LAYER_BLOCKING_SECONDS:g} s (channels-redis' blocking read)."
    )
CHANNEL_LAYERS = {
    "default": channel_layer_config(CHANNEL_LAYER_URL, CHANNEL_LAYER_SOCKET_TIMEOUT)
}
# Seconds between the console's checks of the claim history for changes made by
# other processes (in-memory layer only; 0 turns the check off).
CONSOLE_POLL_SECONDS = _seconds("CONSOLE_POLL_SECONDS", 2.0)
# Seconds between an open console websocket's checks that its session still exists and
# its user still has access (it closes when not).
CONSOLE_SESSION_CHECK_SECONDS = _float("CONSOLE_SESSION_CHECK_SECONDS", 5.0)
# Seconds the admin waits for the chain (DID documents, operator balance).
CONSOLE_CHAIN_TIMEOUT = _float("CONSOLE_CHAIN_TIMEOUT", 5.0)
# A listener whose last heartbeat is older than this many seconds shows as stale.
CONSOLE_HEARTBEAT_STALE_SECONDS = _seconds("CONSOLE_HEARTBEAT_STALE_SECONDS", 30.0)
# Most assets the "reconcile" and "request prequalification" admin actions handle in
# one web request (they call the cache server and the chain while the worker waits);
# a larger selection is queued for the listener's workers (in the user's name).
CONSOLE_SYNC_ASSET_LIMIT = _int("CONSOLE_SYNC_ASSET_LIMIT", 25, minimum=1)

# After login, the console's dashboard (the admin index). Unfold's login form carries
# no `next` of its own, so without this Django would send staff to /accounts/profile/.
LOGIN_URL = "admin:login"
LOGIN_REDIRECT_URL = "admin:index"

# The staff console's admin theme (django-unfold): the dashboard is the admin's
# index and the first entry of the sidebar; each entry shows only to staff who may
# view its list.
UNFOLD = {
    "SITE_TITLE": "evops console",
    "SITE_HEADER": "evops console",
    "SITE_SYMBOL": "bolt",
    "SHOW_HISTORY": True,
    "SHOW_VIEW_ON_SITE": False,
    "SHOW_LANGUAGES": False,
    # The console's own CSS and JS are static files: no inline script or style.
    "STYLES": [lambda request: static("console/console.css")],
    "SCRIPTS": [lambda request: static("console/console.js")],
    "SIDEBAR": {
        "show_search": False,
        "show_all_applications": False,
        "navigation": "console.navigation.sidebar",
    },
}

# --- Logging -------------------------------------------------------------------------

DEFAULT_EXCEPTION_REPORTER_FILTER = "evops.logs.AlwaysSafeExceptionReporterFilter"

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOG_FORMAT = env.str("LOG_FORMAT", default="text")
if LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(
        f"LOG_FORMAT must be 'text' or 'json', not {LOG_FORMAT!r}."
    )

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "evops.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # One line per HTTP request / RPC connection drowns the pipeline's own records.
        "httpx": {"level": env.str("LOG_LEVEL_HTTP", default="WARNING").upper()},
        "web3": {"level": env.str("LOG_LEVEL_HTTP", default="WARNING").upper()},
    },
}
