from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from evops.settings import parse_key_encryption_keys

ROOT = Path(__file__).resolve().parents[2]
KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = base64.urlsafe_b64encode(b"b" * 32).decode().rstrip("=")


def test_parses_several_keys_first_encrypts():
    keys = parse_key_encryption_keys(f"new:{KEY_A}, old:{KEY_B}")
    assert keys == [("new", b"a" * 32), ("old", b"b" * 32)]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "Set the EVOPS_KEY_ENCRYPTION_KEYS"),
        (KEY_A, "must look like 'id:base64key'"),
        (f"bad id:{KEY_A}", "must look like 'id:base64key'"),
        ("k1:not*base64", "is not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "must decode to 32 bytes, not 5"),
        (f"k1:{KEY_A},k1:{KEY_B}", "appears twice"),
    ],
)
def test_malformed_keys_name_the_variable(raw, fragment):
    with pytest.raises(ImproperlyConfigured) as excinfo:
        parse_key_encryption_keys(raw)
    message = str(excinfo.value)
    assert "EVOPS_KEY_ENCRYPTION_KEYS" in message
    assert fragment in message
    assert KEY_A not in message


def _check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # Start from an empty environment so the test settings of this process do not leak.
    clean = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "EVOPS_ENV_FILE": "",
        **env,
    }
    clean["DJANGO_SETTINGS_MODULE"] = "evops.settings"
    return subprocess.run(
        [sys.executable, "manage.py", "check", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


GOOD = {
    "SECRET_KEY": "x" * 60 + "-production-grade-secret-key",
    "EVOPS_KEY_ENCRYPTION_KEYS": f"k1:{KEY_A}",
    "DATABASE_URL": "sqlite:////tmp/evops-settings-test.sqlite3",
}


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "EVOPS_ENV_FILE": "",
        "DJANGO_SETTINGS_MODULE": "evops.settings",
        **env,
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("missing", ["SECRET_KEY", "EVOPS_KEY_ENCRYPTION_KEYS"])
def test_missing_mandatory_setting_stops_startup(missing):
    # Only the one variable missing is named, as a system-check error (every command
    # that runs checks: migrate, the listener, runserver...).
    env = {k: v for k, v in GOOD.items() if k != missing}
    result = _check(env)
    assert result.returncode != 0
    assert f"Set the {missing} environment variable." in result.stderr
    other = ({"SECRET_KEY", "EVOPS_KEY_ENCRYPTION_KEYS"} - {missing}).pop()
    assert f"Set the {other}" not in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "Available subcommands"),
        (("help",), "Available subcommands"),
        (("help", "import_asset_keys"), "--password-file"),
        (("--version",), "5."),
        (("generate_encryption_key",), ":"),
    ],
)
def test_commands_that_need_nothing_run_on_a_fresh_checkout(args, expected, tmp_path):
    # No .env, no SECRET_KEY, no master key, no database: a first-time user's machine.
    result = _manage({"DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3"}, *args)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "db.sqlite3").exists()


def test_generate_encryption_key_output_is_a_valid_setting():
    result = _manage({}, "generate_encryption_key", "--id", "first")
    assert result.returncode == 0, result.stderr
    keys = parse_key_encryption_keys(result.stdout.strip())
    assert keys[0][0] == "first"


def test_a_command_that_needs_the_key_names_it():
    result = _manage({"SECRET_KEY": GOOD["SECRET_KEY"]}, "rotate_encryption_key")
    assert result.returncode != 0
    assert "Set the EVOPS_KEY_ENCRYPTION_KEYS environment variable." in result.stderr
    assert "Traceback" not in result.stderr


