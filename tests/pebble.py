"""A real ACME server for tests: Debian's ``pebble`` (Let's Encrypt's test server), per test.

Installed outside the network namespace by scripts/ensure-pebble (scripts/test calls it). Its
own HTTPS certificate comes from a throwaway CA (``ca_pem``); the root it signs issued
certificates with is made anew at every start (``root_pem()``).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from meshscale.ports import free_port
from tests.tlsca import TestCA


def pebble_binary() -> str:
    found = shutil.which("pebble") or ("/usr/bin/pebble" if Path("/usr/bin/pebble").exists()
                                       else None)
    if found is None:
        pytest.fail("pebble (the ACME test server) is not installed: run bash "
                    "scripts/ensure-pebble (scripts/test does)", pytrace=False)
    return found


class Pebble:
    def __init__(self, workdir: Path, *, http_port: int, tls_port: int, port: int | None = None,
                 validity_seconds: int | None = None, dns_server: str = "") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.dir = workdir
        ca = TestCA(workdir / "wfe-ca", name="pebble WFE test CA")
        wfe = ca.issue("pebble", "127.0.0.1", "localhost", stem="wfe")
        self.ca_pem = ca.pem
        self.port = port or free_port()
        self.mgmt = free_port()
        self.url = f"https://127.0.0.1:{self.port}/dir"
        pebble: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt}",
            "certificate": str(wfe.cert), "privateKey": str(wfe.key),
            "httpPort": http_port, "tlsPort": tls_port, "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if validity_seconds is not None:
            pebble["certificateValidityPeriod"] = validity_seconds
        self.config = workdir / "pebble.json"
        self.config.write_text(json.dumps({"pebble": pebble}))
        self.log = workdir / "pebble.log"
        # "127.0.0.1:PORT": the DNS server pebble asks for DNS-01 TXT records (and CAA).
        self.dns_server = dns_server
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
               "PEBBLE_AUTHZREUSE": "0"}
        args = [pebble_binary(), "-config", str(self.config)]
        if self.dns_server:
            args += ["-dnsserver", self.dns_server]
        self.proc = subprocess.Popen(args,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     env=env)
        deadline = time.monotonic() + 20
        while True:
            try:
                self._get(f"https://127.0.0.1:{self.port}/dir")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"pebble did not start: {self.log.read_text()}") \
                        from None
                time.sleep(0.05)

    def _get(self, url: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.ca_pem))
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            body: bytes = resp.read()
        return body

    def root_pem(self) -> bytes:
        """The root that issued certificates chain to (new at every pebble start)."""
        return self._get(f"https://127.0.0.1:{self.mgmt}/roots/0")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
