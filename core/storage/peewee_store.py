"""Storage on a peewee Database: the shared implementation behind SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import peewee as pw

from meshscale.errors import StorageError
from meshscale.state.models import ApiKey, Node, PreAuthKey, User
from meshscale.storage import schema, versioning
from meshscale.storage.base import (
    DeleteApiKey,
    DeleteKey,
    DeleteNode,
    DeleteUser,
    Op,
    PutApiKey,
    PutCounter,
    PutKey,
    PutNode,
    PutPolicy,
    PutSetting,
    PutUser,
    Setting,
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


def _upsert(db: pw.Database, model: type[schema.BaseModel], **row: Any) -> None:
    """Insert or update by primary key only. (SQLite's INSERT OR REPLACE would silently delete
    a *different* row that clashes on a unique column; this lets the constraint refuse.)"""
    fields = [getattr(model, name) for name in row if name != "id"]
    key = model._meta.primary_key
    # as_rowcount: no RETURNING, which peewee would otherwise decide by the models' binding.
    model.insert(**row).on_conflict(conflict_target=[key], preserve=fields).as_rowcount() \
        .execute(db)


def _naive(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


T = TypeVar("T")

# Fields that live only in memory (never stored).
_RUNTIME_ONLY = {"online"}


def _to_column(value: Any) -> Any:
    if isinstance(value, datetime):
        return _naive(value)
    if isinstance(value, (tuple, list, dict)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return value


def _row_of(record: Any) -> dict[str, Any]:
    """A record's columns: datetimes naive UTC, tuples and dicts as JSON, the rest as is."""
    return {f.name: _to_column(getattr(record, f.name)) for f in dataclasses.fields(record)
            if f.name not in _RUNTIME_ONLY}


def _record_of(cls: type[T], row: Any) -> T:
    """The record a row holds, converting columns back by the record's field types."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in _RUNTIME_ONLY:
            continue
        value = getattr(row, f.name)
        hint = str(hints[f.name])
        if "datetime" in hint:
            value = _aware(value)
            if value is None and "None" not in hint:  # a required time that was never set
                value = datetime.now(UTC)
        elif hint.startswith("tuple"):
            value = tuple(json.loads(value))
        elif hint.startswith("dict"):
            value = json.loads(value)
        elif hint == "<class 'bytes'>":
            value = bytes(value)
        values[f.name] = value
    return cls(**values)


class PeeweeStorage:
    """Every query names ``self.db``: the models' own binding (a proxy, for creating tables) is
    shared by every storage in the process, and several servers may live in one (tests)."""

    def __init__(self, db: pw.Database, where: str = "the database") -> None:
        self.db = db
        schema.database_proxy.initialize(db)
        db.connect(reuse_if_open=True)
        try:
            # A database meshscale does not own is refused before anything is written to it.
            versioning.prepare(db, lambda: db.create_tables(schema.MODELS), where)
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()

    # -- reading ----------------------------------------------------------------------------------

    def load(self) -> Snapshot:
        db = self.db
        snap = Snapshot()
        snap.users = [_record_of(User, r) for r in
                      schema.UserRow.select().order_by(schema.UserRow.id).execute(db)]
        snap.keys = [_record_of(PreAuthKey, r) for r in
                     schema.PreAuthKeyRow.select().order_by(schema.PreAuthKeyRow.id).execute(db)]
        snap.nodes = [_record_of(Node, r) for r in
                      schema.NodeRow.select().order_by(schema.NodeRow.id).execute(db)]
        latest = schema.PolicyRow.select().order_by(schema.PolicyRow.id.desc()).first(db)
        snap.policy = latest.data if latest is not None else None
        snap.api_keys = [_record_of(ApiKey, r) for r in
                         schema.ApiKeyRow.select().order_by(schema.ApiKeyRow.id).execute(db)]
        snap.counters = {r.name: int(r.value) for r in schema.IdCounterRow.select().execute(db)}
        snap.settings = {r.name: Setting(r.value, _aware(r.updated_at) or datetime.now(UTC))
                         for r in schema.SettingRow.select().execute(db)}
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
        db = self.db
        if isinstance(op, PutUser):
            _upsert(db, schema.UserRow, **_row_of(op.user))
        elif isinstance(op, DeleteUser):
            schema.UserRow.delete().where(schema.UserRow.id == op.user_id).execute(db)
        elif isinstance(op, PutKey):
            _upsert(db, schema.PreAuthKeyRow, **_row_of(op.key))
        elif isinstance(op, DeleteKey):
            schema.PreAuthKeyRow.delete().where(schema.PreAuthKeyRow.id == op.key_id).execute(db)
        elif isinstance(op, PutNode):
            _upsert(db, schema.NodeRow, **_row_of(op.node))
        elif isinstance(op, DeleteNode):
            schema.NodeRow.delete().where(schema.NodeRow.id == op.node_id).execute(db)
        elif isinstance(op, PutCounter):
            _upsert(db, schema.IdCounterRow, name=op.name, value=op.value)
        elif isinstance(op, PutApiKey):
            _upsert(db, schema.ApiKeyRow, **_row_of(op.key))
        elif isinstance(op, DeleteApiKey):
            schema.ApiKeyRow.delete().where(schema.ApiKeyRow.id == op.key_id).execute(db)
        elif isinstance(op, PutPolicy):
            schema.PolicyRow.insert(data=op.text, created_at=_naive(datetime.now(UTC))) \
                .as_rowcount().execute(db)
        elif isinstance(op, PutSetting):
            if op.value is None:
                schema.SettingRow.delete().where(schema.SettingRow.name == op.name).execute(db)
            else:
                _upsert(db, schema.SettingRow, name=op.name, value=op.value,
                        updated_at=_naive(datetime.now(UTC)))
        else:  # pragma: no cover - exhaustive
            raise StorageError(f"unknown storage op {op!r}")
