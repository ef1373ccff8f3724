"""The one small error hierarchy. Messages say what was wrong and where."""

from __future__ import annotations


class MeshscaleError(Exception):
    """Base of every error meshscale raises on purpose."""


class ConfigError(MeshscaleError):
    """Invalid configuration; ``path`` is the dotted key (or file) at fault."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


class ConfigErrors(ConfigError):
    """Several config problems found in one run; ``problems`` holds each one."""

    def __init__(self, problems: list[ConfigError]) -> None:
        super().__init__(problems[0].path, problems[0].reason)
        self.args = ("\n".join(str(p) for p in problems),)
        self.problems = list(problems)


def config_problems(exc: ConfigError) -> list[ConfigError]:
    """Each problem of a ConfigError, one or many."""
    return exc.problems if isinstance(exc, ConfigErrors) else [exc]


class PluginError(MeshscaleError):
    """A plugin failed to load, or one of its hooks raised."""

    def __init__(self, plugin: str, reason: str) -> None:
        super().__init__(f"plugin {plugin!r}: {reason}")
        self.plugin = plugin
        self.reason = reason


class ProtocolError(MeshscaleError):
    """A peer broke the wire protocol; the connection it came on is closed."""


class AuthError(MeshscaleError):
    """A request is not allowed (bad key, wrong machine, expired node)."""


class StorageError(MeshscaleError):
    """The storage backend failed; the write it was doing did not happen."""


class PolicyError(MeshscaleError):
    """A policy is invalid; ``location`` says where (``acls[2].dst[0]``, ``line 14``)."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f"{location}: {reason}" if location else reason)
        self.location = location
        self.reason = reason


class NotFoundError(MeshscaleError):
    """An admin request named a user, node or key that does not exist."""