def test_the_console_refuses_to_start_without_the_master_key():
    # daphne runs no system checks: the ASGI entry point refuses instead.
    code = "import evops.asgi"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={
            "PATH": os.environ["PATH"],
            "EVOPS_ENV_FILE": "",
            "DJANGO_SETTINGS_MODULE": "evops.settings",
            "SECRET_KEY": GOOD["SECRET_KEY"],
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Set the EVOPS_KEY_ENCRYPTION_KEYS environment variable." in result.stderr


def test_malformed_boolean_is_named():
    result = _check({**GOOD, "DEBUG": "maybe"})
    assert result.returncode != 0
    assert "DEBUG must be true or false, not 'maybe'." in result.stderr


def test_malformed_database_url_is_named():
    result = _check({**GOOD, "DATABASE_URL": "nosuchscheme://x"})
    assert result.returncode != 0
    assert "DATABASE_URL is malformed" in result.stderr


def test_env_file_is_read_and_the_environment_wins(tmp_path):
    env_file = tmp_path / "evops.env"
    env_file.write_text("DEBUG=maybe\nLOG_FORMAT=xml\n")
    result = _check({**GOOD, "EVOPS_ENV_FILE": str(env_file), "DEBUG": "false"})
    assert result.returncode != 0
    assert "LOG_FORMAT must be 'text' or 'json', not 'xml'." in result.stderr
    assert "DEBUG must be" not in result.stderr


def test_check_deploy_is_clean_with_production_settings():
    result = _check(
        {**GOOD, "ALLOWED_HOSTS": "evops.example.org"},
        "--deploy",
        "--fail-level",
        "WARNING",
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize(
    ("name", "url", "flagged"),
    [
        ("CACHE_SERVER_URL", "http://cache.example.org", True),
        ("CHAIN_RPC_URL", "http://10.0.0.5:8545", True),
        ("IPFS_API_URL", "http://ipfs.internal:5001", True),
        ("IPFS_API_URL", "http://127.0.0.1:5001", False),
        ("CHAIN_RPC_URL", "http://localhost:8545", False),
        ("CACHE_SERVER_URL", "https://cache.example.org", False),
    ],
)
def test_plain_http_peer_is_a_deploy_error_unless_loopback(name, url, flagged):
    env = {**GOOD, "ALLOWED_HOSTS": "evops.example.org", name: url}
    result = _check(env, "--deploy")
    output = result.stderr + result.stdout
    if flagged:
        assert result.returncode != 0
        assert f"(evops.E004) {name} is plain http://" in output
    else:
        assert result.returncode == 0, output
        assert "evops.E004" not in output


def test_plain_http_peer_is_not_a_error_outside_deploy():
    result = _check({**GOOD, "CACHE_SERVER_URL": "http://cache.example.org"})
    assert result.returncode == 0, result.stderr


def test_duplicate_key_material_is_a_system_error():
    result = _check(
        {**GOOD, "EVOPS_KEY_ENCRYPTION_KEYS": f"k1:{KEY_A},k2:{KEY_A}"}, "--deploy"
    )
    assert result.returncode != 0
    assert "evops.E001" in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CACHE_SERVER_URL", "http://identitycache.example.org"),
        ("CHAIN_RPC_URL", "http://10.0.0.5:8545"),
        ("IPFS_API_URL", "http://ipfs.internal:5001"),
        ("NATS_URL", "nats://nats.example.org:4222"),
        ("NATS_URL", "nats://127.0.0.1:4222,nats://nats2.example.org:4222"),
        ("NATS_URL", "ws://nats.example.org:8080"),
        ("CHAIN_RPC_URL", "http://[2001:db8::1]:8545"),
        ("CACHE_SERVER_URL", "http://127.0.0.1.nip.io"),
    ],
)
def test_check_deploy_refuses_a_plain_peer_off_this_host(variable, value):
    result = _check(
        {**GOOD, "ALLOWED_HOSTS": "evops.example.org", variable: value}, "--deploy"
    )
    output = result.stderr + result.stdout
    assert result.returncode != 0, output
    assert "evops.E004" in output
    assert f"{variable} is " in output


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CACHE_SERVER_URL", "http://127.0.0.1:3000"),
        ("CACHE_SERVER_URL", "http://localhost:3000"),
        ("CHAIN_RPC_URL", "http://[::1]:8545"),
        ("CHAIN_RPC_URL", "http://127.8.0.1:8545"),
        ("NATS_URL", "tls://nats.example.org:4222"),
        ("NATS_URL", "wss://nats.example.org:443"),
        ("NATS_URL", "nats://nats.example.org:4222"),  # with NATS_TLS_CA, below
    ],
)
def test_check_deploy_accepts_tls_and_loopback_peers(variable, value):
    env = {**GOOD, "ALLOWED_HOSTS": "evops.example.org", variable: value}
    if value.startswith("nats://nats."):
        env["NATS_TLS_CA"] = "/etc/ssl/certs/ca-certificates.crt"
    result = _check(env, "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr + result.stdout


def test_plain_ipfs_is_ignored_when_the_store_is_the_cache_server():
    result = _check(
        {
            **GOOD,
            "ALLOWED_HOSTS": "evops.example.org",
            "CREDENTIAL_STORE": "cache-server",
            "IPFS_API_URL": "http://ipfs.internal:5001",
        },
        "--deploy",
        "--fail-level",
        "WARNING",
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_plain_peer_is_fine_without_deploy():
    result = _check({**GOOD, "CACHE_SERVER_URL": "http://hub.example.org"})
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        (
            "TRUSTED_ISSUERS",
            "did:web:example.org",
            "TRUSTED_ISSUERS: 'did:web:example.org'",
        ),
        ("TRUSTED_ISSUERS", "0x1234", "TRUSTED_ISSUERS: '0x1234'"),
        ("ROLE_CHAIN_MAX_DEPTH", "0", "ROLE_CHAIN_MAX_DEPTH must be at least 1"),
        ("ROLE_CACHE_SECONDS", "soon", "ROLE_CACHE_SECONDS must be an integer"),
        ("ROLE_CACHE_SIZE", "0", "ROLE_CACHE_SIZE must be at least 1"),
        ("CACHE_SERVER_MAX_SESSIONS", "many", "CACHE_SERVER_MAX_SESSIONS must be"),
        ("CACHE_SERVER_MAX_RESPONSE_BYTES", "10", "CACHE_SERVER_MAX_RESPONSE_BYTES"),
        ("CACHE_SERVER_DEADLINE", "0", "CACHE_SERVER_DEADLINE must be more than 0"),
        ("CHAIN_RPC_MAX_RESPONSE_BYTES", "x", "CHAIN_RPC_MAX_RESPONSE_BYTES"),
        ("CHAIN_DOCUMENT_CACHE_SIZE", "-1", "CHAIN_DOCUMENT_CACHE_SIZE must be at"),
        ("CREDENTIAL_STORE_MAX_RESPONSE_BYTES", "-1", "CREDENTIAL_STORE_MAX"),
        ("DATABASE_PREPARE_THRESHOLD", "soon", "DATABASE_PREPARE_THRESHOLD must be"),
    ],
)
def test_malformed_trust_and_limit_settings_are_named(variable, value, fragment):
    result = _check({**GOOD, variable: value})
    assert result.returncode != 0
    assert fragment in result.stderr


def test_trusted_issuers_accepts_every_did_form():
    address = "0x" + "ab" * 20
    upper = "0x" + address[2:].upper()
    value = f"did:ethr:volta:{address}, did:ethr:{address},{upper}"
    result = _check({**GOOD, "TRUSTED_ISSUERS": value})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("url", "threshold", "expected"),
    [
        ("postgres://evops@127.0.0.1:5432/evops", "", None),
        ("postgres://evops@127.0.0.1:5432/evops", "0", None),
        ("postgres://evops@127.0.0.1:5432/evops", "5", 5),
        ("sqlite:////tmp/evops-settings-test.sqlite3", "5", None),
    ],
)
def test_prepared_statements_are_off_unless_asked_for_on_postgresql(
    url, threshold, expected
):
    result = _manage(
        {**GOOD, "DATABASE_URL": url, "DATABASE_PREPARE_THRESHOLD": threshold},
        "shell",
        "-c",
        "from django.conf import settings; "
        "print(settings.DATABASES['default'].get('OPTIONS', {})"
        ".get('prepare_threshold'))",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(expected)
