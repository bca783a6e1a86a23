"""Reads of assets and the operator account.

Nothing here decrypts anything: asset reads leave `AssetKey` untouched, and the
operator lookup returns the row whose sealed envelope `assets.signers` wraps.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections, models
from django.db.models import QuerySet

from assets.crypto import KeyCustodyError
from assets.models import Asset, AssetKey, OperatorAccount
from evops.database import bound_cursor, loads_plainly
from evops.protocol.dids import DID, chain_name_for
from evops.protocol.errors import DIDError

EXPORT_COLUMNS = ("did", "address", "kind", "external_id", "label")


def asset_get_by_did(did: DID | str) -> Asset:
    """The asset of a DID in any accepted form (legacy, any case).

    Looks up by address, since every DID form of an account names the same key.
    Raises `DIDError` for a malformed DID and `Asset.DoesNotExist` for an unknown one.
    """
    return Asset.objects.get(address=DID.coerce(did).address)


def asset_find_by_did(did: DID | str) -> Asset | None:
    """Like `asset_get_by_did`, but None when there is no such asset."""
    return Asset.objects.filter(address=DID.coerce(did).address).first()


def assets_with_keys(addresses: Iterable[str]) -> list[Asset]:
    """The assets of these EIP-55 addresses, each with its sealed key loaded (None
    cached for an asset without one, as `select_related("key")` leaves it).

    The listener's lease asks this for every batch of messages: on PostgreSQL one
    fixed statement whose rows are built with `from_db` (the ORM query took about
    70 us of CPU per asset to build and load); elsewhere the ORM query.
    """
    wanted = sorted(set(addresses))
    if not wanted:
        return []
    if connection.vendor != "postgresql" or not (
        loads_plainly(Asset) and loads_plainly(AssetKey)
    ):
        return list(Asset.objects.select_related("key").filter(address__in=wanted))
    sql, asset_names, key_names = _assets_with_keys_query()
    split = len(asset_names)
    link = AssetKey._meta.get_field("asset")
    assert isinstance(link, models.OneToOneField)
    db = connections[connection.alias]
    with bound_cursor(db) as cursor:
        cursor.execute(sql, [wanted])
        rows = cursor.fetchall()
    found: list[Asset] = []
    for row in rows:
        asset = Asset.from_db(db.alias, asset_names, row[:split])
        key = None
        if row[split] is not None:
            key = AssetKey.from_db(db.alias, key_names, row[split:])
            link.set_cached_value(key, asset)
        link.remote_field.set_cached_value(asset, key)
        found.append(asset)
    return found


@functools.cache
def _assets_with_keys_query() -> tuple[str, list[str], list[str]]:
    """The join, and the attribute names of the asset's and the key's columns it
    returns, in order (for `from_db`)."""
    quote = connection.ops.quote_name
    asset_fields = Asset._meta.concrete_fields
    key_fields = AssetKey._meta.concrete_fields
    columns = [f"a.{quote(f.column)}" for f in asset_fields] + [
        f"k.{quote(f.column)}" for f in key_fields
    ]
    link = quote(AssetKey._meta.get_field("asset").column)
    asset_pk = quote(Asset._meta.get_field("id").column)
    address = quote(Asset._meta.get_field("address").column)
    # Only quoted identifiers from the models' own metadata are formatted in; the
    # addresses are a parameter.
    sql = (
        f"SELECT {', '.join(columns)} "  # noqa: S608
        f"FROM {quote(Asset._meta.db_table)} a "
        f"LEFT JOIN {quote(AssetKey._meta.db_table)} k ON k.{link} = a.{asset_pk} "
        f"WHERE a.{address} = ANY(%s)"
    )
    return (
        sql,
        [field.attname for field in asset_fields],
        [field.attname for field in key_fields],
    )


def asset_list(
    *, active: bool | None = None, kind: str | None = None
) -> QuerySet[Asset]:
    queryset = Asset.objects.all()
    if active is not None:
        queryset = queryset.filter(active=active)
    if kind is not None:
        queryset = queryset.filter(kind=kind)
    return queryset.order_by("id")


def asset_export_rows() -> Iterator[tuple[str, str, str, str, str]]:
    """Rows of DID, address, kind, external id, label for every asset, by id."""
    yield from (
        Asset.objects.order_by("id")
        .values_list(*EXPORT_COLUMNS)
        .iterator(chunk_size=2000)
    )


# --- the relay operator account ------------------------------------------------------

OPERATOR_NOT_CONFIGURED = (
    "Relay mode needs an operator account and none is stored for chain {chain!r}. "
    "Run `manage.py generate_operator_key` (then fund the address it prints) or "
    "`manage.py import_operator_key PATH`, and if several are stored set "
    "CHAIN_OPERATOR_ADDRESS; or set CHAIN_WRITE_MODE=asset."
)
OPERATOR_AMBIGUOUS = (
    "{count} operator accounts are stored for chain {chain!r} ({addresses}); set "
    "CHAIN_OPERATOR_ADDRESS to the one relay mode should send from."
)
OPERATOR_UNKNOWN = (
    "CHAIN_OPERATOR_ADDRESS is {address}, but no operator account with that address "
    "is stored for chain {chain!r}. Run `manage.py import_operator_key PATH` with its "
    "key, or correct CHAIN_OPERATOR_ADDRESS."
)


class OperatorNotConfigured(KeyCustodyError, ImproperlyConfigured):
    """Relay mode cannot run: no operator, an unknown one configured, or a choice.

    Also an `ImproperlyConfigured`: it is a set-up problem, found at start-up.
    """


def operator_chain_default() -> str:
    """The chain name operators are stored under for the configured `CHAIN_ID`."""
    chain_id = int(settings.CHAIN_ID)
    try:
        return chain_name_for(chain_id)
    except DIDError:
        # A chain with no DID name (a private test chain): key operators by its id.
        return str(chain_id)


def operator_account_for(*, chain: str | None = None) -> OperatorAccount:
    """The operator relay mode uses on `chain` (default: the configured chain).

    `CHAIN_OPERATOR_ADDRESS` names it when set; otherwise the only operator stored for
    the chain. Raises `OperatorNotConfigured` with a message saying what to run or
    set.
    """
    chain = chain or operator_chain_default()
    operators = OperatorAccount.objects.filter(chain=chain).order_by("id")
    configured = str(getattr(settings, "CHAIN_OPERATOR_ADDRESS", "") or "")
    if configured:
        found = operators.filter(address__iexact=configured).first()
        if found is None:
            raise OperatorNotConfigured(
                OPERATOR_UNKNOWN.format(address=configured, chain=chain)
            )
        return found
    candidates = list(operators[:6])
    if not candidates:
        raise OperatorNotConfigured(OPERATOR_NOT_CONFIGURED.format(chain=chain))
    if len(candidates) > 1:
        count = operators.count()
        addresses = ", ".join(o.address for o in candidates[:5])
        raise OperatorNotConfigured(
            OPERATOR_AMBIGUOUS.format(
                count=count,
                chain=chain,
                addresses=addresses + (", ..." if count > 5 else ""),
            )
        )
    return candidates[0]


def operator_exists(*, chain: str | None = None) -> bool:
    """Whether `operator_account_for(chain=chain)` would find one (no key loaded)."""
    try:
        operator_account_for(chain=chain)
    except OperatorNotConfigured:
        return False
    return True
