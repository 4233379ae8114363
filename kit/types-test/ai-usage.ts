// fromAiSdk as SERVER.md §2 calls it, type-checked against the real AI SDK 7
// types (with tools: the typed TextStreamPart<TOOLS> is assignable to the
// kit's AiSdkStreamPart). A separate project from usage.ts: `ai`'s own
// declarations need skipLibCheck (they import `json-schema` types it does not
// ship), and the kit's main types must not need `ai` at all.
import { createRunstream, memoryStore, fromAiSdk, type FromAiSdkResult } from "@runstream/server";
import { streamText, tool, stepCountIs } from "ai";
import { MockLanguageModelV4 } from "ai/test";
import { z } from "zod";

const rs = createRunstream({ store: memoryStore(), auth: "none" });
rs.onSend(async ({ runId, clientRequestId, content }) => {
  const signal = rs.cancelSignal(runId, { replyTo: clientRequestId });
  const result = streamText({
    model: new MockLanguageModelV4(),
    prompt: content,
    abortSignal: signal,
    tools: { weather: tool({ inputSchema: z.object({ city: z.string() }), execute: async ({ city }) => ({ city, celsius: 21 }) }) },
    stopWhen: stepCountIs(3),
  });
  const r: FromAiSdkResult = await fromAiSdk(rs, runId, result.fullStream, { replyTo: clientRequestId, signal, coalesceMs: 16 });
  const status: "completed" | "failed" | "cancelled" = r.status;
  void status;
});
