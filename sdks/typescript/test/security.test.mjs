// connectClient/newWorker against a Duro that requires an API token (--api-token).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { OrchestrationStatus, NoOpLogger } from "@microsoft/durabletask-js";
import { connectClient, newWorker } from "../dist/index.js";
import { startDuro } from "./helpers.mjs";

const TOKEN = "ts-test-token-0123456789abcdef";
let duro;

const hello = async function* hello(ctx, name) {
  return `hello ${name}`;
};

before(async () => {
  duro = await startDuro(["--api-token", TOKEN]);
});

after(async () => {
  await duro?.stop();
});

test("without the token every call is refused", async () => {
  const client = connectClient(duro.address, { logger: new NoOpLogger(), apiToken: "" });
  await assert.rejects(client.scheduleNewOrchestration(hello, "x"), (e) => {
    assert.match(String(e?.message ?? e), /UNAUTHENTICATED|token/i);
    return true;
  });
  await client.stop?.();
});

test("with the token the client and the worker's stream are accepted", async () => {
  const worker = newWorker(duro.address, { logger: new NoOpLogger(), apiToken: TOKEN });
  worker.addOrchestrator(hello);
  await worker.start();
  const client = connectClient(duro.address, { logger: new NoOpLogger(), apiToken: TOKEN });
  try {
    const id = await client.scheduleNewOrchestration(hello, "duro");
    const st = await client.waitForOrchestrationCompletion(id, true, 30);
    assert.equal(st.runtimeStatus, OrchestrationStatus.COMPLETED);
    assert.equal(JSON.parse(st.serializedOutput), "hello duro");
  } finally {
    await worker.stop();
    await client.stop?.();
  }
});
