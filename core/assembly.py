"""The parts of one server built from its config and its stored records, as at start-up.

The Noise key file, the storage backend, the policy engine with the policy in force, ``State``
wired to that engine, and the DNS settings. ``server.py`` runs these in its start-up order and
keeps them running; they are apart from it because they are also the oracle tests' "fresh
computation" (``Server.build_core``): whatever a running server derives incrementally must equal
what these build from the same database. No listener, task or event loop here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshscale import files
from meshscale.config import Config
from meshscale.contributions import pick
from meshscale.dns.settings import DnsSettings
from meshscale.errors import ConfigError, MeshscaleError, PolicyError
from meshscale.hookcalls import HookCalls
from meshscale.policy import Affected, AllowAllEngine, PolicyEngine
from meshscale.state.changes import PolicyChanged
from meshscale.state.store import PolicyHooks, State
from meshscale.storage.base import Snapshot, Storage

# The start-up messages keep the logger they had when this was part of server.py: log filters
# and readers know them by that name.
log = logging.getLogger("meshscale.server")


def load_private_key(path: Path) -> X25519PrivateKey:
    """Read a ``privkey:<hex>`` file (headscale's format), creating it (0600) if missing."""
    if path.exists():
        text = path.read_text().strip()
        hexpart = text.removeprefix("privkey:")
        try:
            return X25519PrivateKey.from_private_bytes(bytes.fromhex(hexpart))
        except ValueError as exc:
            raise ConfigError(str(path), f"not a private key: {exc}") from None
    key = X25519PrivateKey.generate()
    raw = key.private_bytes_raw()
    files.private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("privkey:" + raw.hex() + "\n")
    return key


def open_storage(config: Config, hooks: HookCalls) -> Storage:
    backend = pick(hooks.storage_backends(), config.database.type,
                   "database.type", "storage backend")
    return backend.open(config)


def make_engine(config: Config, hooks: HookCalls) -> PolicyEngine:
    specs = hooks.policy_engines()
    wanted = config.policy.engine
    if wanted in ("allow-all", "tailscale") and not config.policy.path and not any(
        s.name == wanted for s in specs
    ):
        if wanted != "allow-all":
            log.warning("no %r policy engine is loaded; everyone may reach everyone", wanted)
        return AllowAllEngine()
    return pick(specs, wanted, "policy.engine", "engine").create(config)


def initial_policy(config: Config, stored: str | None) -> str | None:
    cfg = config.policy
    if cfg.mode == "file":
        if not cfg.path:
            return None
        path = config.resolve(cfg.path)
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("policy.path", f"cannot read {path}: {exc.strerror}") from None
    return stored


def build_core(config: Config, hooks: HookCalls, storage: Storage,
               snap: Snapshot) -> tuple[State, PolicyEngine, str | None]:
    """State and a policy engine built from stored records, as at start-up."""
    cfg = config
    state = State(cfg, storage)
    state.load(snap)
    engine = make_engine(cfg, hooks)
    users, nodes = state.policy_topology()
    engine.set_topology(users, nodes)
    text = initial_policy(cfg, snap.policy)
    if text is not None:
        where = "policy.path" if cfg.policy.mode == "file" else "the stored policy"
        try:
            # The policy's tests were checked when it was set; since then nodes may have
            # gone (the last tag:web node deleted, an ephemeral node left), so at start-up
            # a failing test is a warning, never a refusal to start.
            engine.set_policy(text, tests=False)
        except PolicyError as exc:
            raise MeshscaleError(
                f"refusing to start: {where} is invalid: {exc}. See docs/policy.md "
                "('Recovering from an invalid policy')"
            ) from exc
        try:
            engine.check(text, users, nodes)
        except PolicyError as exc:
            log.warning("%s: its tests fail against the nodes now registered (%s); the "
                        "policy is in force anyway. Fix the tests or the nodes; setting "
                        "the policy again checks them", where, exc)

    def affected(a: Affected) -> None:
        if a.everyone or a.nodes:
            state.publish(PolicyChanged(a))

    state.policy_engine_hooks = PolicyHooks(
        node_upserted=lambda n: affected(engine.upsert_node(n)),
        node_removed=lambda i: affected(engine.remove_node(i)),
        user_upserted=lambda u: affected(engine.upsert_user(u)),
        user_removed=lambda i: affected(engine.remove_user(i)),
        auto_routes=engine.auto_approved_routes,
    )
    state.refresh_auto_approvals()  # the policy is in force now: autoApprovers apply
    return state, engine, text


def build_dns(config: Config, storage: Storage | None, snap: Snapshot) -> DnsSettings:
    """The DNS settings in force, as at start-up: the config file's section or the stored
    replacement, and the records of dns.extra_records_path (a bad file refuses the start)."""
    dns = DnsSettings(config, storage, snap.settings)
    dns.open_records_file()
    return dns
