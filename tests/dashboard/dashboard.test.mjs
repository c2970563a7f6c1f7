// Browser tests of the dashboard: the real duro binary, a worker and client with the official
// Python SDK (worker.py), and Debian's chromium driven by playwright-core. Screenshots go to
// $DASHBOARD_SCREENSHOTS (default <repo>/target/dashboard-screenshots).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, "../..");
const DURO = process.env.DURO_BIN || join(REPO, "target/debug/duro");
const PYTHON = process.env.PYTHON_BIN || join(REPO, ".venv/bin/python");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const SHOTS = process.env.DASHBOARD_SCREENSHOTS || join(REPO, "target/dashboard-screenshots");
const SYSTEM_KEY = "dashboard-test-system-key-0123456789";

const children = [];
const dirs = [];
let browser;
let ids;
let open; // { http, grpc } of the open (loopback, no key) sidecar
let keyed; // the sidecar with a system key

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function startDuro(extra = []) {
  const dir = mkdtempSync(join(tmpdir(), "duro-dash-"));
  dirs.push(dir);
  const grpc = await freePort();
  const http = await freePort();
  const p = spawn(
    DURO,
    ["--db", join(dir, "d.db"), "--listen", `127.0.0.1:${grpc}`, "--http-listen", `127.0.0.1:${http}`, ...extra],
    { stdio: ["ignore", "inherit", "inherit"] },
  );
  children.push(p);
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (p.exitCode !== null) throw new Error(`duro exited with ${p.exitCode}`);
    try {
      const r = await fetch(`http://127.0.0.1:${http}/runtime/webhooks/durabletask/openapi.json`);
      if (r.ok) break;
    } catch {}
    if (Date.now() > deadline) throw new Error("duro did not start in 30 s");
    await new Promise((r) => setTimeout(r, 100));
  }
  return { grpc, http, base: `http://127.0.0.1:${http}/dashboard`, proc: p };
}

