// fromAiSdk (SERVER.md §2) against the AI SDK's own mock model (ai/test,
// MockLanguageModelV4 + simulateReadableStream; no network) and the kit's real
// rs.append on memoryStore: what lands in the run's log (read back through
// rs.fetch's SSE route) and the state the reducer makes of it (the snapshot route).
import { test } from "node:test";
import assert from "node:assert/strict";
import { streamText, tool, stepCountIs } from "ai";
import { MockLanguageModelV4, simulateReadableStream } from "ai/test";
import { z } from "zod";
import { createRunstream, memoryStore, fromAiSdk, MAX_DELTA_CHARS } from "../dist/index.js";

const usage = (input, output) => ({
  inputTokens: { total: input, noCache: input, cacheRead: 0, cacheWrite: 0 },
  outputTokens: { total: output, text: output, reasoning: 0 },
});
const textParts = (id, words) => [
  { type: "text-start", id },
  ...words.map((delta) => ({ type: "text-delta", id, delta })),
  { type: "text-end", id },
];
const finish = (unified, u = usage(3, 5)) => ({ type: "finish", finishReason: { unified, raw: unified }, usage: u });
/** A mock model whose n-th call streams `steps[n]` (chunkDelayInMs between parts). */
const model = (steps, chunkDelayInMs = null) => {
  let call = 0;
  return new MockLanguageModelV4({
    doStream: async () => ({ stream: simulateReadableStream({ chunks: steps[Math.min(call++, steps.length - 1)], chunkDelayInMs }) }),
  });
};

function kit() {
  const rs = createRunstream({ store: memoryStore(), auth: "none" });
  const call = (method, path, body) =>
    rs.fetch(
      new Request(`http://kit.test/api${path}`, {
        method,
        headers: body ? { "Content-Type": "application/json" } : {},
        body: body ? JSON.stringify(body) : undefined,
      }),
    );
  /** The run's log up to the snapshot's event id, and the snapshot. */
  const read = async (runId) => {
    const snap = await (await call("GET", `/runs/${runId}/snapshot`)).json();
    const ctl = new AbortController();
    const r = await rs.fetch(new Request(`http://kit.test/api/stream/runs/${runId}`, { signal: ctl.signal }));
    assert.equal(r.status, 200);
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    const events = [];
    let buf = "";
    while (events.length < snap.event_id) {
      const { done, value } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (data) events.push(JSON.parse(data));
      }
    }
    ctl.abort();
    await reader.cancel().catch(() => {});
    return { events, snap };
  };
  return { rs, call, read };
}

const types = (events) => events.map((e) => e.type);

test("text: one assistant message with reply_to, its deltas in order, completed with finish_reason and usage", async () => {
  const { rs, read } = kit();
  const { runId } = await rs.createRun({});
  const words = ["Hello", ", ", "world", "!"];
  const r = await fromAiSdk(rs, runId, streamText({ model: model([[...textParts("t1", words), finish("stop", usage(7, 4))]]), prompt: "hi" }).fullStream, {
    replyTo: "crid-1",
  });
  assert.equal(r.status, "completed");
  assert.equal(r.finishReason, "stop");
  const { events, snap } = await read(runId);
  assert.equal(events.length, r.events);
  assert.equal(events[0].type, "message.created");
  assert.deepEqual(events[0].payload, { message_id: r.messageId, role: "assistant", reply_to: "crid-1" });
  assert.equal(events.filter((e) => e.type === "message.delta").map((e) => e.payload.delta).join(""), "Hello, world!");
  assert.deepEqual(events.at(-1), {
    ...events.at(-1),
    type: "message.completed",
    payload: { message_id: r.messageId, finish_reason: "stop", usage: { prompt_tokens: 7, completion_tokens: 4 } },
  });
  const [m] = snap.state.messages;
  assert.deepEqual([m.message_id, m.role, m.reply_to, m.content, m.status], [r.messageId, "assistant", "crid-1", "Hello, world!", "completed"]);
  assert.equal(snap.state.workers.length, 0, "no tools, no worker");
});

