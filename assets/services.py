"""Writes for assets and the operator account: creating, importing, re-encrypting keys.

Every path that stores a key goes through `assets.crypto` (which seals it) and writes
the asset and its `AssetKey` row together; operator keys are sealed with the operator
purpose onto their `OperatorAccount` row. Imports are all or nothing by default: every
entry is checked first, and nothing is written while any entry is invalid.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from assets import crypto, importers, pkcs11
from assets.importers import KeyEntry
from assets.models import Asset, AssetKey, AssetKind, OperatorAccount, SignerBackend
from assets.selectors import operator_chain_default
from assets.signers import sealed_from_row
from evops.protocol.dids import DID, ERR_SHAPE, VOLTA, chain_id_for, chain_name_for
from evops.protocol.errors import DIDError

logger = logging.getLogger(__name__)

T = TypeVar("T")
# progress(iterable, total, description) -> the same items, e.g. wrapped in tqdm.
Progress = Callable[[Iterable[Any], int, str], Iterable[Any]]

BATCH_SIZE = 1000
_LONG_HEX = re.compile(r"[0-9a-fA-F]{41,}")
_CHAIN_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")

ERR_DID_MISMATCH = "the DID does not match its key (the key is for {address})"
ERR_BAD_DID = "malformed DID ({reason})"
ERR_BAD_KIND = "unknown kind; use one of: {choices}"
ERR_EXTERNAL_ID_TAKEN = "external id {external_id} already belongs to {did}"
ERR_EXTERNAL_ID_TWICE = "external id {external_id} appears twice (first at {first})"
ERR_TOO_LONG = "{field} is longer than {limit} characters"
ERR_KEYSTORE_LOCKED = "a keystore needs a password (--password-file or the prompt)"
ERR_ASSET_EXISTS = "An asset with address {address} already exists ({did})."
ERR_RACE = (
    "Another process created some of these assets while this import ran; nothing "
    "was written. Run the import again."
)
ERR_ROTATION_FAILED = "Re-encryption stopped at {did}; nothing was changed. {reason}"
ERR_MOVE_FAILED = (
    "Moving the keys into the token stopped at {did}; nothing was changed and the "
    "keys created in the token were removed. {reason}"
)
ERR_MOVE_CLEANUP = (
    " Removing the keys already created in the token failed too ({reason}); delete "
    "the objects with these CKA_IDs by hand: {ids}"
)
ERR_MOVE_CHANGED = "{did} changed while its key was being moved; run the command again."
ERR_BAD_BACKEND = "unknown signer backend {backend!r}; use local or pkcs11"
ERR_OPERATOR_EXISTS = "An operator account with address {address} already exists."
ERR_OPERATOR_IS_ASSET = (
    "{address} is the address of asset {did}; the operator must be its own account."
)
ERR_OPERATOR_FILE = (
    "{path}: expected an Ethereum V3 keystore (JSON) or a file holding one hex "
    "private key and nothing else."
)
ERR_OPERATOR_UNREADABLE = "{path}: cannot read the file ({reason})."
ERR_OPERATOR_CHAIN = "chain must be 1-20 characters of a-z, 0-9, _ or -, not {chain}"


class AssetExists(Exception):
    """The key's address already has an asset."""


class OperatorExists(AssetExists):
    """The key's address is already an operator account (or an asset)."""


class ImportRejected(Exception):
    """Invalid entries and no `skip_invalid`: nothing was written."""

    def __init__(self, report: ImportReport) -> None:
        super().__init__(
            f"{len(report.problems)} invalid entr"
            f"{'y' if len(report.problems) == 1 else 'ies'}; nothing was imported."
        )
        self.report = report


class RotationFailed(crypto.KeyCustodyError):
    """A key could not be re-encrypted; the rotation was rolled back."""


@dataclass(frozen=True)
class ImportProblem:
    """One entry that cannot be imported; the message never carries key material."""

    location: str
    message: str

    def __post_init__(self) -> None:
        # Last line of defence: a hex run longer than an address could be (part of)
        # a key that found its way into another column or a DID.
        object.__setattr__(self, "message", _LONG_HEX.sub("<hidden>", self.message))

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