/** Starts worker.py; resolves with the instance ids it prints once its scenarios are set. */
function startWorker(grpc) {
  const p = spawn(PYTHON, [join(HERE, "worker.py"), `127.0.0.1:${grpc}`], { stdio: ["pipe", "pipe", "inherit"] });
  children.push(p);
  return new Promise((ok, fail) => {
    let out = "";
    const timer = setTimeout(() => fail(new Error("worker.py printed no ids in 90 s")), 90_000);
    p.on("exit", (code) => fail(new Error(`worker.py exited with ${code}`)));
    p.stdout.on("data", (d) => {
      out += d;
      const line = out.split("\n").find((l) => l.startsWith("{"));
      if (line) {
        clearTimeout(timer);
        ok(JSON.parse(line));
      }
    });
  });
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: apt-get install chromium`);
  open = await startDuro();
  ids = await startWorker(open.grpc);
  keyed = await startDuro(["--http-system-key", SYSTEM_KEY]);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
});

after(async () => {
  await browser?.close();
  for (const p of children) {
    if (p.stdin) p.stdin.end();
    if (p.exitCode === null) p.kill("SIGTERM");
  }
  await new Promise((r) => setTimeout(r, 300));
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A page that records every dialog and accepts confirmations. */
async function newPage(viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.dialogs = [];
  page.on("dialog", async (d) => {
    page.dialogs.push({ type: d.type(), message: d.message() });
    await d.accept();
  });
  return page;
}

const instanceUrl = (id) => `${open.base}/instances/${encodeURIComponent(id)}`;

async function statusOf(page) {
  return (await page.locator("#instance-status").innerText()).trim();
}

async function reloadUntilStatus(page, want, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if ((await statusOf(page)) === want) return;
    if (Date.now() > deadline) throw new Error(`status stayed ${await statusOf(page)}, wanted ${want}`);
    await new Promise((r) => setTimeout(r, 250));
    await page.reload();
  }
}

test("the list shows counts by status and filters by status, name and id prefix", async () => {
  const page = await newPage();
  await page.goto(open.base);
  const failedCount = page.locator('ul.counts a[data-status="Failed"] .count');
  assert.equal(await failedCount.innerText(), "1");
  const rows = page.locator("table.instances tbody tr");
  // Every instance of the scenarios (and the fan-out's three children) is listed.
  assert.equal(await rows.count(), 9);
  await page.screenshot({ path: join(SHOTS, "list.png"), fullPage: true });

  // Filter with the form: status Failed only.
  await page.locator("details.filters summary").click();
  await page.getByLabel("Failed", { exact: true }).check();
  await page.getByRole("button", { name: "Apply filters" }).click();
  await page.waitForURL(/status=Failed/);
  assert.deepEqual(await page.locator("table.instances td.id").allInnerTexts(), [ids.failed]);

  // By orchestration name, then by id prefix.
  await page.goto(`${open.base}?name=child`);
  assert.equal(await rows.count(), 3);
  await page.goto(`${open.base}?prefix=approval-`);
  assert.deepEqual((await page.locator("table.instances td.id").allInnerTexts()).sort(), ["approval-1", "approval-2"]);

  // Paging: two per page is not offered, 25 is; a created-time range in the future is empty.
  await page.goto(`${open.base}?from=2999-01-01T00:00`);
  assert.equal(await page.locator("p.empty").innerText(), "No instances match.");
  await page.goto(`${open.base}?from=tomorrow`);
  assert.match(await page.locator(".banner.error").innerText(), /not a date and time/);

  // Search by id opens the instance.
  await page.goto(open.base);
  await page.getByLabel("Instance id", { exact: true }).fill(ids.completed);
  await page.getByRole("button", { name: "Open", exact: true }).click();
  await page.waitForURL(/\/instances\/greet-ok$/);
  assert.equal(await statusOf(page), "Completed");
  await page.context().close();
});

test("an instance page shows its activities on the timeline, its output and history", async () => {
  const page = await newPage();
  await page.goto(instanceUrl(ids.completed));
  const activities = page.locator('#timeline-table tr[data-kind="activity"]');
  assert.equal(await activities.count(), 2);
  assert.deepEqual(await activities.locator("td.name").allInnerTexts(), ["hello", "hello"]);
  assert.deepEqual(await activities.evaluateAll((rs) => rs.map((r) => r.dataset.outcome)), ["completed", "completed"]);
  assert.equal(await page.locator("figure.timeline svg g.k-activity").count(), 2);
  assert.match(await page.locator('pre[data-payload="output"]').innerText(), /Hello Tokyo!/);
  assert.ok((await page.locator("table.events tbody tr").count()) >= 6);
  await page.screenshot({ path: join(SHOTS, "instance.png"), fullPage: true });

  // A failure shows its type, message and stack.
  await page.goto(instanceUrl(ids.failed));
  assert.equal(await statusOf(page), "Failed");
  assert.match(await page.locator("#failure").innerText(), /exploded on purpose/);
  assert.equal(await page.locator('#timeline-table tr[data-kind="activity"][data-outcome="failed"]').count(), 1);
  await page.context().close();
});

test("a payload with markup displays as text and runs nothing", async () => {
  const page = await newPage();
  await page.goto(instanceUrl(ids.xss));
  assert.equal(JSON.parse(await page.locator('pre[data-payload="input"]').innerText()), "<img src=x onerror=alert(1)>");
  assert.equal(await page.locator("main img").count(), 0);
  assert.match(await page.locator('pre[data-payload="output"]').innerText(), /Hello <img src=x onerror=alert\(1\)>!/);
  await page.waitForTimeout(300);
  assert.deepEqual(page.dialogs, []);
  await page.context().close();
});

test("fan-out: the parent lists its children, a child links back to its parent", async () => {
  const page = await newPage();
  await page.goto(instanceUrl(ids.fanout));
  const kids = page.locator("#children li a");
  assert.equal(await kids.count(), 3);
  assert.equal(await page.locator('#timeline-table tr[data-kind="sub-orchestration"][data-outcome="completed"]').count(), 3);
  await kids.first().click();
  await page.waitForURL(/fanout-1-child-0$/);
  assert.equal(await page.locator("#parent-link").innerText(), ids.fanout);
  await page.context().close();
});

test("raising the awaited event completes the instance", async () => {
  const page = await newPage();
  await page.goto(instanceUrl(ids.waiting));
  assert.equal(await statusOf(page), "Running");
  assert.match(await page.locator('pre[data-payload="custom status"]').innerText(), /waiting for approval/);
  await page.getByLabel("Event name").fill("approve");
  await page.getByLabel("Event data (JSON, optional)").fill('"yes"');
  await page.locator('button[data-action="raise-event"]').click();
  await page.waitForURL(/done=raise-event/);
  assert.deepEqual(page.dialogs.map((d) => d.type), ["confirm"]);
  await reloadUntilStatus(page, "Completed");
  assert.match(await page.locator('pre[data-payload="output"]').innerText(), /"approved": "yes"/);
  assert.equal(await page.locator('#timeline-table tr[data-kind="event"]').first().locator("td.name").innerText(), "raised: approve");
  await page.context().close();
});

test("an action the API refuses shows the API's error; terminate and purge work", async () => {
  const page = await newPage();
  await page.goto(instanceUrl(ids.to_terminate));
  // Purging a running instance is refused by the API (409).
  await page.locator('button[data-action="purge"]').click();
  const refused = page.locator(".banner.error");
  assert.match(await refused.innerText(), /Refused by the API \(409 DURO-2011\)/);
  assert.match(await refused.innerText(), /only finished instances can be purged/);
  // Invalid JSON event data is refused too, with the API's message.
  await page.getByLabel("Event name").fill("approve");
  await page.getByLabel("Event data (JSON, optional)").fill("{not json");
  await page.locator('button[data-action="raise-event"]').click();
  assert.match(await page.locator(".banner.error").innerText(), /400 DURO-2002/);

  await page.getByLabel("Reason").first().fill("test over");
  await page.locator('button[data-action="terminate"]').click();
  await page.waitForURL(/done=terminate/);
  await reloadUntilStatus(page, "Terminated");
  await page.screenshot({ path: join(SHOTS, "terminated.png"), fullPage: true });

  await page.locator('button[data-action="purge"]').click();
  await page.waitForURL(/purged=approval-2/);
  assert.match(await page.locator(".banner.ok").innerText(), /approval-2' was purged/);
  const gone = await page.goto(instanceUrl(ids.to_terminate));
  assert.equal(gone.status(), 404);
  // Every action asked for confirmation first.
  assert.ok(page.dialogs.length >= 4 && page.dialogs.every((d) => d.type === "confirm"));
  await page.context().close();
});

test("the live view shows the connected worker and the queues", async () => {
  const page = await newPage();
  await page.goto(`${open.base}/live`);
  assert.equal(await page.locator("#streams tbody tr").count(), 1);
  assert.match(await page.locator("#recent-failures").innerText(), /fails-1/);
  // The /metrics counters: the scenarios ran 8 activities (2 + 1 + 3 + 2) and more turns.
  assert.ok(Number(await page.locator('dd[data-completed="activity"]').innerText()) >= 8);
  assert.ok(Number(await page.locator('dd[data-completed="orchestration"]').innerText()) >= 12);
  await page.screenshot({ path: join(SHOTS, "live.png"), fullPage: true });
  await page.context().close();
});

test("entities: listed with their state as text, filtered by id prefix", async () => {
  const page = await newPage();
  const dialogs = [];
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    d.dismiss();
  });
  await page.goto(`${open.base}/entities`);
  const row = page.locator("#entities tbody tr", { hasText: ids.entity });
  assert.equal(await row.count(), 1);
  assert.match(await row.innerText(), /<img src=x onerror=alert\(1\)>/);
  assert.equal(await page.locator("#entities img").count(), 0, "state markup rendered as HTML");
  await page.fill("#entity-prefix", "@nobody@");
  await page.press("#entity-prefix", "Enter");
  await page.waitForURL(/prefix=/);
  assert.equal(await page.locator("#no-entities").count(), 1);
  assert.deepEqual(dialogs, []);
  await page.screenshot({ path: join(SHOTS, "entities.png"), fullPage: true });
  await page.context().close();
});

test("keyboard and narrow screens: skip link first, the list fits a phone", async () => {
  const page = await newPage({ width: 375, height: 740 });
  await page.goto(open.base);
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to content");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page is ${overflow}px wider than the screen`);
  await page.screenshot({ path: join(SHOTS, "list-narrow.png"), fullPage: true });
  await page.context().close();
});

