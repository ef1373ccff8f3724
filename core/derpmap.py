"""The DERP map clients receive: merged from files, URLs and plugins, kept fresh, never lost.

Sources, merged by RegionID in this order (a later source replaces a region of an earlier one):

1. ``derp.paths``: YAML or JSON files holding a DERPMap. Keys are matched case-insensitively,
   as Go's decoder does, so both tailcfg spelling (``RegionID``) and headscale's lower-case YAML
   (``regionid``) load; the output always uses tailcfg spelling.
2. ``derp.urls``: DERPMap JSON fetched over HTTP(S). Only what is configured is fetched; the
   default configuration has no URLs, so clients are never pointed at Tailscale's DERP servers.
3. Plugins' ``meshscale_derp_regions`` (the embedded DERP region).

Every source keeps its last good result: a file that turns invalid, a URL that is down or a
plugin that raises is logged with the reason, and the regions it gave before stay in the map.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from meshscale import redact
from meshscale.errors import ConfigError, MeshscaleError

if TYPE_CHECKING:
    from meshscale.config import Config

log = logging.getLogger(__name__)

MAX_DOWNLOAD = 4 << 20
FETCH_TIMEOUT = 10.0
#: A refresh asked for by a plugin re-fetches URLs only if the last fetch is older than this.
MIN_FETCH_INTERVAL = 60.0

Listener = Callable[[dict[str, Any]], None]
Fetcher = Callable[[str], bytes]
#: The plugins' regions: ``host.hooks.derp_regions`` on a server.
RegionsHook = Callable[["Config"], Sequence[Mapping[str, Any]]]

# tailcfg spelling of every field, by lower-case name. Unknown fields pass through unchanged
# (a newer client may understand them).
_MAP_FIELDS = {k.lower(): k for k in ("Regions", "HomeParams", "omitDefaultRegions")}
_REGION_FIELDS = {
    k.lower(): k
    for k in ("RegionID", "RegionCode", "RegionName", "Latitude", "Longitude", "Avoid",
              "NoMeasureNoHome", "Nodes")
}
_NODE_FIELDS = {
    k.lower(): k
    for k in ("Name", "RegionID", "HostName", "CertName", "IPv4", "IPv6", "STUNPort", "STUNOnly",
              "DERPPort", "InsecureForTests", "STUNTestIP", "CanPort80")
}
_INT = ("RegionID", "STUNPort", "DERPPort")
_BOOL = ("Avoid", "NoMeasureNoHome", "STUNOnly", "InsecureForTests", "CanPort80")
_STR = ("RegionCode", "RegionName", "Name", "HostName", "CertName", "IPv4", "IPv6", "STUNTestIP")
_FLOAT = ("Latitude", "Longitude")


class DerpMapError(MeshscaleError):
    """A DERP map source is invalid; the message names the source and the field."""


# -- normalising and checking one DERPMap -----------------------------------------------------


def _fields(raw: Mapping[Any, Any], names: Mapping[str, str], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = names.get(str(key).lower(), str(key))
        if name in _INT and (not isinstance(value, int) or isinstance(value, bool)):
            raise DerpMapError(f"{where}.{name}: expected an integer, got {value!r}")
        if name in _BOOL and not isinstance(value, bool):
            raise DerpMapError(f"{where}.{name}: expected true or false, got {value!r}")
        if name in _STR and not isinstance(value, str):
            raise DerpMapError(f"{where}.{name}: expected a string, got {value!r}")
        if name in _FLOAT and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise DerpMapError(f"{where}.{name}: expected a number, got {value!r}")
        out[name] = value
    return out


def normalize_region(raw: object, where: str, region_id: int | None = None) -> dict[str, Any]:
    """One DERPRegion in tailcfg spelling, checked; ``region_id`` is the map key, if any."""
    if not isinstance(raw, Mapping):
        raise DerpMapError(f"{where}: expected a mapping")
    region = _fields(raw, _REGION_FIELDS, where)
    rid = region.setdefault("RegionID", region_id)
    if not isinstance(rid, int) or rid <= 0:
        raise DerpMapError(f"{where}.RegionID: required, a positive integer")
    if region_id is not None and rid != region_id:
        raise DerpMapError(f"{where}.RegionID: {rid} differs from its key {region_id}")
    nodes = region.get("Nodes")
    if not isinstance(nodes, list) or not nodes:
        raise DerpMapError(f"{where}.Nodes: required, a non-empty list")
    out_nodes = []
    for i, node_raw in enumerate(nodes):
        nwhere = f"{where}.Nodes[{i}]"
        if not isinstance(node_raw, Mapping):
            raise DerpMapError(f"{nwhere}: expected a mapping")
        node = _fields(node_raw, _NODE_FIELDS, nwhere)
        if node.setdefault("RegionID", rid) != rid:
            raise DerpMapError(f"{nwhere}.RegionID: {node['RegionID']} is not its region's {rid}")
        for required in ("Name", "HostName"):
            if not node.get(required):
                raise DerpMapError(f"{nwhere}.{required}: required")
        out_nodes.append(node)
    region["Nodes"] = out_nodes
    return region


def normalize_map(raw: object, where: str) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """(regions by ID, HomeParams) of a DERPMap document."""
    if not isinstance(raw, Mapping):
        raise DerpMapError(f"{where}: expected a DERPMap mapping with Regions")
    top = _fields(raw, _MAP_FIELDS, where)
    regions_raw = top.get("Regions")
    if regions_raw is None:
        regions_raw = {}
    if not isinstance(regions_raw, Mapping):
        raise DerpMapError(f"{where}.Regions: expected a mapping of region ID to region")
    regions: dict[int, dict[str, Any]] = {}
    for key, value in regions_raw.items():
        try:
            rid = int(key)
        except (TypeError, ValueError):
            raise DerpMapError(f"{where}.Regions.{key}: the key must be a region ID") from None
        regions[rid] = normalize_region(value, f"{where}.Regions.{key}", rid)
    home = top.get("HomeParams") or {}
    if not isinstance(home, Mapping):
        raise DerpMapError(f"{where}.HomeParams: expected a mapping")
    return regions, {("RegionScore" if str(k).lower() == "regionscore" else str(k)): v
                     for k, v in home.items()}


def parse_document(data: bytes, where: str) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DerpMapError(f"{where}: not UTF-8 text") from None
    try:
        raw = json.loads(text)
    except ValueError:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
            raise DerpMapError(f"{where}{at}: neither JSON nor YAML: {exc}") from None
    return normalize_map(raw, where)


def fetch_url(url: str) -> bytes:
    """GET ``url`` (blocking; run it in a thread). Refuses non-200 answers and huge bodies."""
    req = urllib.request.Request(url, headers={"User-Agent": "meshscale-derpmap"})  # noqa: S310
    with urllib.request.urlopen(req, timeout=FETCH_TIMEOUT) as resp:  # noqa: S310 - config URL
        if resp.status != 200:
            raise DerpMapError(f"{url}: HTTP {resp.status}")
        data: bytes = resp.read(MAX_DOWNLOAD + 1)
    if len(data) > MAX_DOWNLOAD:
        raise DerpMapError(f"{url}: larger than {MAX_DOWNLOAD} bytes")
    return data


class _Source:
    """One source's last good result."""

    __slots__ = ("error", "fetched_at", "home", "ok", "regions")

    def __init__(self) -> None:
        self.regions: dict[int, dict[str, Any]] = {}
        self.home: dict[str, Any] = {}
        self.ok = False
        self.error = ""
        self.fetched_at = -1e18

    def good(self, regions: dict[int, dict[str, Any]], home: dict[str, Any]) -> None:
        self.regions, self.home, self.ok, self.error = regions, home, True, ""

    def bad(self, name: str, reason: str) -> None:
        kept = f"keeping its last good {len(self.regions)} region(s)" if self.ok else "no regions"
        shown = redact.url(name)  # a source URL may carry ?token=...
        reason = reason.replace(name, shown)
        if reason != self.error:  # log a persisting failure once, not on every refresh
            log.warning("DERP map source %s failed (%s): %s", shown, kept, reason)
        self.error = reason


