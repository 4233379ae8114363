import { useCallback, useEffect, useState, type FormEvent } from "react";
import { useRunStream } from "runstream/react";
// The devtools panel: its own import, loaded only by apps that use it.
import { RunStreamDevtools } from "runstream/devtools/react";
import type { Message, RunStream, Worker } from "runstream";

const params = new URLSearchParams(location.search);
const runId = params.get("run") ?? "demo";
const session = params.get("session") ?? `chat_${runId}`;

/** Reports a component's stream to the devtools panel (null until ready, and on unmount). */
function useReportStream(stream: RunStream | null, onStream: (s: RunStream | null) => void) {
  useEffect(() => {
    onStream(stream);
    return () => onStream(null);
  }, [stream, onStream]);
}

function Chat({ onStream }: { onStream: (s: RunStream | null) => void }) {
  // A token kept in React state, as an auth hook would: `headers` reads the
  // current one on every (re)connect and send, not the first render's.
  const [token, setToken] = useState(1);
  const { snapshot, send, cancel, stream } = useRunStream({
    runId: session,
    url: `/api/stream/runs/${session}`,
    sendUrl: `/api/chat/${session}/messages`,
    cancelUrl: `/api/runs/${session}/cancel`,
    snapshotUrl: `/api/runs/${session}/snapshot`,
    headers: () => ({ Authorization: `Bearer t${token}` }),
  });
  useReportStream(stream, onStream);
  const [text, setText] = useState("");
  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (text.trim()) send(text.trim());
    setText("");
  };
  const messages: readonly Message[] = snapshot?.state.messages ?? [];
  const replying = pendingReply(messages);
  return (
    <section>
      <h2>Chat <small data-testid="chat-conn">{snapshot?.status.connection ?? "mounting"}</small></h2>
      <ol data-testid="messages">
        {messages.map((m) => (
          <li key={m.clientRequestId ?? m.messageId ?? ""} className={m.role}>
            <b>{m.role}</b> {m.content}
          </li>
        ))}
      </ol>
      {snapshot?.status.activity === "working" && <p data-testid="working">Working…</p>}
      <form onSubmit={submit}>
        <input data-testid="input" value={text} onChange={(e) => setText(e.target.value)} />
        <button>Send</button>{" "}
        {replying && (
          <button type="button" data-testid="stop" onClick={() => cancel({ replyTo: replying })}>
            Stop
          </button>
        )}
      </form>
      <button data-testid="rotate" onClick={() => setToken((t) => t + 1)}>New token</button>{" "}
      <small data-testid="token">t{token}</small>
    </section>
  );
}

/** The send whose reply is still coming: Stop cancels that reply only. */
function pendingReply(messages: readonly Message[]): string | null {
  const last = [...messages].reverse().find((m) => m.role === "user" && m.clientRequestId);
  if (!last?.clientRequestId || last.status === "failed") return null;
  const id = last.clientRequestId;
  const done = messages.some((m) => m.replyTo === id && (m.status === "completed" || m.status === "failed"));
  return done ? null : id;
}

function Tasks({ onStream }: { onStream: (s: RunStream | null) => void }) {
  const { snapshot, cancel, stream } = useRunStream({
    runId,
    url: `/api/stream/runs/${runId}`,
    snapshotUrl: `/api/runs/${runId}/snapshot`,
    cancelUrl: `/api/runs/${runId}/cancel`,
  });
  useReportStream(stream, onStream);
  const workers: readonly Worker[] = snapshot?.state.workers ?? [];
  const running = snapshot !== null && (snapshot.state.status === "pending" || snapshot.state.status === "running");
  return (
    <section>
      <h2>Task <small data-testid="task-status">{snapshot?.state.status ?? "mounting"}</small></h2>
      {running && (
        <button data-testid="stop-run" disabled={snapshot.state.cancelRequested} onClick={() => cancel({ reason: "user" })}>
          {snapshot.state.cancelRequested ? "Stopping…" : "Stop run"}
        </button>
      )}
      <ul data-testid="workers">
        {workers.map((w) => (
          <li key={w.workerId} data-status={w.status}>
            {w.name ?? w.workerId}: {w.status} ({w.tools.map((t) => `${t.name ?? t.toolCallId} ${t.status}`).join(", ")})
          </li>
        ))}
      </ul>
      <p data-testid="supervisor">{snapshot?.state.supervisor.completed ? snapshot.state.supervisor.summary : "working…"}</p>
      <p data-testid="cursor">{snapshot?.state.cursor ?? 0}</p>
    </section>
  );
}

export function App() {
  const [shown, setShown] = useState(true);
  const [taskStream, setTaskStream] = useState<RunStream | null>(null);
  const [chatStream, setChatStream] = useState<RunStream | null>(null);
  const onTask = useCallback((s: RunStream | null) => setTaskStream(s), []);
  const onChat = useCallback((s: RunStream | null) => setChatStream(s), []);
  return (
    <main>
      <h1>runstream × React</h1>
      <button data-testid="toggle" onClick={() => setShown((s) => !s)}>{shown ? "Unmount" : "Mount"}</button>
      {shown && (
        <>
          <Tasks onStream={onTask} />
          <Chat onStream={onChat} />
        </>
      )}
      <h2>Diagnostics</h2>
      <RunStreamDevtools
        streams={[
          taskStream && { stream: taskStream, label: "task" },
          chatStream && { stream: chatStream, label: "chat" },
        ]}
      />
    </main>
  );
}
