"use client";

import { useState, type FormEvent } from "react";
import { useRunStream } from "runstream/react";
import type { Message } from "runstream";

// The whole snapshot: the chat re-renders (at most once per animation frame) as tokens stream.
export function Chat({ session }: { session: string }) {
  const { snapshot, send, cancel } = useRunStream({
    runId: session,
    url: `/api/stream/runs/${session}`,
    sendUrl: `/api/chat/${session}/messages`,
    cancelUrl: `/api/runs/${session}/cancel`,
    snapshotUrl: `/api/runs/${session}/snapshot`,
  });
  const [text, setText] = useState("");
  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (text.trim()) send(text.trim());
    setText("");
  };
  const messages: readonly Message[] = snapshot?.state.messages ?? [];
  // The send whose reply is still coming: Stop cancels that reply only.
  const last = [...messages].reverse().find((m) => m.role === "user" && m.clientRequestId);
  const replying =
    last?.clientRequestId && last.status !== "failed" &&
    !messages.some((m) => m.replyTo === last.clientRequestId && (m.status === "completed" || m.status === "failed"))
      ? last.clientRequestId
      : null;
  return (
    <section>
      <h2>
        Chat <small data-testid="chat-conn">{snapshot?.status.connection ?? "loading"}</small>
      </h2>
      <ol data-testid="messages">
        {messages.map((m) => (
          <li key={m.clientRequestId ?? m.messageId ?? ""} className={m.role} data-status={m.status}>
            <b>{m.role}</b> {m.content}
          </li>
        ))}
      </ol>
      {snapshot?.status.activity === "working" && <p data-testid="working">Working…</p>}
      <form onSubmit={submit}>
        <input data-testid="input" value={text} onChange={(e) => setText(e.target.value)} />
        <button disabled={snapshot === null}>Send</button>{" "}
        {replying && (
          <button type="button" data-testid="stop" onClick={() => cancel({ replyTo: replying })}>
            Stop
          </button>
        )}
      </form>
      <p>
        cursor <span data-testid="chat-cursor">{snapshot?.state.cursor ?? 0}</span>, events applied{" "}
        <span data-testid="chat-applied">{snapshot?.metrics.eventsApplied ?? 0}</span>, replayed on resume{" "}
        <span data-testid="chat-replayed">{snapshot?.metrics.eventsReplayed ?? 0}</span>
      </p>
    </section>
  );
}
