// Starts the real Duro binary on free ports and a local HTTP server (202 + Location, then 200).
import { spawn } from "node:child_process";
import { mkdtempSync, existsSync, openSync } from "node:fs";
import { createServer } from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

async function waitPort(port, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const c = net.connect(port, "127.0.0.1");
      c.on("connect", () => { c.destroy(); resolve(true); });
      c.on("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`port ${port} not listening`);
}

export async function startDuro(extraArgs = []) {
  const bin = process.env.DURO_BIN ?? path.join(REPO, "target", "debug", "duro");
  if (!existsSync(bin)) throw new Error(`duro binary not found at ${bin}`);
  const grpcPort = await freePort();
  const httpPort = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), "duro-ts-"));
  const log = openSync(path.join(dir, "duro.log"), "w");
  const proc = spawn(bin, [
    "--listen", `127.0.0.1:${grpcPort}`, "--db", path.join(dir, "duro.db"),
    "--http-listen", `127.0.0.1:${httpPort}`, "--durable-http-default-poll-interval-ms", "100",
    // The tests' fake HTTP servers are on loopback, which durable HTTP refuses by default.
    "--http-allow", "127.0.0.1",
    ...extraArgs,
  ], { stdio: ["ignore", log, log] });
  await waitPort(grpcPort);
  await waitPort(httpPort);
  return {
    address: `127.0.0.1:${grpcPort}`,
    httpUrl: `http://127.0.0.1:${httpPort}`,
    stop: () => new Promise((resolve) => { proc.once("exit", resolve); proc.kill("SIGTERM"); }),
  };
}

export async function startHttpServer() {
  const state = { polls: 0, requests: [] };
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      state.requests.push({ method: req.method, url: req.url, body });
      const base = `http://127.0.0.1:${server.address().port}`;
      if (req.url.startsWith("/start")) {
        res.writeHead(202, { Location: `${base}/status`, "Retry-After": "0" }).end();
      } else if (req.url.startsWith("/status")) {
        state.polls += 1;
        if (state.polls < 3) res.writeHead(202, { Location: `${base}/status`, "Retry-After": "0" }).end();
        else res.writeHead(200, { "Content-Type": "application/json", "X-Test": "yes" }).end('{"done":true}');
      } else res.writeHead(404).end();
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${server.address().port}`, state, close: () => new Promise((r) => server.close(r)) };
}