test("auto-refresh replaces the list without a reload", async () => {
  const page = await newPage();
  await page.goto(open.base);
  const rows = page.locator("table.instances tbody tr");
  assert.equal(await rows.count(), 8, "the purged instance is gone");
  await page.locator("#auto-refresh").check();
  await page.evaluate(() => (window.notReloaded = true));
  const api = `http://127.0.0.1:${open.http}/runtime/webhooks/durabletask`;
  assert.equal((await fetch(`${api}/orchestrators/greet/late-1`, { method: "POST" })).status, 202);
  await page.waitForFunction(() => document.querySelectorAll("table.instances tbody tr").length === 9, null, {
    timeout: 15_000,
  });
  assert.equal(await page.evaluate(() => window.notReloaded), true, "the page was not reloaded");
  assert.equal(await page.locator("table.instances td.id").first().innerText(), "late-1", "newest first");
  await page.context().close();
});

test("with a system key: login form, session cookie, CSRF and origin checks, sign out", async () => {
  const page = await newPage();
  const base = keyed.base;
  await page.goto(base);
  assert.match(page.url(), /\/dashboard\/login$/);
  await page.screenshot({ path: join(SHOTS, "login.png") });
  await page.getByLabel("System key").fill("wrong-key");
  await page.getByRole("button", { name: "Sign in" }).click();
  assert.match(await page.locator(".banner.error").innerText(), /not the system key/);
  assert.equal((await page.context().cookies()).length, 0);

  await page.getByLabel("System key").fill(SYSTEM_KEY);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(base);
  assert.ok(!page.url().includes(SYSTEM_KEY));
  const [cookie] = await page.context().cookies();
  assert.equal(cookie.name, "duro_dashboard");
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, "Strict");
  assert.equal(cookie.path, "/dashboard");
  assert.ok(!cookie.value.includes(SYSTEM_KEY), "the cookie is a signed session token, not the key");
  assert.equal(await page.evaluate(() => document.cookie), "", "scripts cannot read the session");

  // Start an instance through the API (with the key) and terminate it from the dashboard.
  const api = `http://127.0.0.1:${keyed.http}/runtime/webhooks/durabletask`;
  const started = await fetch(`${api}/orchestrators/nobody/kept-1`, { method: "POST", headers: { "x-functions-key": SYSTEM_KEY } });
  assert.equal(started.status, 202);
  await page.goto(`${base}/instances/kept-1`);
  assert.equal(await statusOf(page), "Pending");
  const csrf = await page.locator('form.action input[name="csrf"]').first().inputValue();
  const post = (path, form, headers = {}) =>
    page.request.post(`${base}${path}`, { form, headers, maxRedirects: 0, failOnStatusCode: false });
  // Without the CSRF token, with another session's token, from another origin: refused.
  assert.equal((await post("/instances/kept-1/terminate", {})).status(), 403);
  assert.equal((await post("/instances/kept-1/terminate", { csrf: csrf.slice(1) + "A" })).status(), 403);
  assert.equal((await post("/instances/kept-1/terminate", { csrf }, { origin: "http://evil.example" })).status(), 403);
  // Without the cookie (another browser): refused, and nothing changed.
  const stranger = await fetch(`${base}/instances/kept-1/terminate`, {
    method: "POST",
    body: new URLSearchParams({ csrf }),
    redirect: "manual",
  });
  assert.equal(stranger.status, 401);
  // The key is not accepted in the URL either.
  const inUrl = await fetch(`${base}?code=${SYSTEM_KEY}`, { redirect: "manual" });
  assert.equal(inUrl.status, 303);
  await page.reload();
  assert.equal(await statusOf(page), "Pending");
  // With the token, from the page: accepted.
  const ok = await post("/instances/kept-1/terminate", { csrf });
  assert.equal(ok.status(), 303);
  await reloadUntilStatus(page, "Terminated");

  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(/\/dashboard\/login$/);
  await page.goto(base);
  assert.match(page.url(), /\/dashboard\/login$/);
  await page.context().close();
});

test("the open dashboard answers loopback host names only (DNS rebinding)", async () => {
  const r = await fetch(open.base, { headers: { host: "attacker.example" } });
  // fetch may not override Host; check with a raw request when it does not.
  if (r.status !== 403) {
    const { request } = await import("node:http");
    const status = await new Promise((ok, fail) => {
      const req = request({ host: "127.0.0.1", port: open.http, path: "/dashboard", headers: { host: "attacker.example" } }, (res) => {
        res.resume();
        ok(res.statusCode);
      });
      req.on("error", fail);
      req.end();
    });
    assert.equal(status, 403);
  }
});
