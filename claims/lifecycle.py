"""The credential after publication: renewal, expiry, revocation, entry removal.

`lifecycle_sweep` is one pass over the published records (the listener runs it every
`LIFECYCLE_INTERVAL` seconds; `manage.py lifecycle_sweep` runs it once with a
progress bar):

1. facts: records published before the lifecycle existed get their expiry and
   status-list entry read from their token;
2. superseded: where an asset has two published records of one role (a renewal or
   a re-issue was published), the one valid longest stays and the others become
   superseded, so their entries are removed only after the replacement is on chain;
3. revocation: each record with an entry in the document is checked against the
   hub's status list (its `credentialStatus`) and, when `REVOCATION_REGISTRY_ADDRESS`
   is set, the on-chain `ClaimsRevocationRegistry`; a list signed by someone who is
   not among the role's revokers is reported, never obeyed;
4. renewal: inside `RENEWAL_WINDOW_SECONDS` of its expiry (or past it, when no
   sweep saw it in the window), a new prequalification request is filed for the
   asset, once (a revoked role never is);
5. expiry: a record past its expiry becomes expired;
6. removal: the entry of every expired, revoked or superseded record is removed from
   the DID document with exactly the bytes that were written (ERC-1056
   `revokeAttribute`, or `revokeAttributeSigned` through the operator in relay
   mode), then the document is resolved again to confirm.

Transient failures (a hub or chain that cannot be reached) change nothing: the record
stays as it is, the error is shown on it, and the next sweep asks again. Nothing is
removed on a guess.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from assets.models import Asset
from claims import lifecycle_records as records
from claims.dbthreads import db
from claims.integrations import Integrations
from claims.models import Actor, ClaimRecord, ClaimStatus
from claims.peer_calls import asset_signer, log_extra, resolve_document, role_definition
from evops.integrations.revocation import (
    RevocationCheckError,
    RevocationRegistry,
    StatusListClient,
)
from evops.protocol import erc1056
from evops.protocol.erc1056 import AttributeChanged
from evops.protocol.errors import EncodingError
from evops.protocol.resolver import find_service_by_hash
from evops.protocol.status_list import credential_id_of, role_revokers

log = logging.getLogger(__name__)

SOURCE_STATUS_LIST = "status list"
SOURCE_REGISTRY = "on-chain revocation registry"
ERR_REVOKER_NOT_ALLOWED = (
    "status list marks it revoked, but its issuer {issuer} is not among the role's "
    "revokers ({allowed}); not obeyed"
)
ERR_REVOKER_ROLE = (
    "status list marks it revoked by {issuer}; the role's revokers are a role "
    "({kind}), which evops cannot prove: staff must decide"
)
ERR_NO_BYTES = "the written attribute cannot be found in the registry's history"
ERR_NOT_REMOVED = "transaction {tx} mined but the entry is still in the document"
ERR_NOT_RENEWABLE = "no automatic renewal for role {role} (only {prequalification})"


@dataclass
class LifecycleConfig:
    """What the sweep needs besides the pipeline's integrations."""

    renewal_window: timedelta
    status_lists: StatusListClient | None = None
    registry: RevocationRegistry | None = None
    concurrency: int = 10

    async def aclose(self) -> None:
        if self.status_lists is not None:
            await self.status_lists.aclose()


def lifecycle_from_settings(integrations: Integrations) -> LifecycleConfig:
    """The sweep's configuration and revocation sources, from settings."""
    from django.conf import settings

    registry = None
    address = settings.REVOCATION_REGISTRY_ADDRESS
    if address:
        registry = RevocationRegistry(integrations.chain, address)  # type: ignore[arg-type]
    return LifecycleConfig(
        renewal_window=timedelta(seconds=float(settings.RENEWAL_WINDOW_SECONDS)),
        status_lists=StatusListClient(
            settings.CACHE_SERVER_URL, timeout=float(settings.CACHE_SERVER_TIMEOUT)
        ),
        registry=registry,
        concurrency=int(settings.LIFECYCLE_CONCURRENCY),
    )


@dataclass
class SweepResult:
    backfilled: int = 0
    checked: int = 0
    renewals: int = 0
    expired: int = 0
    revoked: int = 0
    superseded: int = 0
    removed: int = 0
    errors: list[str] = field(default_factory=list)


Progress = Callable[[str, int], None]
"""`progress(phase, n)`: n more records done in `phase` (the command's bar)."""


async def _load(pk: int) -> ClaimRecord:
    return await db(ClaimRecord.objects.select_related("asset").get)(pk=pk)


