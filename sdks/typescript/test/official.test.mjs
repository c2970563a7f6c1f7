// Behaviour the official JS SDK's own end-to-end suite (test/e2e-azuremanaged) expects of the
// backend, checked with @microsoft/durabletask-js alone (no @duro/sdk helpers) against the real
// sidecar: restart under a new id, versioned work-item filters, execution-id-derived child ids.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { OrchestrationStatus, NoOpLogger, TaskHubGrpcClient, TaskHubGrpcWorker } from "@microsoft/durabletask-js";
import { startDuro } from "./helpers.mjs";

let duro, client;

before(async () => {
  duro = await startDuro();
  client = new TaskHubGrpcClient({ hostAddress: duro.address, logger: new NoOpLogger() });
});

after(async () => {
  await client?.stop?.();
  await duro?.stop();
});

/** Runs `body` with a started worker that has `register` applied, and stops it afterwards. */
async function withWorker(options, register, body) {
  const worker = new TaskHubGrpcWorker({ hostAddress: duro.address, logger: new NoOpLogger(), ...options });
  register(worker);
  await worker.start();
  try {
    return await body();
  } finally {
    await worker.stop();
  }
}

async function waitForStatus(id, status, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const st = await client.getOrchestrationState(id);
    if (st?.runtimeStatus === status) return st;
    if (Date.now() > deadline) throw new Error(`instance ${id} is ${st?.runtimeStatus}, wanted ${status}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// restart.spec.ts: "should allow restarting a running instance with a new instance ID".
test("a running instance can be restarted with a new instance id", async () => {
  const waitForGo = async function* waitForGo(ctx, input) {
    const v = yield ctx.waitForExternalEvent("go");
    return `${input}:${v}`;
  };
  await withWorker({}, (w) => w.addOrchestrator(waitForGo), async () => {
    const id = `restart-running-${Date.now()}`;
    await client.scheduleNewOrchestration(waitForGo, "in", id);
    await waitForStatus(id, OrchestrationStatus.RUNNING);

    const newId = await client.restartOrchestration(id, true);
    assert.notEqual(newId, id);
    await waitForStatus(newId, OrchestrationStatus.RUNNING);
    assert.equal((await client.getOrchestrationState(id)).runtimeStatus, OrchestrationStatus.RUNNING);

    await client.raiseOrchestrationEvent(id, "go", 1);
    await client.raiseOrchestrationEvent(newId, "go", 2);
    const [a, b] = await Promise.all([
      client.waitForOrchestrationCompletion(id, true, 15),
      client.waitForOrchestrationCompletion(newId, true, 15),
    ]);
    assert.equal(a.serializedOutput, JSON.stringify("in:1"));
    assert.equal(b.serializedOutput, JSON.stringify("in:2"));

    // A same-id restart of a live instance is still refused.
    const again = await client.scheduleNewOrchestration(waitForGo, "x", `${id}-same`);
    await waitForStatus(again, OrchestrationStatus.RUNNING);
    await assert.rejects(client.restartOrchestration(again, false));
    await client.terminateOrchestration(again);
  });
});

// work-item-filters.spec.ts: "should process orchestration with explicit versioned filters".
// The JS SDK puts no version on ScheduleTaskAction; the activity carries the orchestration's.
test("explicit versioned work-item filters receive the orchestration's activities", async () => {
  const greet = async (_ctx, name) => `Hello v3, ${name}!`;
  const greetOrch = async function* greetOrch(ctx, name) {
    return yield ctx.callActivity(greet, name);
  };
  const filters = {
    orchestrations: [{ name: "greetOrch", versions: ["3.0.0"] }],
    activities: [{ name: "greet", versions: ["3.0.0"] }],
  };
  await withWorker({ workItemFilters: filters }, (w) => { w.addOrchestrator(greetOrch); w.addActivity(greet); }, async () => {
    const id = await client.scheduleNewOrchestration(greetOrch, "VersionTest", { version: "3.0.0" });
    const st = await client.waitForOrchestrationCompletion(id, true, 10);
    assert.equal(st.runtimeStatus, OrchestrationStatus.COMPLETED);
    assert.equal(st.serializedOutput, JSON.stringify("Hello v3, VersionTest!"));
  });
});

// orchestration.spec.ts: default sub-orchestration ids are `${executionId}:${hex4}`, with the
// 32-hex execution id the managed scheduler mints (Guid.ToString("N")).
const executionKeyedId = /^[0-9a-f]{32}:[0-9a-f]{4}$/;

test("default sub-orchestration ids do not collide across continue-as-new", async () => {
  let childActivityRuns = 0;
  const bumpChild = (_ctx, gen) => { childActivityRuns++; return gen; };
  const child = async function* child(ctx, gen) {
    yield ctx.callActivity(bumpChild, gen);
    return ctx.instanceId;
  };
  const parent = async function* parent(ctx, input) {
    const childId = yield ctx.callSubOrchestrator(child, input.gen);
    if (input.gen < 1) {
      ctx.continueAsNew({ gen: input.gen + 1, gen0ChildId: childId }, true);
      return;
    }
    return { gen0ChildId: input.gen0ChildId, gen1ChildId: childId };
  };
  await withWorker({}, (w) => { w.addActivity(bumpChild); w.addOrchestrator(child); w.addOrchestrator(parent); }, async () => {
    const id = await client.scheduleNewOrchestration(parent, { gen: 0 });
    const st = await client.waitForOrchestrationCompletion(id, true, 30);
    assert.equal(st.runtimeStatus, OrchestrationStatus.COMPLETED, JSON.stringify(st.failureDetails));
    const out = JSON.parse(st.serializedOutput);
    assert.equal(childActivityRuns, 2);
    assert.notEqual(out.gen0ChildId, out.gen1ChildId);
    for (const childId of [out.gen0ChildId, out.gen1ChildId]) assert.match(childId, executionKeyedId);
  });
});

test("default sub-orchestration ids keep one length when nested", async () => {
  const grandchild = async (ctx) => ctx.instanceId;
  const child = async function* child(ctx) {
    const grandchildId = yield ctx.callSubOrchestrator(grandchild);
    return { childId: ctx.instanceId, grandchildId };
  };
  const top = async function* top(ctx) {
    return yield ctx.callSubOrchestrator(child);
  };
  await withWorker({}, (w) => { w.addOrchestrator(grandchild); w.addOrchestrator(child); w.addOrchestrator(top); }, async () => {
    const id = await client.scheduleNewOrchestration(top, null);
    const st = await client.waitForOrchestrationCompletion(id, true, 30);
    assert.equal(st.runtimeStatus, OrchestrationStatus.COMPLETED, JSON.stringify(st.failureDetails));
    const out = JSON.parse(st.serializedOutput);
    for (const childId of [out.childId, out.grandchildId]) assert.match(childId, executionKeyedId);
    assert.notEqual(out.childId, out.grandchildId);
    assert.equal(out.childId.length, out.grandchildId.length);
  });
});