class DerpMapManager:
    def __init__(
        self,
        config: Config,
        plugin_regions: RegionsHook | None = None,
        *,
        fetch: Fetcher = fetch_url,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.plugin_regions = plugin_regions
        self._fetch = fetch
        self._clock = clock
        self._paths = {p: _Source() for p in config.derp.paths}
        self._urls = {u: _Source() for u in config.derp.urls}
        self._plugins = _Source()
        self._listeners: list[Listener] = []
        self._current: dict[str, Any] = {"Regions": {}, "omitDefaultRegions": True}
        self._lock = asyncio.Lock()
        self._refreshed = False
        self._warned_empty = False

    # -- API -----------------------------------------------------------------------------------

    def current(self) -> dict[str, Any]:
        """The DERPMap in wire spelling. Shared: callers must not modify it."""
        return self._current

    def add_listener(self, callback: Listener) -> None:
        """``callback(new_map)`` after every refresh that changed the map."""
        self._listeners.append(callback)

    def errors(self) -> dict[str, str]:
        """The current failure of each failing source, by source name."""
        named = [*self._paths.items(), *self._urls.items(), ("plugins", self._plugins)]
        return {redact.url(name): src.error for name, src in named if src.error}

    async def refresh(self, *, force: bool = False) -> bool:
        """Rebuild the map; True if it changed. URLs are re-fetched when ``force`` or stale."""
        async with self._lock:
            for path, src in self._paths.items():
                self._load_path(path, src)
            now = self._clock()
            for url, src in self._urls.items():
                if force or not src.ok or now - src.fetched_at >= MIN_FETCH_INTERVAL:
                    await self._load_url(url, src, now)
            self._load_plugins()
            return self._publish()

    def refresh_local(self) -> bool:
        """Rebuild from files and plugins only (no network); for synchronous callers."""
        for path, src in self._paths.items():
            self._load_path(path, src)
        self._load_plugins()
        return self._publish()

    async def run(self) -> None:
        """Refresh every ``derp.update_frequency`` while ``auto_update_enabled``; never raises."""
        if not self._refreshed:
            await self.refresh(force=True)
        if not self.config.derp.auto_update_enabled:
            return
        period = max(float(self.config.derp.update_frequency), 1.0)
        while True:
            await asyncio.sleep(period)
            try:
                await self.refresh(force=True)
            except Exception:  # a bug in one refresh must not end the updates
                log.exception("DERP map refresh failed; keeping the current map")

    # -- sources -------------------------------------------------------------------------------

    def _load_path(self, path: str, src: _Source) -> None:
        full = self.config.resolve(path)
        try:
            data = Path(full).read_bytes()
            src.good(*parse_document(data, str(full)))
        except OSError as exc:
            src.bad(path, f"cannot read {full}: {exc.strerror or exc}")
        except DerpMapError as exc:
            src.bad(path, str(exc))

    async def _load_url(self, url: str, src: _Source, now: float) -> None:
        src.fetched_at = now
        try:
            data = await asyncio.to_thread(self._fetch, url)
            src.good(*parse_document(data, url))
        except DerpMapError as exc:
            src.bad(url, str(exc))
        except Exception as exc:  # network errors come in many types (URLError, timeout, ...)
            src.bad(url, f"cannot fetch: {exc}")

    def _load_plugins(self) -> None:
        if self.plugin_regions is None:
            self._plugins.good({}, {})
            return
        try:
            raw = self.plugin_regions(self.config)
            regions: dict[int, dict[str, Any]] = {}
            for i, region in enumerate(raw):
                checked = normalize_region(region, f"meshscale_derp_regions[{i}]")
                regions[checked["RegionID"]] = checked
            self._plugins.good(regions, {})
        except (MeshscaleError, ConfigError) as exc:
            self._plugins.bad("plugins", str(exc))

    # -- merging -------------------------------------------------------------------------------

    def _publish(self) -> bool:
        self._refreshed = True
        regions: dict[int, dict[str, Any]] = {}
        home: dict[str, Any] = {}
        for src in [*self._paths.values(), *self._urls.values(), self._plugins]:
            regions.update(src.regions)
            for key, value in src.home.items():
                if key == "RegionScore" and isinstance(value, Mapping):
                    home.setdefault("RegionScore", {}).update(value)
                else:
                    home[key] = value
        new: dict[str, Any] = {
            "Regions": {str(rid): regions[rid] for rid in sorted(regions)},
            "omitDefaultRegions": True,
        }
        if home:
            new["HomeParams"] = home
        if not regions and not self._warned_empty:
            self._warned_empty = True
            log.warning(
                "the DERP map has no regions: clients will not come up. Enable the embedded "
                "DERP (derp.server.enabled) or configure derp.paths / derp.urls"
            )
        if new == self._current:
            return False
        self._current = new
        for callback in list(self._listeners):
            try:
                callback(new)
            except Exception:
                log.exception("DERP map listener failed")
        return True
