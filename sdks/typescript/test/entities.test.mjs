// Durable entities end to end with the official @microsoft/durabletask-js alone, against the real
// sidecar: a counter entity that takes client signals, an orchestration's signal and call, and
// a lock around a call; the client reads its state.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  EntityInstanceId,
  NoOpLogger,
  OrchestrationStatus,
  TaskHubGrpcClient,
  TaskHubGrpcWorker,
} from "@microsoft/durabletask-js";
import { startDuro } from "./helpers.mjs";

let duro, client, worker;

/** A counter: `add` adds its input, `get` returns the value, `reset` deletes the state. */
const counter = () => ({
  run(operation) {
    const value = operation.state.getState(0);
    switch (operation.name) {
      case "add":
        operation.state.setState(value + operation.getInput());
        return undefined;
      case "get":
        return value;
      case "reset":
        operation.state.setState(undefined);
        return undefined;
      default:
        throw new Error(`unknown operation ${operation.name}`);
    }
  },
});

/** Signals the counter, then calls it: the call sees every request queued before it. */
const signalThenGet = async function* signalThenGet(ctx, key) {
  const id = new EntityInstanceId("counter", key);
  ctx.entities.signalEntity(id, "add", 5);
  const value = yield ctx.entities.callEntity(id, "get");
  return value;
};

/** Adds inside a critical section on the counter and reads the result before unlocking. */
const lockedAdd = async function* lockedAdd(ctx, key) {
  const id = new EntityInstanceId("counter", key);
  const lock = yield ctx.entities.lockEntities(id);
  yield ctx.entities.callEntity(id, "add", 10);
  const value = yield ctx.entities.callEntity(id, "get");
  lock.release();
  return value;
};

before(async () => {
  duro = await startDuro();
  client = new TaskHubGrpcClient({ hostAddress: duro.address, logger: new NoOpLogger() });
  worker = new TaskHubGrpcWorker({ hostAddress: duro.address, logger: new NoOpLogger() });
  worker.addNamedEntity("counter", counter);
  worker.addOrchestrator(signalThenGet);
  worker.addOrchestrator(lockedAdd);
  await worker.start();
});

after(async () => {
  await worker?.stop();
  await client?.stop?.();
  await duro?.stop();
});

test("a counter entity takes signals and a call from an orchestration; the client reads its state", async () => {
  const key = `k-${Date.now()}`;
  const id = new EntityInstanceId("counter", key);
  await client.signalEntity(id, "add", 1);
  await client.signalEntity(id, "add", 2);
  const instance = await client.scheduleNewOrchestration(signalThenGet, key);
  const done = await client.waitForOrchestrationCompletion(instance, true, 20);
  assert.equal(done.runtimeStatus, OrchestrationStatus.COMPLETED, done.failureDetails?.message);
  assert.equal(done.serializedOutput, "8");

  const entity = await client.getEntity(id, true);
  assert.ok(entity, "the entity exists");
  assert.equal(entity.state, 8);
  assert.equal(entity.lockedBy, undefined);

  const locked = await client.scheduleNewOrchestration(lockedAdd, key);
  const lockedDone = await client.waitForOrchestrationCompletion(locked, true, 20);
  assert.equal(lockedDone.runtimeStatus, OrchestrationStatus.COMPLETED, lockedDone.failureDetails?.message);
  assert.equal(lockedDone.serializedOutput, "18");
  // The unlock is a message the entity applies after the orchestration completed.
  const deadline = Date.now() + 10_000;
  let after;
  for (;;) {
    after = await client.getEntity(id, true);
    if (after?.lockedBy === undefined || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(after.lockedBy, undefined, "the lock was released");
  assert.equal(after.state, 18);

  await client.signalEntity(id, "reset");
  const gone = Date.now() + 10_000;
  while ((await client.getEntity(id, true)) !== undefined && Date.now() < gone) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(await client.getEntity(id, true), undefined, "an entity without state does not exist");
});
