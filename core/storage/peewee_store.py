"""Storage on a peewee Database: the shared implementation behind SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import peewee as pw

from meshscale.errors import StorageError
from meshscale.state.models import Node, PreAuthKey, User
from meshscale.storage import schema
from meshscale.storage.base import (
    DeleteKey,
    DeleteNode,
    DeleteUser,
    Op,
    PutKey,
    PutNode,
    PutPolicy,
    PutUser,
    Snapshot,
)


def _aware(value: Any) -> datetime | None:
    """Peewee returns naive datetimes (or strings on SQLite); meshscale stores UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _upsert(model: type[schema.BaseModel], **row: Any) -> None:
    """Insert or update by primary key only. (SQLite's INSERT OR REPLACE would silently delete
    a *different* row that clashes on a unique column; this lets the constraint refuse.)"""
    fields = [getattr(model, name) for name in row if name != "id"]
    key = model._meta.primary_key
    model.insert(**row).on_conflict(conflict_target=[key], preserve=fields).execute()


def _naive(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


class PeeweeStorage:
    def __init__(self, db: pw.Database) -> None:
        self.db = db
        schema.database_proxy.initialize(db)
        db.connect(reuse_if_open=True)
        with db.atomic():
            db.create_tables(schema.MODELS, safe=True)

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()

    # -- reading ----------------------------------------------------------------------------------

    def load(self) -> Snapshot:
        snap = Snapshot()
        for u in schema.UserRow.select().order_by(schema.UserRow.id):
            snap.users.append(
                User(
                    id=u.id,
                    name=u.name,
                    display_name=u.display_name,
                    email=u.email,
                    provider=u.provider,
                    provider_id=u.provider_id,
                    created_at=_aware(u.created_at) or datetime.now(UTC),
                )
            )
        for k in schema.PreAuthKeyRow.select().order_by(schema.PreAuthKeyRow.id):
            snap.keys.append(
                PreAuthKey(
                    id=k.id,
                    prefix=k.prefix,
                    secret_hash=bytes(k.secret_hash),
                    user_id=k.user_id,
                    reusable=k.reusable,
                    ephemeral=k.ephemeral,
                    used=k.used,
                    expiration=_aware(k.expiration),
                    created_at=_aware(k.created_at) or datetime.now(UTC),
                    tags=tuple(json.loads(k.tags)),
                )
            )
        for n in schema.NodeRow.select().order_by(schema.NodeRow.id):
            snap.nodes.append(
                Node(
                    id=n.id,
                    machine_key=bytes(n.machine_key),
                    node_key=bytes(n.node_key),
                    disco_key=bytes(n.disco_key),
                    hostname=n.hostname,
                    given_name=n.given_name,
                    user_id=n.user_id,
                    tags=tuple(json.loads(n.tags)),
                    ipv4=n.ipv4,
                    ipv6=n.ipv6,
                    hostinfo=json.loads(n.hostinfo),
                    endpoints=tuple(json.loads(n.endpoints)),
                    home_derp=n.home_derp,
                    created_at=_aware(n.created_at) or datetime.now(UTC),
                    last_seen=_aware(n.last_seen),
                    expiry=_aware(n.expiry),
                    auth_key_id=n.auth_key_id,
                    ephemeral=n.ephemeral,
                    register_method=n.register_method,
                    approved_routes=tuple(json.loads(n.approved_routes)),
                    capver=n.capver,
                )
            )
        latest = schema.PolicyRow.select().order_by(schema.PolicyRow.id.desc()).first()
        snap.policy = latest.data if latest is not None else None
        return snap

    # -- writing ----------------------------------------------------------------------------------

    def apply(self, ops: Sequence[Op]) -> None:
        try:
            with self.db.atomic():
                for op in ops:
                    self._apply_one(op)
        except pw.PeeweeException as exc:
            raise StorageError(f"write failed, nothing was changed: {exc}") from exc

    def _apply_one(self, op: Op) -> None:
        if isinstance(op, PutUser):
            u = op.user
            _upsert(schema.UserRow,
                id=u.id,
                name=u.name,
                display_name=u.display_name,
                email=u.email,
                provider=u.provider,
                provider_id=u.provider_id,
                created_at=_naive(u.created_at),
            )
        elif isinstance(op, DeleteUser):
            schema.UserRow.delete().where(schema.UserRow.id == op.user_id).execute()
        elif isinstance(op, PutKey):
            k = op.key
            _upsert(schema.PreAuthKeyRow,
                id=k.id,
                prefix=k.prefix,
                secret_hash=k.secret_hash,
                user_id=k.user_id,
                reusable=k.reusable,
                ephemeral=k.ephemeral,
                used=k.used,
                expiration=_naive(k.expiration),
                created_at=_naive(k.created_at),
                tags=json.dumps(list(k.tags)),
            )
        elif isinstance(op, DeleteKey):
            schema.PreAuthKeyRow.delete().where(schema.PreAuthKeyRow.id == op.key_id).execute()
        elif isinstance(op, PutNode):
            n = op.node
            _upsert(schema.NodeRow,
                id=n.id,
                machine_key=n.machine_key,
                node_key=n.node_key,
                disco_key=n.disco_key,
                hostname=n.hostname,
                given_name=n.given_name,
                user_id=n.user_id,
                tags=json.dumps(list(n.tags)),
                ipv4=n.ipv4,
                ipv6=n.ipv6,
                hostinfo=json.dumps(n.hostinfo),
                endpoints=json.dumps(list(n.endpoints)),
                home_derp=n.home_derp,
                created_at=_naive(n.created_at),
                last_seen=_naive(n.last_seen),
                expiry=_naive(n.expiry),
                auth_key_id=n.auth_key_id,
                ephemeral=n.ephemeral,
                register_method=n.register_method,
                approved_routes=json.dumps(list(n.approved_routes)),
                capver=n.capver,
            )
        elif isinstance(op, DeleteNode):
            schema.NodeRow.delete().where(schema.NodeRow.id == op.node_id).execute()
        elif isinstance(op, PutPolicy):
            schema.PolicyRow.create(data=op.text, created_at=_naive(datetime.now(UTC)))
        else:  # pragma: no cover - exhaustive
            raise StorageError(f"unknown storage op {op!r}")
