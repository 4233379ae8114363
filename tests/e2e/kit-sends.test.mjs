// Sends across a reload, on the TypeScript kit (API.md: "Sends survive
// everything the stream survives: a send that has not been accepted is
// retried after a reconnect, on whichever transport, and is persisted with
// the cursor, so a refresh re-sends it with the same client_request_id"),
// on memoryStore and on redisStore: the first page's send never gets through
// (its POST answered 503 on fetch and sse; its `send` op lost before the kit on
// websocket), the page reloads, the stored send goes out again with the same
// client_request_id, the kit accepts it once, and its onSend answers it once
// (the AI SDK mock model through fromAiSdk). Starts its own kit-server.mjs
// (and redis-server) on free loopback ports.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConnection } from "node:net";
import { launch, until, watchErrors } from "./lib.mjs";
import { freePort, have } from "./infra.mjs";
import { startKitServer } from "./kit-server.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const dir = mkdtempSync(join(tmpdir(), "runstream-kit-sends-"));
let browser;
let redis;
const servers = {};

before(async () => {
  browser = await launch();
  servers.memory = await startKitServer({ store: "memory" });
  if (have("redis-server")) {
    const port = await freePort();
    redis = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no"], { stdio: "ignore" });
    const ok = await until(
      () => new Promise((r) => {
        const s = createConnection(port, "127.0.0.1", () => (s.end(), r(true)));
        s.on("error", () => r(false));
      }),
      10000,
    );
    assert.ok(ok, "redis-server did not start");
    servers.redis = await startKitServer({ store: `redis://127.0.0.1:${port}` });
  }
});
after(async () => {
  await browser?.close();
  for (const s of Object.values(servers)) await s.close();
  redis?.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

async function call(base, method, path, body) {
  const r = await fetch(base + path, { method, headers: body ? { "Content-Type": "application/json" } : {}, body: body ? JSON.stringify(body) : undefined });
  const t = await r.text();
  return t ? JSON.parse(t) : null;
}

async function start(page, session, transport) {
  await page.evaluate(() => window.ready);
  await page.evaluate(
    ([session, transport]) => {
      window.s = new window.RunStream({
        runId: session,
        transport,
        url: `/api/stream/runs/${session}`,
        wsUrl: "/api/ws",
        snapshotUrl: `/api/runs/${session}/snapshot`,
        sendUrl: `/api/chat/${session}/messages`,
        resume: "session",
        backoff: { initialMs: 200, maxMs: 1000, multiplier: 2 },
      });
      window.s.start();
    },
    [session, transport],
  );
}
const snap = (page) => page.evaluate(() => window.s.getSnapshot());

for (const store of ["memory", "redis"]) {
  for (const transport of ["fetch", "sse", "websocket"]) {
    test(`${store}: a send lost before the kit survives a reload over ${transport}: re-sent with the same client_request_id, accepted once, answered once`, async (t) => {
      const srv = servers[store];
      if (!srv) return t.skip("redis-server is not installed");
      const base = srv.url;
      const session = `chat_sends_${store}_${transport}_${Date.now().toString(36)}`;
      await call(base, "POST", "/api/admin/runs", { kind: "chat", run_id: session });
      const context = await browser.newContext();
      const attempts = [];
      if (transport !== "websocket") {
        // The send route is down for the first page load (503 with Retry-After), up after the reload.
        await context.route("**/messages", (route) => {
          const r = route.request();
          const first = (r.headers().referer || "").includes("load=1");
          attempts.push({ first, crid: JSON.parse(r.postData()).client_request_id });
          if (first) return route.fulfill({ status: 503, headers: { "Retry-After": "1" }, body: "down" });
          return route.continue();
        });
      } else {
        // The relay in front of the kit loses the session's send ops (no ack) until told otherwise.
        await call(base, "POST", `/api/admin/runs/${session}/chaos`, { drop_sends: true });
      }
      const page = await context.newPage();
      const errors = watchErrors(page);
      await page.goto(`${base}/harness.html?load=1`);
      await start(page, session, transport);
      assert.ok(await until(async () => (await snap(page)).status.connection === "open", 10000), "open");
      const crid = await page.evaluate(() => window.s.send("hello across a reload"));
      if (transport !== "websocket") {
        assert.ok(await until(() => attempts.filter((a) => a.first).length >= 2, 10000), "retried during the outage");
      } else {
        assert.ok(await until(async () => ((await call(base, "GET", `/api/admin/runs/${session}/stats`)).sends_dropped ?? 0) >= 1, 10000), "the send op was lost");
      }
      const stored = await page.evaluate((r) => sessionStorage.getItem(`runstream:${r}`), session);
      assert.ok(stored?.includes(crid), "the unaccepted send is stored with the cursor");
      assert.equal((await call(base, "GET", `/api/runs/${session}/snapshot`)).state.messages.length, 0, "nothing reached the kit");
      if (transport === "websocket") await call(base, "POST", `/api/admin/runs/${session}/chaos`, { drop_sends: false });

      // Reload (same tab: the session record survives); the way to the kit is open again.
      await page.goto(`${base}/harness.html?load=2`);
      await start(page, session, transport);
      assert.ok(
        await until(async () => (await snap(page)).state.messages.some((m) => m.replyTo === crid && m.status === "completed"), 20000),
        "the re-sent send is answered",
      );
      await sleep(500); // room for a late duplicate
      const server = await call(base, "GET", `/api/runs/${session}/snapshot`);
      const users = server.state.messages.filter((m) => m.role === "user");
      const replies = server.state.messages.filter((m) => m.role === "assistant");
      assert.deepEqual(users.map((m) => [m.client_request_id, m.content]), [[crid, "hello across a reload"]], "accepted once");
      assert.equal(replies.length, 1, "answered once");
      assert.equal(replies[0].reply_to, crid);
      assert.equal(replies[0].status, "completed");
      assert.ok(replies[0].content.startsWith("Here is what I found."), replies[0].content);
      const s = await snap(page);
      assert.equal(s.state.cursor, server.event_id);
      assert.deepEqual(
        s.state.messages.map((m) => [m.role, m.content]),
        server.state.messages.map((m) => [m.role, m.content]),
        "the page shows each message once",
      );
      if (transport !== "websocket") {
        assert.ok(attempts.some((a) => !a.first), "sent again after the reload");
        assert.ok(attempts.every((a) => a.crid === crid), JSON.stringify(attempts));
      }
      assert.deepEqual(errors.filter((e) => !e.includes("503")), []);
      await context.close();
    });
  }
}
