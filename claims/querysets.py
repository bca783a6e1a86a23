"""The claims app's querysets: the leases, the batched writes, the heartbeat.

The app's only raw SQL lives here. Leases take rows with `SELECT ... FOR UPDATE SKIP
LOCKED` (PostgreSQL) and push their due time forward in the same transaction, so two
workers never take the same row (the inbox's in one statement);
`InboundMessageQuerySet.finish_many` records many messages' outcomes with one
UPDATE, its values bound, sent for every row together, and `insert_rows` inserts
the listener's batches of new rows the same way; the burst's lookups
(`first_stored`, `ids_named`) are fixed statements too. Each has the ORM query it
replaces as its SQLite path.
`claims.models` attaches them as the managers of its models.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import connection, connections, models, transaction
from django.db.models import F, Field, Lookup, Q, Value
from django.db.models.expressions import CombinedExpression
from django.utils import timezone

from evops.database import bound_cursor, loads_plainly

if TYPE_CHECKING:
    # Named as strings in the base classes below, which ruff does not read.
    from claims.models import (  # noqa: F401
        ClaimRecord,
        InboundMessage,
        ListenerHeartbeat,
    )


class AnyOf(Lookup):  # type: ignore[type-arg]
    """`column = ANY(%s)` with the values bound as one array (PostgreSQL).

    `pk__in=ids` binds one parameter per id: for a batch of a hundred, building,
    quoting and parsing those took longer than the query (psycopg parses a long
    statement anew every time). Elsewhere (SQLite) it is `IN (...)` as usual.
    `queryset.filter(AnyOf(F("pk"), ids))`.
    """

    lookup_name = "any_of"
    prepare_rhs = False

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, params = self.process_lhs(compiler, connection)
        values = list(self.rhs)
        if connection.vendor != "postgresql":
            marks = ", ".join(["%s"] * len(values)) or "NULL"
            return f"{lhs} IN ({marks})", [*params, *values]
        return f"{lhs} = ANY(%s)", [*params, values]


M = TypeVar("M", bound=models.Model)


def insert_rows(rows: Sequence[M]) -> Sequence[M]:
    """`bulk_create` for new rows of one model, each given its primary key.

    On PostgreSQL one single-row INSERT, the same text every time, is sent for
    every row at once (psycopg pipelines `executemany`) and each returns its id.
    `bulk_create` builds one INSERT of all the rows instead, compiled value by
    value, whose text (thousands of placeholders, new for every batch size)
    psycopg then parses again: about a millisecond of CPU per row of a wide table.
    The values are those `bulk_create` writes (each field's `pre_save` for an
    insert, then its database value); errors are Django's, as from any query.
    """
    if not rows:
        return rows
    model = type(rows[0])
    if connection.vendor != "postgresql" or model._meta.auto_field is None:
        return model._default_manager.bulk_create(rows)
    sql, fields = _insert_sql(model)
    # The database wrapper itself, not the `connection` proxy: every read through
    # the proxy is a context-local lookup, and each value's preparation makes several.
    db = connections[connection.alias]
    params = []
    for row in rows:
        values: list[Any] = []
        for field, plain, attname, passing in fields:
            if passing:
                # Field.pre_save is this getattr; a str in a CharField, an int in an
                # IntegerField, ... is its own database value.
                value = getattr(row, attname)
                if type(value) in passing or (value is None and plain):
                    values.append(value)
                    continue
            else:
                value = field.pre_save(row, True)
                if value is None and plain:
                    values.append(None)
                    continue
            values.append(field.get_db_prep_save(value, db))
        params.append(tuple(values))
    ids: list[Any] = []
    with bound_cursor(db) as cursor:
        cursor.executemany(sql, params, returning=True)
        while True:
            (pk,) = cursor.fetchone()
            ids.append(pk)
            if not cursor.nextset():
                break
    for row, pk in zip(rows, ids, strict=True):
        row.pk = pk
        row._state.adding = False
        row._state.db = db.alias
    return rows


@functools.cache
def _insert_sql(
    model: type[models.Model],
) -> tuple[str, tuple[tuple[Field[Any, Any], bool, str, tuple[type, ...]], ...]]:
    """The INSERT, and each field with whether None needs no preparing for it (its
    database value is None, as for every field but a JSONField: maybe JSON null),
    its attribute name and the value types sent as they are (`_passing_types`)."""
    meta = model._meta
    quote = connection.ops.quote_name
    pk = meta.pk
    assert pk is not None
    fields = tuple(
        field
        for field in meta.concrete_fields
        if isinstance(field, Field) and field is not pk
    )
    columns = ", ".join(quote(field.column) for field in fields)
    values = ", ".join(["%s"] * len(fields))
    # Only quoted identifiers from the model's own metadata are formatted in; every
    # value is a parameter.
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({columns}) "  # noqa: S608
        f"VALUES ({values}) RETURNING {quote(pk.column)}"
    )
    return sql, tuple(
        (
            field,
            not isinstance(field, models.JSONField),
            field.attname,
            _passing_types(field),
        )
        for field in fields
    )


# Field classes (exactly these, not subclasses) whose database value is the Python
# value itself for the types given: their preparation only checks that.
_PASSING: dict[type[Field[Any, Any]], tuple[type, ...]] = {
    models.CharField: (str,),
    models.TextField: (str,),
    models.BooleanField: (bool,),
    models.IntegerField: (int,),
    models.BigIntegerField: (int,),
    models.SmallIntegerField: (int,),
    models.PositiveIntegerField: (int,),
    models.PositiveBigIntegerField: (int,),
    models.PositiveSmallIntegerField: (int,),
}


def _passing_types(field: Field[Any, Any]) -> tuple[type, ...]:
    """The value types `insert_rows` may send as they are for `field` (none: every
    value goes through the field's `pre_save` and `get_db_prep_save`)."""
    if type(field).pre_save is not Field.pre_save:
        return ()
    if isinstance(field, models.ForeignKey):
        target = field.target_field
        if type(target) in (models.AutoField, models.BigAutoField):
            return (int,)
        return ()
    return _PASSING.get(type(field), ())


@functools.cache
def _prepared_fields(
    model: type[models.Model], names: tuple[str, ...]
) -> tuple[tuple[str, Field[Any, Any], tuple[type, ...]], ...]:
    """Each name with its field of `model` and the value types it takes as they
    are (`_passing_types`)."""
    fields = []
    for name in names:
        field = model._meta.get_field(name)
        assert isinstance(field, Field)
        fields.append((name, field, _passing_types(field)))
    return tuple(fields)


def _db_values(
    fields: Sequence[tuple[str, Field[Any, Any], tuple[type, ...]]],
    values: Mapping[str, Any],
    db: Any,
) -> list[Any]:
    """The database values of `values` for `_prepared_fields`' fields, in order."""
    out: list[Any] = []
    for name, field, passing in fields:
        value = values[name]
        if type(value) in passing:
            out.append(value)  # its own database value (`_passing_types`)
        else:
            out.append(field.get_db_prep_save(value, db))
    return out


def skip_locked(query: Any) -> Any:
    """`query` locking its rows, skipping those another worker holds.

    SQLite has no row locks; there a single listener is the supported setup.
    """
    if connection.features.has_select_for_update_skip_locked:
        return query.select_for_update(skip_locked=True)
    return query


class ClaimRecordQuerySet(models.QuerySet["ClaimRecord"]):
    def ids_named(
        self, claim_ids: Sequence[str], asset_ids: Sequence[int]
    ) -> list[int]:
        """Ids of the records with one of these claim ids for one of these assets.

        A burst asks this for every batch of filed requests and nearly always finds
        none: one fixed statement instead of an ORM query built each time.
        """
        if connection.vendor == "postgresql":
            with bound_cursor() as cursor:
                cursor.execute(
                    _select_sql(
                        self.model, ("id",), ("claim_id", "asset"), ordered=False
                    ),
                    [list(claim_ids), list(asset_ids)],
                )
                return [pk for (pk,) in cursor.fetchall()]
        return list(
            self.filter(
                AnyOf(F("claim_id"), list(claim_ids)),
                AnyOf(F("asset_id"), list(asset_ids)),
            ).values_list("pk", flat=True)
        )

    def lock_statuses(self, ids: Sequence[int]) -> dict[int, str]:
        """Lock these records (`FOR UPDATE`, in id order) and return their statuses.

        Every batched move starts here: one fixed statement on PostgreSQL rather
        than an ORM query built per batch. Call inside a transaction.
        """
        ids = sorted(set(ids))
        if connection.vendor == "postgresql":
            with bound_cursor() as cursor:
                sql = _select_sql(self.model, ("id", "status"), ("id",), locked=True)
                cursor.execute(sql, [ids])
                return dict(cursor.fetchall())
        return dict(
            self.select_for_update()
            .filter(AnyOf(F("pk"), ids))
            .order_by("pk")
            .values_list("pk", "status")
        )

    def lock_named(
        self, asset_ids: Sequence[int], claim_ids: Sequence[str]
    ) -> list[tuple[int, int, str, str]]:
        """Lock the records of any of these assets with any of these claim ids (in
        id order): (id, asset id, claim id, token digest) of each. Call inside a
        transaction."""
        assets, claims = sorted(set(asset_ids)), sorted(set(claim_ids))
        if connection.vendor == "postgresql":
            with bound_cursor() as cursor:
                sql = _select_sql(
                    self.model,
                    ("id", "asset", "claim_id", "token_sha256"),
                    ("asset", "claim_id"),
                    locked=True,
                )
                cursor.execute(sql, [assets, claims])
                return [tuple(row) for row in cursor.fetchall()]
        return list(
            self.select_for_update()
            .filter(AnyOf(F("asset_id"), assets), AnyOf(F("claim_id"), claims))
            .order_by("pk")
            .values_list("pk", "asset_id", "claim_id", "token_sha256")
        )

    def loaded(self, ids: Sequence[int]) -> list[ClaimRecord]:
        """These records, whole, in id order: one fixed statement on PostgreSQL
        (`from_db`, as the ORM loads them) while no field of the model has a database
        converter `from_db` would skip; the ORM query otherwise."""
        ids = sorted(set(ids))
        if connection.vendor == "postgresql" and not self.query.where:
            plain = _plain_select_sql(self.model)
            if plain is not None:
                sql, names = plain
                with bound_cursor() as cursor:
                    cursor.execute(sql, [ids])
                    rows = cursor.fetchall()
                return [self.model.from_db(self.db, names, row) for row in rows]
        return list(self.filter(AnyOf(F("pk"), ids)).order_by("pk"))

    def update_together(self, ids: Sequence[int], values: Mapping[str, Any]) -> None:
        """Set the same values on these (locked) records: one UPDATE.

        On PostgreSQL a fixed statement when each value is plain or adds an integer
        to its own column (`F("attempts") + 1`); the ORM's UPDATE for anything else.
        """
        increments: dict[str, int] = {}
        plain: dict[str, Any] = {}
        for name, value in values.items():
            step = _own_increment(name, value)
            if step is not None:
                increments[name] = step
            elif hasattr(value, "resolve_expression") or hasattr(
                value, "prepare_database_save"
            ):
                # An expression, or a model instance for a foreign key: the ORM
                # knows how to write those.
                break
            else:
                plain[name] = value
        else:
            if connection.vendor == "postgresql":
                db = connections[connection.alias]
                fields = _prepared_fields(self.model, tuple(plain))
                params = _db_values(fields, plain, db)
                sql = _update_together_sql(
                    self.model, tuple(plain), tuple(sorted(increments))
                )
                steps = [increments[name] for name in sorted(increments)]
                with transaction.atomic(savepoint=False), bound_cursor() as cursor:
                    cursor.execute(sql, [*params, *steps, list(ids)])
                return
        self.filter(AnyOf(F("pk"), list(ids))).update(**values)

    def update_each(self, rows: Sequence[tuple[int, Mapping[str, Any]]]) -> None:
        """Give each record (by pk) its own values, the same columns for all.

        One UPDATE text, its values bound, run for each row (psycopg pipelines
        `executemany`), rather than an ORM query built per record: a burst's moves
        set a different CID, token or transaction on every row. Plain values only
        (no expressions); the rows are expected to be locked by the caller.
        """
        if not rows:
            return
        names = tuple(rows[0][1])
        fields = _prepared_fields(self.model, names)
        # The database wrapper itself, not the `connection` proxy (a context-local
        # lookup on every read), as `insert_rows` does.
        db = connections[connection.alias]
        params = [[*_db_values(fields, values, db), pk] for pk, values in rows]
        # Inside the caller's transaction (every batched move has one) this adds
        # no savepoint; alone, it is its own transaction.
        with transaction.atomic(savepoint=False), bound_cursor(db) as cursor:
            cursor.executemany(_update_sql(self.model, names), params)

    def lease_due(self, *, limit: int, until: datetime) -> list[int]:
        """Take up to `limit` records due for another try, time past.

        Issued and stored records whose retry time came, and `publishing` records
        whose lease ran out (the listener holding them stopped renewing it: a
        crash). Rows are locked with SKIP LOCKED (PostgreSQL) while their retry time
        is pushed to `until` (the publication lease), so two workers never take the
        same record.
        """
        # The models module imports this one for its managers.
        from claims.models import ClaimStatus

        now = timezone.now()
        with transaction.atomic():
            query = self.filter(
                status__in=[
                    # requested: only after a staff retry (it sets the time)
                    ClaimStatus.REQUESTED,
                    ClaimStatus.ISSUED,
                    ClaimStatus.STORED,
                    ClaimStatus.PUBLISHING,
                ],
                next_retry_at__lte=now,
            ).order_by("next_retry_at")
            ids = list(skip_locked(query).values_list("pk", flat=True)[:limit])
            if ids:
                self.filter(AnyOf(F("pk"), ids)).update(next_retry_at=until)
        return ids


# Stored reasons are bounded (a peer's error text can be long).
REASON_CHARS = 2000


def _storable(text: str) -> str:
    """Text PostgreSQL stores: a NUL (which it refuses, failing the whole batch of
    outcomes it is sent with) written as the escape `\\x00`."""
    return text.replace("\x00", "\\x00") if "\x00" in text else text


class InboundMessageQuerySet(models.QuerySet["InboundMessage"]):
    def lease_due(self, *, limit: int, lease_seconds: float) -> list[InboundMessage]:
        """Take up to `limit` pending messages (SKIP LOCKED), leasing them to a worker.

        The rows are loaded whole: a handler reading a field would otherwise cost a
        query per row.
        """
        # The models module imports this one for its managers.
        from claims.models import MessageOutcome

        now = timezone.now()
        until = now + timedelta(seconds=lease_seconds)
        if (
            connection.vendor == "postgresql"
            and not self.query.where
            and loads_plainly(self.model)
        ):
            # One statement: the rows as they were, locked and leased (an ORM
            # SELECT and UPDATE cost a millisecond of CPU per lease to build).
            sql, names = _lease_sql(self.model)
            db = connections[self.db]
            with transaction.atomic(using=self.db), bound_cursor(db) as cursor:
                cursor.execute(sql, [MessageOutcome.PENDING, now, limit, until])
                rows = cursor.fetchall()
            return [self.model.from_db(self.db, names, row) for row in rows]
        with transaction.atomic():
            query = self.filter(
                outcome=MessageOutcome.PENDING, next_attempt_at__lte=now
            ).order_by("id")
            messages = list(skip_locked(query)[:limit])
            if messages:
                self.filter(AnyOf(F("pk"), [m.pk for m in messages])).update(
                    next_attempt_at=until, attempts=F("attempts") + 1
                )
        return messages

    def first_stored(
        self, keys: Sequence[str], since: datetime
    ) -> list[tuple[str, int]]:
        """(dedupe key, id) of the messages stored with these keys since `since`
        that are not themselves duplicates, oldest first (the inbox's dedupe)."""
        # The models module imports this one for its managers.
        from claims.models import MessageOutcome

        if connection.vendor == "postgresql":
            with bound_cursor() as cursor:
                cursor.execute(
                    _first_stored_sql(self.model),
                    [list(keys), since, MessageOutcome.IGNORED, "duplicate%"],
                )
                return [(key, pk) for key, pk in cursor.fetchall()]
        return list(
            self.filter(AnyOf(F("dedupe_key"), list(keys)), received_at__gte=since)
            .exclude(outcome=MessageOutcome.IGNORED, reason__startswith="duplicate")
            .order_by("id")
            .values_list("dedupe_key", "pk")
        )

    def finish_many(self, rows: Sequence[FinishRow]) -> None:
        """Record many messages' outcomes: one statement, run for each, one commit.

        One UPDATE per row still, but one text, values bound, sent together (psycopg
        pipelines `executemany`) rather than an ORM query built per message. A row
        is (outcome, reason, kind or None, asset DID, claim id, record id or None,
        message id); kind, asset DID, claim id and record id keep what the row has
        when not given.
        """
        if not rows:
            return
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        params = [
            (
                outcome,
                _storable(reason)[:REASON_CHARS],
                now,
                kind or None,
                _storable(did)[:100],
                _storable(claim)[:100],
                rec,
                pk,
            )
            for outcome, reason, kind, did, claim, rec, pk in rows
        ]
        with transaction.atomic(), bound_cursor() as cursor:
            cursor.executemany(_finish_sql(self.model), params)

    def failed_naming(self, record_ids: Sequence[int]) -> list[tuple[int, int]]:
        """(message id, record id) of the failed messages about these records: by
        their record, or by the claim id and asset DID of one (a message that failed
        before its record existed). A message naming a record by id belongs to it.

        Publication asks this for every batch and nearly always finds none: one
        fixed statement on PostgreSQL, the ORM's queries elsewhere.
        """
        # The models module imports this one for its managers.
        from claims.models import ClaimRecord, MessageOutcome

        ids = sorted(set(record_ids))
        if not ids:
            return []
        if connection.vendor == "postgresql":
            with bound_cursor() as cursor:
                cursor.execute(
                    _failed_naming_sql(self.model, ClaimRecord),
                    [ids, MessageOutcome.FAILED],
                )
                found = cursor.fetchall()
        else:
            records = {
                pk: (claim_id, did)
                for pk, claim_id, did in ClaimRecord.objects.filter(
                    AnyOf(F("pk"), ids)
                ).values_list("pk", "claim_id", "asset__did")
            }
            by_claim = {value: pk for pk, value in records.items()}
            named = Q(AnyOf(F("record_id"), list(records))) | Q(
                AnyOf(F("claim_id"), sorted({c for c, _ in records.values()})),
                AnyOf(F("asset_did"), sorted({d for _, d in records.values()})),
            )
            found = [
                (pk, record_id, by_claim.get((claim_id, did)))
                for pk, record_id, claim_id, did in self.filter(
                    outcome=MessageOutcome.FAILED
                )
                .filter(named)
                .values_list("pk", "record_id", "claim_id", "asset_did")
            ]
        # A message may meet two records (by id, and by name); its id wins. A claim
        # id and DID name one record at most (unique per asset).
        owners: dict[int, int] = {}
        wanted = set(ids)
        for message_id, record_id, by_name in found:
            owner = record_id if record_id in wanted else by_name
            if owner is not None:
                owners[message_id] = owner
        return sorted(owners.items())


FinishRow = tuple[str, str, "str | None", str, str, "int | None", int]


class ListenerHeartbeatQuerySet(models.QuerySet["ListenerHeartbeat"]):
    def beat(
        self,
        *,
        name: str,
        state: str,
        mode: str,
        started_at: datetime,
        details: dict[str, Any],
    ) -> None:
        """Write this process's heartbeat row (one per listener name)."""
        self.update_or_create(
            name=name,
            defaults={
                "state": state,
                "last_heartbeat": timezone.now(),
                "started_at": started_at,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "mode": mode,
                "details": details,
            },
        )


@functools.cache
def _update_sql(model: type[models.Model], names: tuple[str, ...]) -> str:
    meta, quote = model._meta, connection.ops.quote_name
    assert meta.pk is not None
    assignments = ", ".join(f"{_column(model, name)} = %s" for name in names)
    # Only quoted identifiers from the model's own metadata are formatted in; every
    # value is a parameter.
    return (
        f"UPDATE {quote(meta.db_table)} SET {assignments} "  # noqa: S608
        f"WHERE {quote(meta.pk.column)} = %s"
    )


def _column(model: type[models.Model], name: str) -> str:
    field = model._meta.get_field(name)
    assert isinstance(field, Field)
    return connection.ops.quote_name(field.column)


@functools.cache
def _lease_sql(model: type[InboundMessage]) -> tuple[str, list[str]]:
    """Lock and lease due messages, returning them as they were before the lease;
    and the attribute names of the columns it returns, in order (for `from_db`)."""
    meta = model._meta
    table = connection.ops.quote_name(meta.db_table)
    columns = ", ".join(
        connection.ops.quote_name(field.column) for field in meta.concrete_fields
    )
    pk, outcome, due, attempts = (
        _column(model, name)
        for name in ("id", "outcome", "next_attempt_at", "attempts")
    )
    # Only quoted identifiers from the model's own metadata are formatted in; every
    # value is a parameter.
    sql = (
        f"WITH picked AS (SELECT {columns} FROM {table} "  # noqa: S608
        f"WHERE {outcome} = %s AND {due} <= %s ORDER BY {pk} LIMIT %s "
        f"FOR UPDATE SKIP LOCKED), "
        f"leased AS (UPDATE {table} SET {due} = %s, "
        f"{attempts} = {table}.{attempts} + 1 "
        f"FROM picked WHERE {table}.{pk} = picked.{pk}) "
        f"SELECT * FROM picked ORDER BY {pk}"
    )
    return sql, [field.attname for field in meta.concrete_fields]


@functools.cache
def _select_sql(
    model: type[models.Model],
    columns: tuple[str, ...],
    matched: tuple[str, ...],
    *,
    ordered: bool = True,
    locked: bool = False,
) -> str:
    """SELECT `columns` of the rows whose every `matched` column equals one of an
    array parameter (one parameter per name, in order); in primary key order unless
    `ordered` is False; `FOR UPDATE` when `locked`."""
    meta = model._meta
    assert meta.pk is not None
    selected = ", ".join(_column(model, name) for name in columns)
    where = " AND ".join(f"{_column(model, name)} = ANY(%s)" for name in matched)
    # Only quoted identifiers from the model's own metadata are formatted in; every
    # value is a parameter.
    table = connection.ops.quote_name(meta.db_table)
    sql = f"SELECT {selected} FROM {table} WHERE {where}"  # noqa: S608
    if ordered:
        sql += f" ORDER BY {_column(model, meta.pk.name)}"
    if locked:
        sql += " FOR UPDATE"
    return sql


@functools.cache
def _first_stored_sql(model: type[InboundMessage]) -> str:
    table = connection.ops.quote_name(model._meta.db_table)
    pk, key, received, outcome, reason = (
        _column(model, name)
        for name in ("id", "dedupe_key", "received_at", "outcome", "reason")
    )
    # Only quoted identifiers from the model's own metadata are formatted in; every
    # value is a parameter.
    return (
        f"SELECT {key}, {pk} FROM {table} WHERE {key} = ANY(%s) "  # noqa: S608
        f"AND {received} >= %s AND NOT ({outcome} = %s AND {reason} LIKE %s) "
        f"ORDER BY {pk}"
    )


@functools.cache
def _finish_sql(model: type[InboundMessage]) -> str:
    outcome, reason, processed_at, next_attempt_at, kind = (
        _column(model, name)
        for name in ("outcome", "reason", "processed_at", "next_attempt_at", "kind")
    )
    asset_did, claim_id, record_id, pk = (
        _column(model, name) for name in ("asset_did", "claim_id", "record", "id")
    )
    table = connection.ops.quote_name(model._meta.db_table)
    # Only quoted identifiers from the model's own metadata are formatted in; every
    # value is a parameter.
    return (
        f"UPDATE {table} SET {outcome} = %s, {reason} = %s, "  # noqa: S608
        f"{processed_at} = %s, {next_attempt_at} = NULL, "
        f"{kind} = COALESCE(%s, {kind}), "
        f"{asset_did} = COALESCE(NULLIF(%s, ''), {asset_did}), "
        f"{claim_id} = COALESCE(NULLIF(%s, ''), {claim_id}), "
        f"{record_id} = COALESCE(%s, {record_id}) "
        f"WHERE {pk} = %s"
    )


def _own_increment(name: str, value: Any) -> int | None:
    """n when `value` is `F(name) + n` (an integer n), else None."""
    if (
        isinstance(value, CombinedExpression)
        and value.connector == CombinedExpression.ADD
        and isinstance(value.lhs, F)
        and value.lhs.name == name
        and isinstance(value.rhs, Value)
        and type(value.rhs.value) is int
    ):
        return value.rhs.value
    return None


@functools.cache
def _update_together_sql(
    model: type[models.Model], names: tuple[str, ...], increments: tuple[str, ...]
) -> str:
    meta, quote = model._meta, connection.ops.quote_name
    assert meta.pk is not None
    table = quote(meta.db_table)
    assignments = [f"{_column(model, name)} = %s" for name in names] + [
        f"{_column(model, name)} = {table}.{_column(model, name)} + %s"
        for name in increments
    ]
    # Only quoted identifiers from the model's own metadata are formatted in; every
    # value is a parameter.
    return (
        f"UPDATE {table} SET {', '.join(assignments)} "  # noqa: S608
        f"WHERE {quote(meta.pk.column)} = ANY(%s)"
    )


@functools.cache
def _plain_select_sql(model: type[models.Model]) -> tuple[str, list[str]] | None:
    """SELECT of the whole rows with these ids, and the attribute names of its
    columns; None when a field has a database converter (`from_db` would skip it)."""
    if not loads_plainly(model):
        return None
    meta = model._meta
    assert meta.pk is not None
    fields = meta.concrete_fields
    sql = _select_sql(model, tuple(field.name for field in fields), (meta.pk.name,))
    return sql, [field.attname for field in fields]


@functools.cache
def _failed_naming_sql(model: type[InboundMessage], records: type[ClaimRecord]) -> str:
    """The failed messages naming any of the records: (message id, the record id it
    names or NULL, the record whose claim id and asset DID it carries or NULL)."""
    quote = connection.ops.quote_name
    asset_model = records._meta.get_field("asset").related_model
    assert isinstance(asset_model, type)
    inbox, claims, assets = (
        quote(m._meta.db_table) for m in (model, records, asset_model)
    )
    m_pk, m_record, m_claim, m_did, m_outcome = (
        _column(model, name)
        for name in ("id", "record", "claim_id", "asset_did", "outcome")
    )
    r_pk, r_claim, r_asset = (
        _column(records, name) for name in ("id", "claim_id", "asset")
    )
    a_pk, a_did = (_column(asset_model, name) for name in ("id", "did"))
    # Only quoted identifiers from the models' own metadata are formatted in; every
    # value is a parameter.
    return (
        f"WITH r AS (SELECT c.{r_pk} AS pk, c.{r_claim} AS claim, "  # noqa: S608
        f"a.{a_did} AS did FROM {claims} c JOIN {assets} a ON a.{a_pk} = c.{r_asset} "
        f"WHERE c.{r_pk} = ANY(%s)) "
        f"SELECT m.{m_pk}, m.{m_record}, r.pk FROM {inbox} m JOIN r ON "
        f"(m.{m_record} = r.pk OR (m.{m_claim} = r.claim AND m.{m_did} = r.did)) "
        f"WHERE m.{m_outcome} = %s ORDER BY m.{m_pk}"
    )
