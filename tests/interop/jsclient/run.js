// Runs Tailscale's JS/WASM client (cmd/tsconnect's wasm build) under Node, for the interop tests:
//   node --experimental-websocket run.js WASM_EXEC_JS MAIN_WASM CONFIG_JSON
// CONFIG_JSON is {"controlURL", "authKey", "hostname"}. Every notification from the client is
// printed as one JSON line on stdout ({"state": ...}, {"netmap": ...}, {"browse": ...},
// {"panic": ...}), among the client's own log lines (Go's console output lands there too). It
// runs until killed or until its stdin closes.
"use strict";

const [wasmExec, mainWasm, configJSON] = process.argv.slice(2);
// No globalThis.fs: wasm_exec.js then installs the browser's stand-in, whose calls answer at
// once. Node's real fs answers through the event loop, which newIPN (a synchronous call from
// JS into Go) blocks while it reads files: a deadlock. The client runs as it does in a browser.
const nodefs = require("fs");
// Start Node with an argv[0] that does not begin with "node" (exec -a, or Popen's executable=):
// Go's net/http on js/wasm turns the Fetch API off when process.argv0 does (for its own tests,
// go.dev/issue/57613) and dials a fake in-memory network, so GET /key would never leave the
// process. A browser has no process.argv0.
if (process.argv0.startsWith("node")) {
  console.error("run.js: start node with another argv[0] (see the comment above)");
  process.exit(2);
}
globalThis.TextEncoder = require("util").TextEncoder;
globalThis.TextDecoder = require("util").TextDecoder;
globalThis.performance ??= require("perf_hooks").performance;
globalThis.crypto ??= require("crypto").webcrypto;
require(wasmExec);

// The test keeps stdin open: when it goes away, so does this client.
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();

const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const go = new Go();
go.argv = ["tsconnect"];
go.env = Object.assign({ TMPDIR: require("os").tmpdir() }, process.env);
go.exit = process.exit;

WebAssembly.instantiate(nodefs.readFileSync(mainWasm), go.importObject).then(async (result) => {
  go.run(result.instance);
  // main() defines newIPN, then parks: wait for it.
  for (let i = 0; i < 500 && typeof globalThis.newIPN !== "function"; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const state = {};
  const ipn = globalThis.newIPN({
    ...JSON.parse(configJSON),
    stateStorage: {
      setState: (id, value) => { state[id] = value; },
      getState: (id) => state[id] || "",
    },
  });
  let loggingIn = false;
  ipn.run({
    notifyState: (s) => {
      say({ state: s });
      // As tsconnect's page does: log in when the client says it needs to (with the auth key
      // from the config, no browser step).
      if (s === "NeedsLogin" && !loggingIn) {
        loggingIn = true;
        ipn.login();
      }
    },
    notifyNetMap: (nm) => say({ netmap: JSON.parse(nm) }),
    notifyBrowseToURL: (url) => say({ browse: url }),
    notifyPanicRecover: (err) => say({ panic: err }),
  });
}).catch((err) => {
  console.error(err);
  process.exit(1);
});
