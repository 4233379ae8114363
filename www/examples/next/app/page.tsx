import { Chat } from "./chat";
import { TaskPanel } from "./task-panel";

type Query = Record<string, string | string[] | undefined>;

// A server component: rendered per request (it reads the query). The two client
// components below render on the server too, with `snapshot: null` (useRunStream's
// server snapshot), then hydrate and connect in the browser.
export default async function Page({ searchParams }: { searchParams: Promise<Query> }) {
  const q = await searchParams;
  // The runstream server, read per request (not baked into the build). The browser
  // connects to it directly: it must allow this origin (CORS), see next.config.ts.
  const api = process.env.RUNSTREAM_SERVER ?? "http://127.0.0.1:8787";
  const runId = typeof q.run === "string" ? q.run : "demo";
  const session = typeof q.session === "string" ? q.session : `chat_${runId}`;
  return (
    <main>
      <h1>runstream × Next.js</h1>
      <p data-testid="server-page">
        Server-rendered page for task <code>{runId}</code> and chat <code>{session}</code>.
      </p>
      <TaskPanel api={api} runId={runId} />
      <Chat api={api} session={session} />
    </main>
  );
}
