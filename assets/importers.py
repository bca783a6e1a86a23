"""Readers for the key files `import_asset_keys` accepts.

Each reader turns one path into `KeyEntry` values (where the key came from, its hex or
keystore, and the optional DID, kind, external id and label) plus `ReadProblem`s for
what it could not read. Readers never interpret keys and never put a key into a
problem message; `assets.services.asset_import_keys` seals and checks the entries.

Formats:
- `keymanager`: the original Node tool's SQLite store, table
  `dids(id INTEGER PRIMARY KEY, did TEXT, private_key TEXT)`, DIDs `did:ethr:<address>`,
  keys `0x`-hex, duplicate rows possible.
- `keystore`: an Ethereum V3/V4 keystore JSON file, or a directory of them (geth names
  them `UTC--<time>--<address>` with no extension, so every non-hidden file counts).
- `csv`: CSV or plain text of hex keys, one per line, with optional `kind`,
  `external_id` and `label` columns (and `did` to cross-check). A first row naming the
  columns is recognised as a header; without one the order is key, kind, external id,
  label. Blank lines and lines starting with `#` are ignored.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("keymanager", "keystore", "csv")

ERR_UNREADABLE = "cannot read: {reason}"
ERR_NOT_KEYMANAGER = "not a keymanager.db: no table dids(id, did, private_key)"
ERR_BAD_JSON = "not valid JSON: {reason}"
ERR_NOT_KEYSTORE = "not an Ethereum V3/V4 keystore (no 'crypto' section)"
ERR_NO_KEY = "no private key"
ERR_EMPTY_DIR = "directory holds no keystore files"
ERR_BAD_CSV = "cannot parse as CSV: {reason}"
ERR_NO_KEY_COLUMN = "the header names no key column (key or private_key)"

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEXKEY = re.compile(r"\A\s*(0[xX])?[0-9a-fA-F]{64}\s*\Z")
_HEADER_NAMES = {
    "key": "key",
    "private_key": "key",
    "privatekey": "key",
    "private key": "key",
    "secret": "key",
    "kind": "kind",
    "type": "kind",
    "external_id": "external_id",
    "externalid": "external_id",
    "external id": "external_id",
    "external-id": "external_id",
    "label": "label",
    "name": "label",
    "did": "did",
}
_POSITIONAL = ("key", "kind", "external_id", "label")


@dataclass(frozen=True)
class KeyEntry:
    """One key to import; `key_hex` / `keystore` are excluded from repr."""

    location: str
    key_hex: str | None = field(default=None, repr=False)
    keystore: Mapping[str, Any] | None = field(default=None, repr=False)
    did: str | None = None
    kind: str | None = None
    external_id: str = ""
    label: str = ""


@dataclass(frozen=True)
class ReadProblem:
    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


@dataclass
class ReadResult:
    entries: list[KeyEntry] = field(default_factory=list)
    problems: list[ReadProblem] = field(default_factory=list)

    def extend(self, other: ReadResult) -> None:
        self.entries.extend(other.entries)
        self.problems.extend(other.problems)


def looks_like_key(value: str) -> bool:
    """True for text shaped like a hex private key (used to avoid echoing one)."""
    return bool(_HEXKEY.match(value))


def detect_format(path: Path) -> str:
    """Guess the format of `path` from its content (directories are keystores)."""
    if path.is_dir():
        return "keystore"
    with path.open("rb") as handle:
        head = handle.read(64)
    if head.startswith(_SQLITE_MAGIC):
        return "keymanager"
    if head.lstrip().startswith(b"{"):
        return "keystore"
    return "csv"


def read_paths(paths: Iterable[Path], *, format: str | None = None) -> ReadResult:
    """Read every path (detecting each one's format unless `format` is given)."""
    result = ReadResult()
    for path in paths:
        try:
            chosen = format or detect_format(path)
            reader = _READERS[chosen]
            result.extend(reader(path))
        except OSError as exc:
            result.problems.append(
                ReadProblem(str(path), ERR_UNREADABLE.format(reason=exc.strerror))
            )
    return result


def read_keymanager(path: Path) -> ReadResult:
    result = ReadResult()
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        result.problems.append(
            ReadProblem(str(path), ERR_UNREADABLE.format(reason=exc))
        )
        return result
    try:
        rows = connection.execute(
            "SELECT id, did, private_key FROM dids ORDER BY id"
        ).fetchall()
    except sqlite3.DatabaseError:
        result.problems.append(ReadProblem(str(path), ERR_NOT_KEYMANAGER))
        return result
    finally:
        connection.close()
    for row_id, did, private_key in rows:
        location = f"{path}:{row_id} (row id)"
        if not private_key:
            result.problems.append(ReadProblem(location, ERR_NO_KEY))
            continue
        result.entries.append(
            KeyEntry(
                location=location,
                key_hex=str(private_key),
                did=str(did) if did else None,
            )
        )
    return result


def read_keystore(path: Path) -> ReadResult:
    if path.is_dir():
        result = ReadResult()
        files = sorted(
            p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
        )
        if not files:
            result.problems.append(ReadProblem(str(path), ERR_EMPTY_DIR))
        for file in files:
            result.extend(read_keystore(file))
        return result
    result = ReadResult()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        result.problems.append(
            ReadProblem(str(path), ERR_BAD_JSON.format(reason=reason))
        )
        return result
    if not isinstance(document, dict) or not ({"crypto", "Crypto"} & set(document)):
        result.problems.append(ReadProblem(str(path), ERR_NOT_KEYSTORE))
        return result
    address = document.get("address")
    did = None
    if isinstance(address, str) and address:
        did = "did:ethr:" + (address if address.startswith("0x") else "0x" + address)
    result.entries.append(KeyEntry(location=str(path), keystore=document, did=did))
    return result


def read_csv(path: Path) -> ReadResult:
    result = ReadResult()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        result.problems.append(
            ReadProblem(str(path), ERR_UNREADABLE.format(reason="not UTF-8 text"))
        )
        return result
    lines = [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        return result
    delimiter = _delimiter("\n".join(line for _, line in lines[:50]))
    columns: tuple[str, ...] = _POSITIONAL
    try:
        parsed = [
            (number, next(csv.reader(io.StringIO(line), delimiter=delimiter)))
            for number, line in lines
        ]
    except csv.Error as exc:
        result.problems.append(ReadProblem(str(path), ERR_BAD_CSV.format(reason=exc)))
        return result
    first_number, first_row = parsed[0]
    if first_row and not looks_like_key(first_row[0]) and _is_header(first_row):
        columns = tuple(
            _HEADER_NAMES.get(cell.strip().lower(), "") for cell in first_row
        )
        parsed = parsed[1:]
        if "key" not in columns:
            result.problems.append(
                ReadProblem(f"{path}:{first_number}", ERR_NO_KEY_COLUMN)
            )
            return result
    for number, row in parsed:
        values = {
            name: cell.strip() for name, cell in zip(columns, row, strict=False) if name
        }
        location = f"{path}:{number}"
        key = values.get("key", "")
        if not key:
            result.problems.append(ReadProblem(location, ERR_NO_KEY))
            continue
        result.entries.append(
            KeyEntry(
                location=location,
                key_hex=key,
                did=values.get("did") or None,
                kind=values.get("kind") or None,
                external_id=values.get("external_id", ""),
                label=values.get("label", ""),
            )
        )
    return result


def _delimiter(sample: str) -> str:
    # csv.Sniffer gives up when some lines have fewer columns (a bare key line among
    # labelled ones), so pick the most frequent candidate instead.
    best = max(",;\t", key=sample.count)
    return best if sample.count(best) else ","


def _is_header(row: list[str]) -> bool:
    return any(cell.strip().lower() in _HEADER_NAMES for cell in row)


_READERS = {
    "keymanager": read_keymanager,
    "keystore": read_keystore,
    "csv": read_csv,
}
