"""DerpMapManager: sources merged by RegionID, keep-last-good, no default URLs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from meshscale.config import Config, DerpConfig
from meshscale.configvalues import Url
from meshscale.derpmap import DerpMapError, DerpMapManager, normalize_map, parse_document
from meshscale.errors import PluginError

HEADSCALE_YAML = """\
regions:
  900:
    regionid: 900
    regioncode: custom
    regionname: My Region
    nodes:
      - name: 900a
        regionid: 900
        hostname: myderp.example.com
        ipv4: 198.51.100.1
        stunport: 0
        stunonly: false
        derpport: 0
"""


def node(rid: int, host: str = "derp.example.com") -> dict[str, Any]:
    return {"Name": f"{rid}a", "RegionID": rid, "HostName": host}


def region(rid: int, code: str = "r", host: str = "derp.example.com") -> dict[str, Any]:
    return {"RegionID": rid, "RegionCode": code, "RegionName": code, "Nodes": [node(rid, host)]}


def derp_map(*regions: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"Regions": {str(r["RegionID"]): r for r in regions}, **extra}).encode()


class FakeHost:
    """Stands for ``host.hooks.derp_regions``: the plugins' regions, or a plugin's failure."""

    def __init__(self, regions: list[dict[str, Any]]) -> None:
        self.regions = regions
        self.fail: Exception | None = None

    def __call__(self, config: Config) -> list[Any]:
        assert isinstance(config, Config)
        if self.fail is not None:
            raise self.fail
        return list(self.regions)


def config(tmp_path: Path, **derp: Any) -> Config:
    return Config(data_dir=str(tmp_path), derp=DerpConfig(**derp))


def test_headscale_yaml_is_read_in_tailcfg_spelling() -> None:
    regions, home = parse_document(HEADSCALE_YAML.encode(), "derp.yaml")
    assert regions == {900: {
        "RegionID": 900, "RegionCode": "custom", "RegionName": "My Region",
        "Nodes": [{"Name": "900a", "RegionID": 900, "HostName": "myderp.example.com",
                   "IPv4": "198.51.100.1", "STUNPort": 0, "STUNOnly": False, "DERPPort": 0}],
    }}
    assert home == {}


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"Regions": {"900": {"RegionID": 901, "Nodes": [node(901)]}}}, "Regions.900.RegionID"),
        ({"Regions": {"x": region(1)}}, "Regions.x"),
        ({"Regions": {"1": {"RegionID": 1, "Nodes": []}}}, "Regions.1.Nodes"),
        ({"Regions": {"1": {"RegionID": 1, "Nodes": [{"Name": "1a"}]}}},
         "Regions.1.Nodes[0].HostName"),
        ({"Regions": {"1": {"RegionID": 1, "Nodes": [{**node(1), "DERPPort": "443"}]}}},
         "Regions.1.Nodes[0].DERPPort"),
        ({"Regions": {"1": {"RegionID": 1, "Nodes": [node(2)]}}},
         "Regions.1.Nodes[0].RegionID"),
        ({"Regions": [1]}, "Regions"),
        ([1], "m.json"),
    ],
)
def test_invalid_maps_name_the_field(doc: object, where: str) -> None:
    with pytest.raises(DerpMapError, match=where.replace("[", r"\[").replace("]", r"\]")):
        normalize_map(doc, "m.json")


async def test_default_config_is_empty_and_fetches_nothing(tmp_path: Path) -> None:
    fetched: list[str] = []
    mgr = DerpMapManager(Config(data_dir=str(tmp_path)), None, fetch=fetched.append)  # type: ignore[arg-type]
    assert mgr.current() == {"Regions": {}, "omitDefaultRegions": True}
    assert await mgr.refresh() is False
    assert fetched == []
    assert Config().derp.urls == ()


async def test_merge_order_files_then_urls_then_plugins(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(HEADSCALE_YAML)
    (tmp_path / "b.json").write_bytes(derp_map(region(1, "file-b"), region(2, "file-b")))
    urls = {"https://maps.example/one": derp_map(region(2, "url"), region(3, "url"),
                                                 HomeParams={"RegionScore": {"3": 1.5}})}
    host = FakeHost([region(3, "plugin"), region(999, "embedded")])
    mgr = DerpMapManager(
        config(tmp_path, paths=("a.yaml", str(tmp_path / "b.json")),
               urls=(Url("https://maps.example/one"),)),
        host,  # type: ignore[arg-type]
        fetch=lambda u: urls[u],
    )
    seen: list[dict[str, Any]] = []
    mgr.add_listener(seen.append)
    assert await mgr.refresh() is True
    m = mgr.current()
    assert list(m["Regions"]) == ["1", "2", "3", "900", "999"]
    assert m["Regions"]["1"]["RegionCode"] == "file-b"
    assert m["Regions"]["2"]["RegionCode"] == "url"  # URL replaces file
    assert m["Regions"]["3"]["RegionCode"] == "plugin"  # plugin replaces URL
    assert m["HomeParams"] == {"RegionScore": {"3": 1.5}}
    assert m["omitDefaultRegions"] is True
    assert seen == [m]
    assert await mgr.refresh() is False  # nothing changed: no listener call
    assert len(seen) == 1


async def test_keep_last_good_per_source(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "map.json"
    path.write_bytes(derp_map(region(1)))
    state = {"ok": True}

    def fetch(url: str) -> bytes:
        if not state["ok"]:
            raise OSError("connection refused")
        return derp_map(region(2))

    host = FakeHost([region(999)])
    now = [0.0]
    mgr = DerpMapManager(
        config(tmp_path, paths=("map.json",), urls=(Url("http://maps.example/m"),)),
        host,  # type: ignore[arg-type]
        fetch=fetch, clock=lambda: now[0],
    )
    assert await mgr.refresh()
    good = mgr.current()
    assert set(good["Regions"]) == {"1", "2", "999"}
    # Everything breaks at once.
    path.write_text("Regions: {1: {RegionID: 1, Nodes: [{Name: x}]}}")
    state["ok"] = False
    host.fail = PluginError("derp", "boom")
    assert await mgr.refresh(force=True) is False
    assert mgr.current() is good
    errors = mgr.errors()
    assert "HostName: required" in errors["map.json"]
    assert "connection refused" in errors["http://maps.example/m"]
    assert "boom" in errors["plugins"]
    assert "keeping its last good 1 region(s)" in caplog.text
    # Repair: the new content is taken.
    path.write_bytes(derp_map(region(1, "fixed")))
    host.fail = None
    assert await mgr.refresh() is True
    assert mgr.current()["Regions"]["1"]["RegionCode"] == "fixed"
    assert set(mgr.errors()) == {"http://maps.example/m"}


async def test_url_refetch_only_when_forced_or_stale(tmp_path: Path) -> None:
    calls: list[str] = []

    def fetch(url: str) -> bytes:
        calls.append(url)
        return derp_map(region(5))

    now = [0.0]
    mgr = DerpMapManager(config(tmp_path, urls=(Url("http://m/1"),)), None,
                         fetch=fetch, clock=lambda: now[0])
    await mgr.refresh()
    await mgr.refresh()  # a plugin asked: URLs are fresh enough
    assert len(calls) == 1
    await mgr.refresh(force=True)
    now[0] += 61
    await mgr.refresh()
    assert len(calls) == 3


async def test_missing_file_is_logged_not_fatal(tmp_path: Path) -> None:
    mgr = DerpMapManager(config(tmp_path, paths=("nope.yaml",)), FakeHost([region(999)]))  # type: ignore[arg-type]
    await mgr.refresh()
    assert list(mgr.current()["Regions"]) == ["999"]
    assert "cannot read" in mgr.errors()["nope.yaml"]


async def test_plugin_region_is_validated(tmp_path: Path) -> None:
    mgr = DerpMapManager(config(tmp_path), FakeHost([{"RegionID": 9, "Nodes": []}]))  # type: ignore[arg-type]
    await mgr.refresh()
    assert mgr.current()["Regions"] == {}
    assert "meshscale_derp_regions[0].Nodes" in mgr.errors()["plugins"]


async def test_run_without_auto_update_refreshes_once(tmp_path: Path) -> None:
    host = FakeHost([region(999)])
    mgr = DerpMapManager(config(tmp_path, auto_update_enabled=False), host)  # type: ignore[arg-type]
    await asyncio.wait_for(mgr.run(), 5)
    assert list(mgr.current()["Regions"]) == ["999"]


async def test_run_refreshes_periodically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost([region(999)])
    mgr = DerpMapManager(config(tmp_path, update_frequency=30.0), host)  # type: ignore[arg-type]
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        host.regions = [region(999, f"tick{len(sleeps)}")]
        if len(sleeps) == 3:
            raise asyncio.CancelledError

    monkeypatch.setattr("meshscale.derpmap.asyncio.sleep", fake_sleep)
    with pytest.raises(asyncio.CancelledError):
        await mgr.run()
    assert sleeps == [30.0, 30.0, 30.0]
    assert mgr.current()["Regions"]["999"]["RegionCode"] == "tick2"


async def test_real_http_fetch(tmp_path: Path) -> None:
    body = derp_map(region(7, "served"))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        mgr = DerpMapManager(config(tmp_path, urls=(Url(f"http://127.0.0.1:{port}/derp.json"),)))
        assert await mgr.refresh()
        assert mgr.current()["Regions"]["7"]["RegionCode"] == "served"
    finally:
        server.close()