@dataclass
class ImportReport:
    """What an import found and did. `written` is False when it wrote nothing."""

    entries: int = 0
    created: int = 0
    skipped: int = 0
    problems: list[ImportProblem] = field(default_factory=list)
    written: bool = False


@dataclass
class RotationReport:
    """`total` counts asset keys, `operators` operator keys; `by_previous_key` both."""

    total: int = 0
    by_previous_key: Counter[str] = field(default_factory=Counter)
    key_id: str = ""
    operators: int = 0


def _no_progress(items: Iterable[Any], total: int, description: str) -> Iterable[Any]:
    return items


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _safe(value: str) -> str:
    """Quote a value for a message, hiding anything shaped like a private key."""
    if importers.looks_like_key(value):
        return "<hidden: looks like a private key>"
    return repr(value[:60])


def _kind(value: str | None, default: str) -> str | None:
    if not value:
        return default
    normalized = value.strip().lower().replace(" ", "_").replace("-", "_")
    if normalized == "chargepoint":
        normalized = AssetKind.CHARGE_POINT
    return normalized if normalized in AssetKind.values else None


def _new_asset(
    address: str,
    sealed: crypto.SealedKey,
    *,
    chain: str,
    kind: str,
    external_id: str = "",
    label: str = "",
) -> tuple[Asset, crypto.SealedKey]:
    # `address` comes from crypto (already EIP-55) and `chain` was checked by the
    # caller, so build the canonical DID string without re-validating per asset.
    asset = Asset(
        did=f"did:ethr:{chain}:{address}",
        address=address,
        chain=chain,
        kind=kind,
        external_id=external_id,
        label=label,
    )
    return asset, sealed


def _key_row(asset: Asset, sealed: crypto.SealedKey) -> AssetKey:
    return AssetKey(
        asset=asset,
        key_id=sealed.key_id,
        algorithm=sealed.algorithm,
        nonce=sealed.nonce,
        ciphertext=sealed.ciphertext,
    )


def _write(pairs: Sequence[tuple[Asset, crypto.SealedKey]], progress: Progress) -> None:
    """Insert assets and their key rows in batches, inside the caller's transaction."""
    batches = list(_batches(pairs, BATCH_SIZE))
    for batch in progress(batches, len(batches), "writing"):
        created = Asset.objects.bulk_create([asset for asset, _ in batch])
        sealed_keys = [sealed for _, sealed in batch]
        AssetKey.objects.bulk_create(
            [
                _key_row(asset, sealed)
                for asset, sealed in zip(created, sealed_keys, strict=True)
            ]
        )


def asset_create_from_key(
    *,
    private_key: str | bytes,
    kind: str = AssetKind.OTHER,
    external_id: str = "",
    label: str = "",
    chain: str = VOLTA,
) -> Asset:
    """Create one asset for an existing key (hex or 32 bytes).

    Raises `crypto.InvalidPrivateKey` or `AssetExists`.
    """
    chain_id_for(chain)
    address, sealed = crypto.seal_private_key(private_key)
    existing = Asset.objects.filter(address=address).first()
    if existing is not None:
        raise AssetExists(ERR_ASSET_EXISTS.format(address=address, did=existing.did))
    asset, _ = _new_asset(
        address, sealed, chain=chain, kind=kind, external_id=external_id, label=label
    )
    asset.full_clean()
    with transaction.atomic():
        asset.save()
        _key_row(asset, sealed).save()
    logger.info("asset created", extra={"asset_did": asset.did})
    return asset