async def lifecycle_sweep(
    *,
    integrations: Integrations,
    config: LifecycleConfig,
    actor: Actor,
    progress: Progress | None = None,
    totals: Callable[[str, int], None] | None = None,
) -> SweepResult:
    """One pass: facts, superseded, revocation, expiry, renewal, removal."""
    result = SweepResult()
    tick = progress or (lambda phase, n: None)
    announce = totals or (lambda phase, n: None)
    limit = asyncio.Semaphore(max(1, config.concurrency))

    result.backfilled = await db(records.backfill_facts)(actor=actor)
    result.superseded += len(await db(records.supersede_replaced)(actor=actor))

    async def each(phase: str, pks: Sequence[int], step: Any) -> None:
        announce(phase, len(pks))

        async def one(pk: int) -> None:
            async with limit:
                try:
                    await step(pk)
                except Exception as exc:  # one record's failure never stops a sweep
                    log.warning("lifecycle %s failed for record %s: %s", phase, pk, exc)
                    result.errors.append(f"{phase} {pk}: {exc}")
                    await db(records.claim_lifecycle_error)(
                        record_id=pk, error=f"{phase}: {exc}", actor=actor
                    )
                finally:
                    tick(phase, 1)

        await asyncio.gather(*(one(pk) for pk in pks))

    async def check(pk: int) -> None:
        result.checked += 1
        if await check_revocation(
            pk, integrations=integrations, config=config, actor=actor
        ):
            result.revoked += 1

    await each("revocation", await db(records.revocation_candidates)(), check)

    async def expire(pk: int) -> None:
        if await db(records.claim_mark_expired)(record_id=pk, actor=actor):
            result.expired += 1

    async def renew(pk: int) -> None:
        if await renew_claim(pk, integrations=integrations, actor=actor):
            result.renewals += 1

    await each(
        "renewal",
        await db(records.renewal_due)(window=config.renewal_window),
        renew,
    )
    # After the renewals: one that expired before any sweep saw it in the window is
    # still renewed (once) before it is marked expired.
    await each("expiry", await db(records.expired_due)(), expire)

    async def remove(pk: int) -> None:
        if await remove_entry(pk, integrations=integrations, actor=actor):
            result.removed += 1

    await each("removal", await db(records.removal_due)(), remove)
    log.info(
        "lifecycle sweep done",
        extra={
            "checked": result.checked,
            "renewals": result.renewals,
            "expired": result.expired,
            "revoked": result.revoked,
            "superseded": result.superseded,
            "removed": result.removed,
            "errors": len(result.errors),
        },
    )
    return result


async def check_revocation(
    pk: int, *, integrations: Integrations, config: LifecycleConfig, actor: Actor
) -> bool:
    """Ask the status list and the registry; True when this call marked it revoked.

    A source that cannot answer raises `RevocationCheckError` (shown on the record by
    the sweep); the record is left as it is.
    """
    record = await _load(pk)
    if (
        config.status_lists is not None
        and record.status_list_url
        and record.status_list_index is not None
    ):
        listing = await config.status_lists.fetch(
            credential_id_of(record.status_list_url)
        )
        if listing is not None and listing.revoked(record.status_list_index):
            role = await role_definition(integrations, record.asset, record.role)
            definition = role.raw.get("definition") if role.raw else None
            kind, allowed = role_revokers(
                definition if isinstance(definition, dict) else None
            )
            if kind != "DID":
                raise RevocationCheckError(
                    ERR_REVOKER_ROLE.format(issuer=listing.issuer, kind=kind or "none"),
                    permanent=True,
                )
            if not _listed(listing.issuer, allowed):
                raise RevocationCheckError(
                    ERR_REVOKER_NOT_ALLOWED.format(
                        issuer=listing.issuer, allowed=", ".join(allowed) or "none"
                    ),
                    permanent=True,
                )
            return await db(records.claim_mark_revoked)(
                record_id=pk,
                revoker=listing.issuer,
                source=SOURCE_STATUS_LIST,
                actor=actor,
                details={
                    "status_list_url": record.status_list_url,
                    "index": record.status_list_index,
                },
            )
    if config.registry is not None and record.role:
        revocation = await config.registry.revocation(record.role, record.asset.address)
        if revocation is not None:
            return await db(records.claim_mark_revoked)(
                record_id=pk,
                revoker=revocation.revoker,
                source=SOURCE_REGISTRY,
                actor=actor,
                details={
                    "registry": config.registry.address,
                    "block": revocation.block,
                },
            )
    return False


def _listed(issuer: str, allowed: Sequence[str]) -> bool:
    from evops.protocol.dids import DID

    try:
        address = DID.parse(issuer).address
    except Exception:
        return False
    return any(_address_of(text) == address for text in allowed)


def _address_of(text: str) -> str:
    from evops.protocol.dids import DID

    try:
        return DID.parse(text).address
    except Exception:
        return ""


