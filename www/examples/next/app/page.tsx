import { redirect } from "next/navigation";
import { Chat } from "./chat";
import { TaskPanel } from "./task-panel";
import { RunstreamError } from "@runstream/server";
import { rs, startDemoTask } from "../lib/runstream";

type Query = Record<string, string | string[] | undefined>;

/** A server action: starts a scripted task run in this server and shows it. */
async function startTask(form: FormData) {
  "use server";
  const session = form.get("session");
  const runId = await startDemoTask();
  redirect(`/?run=${encodeURIComponent(runId)}&session=${encodeURIComponent(typeof session === "string" ? session : "chat_demo")}`);
}

// A server component: rendered per request (it reads the query). The two client
// components below render on the server too, with `snapshot: null` (useRunStream's
// server snapshot), then hydrate and connect in the browser to this same app's
// /api routes (app/api/[...path]/route.ts: the kit's rs.fetch).
export default async function Page({ searchParams }: { searchParams: Promise<Query> }) {
  const q = await searchParams;
  const runId = typeof q.run === "string" ? q.run : null;
  const asked = typeof q.session === "string" ? q.session : "chat_demo";
  // The chat session's run exists before the browser follows it (a stream of an
  // unknown run is a final 404); a repeat is a no-op. An id the kit refuses
  // (over 128 characters, control characters, braces) falls back to the demo chat.
  const session = await rs
    .createRun({ runId: asked, kind: "chat" })
    .then(() => asked)
    .catch(async (e: unknown) => {
      if (!(e instanceof RunstreamError) || e.code !== "invalid") throw e;
      await rs.createRun({ runId: "chat_demo", kind: "chat" });
      return "chat_demo";
    });
  return (
    <main>
      <h1>runstream × Next.js</h1>
      <p data-testid="server-page">
        Server-rendered page for task <code>{runId ?? "none"}</code> and chat <code>{session}</code>.
      </p>
      <form action={startTask}>
        <input type="hidden" name="session" value={session} />
        <button data-testid="start-task">Start a demo task</button>
      </form>
      {runId && <TaskPanel runId={runId} />}
      <Chat session={session} />
    </main>
  );
}
