"""The DNS settings in force at run time, and the three ways they change while serving.

- the config file's ``dns:`` section, read again on SIGHUP;
- a replacement stored in the database through the admin API (``PUT /api/v1/dns``,
  ``meshscale dns set``), which overrides the file's section until it is deleted
  (``DELETE /api/v1/dns``, ``meshscale dns reset``);
- the records of ``dns.extra_records_path``, re-read when the file changes.

Whatever changes, listeners hear of it only when what clients receive would differ; the server
turns that into a ``DnsChanged`` event (state -> event -> mapper -> streams).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from meshscale.config import Config
from meshscale.configload import build_section
from meshscale.dns import model
from meshscale.dns.model import DnsConfig, ExtraRecord
from meshscale.dns.records import POLL_INTERVAL, RecordsFile
from meshscale.errors import ConfigError, ConfigErrors
from meshscale.storage.base import PutSetting, Setting, Storage

log = logging.getLogger(__name__)

SETTING = "dns"  # the row's name in meshscale_settings


def to_json(dns: DnsConfig) -> dict[str, Any]:
    """The settings with the config file's key names (what the API shows and takes)."""
    return {
        "magic_dns": dns.magic_dns,
        "base_domain": dns.base_domain,
        "override_local_dns": dns.override_local_dns,
        "nameservers": {"global": list(dns.nameservers.global_),
                        "split": {d: list(r) for d, r in dns.nameservers.split.items()}},
        "search_domains": list(dns.search_domains),
        "extra_records": [{"name": r.name, "type": r.type, "value": r.value}
                          for r in dns.extra_records],
    }


def from_json(raw: Any, server_host: str, path: str = "dns") -> DnsConfig:
    """Settings sent to the API (or stored), checked as the config file's section is; keys left
    out take their defaults. ConfigError(s) name the field at fault."""
    if not isinstance(raw, dict):
        raise ConfigError(path, "expected an object with the dns section's keys")
    if "extra_records_path" in raw:
        raise ConfigError(f"{path}.extra_records_path",
                          "set in the config file only (a path on the server)")
    dns = build_section(DnsConfig, raw, path)
    problems = list(model.check(dns, server_host, path))
    if problems:
        raise problems[0] if len(problems) == 1 else ConfigErrors(problems)
    return dns


class DnsSettings:
    """The file's section, the stored replacement and the file's records; what is in force."""

    def __init__(self, config: Config, storage: Storage | None,
                 stored: Mapping[str, Setting] | None = None) -> None:
        self.config = config
        self.storage = storage
        self.server_host = urlsplit(config.server_url).hostname or ""
        self.file_section = config.dns
        self.override: DnsConfig | None = None
        self.updated_at: datetime | None = None
        self.records_file: RecordsFile | None = None
        self._listeners: list[Callable[[], None]] = []
        row = (stored or {}).get(SETTING)
        if row is not None:
            try:
                self.override = from_json(json.loads(row.value), self.server_host)
                self.updated_at = row.updated_at
            except (ValueError, ConfigError) as exc:
                # Not fatal: the file's settings serve until an admin sets DNS again.
                log.error("the DNS settings stored through the API are invalid (%s); using "
                          "the config file's dns section until they are set again", exc)
        self._in_force = self._compute()

    # -- reading ---------------------------------------------------------------------------------

    @property
    def settings(self) -> DnsConfig:
        """The settings an admin chose: the stored replacement, else the config file's."""
        return self.override if self.override is not None else self.file_section

    @property
    def source(self) -> str:
        return "database" if self.override is not None else "config"

    @property
    def file_records(self) -> tuple[ExtraRecord, ...]:
        return self.records_file.records if self.records_file is not None else ()

    def in_force(self) -> DnsConfig:
        """What clients get: the settings, with the records file's records after their own."""
        return self._in_force

    def _compute(self) -> DnsConfig:
        chosen = self.settings
        return dataclasses.replace(
            chosen, extra_records=chosen.extra_records + self.file_records,
            extra_records_path=self.file_section.extra_records_path)

    def view(self) -> dict[str, Any]:
        """What ``GET /api/v1/dns`` answers."""
        return {
            "dns": to_json(self.settings),
            "source": self.source,
            "updatedAt": self.updated_at.isoformat().replace("+00:00", "Z")
            if self.updated_at else None,
            "extraRecordsPath": self.file_section.extra_records_path,
            "extraRecordsFromFile": [{"name": r.name, "type": r.type, "value": r.value}
                                     for r in self.file_records],
        }

    # -- changes ---------------------------------------------------------------------------------

    def add_listener(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    def _changed(self) -> None:
        new = self._compute()
        if new == self._in_force:
            return
        self._in_force = new
        for fn in self._listeners:
            fn()

    def open_records_file(self) -> None:
        """Read dns.extra_records_path (at start-up: a bad file refuses the start)."""
        path = self.file_section.extra_records_path
        if not path:
            self.records_file = None
        else:
            rf = RecordsFile(self.config.resolve(path), lambda _r: self._changed())
            rf.load()
            self.records_file = rf
        self._changed()

    def set(self, raw: Any) -> DnsConfig:
        """Store and apply settings sent through the API; nothing changes if they are bad or
        cannot be stored."""
        dns = from_json(raw, self.server_host)
        if self.storage is not None:
            self.storage.apply([PutSetting(SETTING, json.dumps(to_json(dns)))])
        self.override, self.updated_at = dns, datetime.now(UTC)
        log.info("DNS settings set through the admin API")
        self._changed()
        return dns

    def reset(self) -> None:
        """Delete the stored settings: the config file's section is in force again."""
        if self.storage is not None:
            self.storage.apply([PutSetting(SETTING, None)])
        self.override, self.updated_at = None, None
        log.info("DNS settings reset to the config file's dns section")
        self._changed()

    def reload(self, config: Config) -> None:
        """SIGHUP: the config file's section (already checked) and its records file; a records
        file that cannot be read keeps the one before."""
        old_path = self.file_section.extra_records_path
        self.config, self.file_section = config, config.dns
        if config.dns.extra_records_path != old_path:
            try:
                self.open_records_file()
            except ConfigError as exc:
                log.error("dns.extra_records_path refused, keeping the records before: %s",
                          exc)
                self.file_section = dataclasses.replace(config.dns,
                                                        extra_records_path=old_path)
        elif self.records_file is not None:
            self.records_file.poll()
        self._changed()

    async def watch(self, interval: float = POLL_INTERVAL) -> None:
        """Poll the records file (whichever is configured now) for changes."""
        while True:
            await asyncio.sleep(interval)
            if self.records_file is not None:
                self.records_file.poll()
