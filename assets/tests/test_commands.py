"""The asset management commands, run through call_command with real files."""

from __future__ import annotations

import csv
import io
import os

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings

from assets.management.commands.import_asset_keys import (
    ERR_EMPTY,
    ERR_NO_CHAIN_NAME,
    ERR_NO_TERMINAL,
)
from assets.models import Asset, AssetKey, AssetKind
from assets.services import asset_create_from_key
from assets.tests.conftest import (
    KEYSTORE_PASSWORD,
    make_key,
    write_keymanager,
    write_keystore,
)
from evops.settings import parse_key_encryption_keys

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# --- generate_asset_keys -------------------------------------------------------------


def test_generate_asset_keys():
    out, _ = run(
        "generate_asset_keys",
        "--count",
        "3",
        "--kind",
        "vehicle",
        "--label-prefix",
        "car-",
    )
    assert "Generated 3 vehicle asset(s)" in out
    assert "master key 'test1'" in out
    assert sorted(Asset.objects.values_list("label", flat=True)) == [
        "car-1",
        "car-2",
        "car-3",
    ]
    assert AssetKey.objects.count() == 3


def test_generate_asset_keys_refuses_a_bad_count():
    with pytest.raises(CommandError, match="at least 1"):
        run("generate_asset_keys", "--count", "0")


def test_generate_asset_keys_draws_a_progress_bar_for_long_runs():
    _, err = run("generate_asset_keys", "--count", "250")
    assert "generating" in err
    assert Asset.objects.count() == 250


# --- import_asset_keys ---------------------------------------------------------------


def test_import_keymanager_db_with_duplicates_then_reimport(tmp_path):
    keys = [make_key() for _ in range(3)]
    rows = [(k.legacy_did, k.hex) for k in keys] + [(keys[2].legacy_did, keys[2].hex)]
    db = write_keymanager(tmp_path / "keymanager.db", rows)
    out, _err = run("import_asset_keys", str(db), "--kind", "charge_point")
    assert "Imported 3 asset(s); skipped 1 already present or repeated" in out
    assert "0 invalid (of 4 entries)" in out
    assert set(Asset.objects.values_list("did", flat=True)) == {k.did for k in keys}
    assert set(Asset.objects.values_list("kind", flat=True)) == {"charge_point"}
    out, _ = run("import_asset_keys", str(db), "--format", "keymanager")
    assert "Imported 0 asset(s); skipped 4" in out
    assert Asset.objects.count() == 3


def test_import_keystores_with_a_password_file(tmp_path):
    a, b = make_key(), make_key()
    store = tmp_path / "keystore"
    store.mkdir()
    write_keystore(store / "UTC--2020-01-01T00-00-00Z--a", a)
    single = write_keystore(tmp_path / "b.json", b)
    password_file = tmp_path / "password"
    password_file.write_text(KEYSTORE_PASSWORD + "\n")
    out, _ = run(
        "import_asset_keys",
        str(store),
        str(single),
        "--password-file",
        str(password_file),
    )
    assert "Imported 2 asset(s)" in out
    assert {a.address, b.address} == set(
        Asset.objects.values_list("address", flat=True)
    )


def test_import_keystore_prompts_for_the_password(tmp_path, monkeypatch):
    key = make_key()
    path = write_keystore(tmp_path / "a.json", key)
    prompts = []

    def fake_getpass(prompt: str) -> str:
        prompts.append(prompt)
        return KEYSTORE_PASSWORD

    monkeypatch.setattr(
        "assets.management.commands.import_asset_keys.getpass.getpass", fake_getpass
    )
    monkeypatch.setattr("sys.stdin", _Terminal())
    out, _ = run("import_asset_keys", str(path), "--format", "keystore")
    assert prompts == ["Keystore password: "]
    assert "Imported 1 asset(s)" in out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_keystore_without_a_terminal_or_password_file_is_a_clear_error(
    tmp_path, monkeypatch
):
    path = write_keystore(tmp_path / "a.json", make_key())
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # a pipe, not a terminal
    with pytest.raises(CommandError) as info:
        run("import_asset_keys", str(path))
    assert str(info.value) == ERR_NO_TERMINAL
    assert not Asset.objects.exists()


