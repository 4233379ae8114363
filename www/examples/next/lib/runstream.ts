import { createRunstream, memoryStore, fromAiSdk } from "@runstream/server";
import { streamText } from "ai";
import { MockLanguageModelV4 } from "ai/test";

// The runstream server half inside this Next.js app (SERVER.md §2): one kit
// instance per server process. memoryStore() keeps runs in this process (one
// `next start`); for several instances use redisStore({ url: process.env.REDIS_URL }).
// No auth here, to keep the example short: in production pass
// jwtAuth({ secret }) (PROTOCOL §7) or your own (ctx) => "allow" | "forbidden" | "unauthorized";
// "none" is the explicit choice for local development.
function create() {
  const rs = createRunstream({
    store: memoryStore(),
    auth: "none",
    // Enables the publish API (server-to-server producers, SERVER.md §1); without a key those routes answer 404.
    publishKey: process.env.RUNSTREAM_PUBLISH_KEY,
    basePath: "/api",
  });

  // Every chat send is answered here: streamText's fullStream written into the
  // session's run by fromAiSdk (deltas coalesced, Stop honoured through the cancel signal).
  rs.onSend(async ({ runId, clientRequestId, content }) => {
    const signal = rs.cancelSignal(runId, { replyTo: clientRequestId });
    const result = streamText({ model: demoModel(content), prompt: content, abortSignal: signal });
    await fromAiSdk(rs, runId, result.fullStream, { replyTo: clientRequestId, signal });
  });
  return rs;
}

// Route handlers of one process share one instance (also across dev-mode reloads).
const g = globalThis as typeof globalThis & { __runstream?: ReturnType<typeof create> };
export const rs = (g.__runstream ??= create());

/** One stream part of the mock model (the AI SDK's LanguageModelV4 stream part type). */
type Part = Awaited<ReturnType<MockLanguageModelV4["doStream"]>>["stream"] extends ReadableStream<infer P> ? P : never;

const ANSWER =
  "This answer is streamed by the AI SDK's mock model through fromAiSdk into a durable run. " +
  "Refresh the page while it streams: the client resumes from its cursor, so nothing is lost and nothing is shown twice. " +
  "Press Stop and the model is aborted; the reply ends as cancelled and the chat stays open for the next question.";

/**
 * The AI SDK's mock language model (ai/test): no API key, no network. It
 * answers word by word, 60 ms apart, and stops when the call is aborted.
 * Replace it with a provider's model, e.g. openai("gpt-4.1-mini").
 */
function demoModel(prompt: string): MockLanguageModelV4 {
  const words = ANSWER.split(/(?<= )/);
  return new MockLanguageModelV4({
    doStream: async ({ abortSignal }) => {
      let i = -1;
      const stream = new ReadableStream<Part>({
        async pull(c) {
          if (i === -1) {
            c.enqueue({ type: "text-start", id: "t" });
          } else if (i < words.length) {
            await new Promise((r) => setTimeout(r, 60));
            if (abortSignal?.aborted) return c.close();
            c.enqueue({ type: "text-delta", id: "t", delta: words[i] ?? "" });
          } else {
            const n = prompt.split(/\s+/).filter(Boolean).length;
            c.enqueue({ type: "text-end", id: "t" });
            c.enqueue({
              type: "finish",
              finishReason: { unified: "stop", raw: "stop" },
              usage: {
                inputTokens: { total: n, noCache: n, cacheRead: 0, cacheWrite: 0 },
                outputTokens: { total: words.length, text: words.length, reasoning: 0 },
              },
            });
            c.close();
          }
          i++;
        },
      });
      return { stream };
    },
  });
}

/** A short scripted task for the task panel: workers and tools appended over ~3 s; a Stop ends it cancelled. */
export async function startDemoTask(): Promise<string> {
  const { runId } = await rs.createRun({});
  const signal = rs.cancelSignal(runId);
  const script: { type: "run.started" | "worker.started" | "tool.started" | "tool.completed" | "worker.completed" | "supervisor.completed" | "run.completed"; payload: Record<string, string | number> }[] = [
    { type: "run.started", payload: { title: "Demo task" } },
  ];
  for (const [w, name] of [["w1", "search"], ["w2", "fetch"], ["w3", "summarize"]] as const) {
    script.push({ type: "worker.started", payload: { worker_id: w, name } });
    script.push({ type: "tool.started", payload: { worker_id: w, tool_call_id: `${w}_t1`, name } });
    script.push({ type: "tool.completed", payload: { worker_id: w, tool_call_id: `${w}_t1`, status: "ok", duration_ms: 200 } });
    script.push({ type: "worker.completed", payload: { worker_id: w, status: "succeeded" } });
  }
  script.push({ type: "supervisor.completed", payload: { summary: "3 workers finished; findings merged." } });
  script.push({ type: "run.completed", payload: { status: "succeeded" } });
  void (async () => {
    for (const e of script) {
      await new Promise((r) => setTimeout(r, 200));
      if (signal.aborted) {
        await rs.append(runId, [{ type: "run.completed", payload: { status: "cancelled" } }]);
        return;
      }
      await rs.append(runId, [e]);
    }
  })().catch((e: unknown) => console.error("demo task:", e));
  return runId;
}
