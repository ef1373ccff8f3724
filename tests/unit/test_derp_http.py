"""The DERP server's HTTP answers (sans-IO) and the embedded region."""

from __future__ import annotations

import base64
import hashlib
import json

from meshscale.config import Config, DerpConfig, DerpServerConfig
from meshscale.configvalues import Url
from meshscale.plugins.derp import http, region

H = [("upgrade", "DERP"), ("connection", "Upgrade")]


def test_derp_upgrade_101() -> None:
    assert http.upgrade_kind(H) == "derp"
    out = http.switching_protocols("derp", H, b"\x01" * 32)
    assert out == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n"
        b"Derp-Version: 2\r\nDerp-Public-Key: " + b"01" * 32 + b"\r\n\r\n"
    )
    # Derp-Fast-Start: no HTTP response at all, frames straight away.
    assert http.switching_protocols("derp", [*H, ("derp-fast-start", "1")], b"\x01" * 32) is None


def test_websocket_upgrade() -> None:
    ws = [("upgrade", "websocket"), ("sec-websocket-protocol", "foo, derp"),
          ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")]
    assert http.upgrade_kind(ws) == "websocket"
    out = http.switching_protocols("websocket", ws, b"\x00" * 32)
    assert out is not None
    # RFC 6455's worked example.
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in out
    assert b"Sec-WebSocket-Protocol: derp\r\n" in out
    digest = hashlib.sha1(b"dGhlIHNhbXBsZSBub25jZQ==258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
    assert base64.b64encode(digest.digest()) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert http.upgrade_kind([("upgrade", "websocket")]) is None  # no derp subprotocol
    assert http.upgrade_kind([("upgrade", "h2c")]) is None


def test_probe_204_and_426() -> None:
    assert http.render(http.probe()) == (
        b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n"
    )
    ok = http.generate_204("abc:1.2-3_4")
    assert ("X-Tailscale-Response", "response abc:1.2-3_4") in ok.headers
    assert ok.status == 204
    assert all(k != "X-Tailscale-Response" for k, _ in http.generate_204("bad value!").headers)
    assert all(k != "X-Tailscale-Response" for k, _ in http.generate_204("a" * 65).headers)
    assert http.upgrade_required().status == 426


def test_verify() -> None:
    key = bytes(range(32))

    def known(k: bytes) -> bool:
        return k == key

    def ask(body: object) -> tuple[int, object]:
        reply = http.verify(json.dumps(body).encode(), known)
        return reply.status, json.loads(reply.body)

    assert ask({"NodePublic": "nodekey:" + key.hex(), "Source": "192.0.2.1"}) == (
        200, {"Allow": True}
    )
    assert ask({"nodepublic": "nodekey:" + key.hex()}) == (200, {"Allow": True})
    assert ask({"NodePublic": "nodekey:" + "11" * 32}) == (200, {"Allow": False})
    assert ask({"NodePublic": "mkey:" + key.hex()})[0] == 400
    assert ask([1])[0] == 400
    assert http.verify(b"{", known).status == 400
    assert json.loads(http.verify(b'{"NodePublic":"nodekey:' + key.hex().encode() + b'"}',
                                  None).body) == {"Allow": False}

    def broken(_k: bytes) -> bool:
        raise RuntimeError("db down")

    assert json.loads(http.verify(b'{"NodePublic":"nodekey:' + key.hex().encode() + b'"}',
                                  broken).body) == {"Allow": False}


def _config(url: str, **srv: str) -> Config:
    return Config(server_url=Url(url), derp=DerpConfig(server=DerpServerConfig(**srv)))  # type: ignore[arg-type]


def test_region_from_server_url_and_overrides() -> None:
    r = region.embedded_region(_config("http://127.0.0.1:8080"), derp_port=8443,
                               cert_name="sha256-raw:ab", stun_port=3478)
    assert r == {
        "RegionID": 999, "RegionCode": "meshscale", "RegionName": "meshscale embedded DERP",
        "Nodes": [{"Name": "999a", "RegionID": 999, "HostName": "127.0.0.1",
                   "IPv4": "127.0.0.1", "IPv6": "none", "STUNPort": 3478, "DERPPort": 8443,
                   "CertName": "sha256-raw:ab"}],
    }
    node = region.embedded_region(_config("https://hs.example.com"), derp_port=443,
                                  cert_name=None, stun_port=-1)["Nodes"][0]
    assert node["HostName"] == "hs.example.com" and "IPv4" not in node and "CertName" not in node
    node = region.embedded_region(
        _config("https://hs.example.com", ipv4="198.51.100.2", ipv6="2001:db8::2"),
        derp_port=443, cert_name=None, stun_port=3478,
    )["Nodes"][0]
    assert (node["HostName"], node["IPv4"], node["IPv6"]) == (
        "hs.example.com", "198.51.100.2", "2001:db8::2"
    )
    assert region.advertised_hosts(_config("https://hs.example.com", ipv4="198.51.100.2")) == [
        "127.0.0.1", "hs.example.com", "198.51.100.2"
    ]
    assert region.server_url_port(_config("https://hs.example.com")) == 443
    assert region.server_url_port(_config("http://hs.example.com")) == 80
    assert region.server_url_port(_config("http://hs.example.com:8080")) == 8080
