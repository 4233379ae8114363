// Cross-origin callers (the gateway's --cors-origin as `corsOrigins`): CORS
// headers and preflights for listed origins only; a WebSocket upgrade from
// another origin carries no cookie credentials (no cross-site WebSocket
// hijacking), while same-origin and listed pages authenticate by cookie.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startKit, call, wsClient, token, ev, SECRET } from "./helpers.mjs";
import { jwtAuth } from "../dist/index.js";

const APP = "http://app.example";
let kit;
let cookie;
before(async () => {
  kit = await startKit({ auth: jwtAuth({ secret: SECRET }), corsOrigins: [APP] });
  await kit.rs.createRun({ runId: "r" });
  await kit.rs.append("r", [ev("run.started")]);
  cookie = `runstream_token=${await token({ runs: ["r"] })}`;
});
after(async () => kit?.close());

test("CORS: a listed origin gets Allow-Origin (with credentials, Retry-After exposed) and preflights; another origin gets none", async () => {
  const listed = await call(kit.base, "GET", "/api/runs/r/snapshot", { headers: { origin: APP, cookie } });
  assert.equal(listed.status, 200);
  assert.equal(listed.headers.get("access-control-allow-origin"), APP);
  assert.equal(listed.headers.get("access-control-allow-credentials"), "true");
  assert.equal(listed.headers.get("access-control-expose-headers"), "retry-after");
  const other = await call(kit.base, "GET", "/api/runs/r/snapshot", { headers: { origin: "http://evil.example", cookie } });
  assert.equal(other.headers.get("access-control-allow-origin"), null);
  const pre = await call(kit.base, "OPTIONS", "/api/stream/runs/r", { headers: { origin: APP, "access-control-request-method": "GET", "access-control-request-headers": "authorization, last-event-id" } });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get("access-control-allow-origin"), APP);
  assert.match(pre.headers.get("access-control-allow-headers"), /authorization.*last-event-id/);
  const badPre = await call(kit.base, "OPTIONS", "/api/stream/runs/r", { headers: { origin: "http://evil.example", "access-control-request-method": "GET" } });
  assert.equal(badPre.headers.get("access-control-allow-origin"), null);
  const plain = await startKit({});
  try {
    const r = await call(plain.base, "GET", "/api/runs/none/snapshot", { headers: { origin: APP } });
    assert.equal(r.headers.get("access-control-allow-origin"), null, "no CORS without corsOrigins");
  } finally {
    await plain.close();
  }
});

test("WebSocket cookies: honoured from the same origin and listed origins, ignored from another origin", async () => {
  for (const [origin, expect] of [[kit.base, "subscribed"], [APP, "subscribed"], ["http://evil.example", "unauthorized"]]) {
    const c = await wsClient(kit.base, { headers: { origin, cookie } });
    try {
      c.send({ op: "subscribe", run_id: "r" });
      const f = await c.next((x) => x.op === "subscribed" || x.op === "error");
      assert.equal(f.op === "error" ? f.code : f.op, expect, origin);
    } finally {
      c.close();
    }
  }
});
