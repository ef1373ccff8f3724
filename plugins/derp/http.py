"""The HTTP side of a DERP server, sans-IO: what to answer, as status, headers and body.

Used twice: by the Quart views on the main listener and by the TLS listener's own small HTTP/1.1
loop, so both answer byte for byte alike (protocol.md §8.1, §8.8, headscale's ``/verify``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from meshscale.plugins.derp import frames
from meshscale.plugins.derp.keys import parse_node_key
from meshscale.plugins.derp.streams import websocket_accept

Headers = list[tuple[str, str]]

_CHALLENGE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_NO_CACHE = "no-cache, no-store, must-revalidate, no-transform, max-age=0"

PROBE_PATHS = ("/derp/probe", "/derp/latency-check")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""


def probe() -> Reply:
    """``/derp/probe`` and ``/derp/latency-check``: 200, readable from any origin."""
    return Reply(200, [("Access-Control-Allow-Origin", "*")])


def generate_204(challenge: str | None) -> Reply:
    """Captive-portal check: 204, echoing a well-formed ``X-Tailscale-Challenge``."""
    headers: Headers = [("Cache-Control", _NO_CACHE)]
    if challenge and _CHALLENGE.match(challenge):
        headers.append(("X-Tailscale-Response", f"response {challenge}"))
    return Reply(204, headers)


def upgrade_required() -> Reply:
    return Reply(
        426, [("Content-Type", "text/plain; charset=utf-8")], b"DERP requires connection upgrade"
    )


def verify(body: bytes, node_key_known: Callable[[bytes], bool] | None) -> Reply:
    """headscale's ``POST /verify`` for external derpers (``--verify-client-url``).

    Body ``{"NodePublic": "nodekey:...", "Source": "ip"}``; answer ``{"Allow": bool}``. A body
    we cannot read is a 400; an unknown node, or a server not started yet, is ``Allow: false``.
    """
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _json(400, {"error": "body is not JSON"})
    if not isinstance(req, dict):
        return _json(400, {"error": "body must be a JSON object"})
    low = {str(k).lower(): v for k, v in req.items()}  # Go decodes names case-insensitively
    text = low.get("nodepublic")
    raw = parse_node_key(text) if isinstance(text, str) else None
    if raw is None:
        return _json(400, {"error": "NodePublic must be nodekey:<64 hex>"})
    allow = False
    if node_key_known is not None:
        try:
            allow = bool(node_key_known(raw))
        except Exception:  # a failing lookup must deny, never crash the view
            allow = False
    return _json(200, {"Allow": allow})


def _json(status: int, obj: object) -> Reply:
    return Reply(status, [("Content-Type", "application/json")], json.dumps(obj).encode())


# -- the DERP upgrade -----------------------------------------------------------------------


def header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def upgrade_kind(headers: Sequence[tuple[str, str]]) -> str | None:
    """``"derp"``, ``"websocket"`` (with the derp subprotocol) or None; names lower-case."""
    upgrade = (header(headers, "upgrade") or "").strip().lower()
    if upgrade == "derp":
        return "derp"
    if upgrade == "websocket":
        protos = header(headers, "sec-websocket-protocol") or ""
        if "derp" in (p.strip().lower() for p in protos.split(",")) and header(
            headers, "sec-websocket-key"
        ):
            return "websocket"
    return None


def switching_protocols(
    kind: str, headers: Sequence[tuple[str, str]], server_public: bytes
) -> bytes | None:
    """The ``101`` to write before DERP frames, or None for Derp-Fast-Start (no response)."""
    if kind == "websocket":
        accept = websocket_accept(header(headers, "sec-websocket-key") or "")
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept}",
            "Sec-WebSocket-Protocol: derp",
        ]
    else:
        if (header(headers, "derp-fast-start") or "").strip() == "1":
            return None
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: DERP",
            "Connection: Upgrade",
            f"Derp-Version: {frames.PROTOCOL_VERSION}",
            f"Derp-Public-Key: {server_public.hex()}",
        ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def render(reply: Reply, *, head_only: bool = False, keep_alive: bool = False) -> bytes:
    """A whole HTTP/1.1 response (used by the TLS listener, which has no framework)."""
    reason = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found",
              405: "Method Not Allowed", 413: "Payload Too Large",
              426: "Upgrade Required", 503: "Service Unavailable"}.get(reply.status, "")
    lines = [f"HTTP/1.1 {reply.status} {reason}"]
    lines += [f"{k}: {v}" for k, v in reply.headers]
    if reply.status != 204:
        lines.append(f"Content-Length: {len(reply.body)}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only or reply.status == 204 else head + reply.body