def asset_generate(
    *,
    count: int,
    kind: str = AssetKind.OTHER,
    label_prefix: str = "",
    chain: str = VOLTA,
    backend: str | None = None,
    progress: Progress = _no_progress,
) -> list[Asset]:
    """Create `count` assets with fresh random keys, in one transaction.

    Labels are `label_prefix` followed by a running number that continues after the
    assets already labelled with that prefix. `backend` (default `SIGNER_BACKEND`):
    `local` seals each key in the database; `pkcs11` makes each key inside the token
    and stores only its id and public key (keys already made are removed from the
    token if anything fails before the rows are written).
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    if kind not in AssetKind.values:
        raise ValueError(ERR_BAD_KIND.format(choices=", ".join(AssetKind.values)))
    backend = backend or settings.SIGNER_BACKEND
    if backend not in SignerBackend.values:
        raise ValueError(ERR_BAD_BACKEND.format(backend=backend))
    chain_id_for(chain)
    start = (
        Asset.objects.filter(label__startswith=label_prefix).count() + 1
        if label_prefix
        else 1
    )
    if backend == SignerBackend.PKCS11:
        return _generate_in_token(
            count=count,
            kind=kind,
            label_prefix=label_prefix,
            chain=chain,
            start=start,
            progress=progress,
        )
    pairs = []
    for number in progress(range(start, start + count), count, "generating"):
        address, sealed = crypto.seal_new_key()
        label = f"{label_prefix}{number}" if label_prefix else ""
        pairs.append(_new_asset(address, sealed, chain=chain, kind=kind, label=label))
    with transaction.atomic():
        _write(pairs, progress)
    logger.info("assets generated", extra={"asset_count": count, "asset_kind": kind})
    return [asset for asset, _ in pairs]


def _token_fields(key: pkcs11.TokenKey) -> dict[str, str]:
    return {
        "signer_backend": SignerBackend.PKCS11,
        "token_label": key.label,
        "token_key_id": key.key_id.hex(),
        "public_key": key.public_key.hex(),
    }


def _remove_from_token(
    pool: pkcs11.TokenPool, keys: Sequence[pkcs11.TokenKey]
) -> str | None:
    """Delete keys made by a step that failed; the error text if that failed too."""
    if not keys:
        return None
    try:
        pool.destroy([key.key_id for key in keys])
    except Exception as exc:  # report, never mask the original failure
        return f"{type(exc).__name__}: {exc}"
    return None


def _generate_in_token(
    *,
    count: int,
    kind: str,
    label_prefix: str,
    chain: str,
    start: int,
    progress: Progress,
) -> list[Asset]:
    pool = pkcs11.pool_for()
    made: list[pkcs11.TokenKey] = []
    assets = []
    try:
        for number in progress(range(start, start + count), count, "generating"):
            key = pool.generate()
            made.append(key)
            address = key.address
            assets.append(
                Asset(
                    did=f"did:ethr:{chain}:{address}",
                    address=address,
                    chain=chain,
                    kind=kind,
                    label=f"{label_prefix}{number}" if label_prefix else "",
                    **_token_fields(key),
                )
            )
        with transaction.atomic():
            for batch in _batches(assets, BATCH_SIZE):
                Asset.objects.bulk_create(batch)
    except BaseException:
        problem = _remove_from_token(pool, made)
        if problem:
            logger.error("could not remove generated token keys: %s", problem)
        raise
    logger.info(
        "assets generated in token",
        extra={"asset_count": count, "asset_kind": kind, "token": pool.label},
    )
    return assets


class MoveFailed(crypto.KeyCustodyError):
    """Keys could not all be moved into the token; nothing was changed."""


@dataclass
class MoveReport:
    moved: int = 0
    token: str = ""


def assets_move_keys_to_token(
    *, dids: Sequence[str] = (), progress: Progress = _no_progress
) -> MoveReport:
    """Move locally sealed asset keys into the PKCS#11 token, all or nothing.

    Every key (or those of `dids`) is opened, stored in the token as a sensitive,
    non-extractable key and checked by signing with the token and recovering the
    asset's address. Only when every key made it are the rows switched to the token
    backend and their sealed keys deleted, in one transaction holding the row locks;
    if anything fails, the keys already created in the token are removed and no row
    changes. No plaintext is written anywhere: it goes from the decrypt straight into
    the token (`crypto.move_into_token`).
    """
    pool = pkcs11.pool_for()
    report = MoveReport(token=pool.label)
    made: list[pkcs11.TokenKey] = []
    current = ""
    try:
        with transaction.atomic():
            rows = AssetKey.objects.select_for_update(of=("self",)).select_related(
                "asset"
            )
            if dids:
                rows = rows.filter(asset__did__in=list(dids))
            keys = list(rows.order_by("pk"))
            if dids and len(keys) != len(set(dids)):
                found = {row.asset.did for row in keys}
                missing = sorted(set(dids) - found)
                raise MoveFailed(
                    f"no locally sealed key for: {', '.join(missing[:10])}"
                )
            assets = []
            for row in progress(keys, len(keys), "moving into the token"):
                asset = row.asset
                current = asset.did
                if asset.signer_backend != SignerBackend.LOCAL_ENCRYPTED:
                    raise MoveFailed(ERR_MOVE_CHANGED.format(did=asset.did))
                key = crypto.move_into_token(
                    sealed_from_row(row), address=asset.address, pool=pool
                )
                made.append(key)
                if key.address != asset.address:
                    raise crypto.KeyAddressMismatch(
                        crypto.ADDRESS_MISMATCH.format(address=asset.address)
                    )
                _check_token_key(key, asset.address)
                for name, value in _token_fields(key).items():
                    setattr(asset, name, value)
                assets.append(asset)
            current = ""
            Asset.objects.bulk_update(
                assets,
                ["signer_backend", "token_label", "token_key_id", "public_key"],
                batch_size=500,
            )
            AssetKey.objects.filter(pk__in=[row.pk for row in keys]).delete()
            report.moved = len(assets)
    except BaseException as exc:
        problem = _remove_from_token(pool, made)
        reason = str(exc) if isinstance(exc, Exception) else type(exc).__name__
        message = ERR_MOVE_FAILED.format(
            did=current or "the final write", reason=reason
        )
        if problem:
            message += ERR_MOVE_CLEANUP.format(
                reason=problem, ids=", ".join(key.key_id.hex() for key in made)
            )
        if isinstance(exc, Exception):
            raise MoveFailed(message) from None
        raise
    logger.info(
        "asset keys moved into the token",
        extra={"asset_count": report.moved, "token": pool.label},
    )
    return report


def _check_token_key(key: pkcs11.TokenKey, address: str) -> None:
    """Sign a random digest with the token key; it must recover to `address`."""
    from evops.protocol._crypto import recover_address_bytes

    signer = pkcs11.TokenSigner(
        address=address, label=key.label, key_id=key.key_id, public_key=key.public_key
    )
    digest = os.urandom(32)
    signature = signer.sign_hash(digest)
    if "0x" + recover_address_bytes(digest, signature).hex() != address.lower():
        raise crypto.KeyAddressMismatch(crypto.ADDRESS_MISMATCH.format(address=address))


def asset_import_keys(
    *,
    paths: Sequence[Path],
    format: str | None = None,
    password: str | Callable[[], str] | None = None,
    skip_invalid: bool = False,
    kind: str = AssetKind.OTHER,
    chain: str = VOLTA,
    progress: Progress = _no_progress,
) -> ImportReport:
    """Import keys from key files (see `assets.importers` for the formats).

    Every entry is sealed and checked first: a malformed key, a DID that does not
    match its key, an unknown kind or an external id that is already taken is a
    problem reported with its file and line. With any problem and not `skip_invalid`,
    `ImportRejected` is raised and nothing is written; otherwise the valid entries are
    written in one transaction. A key whose address already has an asset, or that
    appeared earlier in the same run, is skipped. `password` (or a callable asked
    once, only when a keystore is met) unlocks keystores.
    """
    if kind not in AssetKind.values:
        raise ValueError(ERR_BAD_KIND.format(choices=", ".join(AssetKind.values)))
    chain_id_for(chain)  # DIDError for an unknown chain, before any work
    read = importers.read_paths(paths, format=format)
    report = ImportReport(entries=len(read.entries) + len(read.problems))
    report.problems.extend(ImportProblem(p.location, p.message) for p in read.problems)

    password_cache: list[str] = []

    def keystore_password() -> str | None:
        if not password_cache:
            value = password() if callable(password) else password
            if value is None:
                return None
            password_cache.append(value)
        return password_cache[0]

    checked: list[tuple[KeyEntry, Asset, crypto.SealedKey]] = []
    seen: set[str] = set()
    for entry in progress(read.entries, len(read.entries), "checking"):
        problem = _check_entry(entry, kind, chain, keystore_password, checked, seen)
        if isinstance(problem, str):
            report.problems.append(ImportProblem(entry.location, problem))
        elif problem is None:
            report.skipped += 1

    fresh = _drop_existing(checked, report)
    _check_external_ids(fresh, report)
    invalid = {p.location for p in report.problems}
    fresh = [item for item in fresh if item[0].location not in invalid]

    if report.problems and not skip_invalid:
        raise ImportRejected(report)
    try:
        with transaction.atomic():
            _write([(asset, sealed) for _, asset, sealed in fresh], progress)
    except IntegrityError:
        raise crypto.KeyCustodyError(ERR_RACE) from None
    report.created = len(fresh)
    report.written = True
    logger.info(
        "asset keys imported",
        extra={
            "assets_created": report.created,
            "assets_skipped": report.skipped,
            "entries_invalid": len(report.problems),
        },
    )
    return report


def _check_entry(
    entry: KeyEntry,
    default_kind: str,
    chain: str,
    keystore_password: Callable[[], str | None],
    checked: list[tuple[KeyEntry, Asset, crypto.SealedKey]],
    seen: set[str],
) -> str | bool | None:
    """Seal and check one entry: a problem message, True when queued, None if seen."""
    try:
        if entry.keystore is not None:
            secret_password = keystore_password()
            if secret_password is None:
                return ERR_KEYSTORE_LOCKED
            address, sealed = crypto.seal_keystore(entry.keystore, secret_password)
        else:
            address, sealed = crypto.seal_private_key(entry.key_hex or "")
    except crypto.KeyCustodyError as exc:
        return str(exc)
    asset_chain = chain
    if entry.did:
        try:
            did_chain = _did_chain(entry.did, address, chain)
        except DIDError as exc:
            return ERR_BAD_DID.format(reason=exc)
        if did_chain is None:
            return ERR_DID_MISMATCH.format(address=address)
        asset_chain = did_chain
    kind = _kind(entry.kind, default_kind)
    if kind is None:
        return ERR_BAD_KIND.format(choices=", ".join(AssetKind.values))
    for name, value, limit in (
        ("external id", entry.external_id, 200),
        ("label", entry.label, 200),
    ):
        if len(value) > limit:
            return ERR_TOO_LONG.format(field=name, limit=limit)
    if address in seen:
        return None
    seen.add(address)
    asset, _ = _new_asset(
        address,
        sealed,
        chain=asset_chain,
        kind=kind,
        external_id=entry.external_id,
        label=entry.label,
    )
    checked.append((entry, asset, sealed))
    return True


def _did_chain(text: str, address: str, default_chain: str) -> str | None:
    """The chain of DID `text` if it names `address` (EIP-55), else None.

    The common case, a DID naming exactly this address (any single case), is decided
    without recomputing checksums; anything else goes through `DID.parse`, which
    raises `DIDError` for a malformed DID.
    """
    network, _, candidate = text.removeprefix("did:ethr:").rpartition(":")
    if (
        text.startswith("did:ethr:")
        and ":" not in network
        and candidate.lower() == address.lower()
        and candidate[2:] in (address[2:], address[2:].lower(), address[2:].upper())
    ):
        if not network:
            return default_chain
        if network.startswith("0x"):
            try:
                return chain_name_for(int(network, 16))
            except ValueError:
                raise DIDError(ERR_SHAPE) from None
        if not _CHAIN_NAME.match(network):
            raise DIDError(ERR_SHAPE)
        chain_id_for(network)
        return network
    did = DID.parse(text, default_chain=default_chain)
    return did.chain if did.address == address else None


def _drop_existing(
    checked: list[tuple[KeyEntry, Asset, crypto.SealedKey]], report: ImportReport
) -> list[tuple[KeyEntry, Asset, crypto.SealedKey]]:
    existing: set[str] = set()
    for batch in _batches([asset.address for _, asset, _ in checked], BATCH_SIZE):
        existing.update(
            Asset.objects.filter(address__in=batch).values_list("address", flat=True)
        )
    report.skipped += sum(1 for _, asset, _ in checked if asset.address in existing)
    return [item for item in checked if item[1].address not in existing]


def _check_external_ids(
    fresh: list[tuple[KeyEntry, Asset, crypto.SealedKey]], report: ImportReport
) -> None:
    wanted = [asset.external_id for _, asset, _ in fresh if asset.external_id]
    taken: dict[str, str] = {}
    for batch in _batches(wanted, BATCH_SIZE):
        taken.update(
            Asset.objects.filter(external_id__in=batch).values_list(
                "external_id", "did"
            )
        )
    first_seen: dict[str, str] = {}
    for entry, asset, _ in fresh:
        external_id = asset.external_id
        if not external_id:
            continue
        if external_id in taken:
            report.problems.append(
                ImportProblem(
                    entry.location,
                    ERR_EXTERNAL_ID_TAKEN.format(
                        external_id=_safe(external_id), did=taken[external_id]
                    ),
                )
            )
        elif external_id in first_seen:
            report.problems.append(
                ImportProblem(
                    entry.location,
                    ERR_EXTERNAL_ID_TWICE.format(
                        external_id=_safe(external_id),
                        first=first_seen[external_id],
                    ),
                )
            )
        else:
            first_seen[external_id] = entry.location


def asset_rotate_encryption_keys(
    *, progress: Progress = _no_progress
) -> RotationReport:
    """Re-encrypt every stored key under the first master key, all or nothing.

    Each key is decrypted with the master key that sealed it, its address re-derived
    and compared, sealed again under the current first key and the new envelope
    verified, all inside one transaction holding row locks; any failure rolls back.
    """
    report = RotationReport(key_id=crypto.current_key_id())
    with transaction.atomic():
        rows = list(
            AssetKey.objects.select_for_update(of=("self",))
            .select_related("asset")
            .order_by("pk")
        )
        report.total = len(rows)
        now = timezone.now()
        for row in progress(rows, len(rows), "re-encrypting"):
            _reseal_row(
                row,
                address=row.asset.address,
                purpose=crypto.ASSET_KEY,
                label=row.asset.did,
                report=report,
                now=now,
            )
        AssetKey.objects.bulk_update(rows, _SEALED_FIELDS, batch_size=500)
        _reseal_operators(report, now)
    logger.info(
        "asset keys re-encrypted",
        extra={
            "asset_count": report.total,
            "operator_count": report.operators,
            "key_id": report.key_id,
        },
    )
    return report


def _reseal_operators(report: RotationReport, now: Any) -> None:
    """Re-encrypt operator keys inside the asset rotation's transaction."""
    operators = list(OperatorAccount.objects.select_for_update().order_by("pk"))
    for operator in operators:
        _reseal_row(
            operator,
            address=operator.address,
            purpose=crypto.OPERATOR_KEY,
            label=f"operator {operator.address}",
            report=report,
            now=now,
        )
    OperatorAccount.objects.bulk_update(operators, _SEALED_FIELDS)
    report.operators = len(operators)


