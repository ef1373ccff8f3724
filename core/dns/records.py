"""``dns.extra_records_path``: a JSON file of extra records, read at start and again whenever
it changes, as headscale does.

The file holds a list of tailcfg.DNSRecord objects, ``[{"Name": "grafana.example.com",
"Type": "A", "Value": "100.64.0.3"}]``; key case does not matter (Go's decoder, which
headscale uses, ignores it too). A bad file is refused with its location and the records in
force stay; a zero-byte file is taken as one being written and waited out. The watcher polls the
file's metadata (a rename into place, the way editors and config tools write, is seen like
any write).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshscale.dns.model import ExtraRecord, check_records
from meshscale.errors import ConfigError

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 4 << 20
POLL_INTERVAL = 1.0
_FIELDS = ("name", "type", "value")


def _line_col(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"{line}:{col}"


def parse_records(data: bytes, where: str) -> tuple[ExtraRecord, ...]:
    """The records in ``data``; ConfigError names ``where`` and the place at fault."""
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(where, f"larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(where, "not UTF-8 text") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}:{_line_col(text, exc.pos)}",
                          f"invalid JSON: {exc.msg}") from None
    if not isinstance(raw, list):
        raise ConfigError(where, "expected a JSON list of records "
                          '[{"name": ..., "type": "A", "value": ...}]')
    records = tuple(_record(item, f"{where}: [{i}]") for i, item in enumerate(raw))
    problems = list(check_records(records, ""))
    if problems:
        first = problems[0]
        raise ConfigError(f"{where}: {first.path.lstrip('.')}", first.reason)
    return records


def _record(item: Any, where: str) -> ExtraRecord:
    if not isinstance(item, dict):
        raise ConfigError(where, "expected an object with name, type and value")
    values: dict[str, str] = {}
    for key, value in item.items():
        name = str(key).lower()
        if name not in _FIELDS:
            raise ConfigError(f"{where}.{key}", "unknown field (name, type, value)")
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{key}", "expected a string")
        values[name] = value
    if "name" not in values or "value" not in values:
        raise ConfigError(where, "a record needs a name and a value")
    return ExtraRecord(values["name"], values.get("type", ""), values["value"])


def read_records(path: Path) -> tuple[ExtraRecord, ...]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError("dns.extra_records_path",
                          f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_records(data, str(path))


class RecordsFile:
    """The records of one file as last read successfully; ``poll`` re-reads it on change."""

    def __init__(self, path: Path, changed: Callable[[tuple[ExtraRecord, ...]], None]) -> None:
        self.path = path
        self.changed = changed
        self.records: tuple[ExtraRecord, ...] = ()
        self.reloads = 0
        self.failures = 0
        self._digest = b""
        self._stamp: tuple[int, int, int] | None = None
        self._complaint = ""  # the last problem logged: each is logged once, not every poll

    def load(self) -> tuple[ExtraRecord, ...]:
        """The first read, at start-up: a bad or missing file refuses the start."""
        self._stamp = self._stat()
        data = self._read_bytes()
        self.records = parse_records(data, str(self.path))
        self._digest = hashlib.sha256(data).digest()
        return self.records

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read_bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise ConfigError("dns.extra_records_path",
                              f"cannot read {self.path}: {exc.strerror or exc}") from None

    def _complain(self, message: str) -> None:
        if message != self._complaint:
            log.error("%s", message)
            self._complaint = message

    def poll(self) -> bool:
        """Re-read the file if it changed on disk; True if the records in force changed."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if stamp is None:
            self._complain(f"dns.extra_records_path: {self.path} is gone; keeping the "
                           f"{len(self.records)} records read before")
            return False
        try:
            data = self._read_bytes()
            if not data:
                return False  # being written; the writer's next change brings the content
            digest = hashlib.sha256(data).digest()
            if digest == self._digest:
                self._complaint = ""  # back to what is in force
                return False
            records = parse_records(data, str(self.path))
        except ConfigError as exc:
            self.failures += 1
            self._complain(f"extra records refused, keeping the {len(self.records)} records "
                           f"read before: {exc}")
            return False
        self._digest, self._complaint = digest, ""
        if records == self.records:
            return False
        self.records = records
        self.reloads += 1
        log.info("dns.extra_records_path: %d records read from %s", len(records), self.path)
        self.changed(records)
        return True
