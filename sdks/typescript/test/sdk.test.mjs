import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { OrchestrationStatus, NoOpLogger } from "@microsoft/durabletask-js";
import {
  callHttp, getHeader, toRequestJson, managedIdentityTokenSource, connectClient, newWorker,
  DuroWebhookClient, WebhookError, createCheckStatusResponse, createSignedLinkResponse,
} from "../dist/index.js";
import { startDuro, startHttpServer } from "./helpers.mjs";

let duro, worker, client, httpServer;

const httpOrchestrator = async function* httpOrchestrator(ctx, url) {
  const resp = yield* callHttp(ctx, {
    method: "post", uri: `${url}/start`, headers: { "Content-Type": "application/json" },
    content: '{"go":1}', timeout: 10_000,
  });
  return { status: resp.statusCode, body: JSON.parse(resp.content), xtest: getHeader(resp, "X-Test") };
};

const waiter = async function* waiter(ctx) {
  const value = yield ctx.waitForExternalEvent("approve");
  return { approved: value };
};

before(async () => {
  duro = await startDuro();
  httpServer = await startHttpServer();
  worker = newWorker(duro.address, { workItemFilters: "auto", logger: new NoOpLogger() });
  worker.addOrchestrator(httpOrchestrator);
  worker.addOrchestrator(waiter);
  await worker.start();
  client = connectClient(duro.address, { logger: new NoOpLogger() });
});

after(async () => {
  await worker?.stop();
  await client?.stop?.();
  await httpServer?.close();
  await duro?.stop();
});

test("request serialization", () => {
  assert.deepEqual(toRequestJson({
    uri: "https://example.org/x", timeout: 90_500,
    tokenSource: managedIdentityTokenSource("https://graph.microsoft.com", { tenantId: "t" }),
  }), {
    method: "GET", uri: "https://example.org/x", headers: {}, content: null,
    tokenSource: { kind: "AzureManagedIdentity", resource: "https://graph.microsoft.com/.default", options: { tenantid: "t" } },
    asynchronousPatternEnabled: true, timeout: "00:01:30.5000000",
  });
});

test("callHttp end to end: the sidecar polls 202 until 200", async () => {
  const id = await client.scheduleNewOrchestration(httpOrchestrator, httpServer.url);
  const st = await client.waitForOrchestrationCompletion(id, true, 60);
  assert.equal(st.runtimeStatus, OrchestrationStatus.COMPLETED, JSON.stringify(st.failureDetails));
  assert.deepEqual(JSON.parse(st.serializedOutput), { status: 200, body: { done: true }, xtest: "yes" });
  assert.equal(httpServer.state.polls, 3);
  assert.deepEqual(httpServer.state.requests[0], { method: "POST", url: "/start", body: '{"go":1}' });
});

test("webhook client: start, status, raise event, terminate, purge", async () => {
  const wh = new DuroWebhookClient(duro.httpUrl);
  const started = await wh.start("waiter", { x: 1 });
  const st = await wh.getStatus(started.id);
  assert.equal(st.name, "waiter");
  assert.deepEqual(st.input, { x: 1 });
  await wh.raiseEvent(started.id, "approve", { by: "bob" });
  const done = await wh.waitForCompletion(started.id, 30_000);
  assert.equal(done.runtimeStatus, "Completed");
  assert.deepEqual(done.output, { approved: { by: "bob" } });
  assert.ok((await wh.listInstances({ instanceIdPrefix: started.id })).some((s) => s.instanceId === started.id));
  assert.equal(await wh.getStatus("no-such-instance"), undefined);

  const t = await wh.start("waiter", null, { instanceId: "ts-term-1" });
  assert.equal(t.id, "ts-term-1");
  await wh.terminate(t.id, "stop it");
  const term = await wh.waitForCompletion(t.id, 30_000);
  assert.equal(term.runtimeStatus, "Terminated");
  assert.equal(term.output, "stop it");
  assert.equal(await wh.purge(t.id), 1);
  await assert.rejects(wh.raiseEvent(t.id, "approve", 1), (e) => e instanceof WebhookError && e.status === 404);
});

test("check-status helpers", async () => {
  const wh = new DuroWebhookClient(duro.httpUrl);
  const started = await wh.start("waiter");
  const resp = createCheckStatusResponse(duro.httpUrl, started.id);
  assert.equal(resp.status, 202);
  assert.equal(resp.headers["Retry-After"], "10");
  assert.deepEqual(resp.body, started);
  const poll = await fetch(resp.headers.Location);
  assert.equal(poll.status, 202);

  const signed = await createSignedLinkResponse(wh, started.id, { ops: "status,raiseEvent", ttlSeconds: 600 });
  assert.match(signed.body.statusQueryGetUri, /sig=/);
  const send = signed.body.sendEventPostUri.replace("{eventName}", "approve");
  const r = await fetch(send, { method: "POST", headers: { "Content-Type": "application/json" }, body: '"ok"' });
  assert.equal(r.status, 202);
  const done = await wh.waitForCompletion(started.id, 30_000);
  assert.deepEqual(done.output, { approved: "ok" });
});
