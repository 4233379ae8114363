// runstream/devtools with exact types; `tsc --strict --noEmit` must pass (and the
// the lines marked to expect an error must be errors). The React component is type-checked by
// the React example (www/examples/react, strict, lib checks on).
import { RunStream } from "runstream";
import {
  DEFAULT_MAX_EVENTS,
  RunStreamDevtools,
  TRACE_FORMAT,
  defineRunStreamDevtools,
  type DevtoolsTrace,
  type TraceStream,
  type TraceTimelineEntry,
} from "runstream/devtools";

export function devtools(task: RunStream, chat: RunStream): string {
  const panel: RunStreamDevtools = document.createElement("runstream-devtools");
  panel.setAttribute("max-events", String(DEFAULT_MAX_EVENTS * 2));
  panel.streams = task;
  panel.streams = [task, { stream: chat, label: "chat" }, null];
  panel.streams = null;
  // @ts-expect-error: a stream is an object with getSnapshot/subscribe/subscribeEvents
  panel.streams = "run_1";
  // @ts-expect-error: an entry needs its stream
  panel.streams = [{ label: "chat" }];
  const bound: number = panel.maxEvents;
  const trace: DevtoolsTrace = panel.exportTrace();
  const format: "runstream-devtools-trace" = trace.format;
  const first: TraceStream | undefined = trace.streams[0];
  if (first) {
    const kept: number = first.events.length + first.eventsDropped;
    const entry: TraceTimelineEntry | undefined = first.timeline[0];
    if (entry && entry.kind === "ended") {
      const reason: string = entry.reason;
      void reason;
    } else if (entry) {
      const state: "idle" | "connecting" | "open" | "reconnecting" | "offline" | "closed" | "failed" = entry.connection;
      void state;
    }
    const cursor: number | undefined = first.snapshot?.state.cursor;
    void kept;
    void cursor;
  }
  defineRunStreamDevtools("my-devtools");
  panel.downloadTrace();
  return `${format} ${TRACE_FORMAT} ${bound} ${panel.traceJSON().length}`;
}
