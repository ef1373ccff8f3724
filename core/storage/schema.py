"""The one database schema, shared by every peewee-backed storage plugin.

Models bind to a DatabaseProxy so SQLite and PostgreSQL backends only supply the Database.
Changing a model changes the schema: add a migration and raise ``CURRENT`` in
``meshscale.storage.versioning`` (tests/unit/test_schema_versions.py fails until you do).
"""

from __future__ import annotations

import peewee as pw

database_proxy = pw.DatabaseProxy()


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy


class UserRow(BaseModel):
    id = pw.IntegerField(primary_key=True)
    name = pw.CharField(unique=True)
    display_name = pw.CharField(default="")
    email = pw.CharField(default="")
    provider = pw.CharField(default="")
    provider_id = pw.CharField(default="")
    created_at = pw.DateTimeField()
    picture = pw.TextField(default="")
    groups = pw.TextField(default="[]")

    class Meta:
        table_name = "users"


class PreAuthKeyRow(BaseModel):
    id = pw.IntegerField(primary_key=True)
    prefix = pw.CharField(unique=True)
    secret_hash = pw.BlobField()
    user_id = pw.IntegerField(null=True)
    reusable = pw.BooleanField(default=False)
    ephemeral = pw.BooleanField(default=False)
    used = pw.BooleanField(default=False)
    expiration = pw.DateTimeField(null=True)
    created_at = pw.DateTimeField()
    tags = pw.TextField(default="[]")
    hash_scheme = pw.CharField(default="sha256")
    key_form = pw.CharField(default="mskey-auth-")
    preauthorized = pw.BooleanField(default=False)

    class Meta:
        table_name = "pre_auth_keys"


class NodeRow(BaseModel):
    id = pw.IntegerField(primary_key=True)
    machine_key = pw.BlobField(unique=True)
    node_key = pw.BlobField(unique=True)
    disco_key = pw.BlobField()
    hostname = pw.CharField()
    given_name = pw.CharField(unique=True)
    user_id = pw.IntegerField(null=True)
    tags = pw.TextField(default="[]")
    ipv4 = pw.CharField(null=True, unique=True)
    ipv6 = pw.CharField(null=True, unique=True)
    hostinfo = pw.TextField(default="{}")
    endpoints = pw.TextField(default="[]")
    home_derp = pw.IntegerField(default=0)
    created_at = pw.DateTimeField()
    last_seen = pw.DateTimeField(null=True)
    expiry = pw.DateTimeField(null=True)
    auth_key_id = pw.IntegerField(null=True)
    ephemeral = pw.BooleanField(default=False)
    register_method = pw.CharField(default="authkey")
    approved_routes = pw.TextField(default="[]")
    capver = pw.IntegerField(default=0)
    approved = pw.BooleanField(default=True)

    class Meta:
        table_name = "nodes"


class PolicyRow(BaseModel):
    id = pw.AutoField()
    data = pw.TextField()
    created_at = pw.DateTimeField()

    class Meta:
        table_name = "policies"


class ApiKeyRow(BaseModel):
    id = pw.IntegerField(primary_key=True)
    prefix = pw.CharField(unique=True)
    secret_hash = pw.BlobField()
    expiration = pw.DateTimeField(null=True)
    created_at = pw.DateTimeField()
    last_seen = pw.DateTimeField(null=True)
    hash_scheme = pw.CharField(default="sha256")
    key_form = pw.CharField(default="mskey-api-")

    class Meta:
        table_name = "meshscale_api_keys"  # not headscale's "api_keys": see storage.versioning


class IdCounterRow(BaseModel):
    """The highest ID ever given out per kind ("user", "key", "node"): a deleted row's ID is
    never given to a new one (tailcfg: a NodeID, and the StableID clients keep, is never
    reused)."""

    name = pw.CharField(primary_key=True)
    value = pw.BigIntegerField()

    class Meta:
        table_name = "id_counters"


class SettingRow(BaseModel):
    """Settings changed at run time through the admin API (``dns``), JSON; they override the
    config file's section of the same name until deleted."""

    name = pw.CharField(primary_key=True)
    value = pw.TextField()
    updated_at = pw.DateTimeField()

    class Meta:
        table_name = "meshscale_settings"


MODELS: list[type[BaseModel]] = [UserRow, PreAuthKeyRow, NodeRow, PolicyRow, IdCounterRow,
                                 ApiKeyRow, SettingRow]
