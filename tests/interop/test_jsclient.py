"""Tailscale's JS/WASM client against meshscale: ``/ts2021`` over WebSocket (issue 18).

The client is tailscale.com/cmd/tsconnect/wasm v1.102.5 (what Tailscale's browser page runs),
built by scripts/build-tsconnect and run under Node by tests/interop/jsclient/run.js, inside the
test's network namespace like every client. Built for js, its control client has one way to
reach a server: a WebSocket to ``ws://HOST:PORT/ts2021`` (control/controlhttp/client_js.go).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop.realclients import MeshscaleProcess, stop_process, wait_for
from tests.interop.tailscaled import CACHE, VERSION, Tailscaled
from tests.interop.test_tailscaled import authkey, server

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]
__all__ = ["server"]  # the fixture, shared with test_tailscaled

RUNNER = Path(__file__).parent / "jsclient" / "run.js"


class JsClient:
    """One tsconnect client under Node; ``events`` holds its notifications as they arrive."""

    def __init__(self, control_url: str, auth_key: str, hostname: str) -> None:
        folder = CACHE / f"tsconnect-{VERSION}"
        wasm, glue = folder / "main.wasm", folder / "wasm_exec.js"
        node = shutil.which("node")
        if not (wasm.is_file() and glue.is_file()) or node is None:
            pytest.fail(f"the Tailscale JS/WASM client {VERSION} is not built in {folder} (or "
                        "node is missing): run `bash scripts/build-tsconnect` outside the "
                        "network namespace (`bash scripts/test` runs it first)", pytrace=False)
        config = json.dumps({"controlURL": control_url, "authKey": auth_key,
                             "hostname": hostname})
        # argv[0] "tsconnect", not "node": see run.js.
        self.proc = subprocess.Popen(
            ["tsconnect", "--experimental-websocket", str(RUNNER), str(glue), str(wasm), config],
            executable=node, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env={**os.environ, "TS_NO_LOGS_NO_SUPPORT": "true"})
        self.events: list[dict[str, Any]] = []
        self.log: list[str] = []

    def _read(self, wait: float) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], wait)
        if not ready:
            return
        line = self.proc.stdout.readline().decode(errors="replace")
        if not line:
            raise AssertionError(f"the JS client exited: {''.join(self.log[-30:])}")
        self.log.append(line)
        if line.startswith("{"):
            self.events.append(json.loads(line))

    def wait(self, check: Callable[[dict[str, Any]], bool], timeout: float, what: str
             ) -> dict[str, Any]:
        """The first notification (so far or to come) for which ``check`` is true."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if check(event):
                    return event
            seen = len(self.events)
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the JS client said:\n"
                                     f"{''.join(self.log[-40:])}")
            self._read(0.5)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def jsclient() -> Iterator[Callable[..., JsClient]]:
    made: list[JsClient] = []

    def make(*args: Any) -> JsClient:
        made.append(JsClient(*args))
        return made[-1]

    yield make
    for client in made:
        client.stop()


def test_wasm_client_registers_and_gets_its_map_over_websocket(
        server: MeshscaleProcess, tailscaled: Callable[..., Tailscaled],
        jsclient: Callable[..., JsClient]) -> None:
    alpha = tailscaled("alpha")
    alpha.start()
    key = authkey(server, "--reusable")
    alpha.up(server.url, key)

    web = jsclient(server.url, key, "browser")
    web.wait(lambda e: e.get("state") == "Running", 60, "the JS client to be Running")
    listed = wait_for(lambda: (n := server.nodes()).get("browser", {}).get("online") and n, 30,
                      "the JS client's node online in meshscale")
    # Its netmap is meshscale's record of it, with alpha as a peer.
    netmap = web.wait(lambda e: "netmap" in e and e["netmap"]["peers"], 30,
                      "a netmap with a peer")["netmap"]
    me = listed["browser"]
    assert netmap["self"]["addresses"] == me["ip_addresses"]
    assert netmap["self"]["nodeKey"] == me["node_key"]
    assert netmap["self"]["machineKey"] == me["machine_key"]
    assert netmap["self"]["machineStatus"] == "MachineAuthorized"
    assert [(p["name"].split(".")[0], p["addresses"]) for p in netmap["peers"]] == [
        ("alpha", listed["alpha"]["ip_addresses"])]
    # And the tailscaled node sees it arrive, online, through its own map stream.
    wait_for(lambda: alpha.peers().get("browser", {}).get("Online") is True, 30,
             "the JS client's node online in alpha's status")
    assert alpha.peers()["browser"]["TailscaleIPs"] == me["ip_addresses"]