test("tool calls and results: tool.started/tool.completed (ok and error) of the reply's worker, text of every step in one message", async () => {
  const { rs, read } = kit();
  const { runId } = await rs.createRun({});
  const steps = [
    [
      ...textParts("a", ["Checking ", "the weather. "]),
      { type: "tool-call", toolCallId: "call_1", toolName: "weather", input: JSON.stringify({ city: "Oslo" }) },
      { type: "tool-call", toolCallId: "call_2", toolName: "broken", input: "{}" },
      finish("tool-calls"),
    ],
    [...textParts("b", ["Oslo ", "is ", "sunny."]), finish("stop")],
  ];
  const tools = {
    weather: tool({ inputSchema: z.object({ city: z.string() }), execute: async ({ city }) => ({ city, celsius: 21 }) }),
    broken: tool({ inputSchema: z.object({}), execute: async () => { throw new Error("upstream timeout"); } }),
  };
  const r = await fromAiSdk(rs, runId, streamText({ model: model(steps), prompt: "weather?", tools, stopWhen: stepCountIs(3) }).fullStream, {
    replyTo: "crid-2",
  });
  assert.equal(r.status, "completed");
  const { events, snap } = await read(runId);
  const toolEvents = events.filter((e) => e.type.startsWith("tool.")).map((e) => [e.type, e.payload.tool_call_id, e.payload.name ?? e.payload.status]);
  assert.deepEqual(toolEvents.filter((t) => t[0] === "tool.started"), [["tool.started", "call_1", "weather"], ["tool.started", "call_2", "broken"]]);
  assert.deepEqual(
    toolEvents.filter((t) => t[0] === "tool.completed").sort(),
    [["tool.completed", "call_1", "ok"], ["tool.completed", "call_2", "error"]],
  );
  const failed = events.find((e) => e.type === "tool.completed" && e.payload.status === "error");
  assert.equal(failed.payload.error, "upstream timeout");
  assert.ok(events.every((e) => !e.type.startsWith("tool.") || e.payload.worker_id === r.messageId), "the tools belong to the reply's worker");
  // Order: the first step's text before the tools, the second step's after the results, one ending.
  const t = types(events);
  assert.ok(t.indexOf("tool.started") > t.indexOf("message.delta"));
  assert.ok(t.lastIndexOf("message.delta") > t.lastIndexOf("tool.completed"));
  assert.deepEqual(t.slice(-2), ["message.completed", "worker.completed"]);
  const [m] = snap.state.messages;
  assert.equal(m.content, "Checking the weather. Oslo is sunny.");
  assert.equal(m.status, "completed");
  assert.deepEqual(
    snap.state.workers.map((w) => [w.worker_id, w.status, w.tools.map((x) => [x.tool_call_id, x.name, x.status])]),
    [[r.messageId, "succeeded", [["call_1", "weather", "ok"], ["call_2", "broken", "error"]]]],
  );
});

test("error: an error part fails the message (message.failed with the error's message), also when the model throws at once", async () => {
  const { rs, read } = kit();
  const { runId } = await rs.createRun({});
  const errStream = [[...textParts("t", ["partial "]).slice(0, 2), { type: "error", error: new Error("rate limited") }, finish("error")]];
  const a = await fromAiSdk(rs, runId, streamText({ model: model(errStream), prompt: "x", onError() {} }).fullStream, { replyTo: "crid-a" });
  assert.deepEqual([a.status, a.finishReason], ["failed", null]);
  const throwing = new MockLanguageModelV4({ doStream: async () => { throw new Error("provider down"); } });
  const b = await fromAiSdk(rs, runId, streamText({ model: throwing, prompt: "x", maxRetries: 0, onError() {} }).fullStream, { replyTo: "crid-b" });
  assert.equal(b.status, "failed");
  const { events, snap } = await read(runId);
  const fails = events.filter((e) => e.type === "message.failed").map((e) => e.payload);
  assert.deepEqual(fails, [{ message_id: a.messageId, error: "rate limited" }, { message_id: b.messageId, error: "provider down" }]);
  assert.equal(events.filter((e) => e.type === "message.completed").length, 0, "a failed message does not also complete");
  assert.deepEqual(snap.state.messages.map((m) => [m.reply_to, m.status, m.content]), [["crid-a", "failed", "partial "], ["crid-b", "failed", ""]]);
});

