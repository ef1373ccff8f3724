"""The CLI's side of the admin API: HTTP/1.1 over the server's unix socket."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from meshscale.errors import MeshscaleError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class AdminClient:
    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (FileNotFoundError, ConnectionRefusedError):
            raise MeshscaleError(
                f"cannot reach the server at {self.socket_path}: is 'meshscale serve' running "
                "(with the same config)?"
            ) from None
        except OSError as exc:
            raise MeshscaleError(f"admin socket {self.socket_path}: {exc}") from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise MeshscaleError(f"bad reply from server: {raw[:200]!r}") from None
        if resp.status >= 400:
            message = payload.get("error") if isinstance(payload, dict) else None
            raise MeshscaleError(message or f"server answered HTTP {resp.status}")
        return payload