# The columns `_reseal_row` changes.
_SEALED_FIELDS = ["key_id", "algorithm", "nonce", "ciphertext", "updated_at"]


def _reseal_row(
    row: AssetKey | OperatorAccount,
    *,
    address: str,
    purpose: str,
    label: str,
    report: RotationReport,
    now: Any,
) -> None:
    """Re-encrypt one stored key in place (unsaved), counted by its previous key."""
    try:
        sealed = crypto.reseal(sealed_from_row(row), address=address, purpose=purpose)
    except crypto.KeyCustodyError as exc:
        reason = ERR_ROTATION_FAILED.format(did=label, reason=exc)
        raise RotationFailed(reason) from None
    report.by_previous_key[row.key_id] += 1
    row.key_id = sealed.key_id
    row.algorithm = sealed.algorithm
    row.nonce = sealed.nonce
    row.ciphertext = sealed.ciphertext
    row.updated_at = now


# --- the relay operator account ------------------------------------------------------


def _operator_chain(chain: str | None) -> str:
    if chain is None:
        return operator_chain_default()
    if not re.fullmatch(r"[a-z0-9_-]{1,20}", chain):
        raise ValueError(ERR_OPERATOR_CHAIN.format(chain=_safe(chain)))
    return chain


def _operator_save(
    address: str, sealed: crypto.SealedKey, *, label: str, chain: str
) -> OperatorAccount:
    if len(label) > 200:
        raise ValueError(ERR_TOO_LONG.format(field="label", limit=200))
    if OperatorAccount.objects.filter(address=address).exists():
        raise OperatorExists(ERR_OPERATOR_EXISTS.format(address=address))
    asset = Asset.objects.filter(address=address).only("did").first()
    if asset is not None:
        raise OperatorExists(
            ERR_OPERATOR_IS_ASSET.format(address=address, did=asset.did)
        )
    operator = OperatorAccount(
        label=label,
        address=address,
        chain=chain,
        key_id=sealed.key_id,
        algorithm=sealed.algorithm,
        nonce=sealed.nonce,
        ciphertext=sealed.ciphertext,
    )
    try:
        with transaction.atomic():
            operator.save()
    except IntegrityError:
        raise OperatorExists(ERR_OPERATOR_EXISTS.format(address=address)) from None
    logger.info(
        "operator account stored",
        extra={"operator_address": address, "chain": chain, "key_id": sealed.key_id},
    )
    return operator