/** A model stream that yields `n` tokens `ms` apart and records whether it was cancelled. */
function slowModel(n, ms) {
  const seen = { cancelled: false, pulled: 0 };
  const m = new MockLanguageModelV4({
    doStream: async ({ abortSignal }) => {
      let i = -1;
      const stream = new ReadableStream({
        async pull(c) {
          if (i === -1) c.enqueue({ type: "text-start", id: "t" });
          else if (i < n) {
            await new Promise((r) => setTimeout(r, ms));
            seen.pulled++;
            c.enqueue({ type: "text-delta", id: "t", delta: `w${i} ` });
          } else {
            c.enqueue({ type: "text-end", id: "t" });
            c.enqueue(finish("stop"));
            c.close();
          }
          i++;
        },
        cancel() {
          seen.cancelled = true;
        },
      });
      abortSignal?.addEventListener("abort", () => (seen.cancelled = true));
      return { stream };
    },
  });
  return { m, seen };
}

test("abort mid-stream via rs.cancelSignal: a reply cancel ends the message cancelled, stops the model, and the chat answers the next send", async () => {
  const { rs, call, read } = kit();
  const session = "chat_abort";
  const sent = await (await call("POST", `/chat/${session}/messages`, { client_request_id: "send-1", content: "long answer please" })).json();
  const runId = sent.run_id;
  const { m, seen } = slowModel(200, 10);
  const signal = rs.cancelSignal(runId, { replyTo: "send-1" });
  const done = fromAiSdk(rs, runId, streamText({ model: m, prompt: "x", abortSignal: signal }).fullStream, { replyTo: "send-1", signal });
  await new Promise((r) => setTimeout(r, 300));
  const c = await call("POST", `/runs/${runId}/cancel`, { client_request_id: "cancel-1", reply_to: "send-1" });
  assert.equal(c.status, 202);
  const r = await done;
  assert.deepEqual([r.status, r.finishReason, r.runEnded], ["cancelled", "cancelled", false]);
  assert.ok(seen.cancelled, "the model's stream was cancelled");
  assert.ok(seen.pulled < 150, `the model stopped early (${seen.pulled} of 200 tokens)`);
  let { events, snap } = await read(runId);
  const end = events.find((e) => e.type === "message.completed" && e.payload.message_id === r.messageId);
  assert.equal(end.payload.finish_reason, "cancelled");
  assert.ok(types(events).indexOf("run.cancel_requested") < events.indexOf(end));
  assert.equal(events.filter((e) => e.type === "run.completed").length, 0, "a reply cancel leaves the chat open");
  assert.equal(snap.state.cancel_requested, false);
  // The next send is answered normally.
  await call("POST", `/chat/${session}/messages`, { client_request_id: "send-2", content: "short" });
  const next = await fromAiSdk(rs, runId, streamText({ model: model([[...textParts("t", ["fine"]), finish("stop")]]), prompt: "y" }).fullStream, {
    replyTo: "send-2",
    signal: rs.cancelSignal(runId, { replyTo: "send-2" }),
  });
  assert.deepEqual([next.status, next.finishReason], ["completed", "stop"]);
  ({ snap } = await read(runId));
  assert.deepEqual(
    snap.state.messages.filter((x) => x.role === "assistant").map((x) => [x.reply_to, x.status]),
    [["send-1", "completed"], ["send-2", "completed"]],
  );
  assert.equal(snap.state.messages.find((x) => x.reply_to === "send-2").content, "fine");
});

test("abort mid-stream, run-wide: message.completed cancelled, then run.completed cancelled (PROTOCOL §8)", async () => {
  const { rs, call, read } = kit();
  const { runId } = await rs.createRun({});
  await rs.append(runId, [{ type: "run.started", payload: {} }]);
  const { m, seen } = slowModel(200, 10);
  const signal = rs.cancelSignal(runId);
  const done = fromAiSdk(rs, runId, streamText({ model: m, prompt: "x", abortSignal: signal }).fullStream, { signal });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal((await call("POST", `/runs/${runId}/cancel`, { client_request_id: "stop-all" })).status, 202);
  const r = await done;
  assert.deepEqual([r.status, r.runEnded], ["cancelled", true]);
  assert.ok(seen.cancelled);
  const { events, snap } = await read(runId);
  assert.deepEqual(types(events).slice(-2), ["message.completed", "run.completed"]);
  assert.ok(types(events).indexOf("run.cancel_requested") < events.length - 2);
  assert.deepEqual(events.at(-2).payload, { message_id: r.messageId, finish_reason: "cancelled" });
  assert.deepEqual(events.at(-1).payload, { status: "cancelled" });
  assert.equal(snap.state.status, "cancelled");
  assert.equal(snap.state.cancel_requested, true);
});

