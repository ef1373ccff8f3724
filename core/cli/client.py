"""The CLI's side of the admin API, over one of two transports.

Every admin command calls ``AdminClient.call(method, "/v1/...", body)`` and prints what comes
back; only the transport differs, so a command has one code path and prints the same locally and
remotely:

- ``SocketTransport``: HTTP/1.1 over the server's unix socket (the socket's file permissions
  are the authentication), when ``cli.address`` is empty;
- ``HttpsTransport``: HTTPS to ``cli.address`` with ``Authorization: Bearer <cli.api_key>``,
  where the server serves the same admin API under /api/meshscale (meshscale.api.remoteadmin).

The settings are headscale's (``cli.address``, ``cli.api_key``, ``cli.timeout``,
``cli.insecure``), from the config file or ``MESHSCALE_CLI_*``; headscale's ``HEADSCALE_CLI_*``
variables are read too, after meshscale's.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from meshscale.config import Config
from meshscale.configvalues import parse_cli_address
from meshscale.errors import MeshscaleError

REMOTE_PREFIX = "/api/meshscale"  # meshscale.api.remoteadmin.PREFIX (not imported: no Quart)
LOCAL_TIMEOUT = 30.0


class Transport(Protocol):
    """Sends one admin request; answers (HTTP status, body). Raises MeshscaleError with a
    one-line message when the server cannot be reached."""

    @property
    def where(self) -> str:
        """For messages: the socket path or the https URL."""
        ...

    def send(self, method: str, path: str, body: bytes | None,
             headers: dict[str, str]) -> tuple[int, bytes]: ...

    def refused(self, status: int) -> str | None:
        """A message for a status the transport itself explains (a refused key)."""
        ...


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _exchange(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
              headers: dict[str, str]) -> tuple[int, bytes]:
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass(frozen=True)
class SocketTransport:
    path: str
    timeout: float = LOCAL_TIMEOUT

    @property
    def where(self) -> str:
        return self.path

    def send(self, method: str, path: str, body: bytes | None,
             headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            return _exchange(_UnixConnection(self.path, self.timeout), method, path, body,
                             headers)
        except (FileNotFoundError, ConnectionRefusedError):
            raise MeshscaleError(
                f"cannot reach the server at {self.path}: is 'meshscale serve' running "
                "(with the same config)?"
            ) from None
        except OSError as exc:
            raise MeshscaleError(f"admin socket {self.path}: {exc}") from None

    def refused(self, status: int) -> str | None:
        return None


@dataclass(frozen=True)
class HttpsTransport:
    host: str
    port: int
    api_key: str
    timeout: float
    insecure: bool = False

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def _context(self) -> ssl.SSLContext:
        # The system's CAs (SSL_CERT_FILE / SSL_CERT_DIR choose others); cli.insecure skips
        # the check as headscale's does, the connection is still TLS.
        ctx = ssl.create_default_context()
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def send(self, method: str, path: str, body: bytes | None,
             headers: dict[str, str]) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                           context=self._context())
        headers = {**headers, "Authorization": f"Bearer {self.api_key}"}
        try:
            return _exchange(conn, method, REMOTE_PREFIX + path, body, headers)
        except ssl.SSLCertVerificationError as exc:
            raise MeshscaleError(
                f"{self.where}: its TLS certificate is not trusted ({exc.verify_message}); "
                "give its CA in SSL_CERT_FILE, or set cli.insecure: true to skip the check"
            ) from None
        except ssl.SSLError as exc:
            raise MeshscaleError(f"{self.where}: TLS failed ({exc.reason or exc}); is it an "
                                 "HTTPS listener?") from None
        except TimeoutError:
            raise MeshscaleError(f"{self.where}: no answer within {self.timeout:g}s "
                                 "(cli.timeout)") from None
        except OSError as exc:
            raise MeshscaleError(f"cannot reach the server at {self.where}: "
                                 f"{exc.strerror or exc}") from None

    def refused(self, status: int) -> str | None:
        if status == 401:
            return (f"{self.where} refused the API key (wrong, expired or deleted): check "
                    "cli.api_key / MESHSCALE_CLI_API_KEY ('meshscale apikeys create' on the "
                    "server makes one)")
        return None


class AdminClient:
    def __init__(self, target: str | Transport, timeout: float = LOCAL_TIMEOUT) -> None:
        """``target``: a transport, or the path of the local unix socket."""
        self.transport: Transport = (SocketTransport(target, timeout) if isinstance(target, str)
                                     else target)

    @property
    def remote(self) -> bool:
        return not isinstance(self.transport, SocketTransport)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        status, raw = self.transport.send(method, path, data, headers)
        if status >= 400 and (message := self.transport.refused(status)):
            raise MeshscaleError(message)
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            if status == 404 and self.remote:
                raise MeshscaleError(
                    f"{self.transport.where} does not serve meshscale's admin API "
                    f"({REMOTE_PREFIX}): is it a meshscale server of this version?") from None
            raise MeshscaleError(f"bad reply from server (HTTP {status}): {raw[:200]!r}") \
                from None
        if status >= 400:
            message = payload.get("error") if isinstance(payload, dict) else None
            raise MeshscaleError(message or f"server answered HTTP {status}")
        return payload


def _setting(configured: Any, name: str, environ: Mapping[str, str]) -> Any:
    """A cli.* setting: MESHSCALE_CLI_<NAME> (already in the config, over the file), else
    headscale's HEADSCALE_CLI_<NAME>, else the config file's value."""
    if f"MESHSCALE_CLI_{name}" not in environ and environ.get(f"HEADSCALE_CLI_{name}"):
        return environ[f"HEADSCALE_CLI_{name}"]
    return configured


def admin_client(config: Config, environ: Mapping[str, str] | None = None) -> AdminClient:
    """The admin client the config asks for: remote if cli.address is set, else local."""
    environ = os.environ if environ is None else environ
    address = str(_setting(config.cli.address, "ADDRESS", environ) or "")
    if not address:
        return AdminClient(str(config.resolve(config.unix_socket)))
    # The config's value was checked as it was read; headscale's variable is checked here.
    host, port = parse_cli_address(address, "cli.address" if address == config.cli.address
                                   else "HEADSCALE_CLI_ADDRESS")
    key = str(_setting(config.cli.api_key, "API_KEY", environ) or "").strip()
    if not key:
        raise MeshscaleError(
            f"cli.address is {address!r} but no API key is set: set cli.api_key or "
            "MESHSCALE_CLI_API_KEY (make one on the server with 'meshscale apikeys create')")
    return AdminClient(HttpsTransport(host, port, key, float(config.cli.timeout),
                                      config.cli.insecure))
