// One kit process for the cross-process tests (kit-redis.test.mjs):
// createRunstream on redisStore(url) behind node:http, driven over
// stdin/stdout JSON lines.
//   node tests/e2e/kit-process.mjs <redis-url> <name> [options JSON]
// Prints {"event":"ready","url"}; answers every chat send handed to it by
// onSend with an assistant reply (message.created reply_to, a delta,
// message.completed) and prints {"event":"answered","session","crid"}.
// Options: {"sendClaimIdleMs"} (createRunstream's), {"thinkMs"}: a send whose
// content has "think" is answered that much later (prints {"event":"taken"}
// first), {"stall": true}: that wait blocks the whole process (a busy loop);
// a reply refused as a second one prints {"event":"reply_taken"}. A send whose
// content has "halfway" is answered in two steps: message.created and a delta
// (then {"event":"streaming","mid"}), a wait of thinkMs (blocking if stall), then
// another delta and message.completed: a process killed or stalled mid-reply.

// Commands: {"op":"append","runId","n"} appends n events concurrently and
// prints {"event":"appended","ids"}; {"op":"watch","runId"} takes
// rs.cancelSignal(runId) and prints {"event":"cancelled","runId"} when it fires.
import { createServer } from "node:http";
import { createInterface } from "node:readline";
import { createRunstream, redisStore } from "../../kit/dist/index.js";

const [url, name, opts] = process.argv.slice(2);
const { sendClaimIdleMs, thinkMs = 0, stall = false } = JSON.parse(opts ?? "{}");
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const rs = createRunstream({ store: redisStore({ url }), auth: "none", cancelGraceMs: 60_000, sendClaimIdleMs });
rs.onSend(async ({ sessionId, runId, clientRequestId, content }) => {
  const mid = `${name}_${clientRequestId}`;
  if (content.includes("think")) {
    out({ event: "taken", session: sessionId, crid: clientRequestId });
    await new Promise((r) => setTimeout(r, 50)); // the line above goes out first
    if (stall) for (const end = Date.now() + thinkMs; Date.now() < end;);
    else await new Promise((r) => setTimeout(r, thinkMs));
  }
  const refused = (e) => {
    if (e.code === "reply_taken") out({ event: "reply_taken", session: sessionId, crid: clientRequestId });
    throw e;
  };
  if (content.includes("halfway")) {
    await rs.append(runId, [
      { type: "message.created", payload: { message_id: mid, role: "assistant", reply_to: clientRequestId } },
      { type: "message.delta", payload: { message_id: mid, delta: "half of " } },
    ]).catch(refused);
    out({ event: "streaming", session: sessionId, crid: clientRequestId, mid });
    await new Promise((r) => setTimeout(r, 50)); // the line above goes out first
    if (stall) for (const end = Date.now() + thinkMs; Date.now() < end;);
    else await new Promise((r) => setTimeout(r, thinkMs));
    await rs.append(runId, [
      { type: "message.delta", payload: { message_id: mid, delta: `the answer by ${name}` } },
      { type: "message.completed", payload: { message_id: mid, finish_reason: "stop" } },
    ]).catch(refused);
    out({ event: "answered", session: sessionId, crid: clientRequestId });
    return;
  }
  await rs.append(runId, [
    { type: "message.created", payload: { message_id: mid, role: "assistant", reply_to: clientRequestId } },
    { type: "message.delta", payload: { message_id: mid, delta: `answered by ${name}` } },
    { type: "message.completed", payload: { message_id: mid, finish_reason: "stop" } },
  ]).catch(refused);
  out({ event: "answered", session: sessionId, crid: clientRequestId });
});
const server = createServer(rs.node);
await new Promise((r) => server.listen(0, "127.0.0.1", r));
out({ event: "ready", url: `http://127.0.0.1:${server.address().port}` });

createInterface({ input: process.stdin }).on("line", async (line) => {
  const cmd = JSON.parse(line);
  if (cmd.op === "append") {
    const ids = await Promise.all([...Array(cmd.n)].map((_, i) =>
      rs.append(cmd.runId, [{ type: "message.delta", payload: { message_id: "m", delta: `${name}${i} ` } }]).then((r) => r.firstEventId)));
    out({ event: "appended", ids });
  } else if (cmd.op === "watch") {
    const signal = rs.cancelSignal(cmd.runId);
    signal.addEventListener("abort", () => out({ event: "cancelled", runId: cmd.runId }), { once: true });
    out({ event: "watching", runId: cmd.runId });
  }
});
process.on("SIGTERM", async () => {
  server.close();
  await rs.close();
  await rs.store.close();
  process.exit(0);
});