def operator_generate(*, label: str = "", chain: str | None = None) -> OperatorAccount:
    """Store a new operator account with a fresh key; fund its address before use."""
    chain = _operator_chain(chain)
    address, sealed = crypto.seal_new_key(purpose=crypto.OPERATOR_KEY)
    return _operator_save(address, sealed, label=label, chain=chain)


def operator_import_key(
    *,
    path: Path,
    password: str | Callable[[], str] | None = None,
    label: str = "",
    chain: str | None = None,
) -> OperatorAccount:
    """Store the operator key held in `path`: a V3 keystore or one hex key.

    `password` (or a callable asked only when the file is a keystore) unlocks a
    keystore. Raises `crypto.KeyCustodyError` (a wrong password, a malformed file or
    key; messages never show the file's content), `OperatorExists` when the address is
    already an operator or an asset, `ValueError` for a bad label or chain.
    """
    chain = _operator_chain(chain)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise crypto.KeyCustodyError(
            ERR_OPERATOR_UNREADABLE.format(path=path, reason=reason)
        ) from None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            keystore = json.loads(stripped)
        except ValueError:
            raise crypto.KeystoreError(ERR_OPERATOR_FILE.format(path=path)) from None
        secret_password = password() if callable(password) else password
        if secret_password is None:
            raise crypto.KeystoreError(ERR_KEYSTORE_LOCKED)
        address, sealed = crypto.seal_keystore(
            keystore, secret_password, purpose=crypto.OPERATOR_KEY
        )
    else:
        if len(stripped.split()) != 1:
            raise crypto.InvalidPrivateKey(ERR_OPERATOR_FILE.format(path=path))
        try:
            address, sealed = crypto.seal_private_key(
                stripped, purpose=crypto.OPERATOR_KEY
            )
        except crypto.InvalidPrivateKey as exc:
            raise crypto.InvalidPrivateKey(f"{path}: {exc}") from None
    return _operator_save(address, sealed, label=label, chain=chain)
