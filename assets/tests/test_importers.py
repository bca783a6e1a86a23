from __future__ import annotations

import pytest

from assets import importers
from assets.tests.conftest import make_key, write_keymanager, write_keystore


def test_format_detection(tmp_path):
    key = make_key()
    db = write_keymanager(tmp_path / "keymanager.db", [(key.legacy_did, key.hex)])
    keystore = write_keystore(tmp_path / "k.json", key)
    text = tmp_path / "keys.txt"
    text.write_text(key.hex + "\n")
    assert importers.detect_format(db) == "keymanager"
    assert importers.detect_format(keystore) == "keystore"
    assert importers.detect_format(tmp_path) == "keystore"
    assert importers.detect_format(text) == "csv"


def test_keymanager_rows_keep_their_row_ids_and_duplicates(tmp_path):
    first, second = make_key(), make_key()
    db = write_keymanager(
        tmp_path / "keymanager.db",
        [
            (first.legacy_did, first.hex),
            (second.legacy_did, second.hex),
            (first.legacy_did, first.hex),
            ("did:ethr:0x00", None),
        ],
    )
    result = importers.read_keymanager(db)
    assert [e.location for e in result.entries] == [
        f"{db}:1 (row id)",
        f"{db}:2 (row id)",
        f"{db}:3 (row id)",
    ]
    assert result.entries[0].key_hex == first.hex
    assert result.entries[0].did == first.legacy_did
    assert [str(p) for p in result.problems] == [
        f"{db}:4 (row id): {importers.ERR_NO_KEY}"
    ]


def test_a_sqlite_file_without_the_dids_table_is_a_problem(tmp_path):
    db = write_keymanager(tmp_path / "keymanager.db", [])
    import sqlite3

    connection = sqlite3.connect(db)
    connection.execute("DROP TABLE dids")
    connection.execute("CREATE TABLE other (x)")
    connection.commit()
    connection.close()
    result = importers.read_paths([db])
    assert [p.message for p in result.problems] == [importers.ERR_NOT_KEYMANAGER]


def test_csv_with_a_header_maps_columns_by_name(tmp_path):
    a, b = make_key(), make_key()
    path = tmp_path / "keys.csv"
    path.write_text(
        "# exported from the fleet tool\n"
        "label,private_key,external_id,kind\n"
        f"car one,{a.hex},NL-1,vehicle\n"
        "\n"
        f"post,{b.hex[2:]},,charge point\n"
    )
    result = importers.read_csv(path)
    assert not result.problems
    assert [(e.location, e.label, e.external_id, e.kind) for e in result.entries] == [
        (f"{path}:3", "car one", "NL-1", "vehicle"),
        (f"{path}:5", "post", "", "charge point"),
    ]
    assert result.entries[1].key_hex == b.hex[2:]


def test_csv_without_a_header_is_positional_and_any_delimiter_works(tmp_path):
    a, b = make_key(), make_key()
    path = tmp_path / "keys.csv"
    path.write_text(f"{a.hex};vehicle;EVSE-1;left\n{b.hex}\n")
    result = importers.read_csv(path)
    assert [(e.kind, e.external_id, e.label) for e in result.entries] == [
        ("vehicle", "EVSE-1", "left"),
        (None, "", ""),
    ]


def test_csv_header_without_a_key_column_is_refused(tmp_path):
    path = tmp_path / "keys.csv"
    path.write_text("label,kind\nx,vehicle\n")
    result = importers.read_csv(path)
    assert [str(p) for p in result.problems] == [
        f"{path}:1: {importers.ERR_NO_KEY_COLUMN}"
    ]


def test_keystore_directory_reads_every_file_and_reports_bad_ones(tmp_path):
    a, b = make_key(), make_key()
    write_keystore(tmp_path / "UTC--2024-01-01--a", a)
    write_keystore(tmp_path / "b.json", b)
    (tmp_path / "notes.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    (tmp_path / ".hidden").write_text("ignored")
    result = importers.read_keystore(tmp_path)
    assert sorted((e.did or "").lower() for e in result.entries) == sorted(
        [a.legacy_did, b.legacy_did]
    )
    messages = sorted(str(p) for p in result.problems)
    assert messages[0].startswith(f"{tmp_path / 'notes.json'}: not valid JSON")
    assert messages[1] == f"{tmp_path / 'other.json'}: {importers.ERR_NOT_KEYSTORE}"


def test_an_empty_keystore_directory_is_a_problem(tmp_path):
    result = importers.read_paths([tmp_path], format="keystore")
    assert [p.message for p in result.problems] == [importers.ERR_EMPTY_DIR]


def test_entry_repr_hides_the_key():
    key = make_key()
    entry = importers.KeyEntry(location="x:1", key_hex=key.hex)
    assert key.hex[2:] not in repr(entry)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0x" + "ab" * 32, True), ("AB" * 32, True), ("vehicle", False), ("0x12", False)],
)
def test_looks_like_key(value, expected):
    assert importers.looks_like_key(value) is expected