def test_keystore_without_a_terminal_from_the_shell(tmp_path):
    # The real command line, stdin closed: no EOFError traceback.
    import subprocess
    import sys

    path = write_keystore(tmp_path / "a.json", make_key())
    result = subprocess.run(
        [sys.executable, "manage.py", "import_asset_keys", str(path)],
        cwd=settings.BASE_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "evops.settings_test"},
    )
    assert result.returncode == 1
    assert ERR_NO_TERMINAL in result.stderr
    assert "Traceback" not in result.stderr and "EOFError" not in result.stderr


@pytest.mark.parametrize("content", ["", "\n\n", "key,kind\n"])
def test_an_empty_input_is_an_error(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(CommandError) as info:
        run("import_asset_keys", str(path))
    assert str(info.value) == ERR_EMPTY.format(paths=str(path))


def test_new_dids_follow_chain_id_unless_chain_is_given(tmp_path, settings):
    a, b = make_key(), make_key()
    first = tmp_path / "a.txt"
    first.write_text(a.hex + "\n")
    second = tmp_path / "b.txt"
    second.write_text(b.hex + "\n")
    settings.CHAIN_ID = 246
    run("import_asset_keys", str(first))
    assert Asset.objects.get(address=a.address).did.startswith("did:ethr:ewc:")
    run("import_asset_keys", str(second), "--chain", "volta")
    assert Asset.objects.get(address=b.address).did.startswith("did:ethr:volta:")
    run("generate_asset_keys", "--count", "1", "--no-progress")
    newest = Asset.objects.order_by("-id").first()
    assert newest is not None and newest.chain == "ewc"


def test_an_unknown_chain_is_a_command_error(tmp_path, settings):
    path = tmp_path / "a.txt"
    path.write_text(make_key().hex + "\n")
    with pytest.raises(CommandError, match="unknown"):
        run("import_asset_keys", str(path), "--chain", "nosuchchain")
    settings.CHAIN_ID = 31337
    with pytest.raises(CommandError) as info:
        run("import_asset_keys", str(path))
    assert str(info.value) == ERR_NO_CHAIN_NAME.format(chain_id=31337)


def test_import_csv_with_columns(tmp_path):
    a, b = make_key(), make_key()
    path = tmp_path / "fleet.csv"
    path.write_text(
        "key,kind,external_id,label\n"
        f"{a.hex},vehicle,NL-TNM-1,van\n"
        f"{b.hex},charge_point,EVSE-1,post\n"
    )
    out, _ = run("import_asset_keys", str(path))
    assert "Imported 2 asset(s)" in out
    van = Asset.objects.get(address=a.address)
    assert (van.kind, van.external_id, van.label) == ("vehicle", "NL-TNM-1", "van")


def test_an_invalid_entry_stops_the_import_and_names_file_and_line(tmp_path):
    good, bad, other = make_key(), make_key(), make_key()
    db = write_keymanager(
        tmp_path / "keymanager.db",
        [(good.legacy_did, good.hex), (other.legacy_did, bad.hex)],
    )
    text = tmp_path / "keys.txt"
    text.write_text(f"{make_key().hex}\n0xdeadbeef\n")
    err = io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command(
            "import_asset_keys", str(db), str(text), stdout=io.StringIO(), stderr=err
        )
    assert "2 invalid entries; nothing was imported" in str(info.value)
    assert "--skip-invalid" in str(info.value)
    lines = err.getvalue().splitlines()
    assert lines[0].startswith(f"{db}:2 (row id): the DID does not match its key")
    assert lines[1].startswith(f"{text}:2: not a valid secp256k1 private key")
    assert "deadbeef" not in err.getvalue()
    assert Asset.objects.count() == 0 and AssetKey.objects.count() == 0


def test_skip_invalid_imports_the_rest(tmp_path):
    good = make_key()
    text = tmp_path / "keys.txt"
    text.write_text(f"{good.hex}\nnot a key\n")
    out, err = run("import_asset_keys", str(text), "--skip-invalid")
    assert "Imported 1 asset(s)" in out and "1 invalid" in out
    assert f"skipped invalid: {text}:2:" in err
    assert list(Asset.objects.values_list("address", flat=True)) == [good.address]


def test_import_refuses_missing_paths_and_unreadable_password_files(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        run("import_asset_keys", str(tmp_path / "missing.db"))
    path = write_keystore(tmp_path / "a.json", make_key())
    with pytest.raises(CommandError, match="--password-file"):
        run("import_asset_keys", str(path), "--password-file", str(tmp_path / "nope"))


def test_a_large_import_draws_a_progress_bar(tmp_path):
    keys = [make_key() for _ in range(300)]
    db = write_keymanager(tmp_path / "km.db", [(k.legacy_did, k.hex) for k in keys])
    out, err = run("import_asset_keys", str(db))
    assert "Imported 300 asset(s)" in out
    assert "checking" in err
    assert Asset.objects.count() == 300


# --- rotate_encryption_key -----------------------------------------------------------


def test_rotate_encryption_key():
    run("generate_asset_keys", "--count", "2")
    new = ("k2", os.urandom(32))
    with override_settings(
        EVOPS_KEY_ENCRYPTION_KEYS=[new, *settings.EVOPS_KEY_ENCRYPTION_KEYS]
    ):
        out, _ = run("rotate_encryption_key")
    assert "Re-encrypted 2 key(s) under master key 'k2'" in out
    assert "were sealed with test1: 2" in out
    assert set(AssetKey.objects.values_list("key_id", flat=True)) == {"k2"}


def test_rotate_encryption_key_failure_changes_nothing():
    run("generate_asset_keys", "--count", "2")
    with (
        override_settings(EVOPS_KEY_ENCRYPTION_KEYS=[("k2", os.urandom(32))]),
        pytest.raises(CommandError) as info,
    ):
        run("rotate_encryption_key")
    assert "EVOPS_KEY_ENCRYPTION_KEYS" in str(info.value)
    assert "nothing was changed" in str(info.value)
    assert set(AssetKey.objects.values_list("key_id", flat=True)) == {"test1"}


# --- export_assets -------------------------------------------------------------------


def test_export_assets_to_stdout_and_file(tmp_path):
    key = make_key()
    asset_create_from_key(
        private_key=key.hex, kind=AssetKind.VEHICLE, external_id="NL-1", label="van"
    )
    out, _ = run("export_assets")
    assert list(csv.reader(io.StringIO(out))) == [
        ["did", "address", "kind", "external_id", "label"],
        [key.did, key.address, "vehicle", "NL-1", "van"],
    ]
    target = tmp_path / "assets.csv"
    out, err = run("export_assets", "--output", str(target))
    assert out == "" and f"Exported 1 asset(s) to {target}" in err
    assert (
        target.read_text().splitlines()[1]
        == f"{key.did},{key.address},vehicle,NL-1,van"
    )


def test_export_assets_guards_against_formula_injection():
    from evops.csvsafe import FORMULA_PREFIXES

    labels = [prefix + 'HYPERLINK("http://x")' for prefix in FORMULA_PREFIXES]
    for label in labels:
        asset_create_from_key(private_key=make_key().hex, label=label)
    out, _ = run("export_assets")
    written = [row[4] for row in csv.reader(io.StringIO(out))][1:]
    assert written == ["'" + label for label in labels]
    assert not any(cell.startswith(FORMULA_PREFIXES) for cell in written)


# --- help text -----------------------------------------------------------------------


def test_every_option_of_every_evops_command_has_help_and_lists_its_choices():
    from django.core.management import get_commands, load_command_class

    ours = {
        name: app
        for name, app in get_commands().items()
        if app in {"assets", "claims", "evops", "console"}
    }
    assert "import_asset_keys" in ours and "run_nats_listener" in ours
    for name, app in ours.items():
        parser = load_command_class(app, name).create_parser("manage.py", name)
        for action in parser._actions:
            if action.dest in {"help", "version"} or action.default == "==SUPPRESS==":
                continue
            if "--verbosity" in action.option_strings or action.dest in {
                "settings",
                "pythonpath",
                "traceback",
                "no_color",
                "force_color",
                "skip_checks",
            }:
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}"
            for choice in action.choices or ():
                assert str(choice) in action.help, f"{name} {action.dest} {choice}"


# --- generate_encryption_key ---------------------------------------------------------


def test_generate_encryption_key_prints_a_usable_entry():
    out, _ = run("generate_encryption_key", "--id", "k7")
    entry = out.strip()
    ((key_id, material),) = parse_key_encryption_keys(entry)
    assert key_id == "k7" and len(material) == 32
    other, _ = run("generate_encryption_key")
    assert other.startswith("k2") and other.strip() != entry
    with pytest.raises(CommandError):
        run("generate_encryption_key", "--id", "no spaces allowed")