test("coalescing: a 1,000-token fast stream costs far fewer events; the text is exact", async () => {
  const { rs, read } = kit();
  const { runId } = await rs.createRun({});
  const words = Array.from({ length: 1000 }, (_, i) => `tok${i} `);
  // 1 ms between tokens: a fast model (~1.5 s for the answer).
  const t0 = performance.now();
  const r = await fromAiSdk(rs, runId, streamText({ model: model([[...textParts("t", words), finish("stop")]], 1), prompt: "x" }).fullStream, {
    replyTo: "crid-c",
  });
  const elapsed = performance.now() - t0;
  const { events, snap } = await read(runId);
  const deltas = events.filter((e) => e.type === "message.delta");
  assert.equal(events.length, r.events);
  // About one delta per 16 ms window (the stream's pace varies with the machine's load), far fewer than the tokens.
  assert.ok(deltas.length <= Math.ceil(elapsed / 16) + 5, `${deltas.length} delta events in ${Math.round(elapsed)} ms`);
  assert.ok(deltas.length < 500, `${deltas.length} delta events for 1,000 tokens`);
  assert.ok(deltas.length >= 2, "coalescing still streams: more than one delta for a ~1 s answer");
  assert.equal(deltas.map((e) => e.payload.delta).join(""), words.join(""));
  assert.equal(snap.state.messages[0].content, words.join(""));
  // coalesceMs: 0 writes each part as it is read (tokens 20 ms apart: each append is done before the next token).
  const { runId: run2 } = await rs.createRun({});
  const r2 = await fromAiSdk(rs, run2, streamText({ model: model([[...textParts("t", words.slice(0, 30)), finish("stop")]], 20), prompt: "x" }).fullStream, {
    coalesceMs: 0,
  });
  assert.ok(r2.events - 2 >= 25, `${r2.events - 2} delta events with coalesceMs 0 for 30 tokens`);
  console.log(`# 1,000 tokens in ${Math.round(elapsed)} ms: ${deltas.length} delta events (coalesceMs 16); 30 tokens 20 ms apart with coalesceMs 0: ${r2.events - 2} delta events`);
});

test("bounds: no delta longer than MAX_DELTA_CHARS (split on a code point), also when a slow store makes text wait; the text is exact", async () => {
  const { rs, read } = kit();
  const { runId } = await rs.createRun({});
  assert.equal(MAX_DELTA_CHARS, 16_384);
  // One huge part whose cut point falls inside a surrogate pair, then fast small parts.
  const huge = `${"a".repeat(MAX_DELTA_CHARS - 1)}😀${"b".repeat(30_000)}`;
  const small = Array.from({ length: 300 }, (_, i) => `s${i} `);
  // The real rs.append, 100 ms slower: text piles up behind each append.
  const slow = { store: rs.store, append: async (...a) => (await new Promise((r) => setTimeout(r, 100)), rs.append(...a)) };
  const r = await fromAiSdk(slow, runId, streamText({ model: model([[...textParts("t", [huge, ...small]), finish("stop")]], 1), prompt: "x" }).fullStream);
  const { events, snap } = await read(runId);
  const deltas = events.filter((e) => e.type === "message.delta").map((e) => e.payload.delta);
  assert.ok(deltas.every((d) => d.length <= MAX_DELTA_CHARS), deltas.map((d) => d.length).join(","));
  const lone = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
  assert.ok(deltas.every((d) => !lone.test(d)), "no delta splits a surrogate pair");
  assert.equal(deltas.join(""), huge + small.join(""));
  assert.equal(snap.state.messages[0].content, huge + small.join(""));
  assert.ok(r.appends < 40, `${r.appends} appends for ~0.4 s of tokens behind a 100 ms store`);
});