async def renew_claim(
    pk: int, *, integrations: Integrations, actor: Actor, manual: bool = False
) -> bool:
    """File a new prequalification request for the record's asset, once.

    Taking the renewal is a conditional update, so two sweeps (or a sweep and a
    staff "renew now") file it once; a failure gives it back for the next sweep.
    """
    from claims import pipeline

    record = await _load(pk)
    if record.role != integrations.prequalification_role:
        if manual:
            raise ValueError(
                ERR_NOT_RENEWABLE.format(
                    role=record.role,
                    prequalification=integrations.prequalification_role,
                )
            )
        return False
    if await db(records.role_revoked_for)(record.asset_id, record.role):
        return False
    if not await db(records.claim_take_renewal)(record_id=pk, again=manual):
        return False
    try:
        outcome = await pipeline.claim_request_prequalification(
            asset=record.asset, integrations=integrations, actor=actor
        )
    except Exception as exc:
        await db(records.claim_renewal_failed)(
            record_id=pk, error=str(exc) or type(exc).__name__, actor=actor
        )
        raise
    claim_id = ""
    new_pk = outcome.record_id
    if new_pk is not None:
        claim_id = await db(_claim_id_of)(new_pk)
    await db(records.claim_renewal_filed)(
        record_id=pk,
        claim_id=claim_id,
        reason=outcome.reason,
        actor=actor,
        manual=manual,
    )
    return True


def _claim_id_of(pk: int) -> str:
    return (
        ClaimRecord.objects.filter(pk=pk).values_list("claim_id", flat=True).first()
        or ""
    )


async def remove_entry(pk: int, *, integrations: Integrations, actor: Actor) -> bool:
    """Remove an ended record's service entry; True when this call confirmed it gone.

    The document is resolved first: an entry no longer there (removed earlier, or
    replaced under the same service id) is recorded as removed without a write.
    """
    record = await _load(pk)
    if record.status not in records.ENDED_STATUSES or record.entry_removed_at:
        return False
    asset = record.asset
    document = await resolve_document(integrations, asset.did)
    if find_service_by_hash(document, record.token_sha256) is None:
        await db(records.claim_entry_removed)(
            record_id=pk,
            tx_hash="",
            message="No longer in the DID document resolved from chain; nothing "
            "written.",
            actor=actor,
        )
        return True
    name, value = record.attribute_name, record.attribute_value
    if not name or not value:
        found = await find_attribute(integrations.chain, asset, record.token_sha256)
        if found is None:
            raise RevocationCheckError(ERR_NO_BYTES, permanent=True)
        name, value = found
        await db(ClaimRecord.objects.filter(pk=pk).update)(
            attribute_name=name, attribute_value=value
        )
    signer = await asset_signer(integrations, asset)
    chain: Any = integrations.chain
    outcome = await chain.revoke_attribute(signer, name=bytes(name), value=bytes(value))
    tx_hash = str(outcome.tx_hash)
    log.info("service entry removed", extra=log_extra(asset, claim_id=record.claim_id))
    confirmed = find_service_by_hash(
        await resolve_document(integrations, asset.did), record.token_sha256
    )
    if confirmed is not None:
        raise RevocationCheckError(ERR_NOT_REMOVED.format(tx=tx_hash))
    await db(records.claim_entry_removed)(
        record_id=pk,
        tx_hash=tx_hash,
        message=f"Service entry removed in {tx_hash} ({outcome.mode} mode); "
        "confirmed from chain.",
        actor=actor,
    )
    return True


async def find_attribute(
    chain: Any, asset: Asset, token_sha256: str, *, max_blocks: int = 10_000
) -> tuple[bytes, bytes] | None:
    """The (name, value) bytes of the newest still-valid `did/svc/*` attribute whose
    value carries this token hash, from the registry's history of the asset."""
    wanted = token_sha256.lower().removeprefix("0x")
    block = await chain.changed(asset.address)
    now = time.time()
    visited = 0
    while block and visited < max_blocks:
        visited += 1
        events = await chain.logs(asset.address, block)
        for event in sorted(events, key=lambda e: e.log_index, reverse=True):
            if not isinstance(event, AttributeChanged):
                continue
            if not event.name_text.startswith("did/svc/") or event.valid_to <= now:
                continue
            try:
                parsed = erc1056.parse_service_value(event.value)
            except EncodingError:
                parsed = {}
            value = parsed.get("hash")
            if isinstance(value, str) and value.lower().removeprefix("0x") == wanted:
                return bytes(event.name), bytes(event.value)
        older = [e.previous_change for e in events if 0 < e.previous_change < block]
        block = max(older, default=0)
    return None


async def renew_now(
    record: ClaimRecord, *, integrations: Integrations, actor: Actor
) -> bool:
    """The console's "renew now": file the renewal whatever the window says."""
    if record.status != ClaimStatus.PUBLISHED:
        raise ValueError(
            f"Only published claims are renewed (this one is {record.status})."
        )
    return await renew_claim(
        record.pk, integrations=integrations, actor=actor, manual=True
    )
