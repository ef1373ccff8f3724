"""A real authoritative DNS server for the tests: BIND's ``named`` (Debian package ``bind9``,
installed by scripts/ensure-bind9), one per test, on a loopback port, serving one zone that a
TSIG key may update (RFC 2136). No ``named`` is a failure saying so, never a skip."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

NAMED = shutil.which("named") or "/usr/sbin/named"


@dataclass(frozen=True)
class Named:
    port: int
    zone: str
    key_name: str
    secret: str  # base64
    log: Path

    def txt(self, name: str) -> list[str]:
        """The TXT values the server answers for ``name`` (no cache in between)."""
        answer = dns.query.tcp(dns.message.make_query(name, dns.rdatatype.TXT), "127.0.0.1",
                               port=self.port, timeout=5)
        return sorted(b"".join(r.strings).decode() for rrset in answer.answer for r in rrset)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def named(workdir: Path, zone: str = "ts.example.com") -> Iterator[Named]:
    if not os.path.exists(NAMED):
        raise AssertionError("BIND's named is not installed: run scripts/ensure-bind9 (Debian: "
                             "apt-get install bind9)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    secret = base64.b64encode(os.urandom(32)).decode()
    (workdir / "zone.db").write_text(
        "$TTL 60\n"
        f"@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 60 60 600 60\n"
        f"@ IN NS ns1.{zone}.\n"
        "ns1 IN A 127.0.0.1\n")
    (workdir / "named.conf").write_text(
        f'options {{ directory "{workdir}"; listen-on port {port} {{ 127.0.0.1; }};\n'
        "  listen-on-v6 { none; }; pid-file none; recursion no; dnssec-validation no; };\n"
        "controls { };\n"
        f'key "meshscale" {{ algorithm hmac-sha256; secret "{secret}"; }};\n'
        f'zone "{zone}" {{ type primary; file "{workdir}/zone.db";\n'
        f"  update-policy {{ grant meshscale subdomain {zone}. TXT; }}; }};\n")
    log = workdir / "named.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([NAMED, "-g", "-n", "1", "-c", str(workdir / "named.conf")],
                                stdout=out, stderr=subprocess.STDOUT)
    server = Named(port, zone, "meshscale", secret, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                q = dns.message.make_query(zone, dns.rdatatype.SOA)
                if dns.query.tcp(q, "127.0.0.1", port=port, timeout=1).answer:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"named did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
