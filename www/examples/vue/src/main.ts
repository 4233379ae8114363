import { createApp, defineComponent, h, ref } from "vue";
import type { Message, Worker } from "runstream";
import { useRunStream } from "runstream/vue";

// No `await init()`: useRunStream loads the wasm itself in onMounted, once per page.

const params = new URLSearchParams(location.search);
const runId = params.get("run") ?? "demo";
const session = params.get("session") ?? `chat_${runId}`;

const Tasks = defineComponent({
  setup() {
    const { snapshot, cancel } = useRunStream({
      runId,
      url: `/api/stream/runs/${runId}`,
      snapshotUrl: `/api/runs/${runId}/snapshot`,
      cancelUrl: `/api/runs/${runId}/cancel`,
    });
    return () => {
      const s = snapshot.value; // null until the wasm is loaded and the stream created
      const workers: readonly Worker[] = s?.state.workers ?? [];
      const running = s !== null && (s.state.status === "pending" || s.state.status === "running");
      return h("section", [
        h("h2", ["Task ", h("small", { "data-testid": "task-status" }, s?.state.status ?? "mounting")]),
        running
          ? h("button", { "data-testid": "stop-run", disabled: s.state.cancelRequested, onClick: () => cancel({ reason: "user" }) },
              s.state.cancelRequested ? "Stopping…" : "Stop run")
          : null,
        h("ul", { "data-testid": "workers" }, workers.map((w) =>
          h("li", { key: w.workerId, "data-status": w.status }, `${w.name ?? w.workerId}: ${w.status} (${w.tools.map((t) => `${t.name ?? t.toolCallId} ${t.status}`).join(", ")})`))),
        h("p", { "data-testid": "supervisor" }, s?.state.supervisor.completed ? s.state.supervisor.summary ?? "done" : "working…"),
        h("p", { "data-testid": "cursor" }, String(s?.state.cursor ?? 0)),
      ]);
    };
  },
});

/** The send whose reply is still coming: Stop cancels that reply only. */
function pendingReply(messages: readonly Message[]): string | null {
  const last = [...messages].reverse().find((m) => m.role === "user" && m.clientRequestId);
  if (!last?.clientRequestId || last.status === "failed") return null;
  const id = last.clientRequestId;
  const done = messages.some((m) => m.replyTo === id && (m.status === "completed" || m.status === "failed"));
  return done ? null : id;
}

const Chat = defineComponent({
  setup() {
    const { snapshot, send, cancel } = useRunStream({
      runId: session,
      url: `/api/stream/runs/${session}`,
      sendUrl: `/api/chat/${session}/messages`,
      cancelUrl: `/api/runs/${session}/cancel`,
      snapshotUrl: `/api/runs/${session}/snapshot`,
    });
    const text = ref("");
    const submit = (e: Event) => {
      e.preventDefault();
      if (text.value.trim()) send(text.value.trim());
      text.value = "";
    };
    return () => {
      const s = snapshot.value;
      const messages: readonly Message[] = s?.state.messages ?? [];
      const replying = pendingReply(messages);
      return h("section", [
        h("h2", ["Chat ", h("small", { "data-testid": "chat-conn" }, s?.status.connection ?? "mounting")]),
        h("ol", { "data-testid": "messages" }, messages.map((m) =>
          h("li", { key: m.clientRequestId ?? m.messageId ?? "", class: m.role }, [h("b", m.role), " ", m.content]))),
        s?.status.activity === "working" ? h("p", { "data-testid": "working" }, "Working…") : null,
        h("form", { onSubmit: submit }, [
          h("input", { "data-testid": "input", value: text.value, onInput: (e: Event) => (text.value = (e.target as HTMLInputElement).value) }),
          h("button", "Send"),
          replying ? h("button", { type: "button", "data-testid": "stop", onClick: () => cancel({ replyTo: replying }) }, "Stop") : null,
        ]),
      ]);
    };
  },
});

const App = defineComponent({
  setup() {
    const shown = ref(true);
    return () =>
      h("main", [
        h("h1", "runstream × Vue"),
        h("button", { "data-testid": "toggle", onClick: () => (shown.value = !shown.value) }, shown.value ? "Unmount" : "Mount"),
        shown.value ? [h(Tasks), h(Chat)] : null,
      ]);
  },
});

createApp(App).mount("#app");
