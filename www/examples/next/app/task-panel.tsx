"use client";

import { useRef } from "react";
import { useRunStream } from "runstream/react";
import type { RunSnapshot } from "runstream";

/** What the panel shows: a slice of the snapshot, compared by value. */
type TaskView = {
  status: string;
  stopping: boolean;
  connection: string;
  summary: string | null;
  workers: { id: string; name: string; status: string; tools: string }[];
};

function selectTask(s: RunSnapshot): TaskView {
  return {
    status: s.state.status,
    stopping: s.state.cancelRequested,
    connection: s.status.connection,
    summary: s.state.supervisor.completed ? (s.state.supervisor.summary ?? "done") : null,
    workers: s.state.workers.map((w) => ({
      id: w.workerId,
      name: w.name ?? w.workerId,
      status: w.status,
      tools: w.tools.map((t) => `${t.name ?? t.toolCallId} ${t.status}`).join(", "),
    })),
  };
}

// Every snapshot is a new object, so an object slice needs a comparison by value:
// with it the panel re-renders only when what it shows changes (not on the cursor,
// a job id assignment or an unknown event type).
function sameTask(a: TaskView, b: TaskView): boolean {
  return (
    a.status === b.status &&
    a.stopping === b.stopping &&
    a.connection === b.connection &&
    a.summary === b.summary &&
    a.workers.length === b.workers.length &&
    a.workers.every((w, i) => {
      const v = b.workers[i];
      return v !== undefined && w.id === v.id && w.name === v.name && w.status === v.status && w.tools === v.tools;
    })
  );
}

export function TaskPanel({ runId }: { runId: string }) {
  const { snapshot: task, cancel } = useRunStream(
    {
      runId,
      url: `/api/stream/runs/${runId}`,
      snapshotUrl: `/api/runs/${runId}/snapshot`,
      cancelUrl: `/api/runs/${runId}/cancel`,
    },
    selectTask,
    sameTask,
  );
  const renders = useRef(0);
  renders.current += 1;
  return (
    <section data-testid="task" data-renders={renders.current}>
      <h2>
        Task <small data-testid="task-status">{task?.status ?? "loading"}</small>{" "}
        <small data-testid="task-conn">{task?.connection ?? "loading"}</small>
      </h2>
      {task && (task.status === "pending" || task.status === "running") && (
        <button data-testid="stop-run" disabled={task.stopping} onClick={() => cancel({ reason: "user" })}>
          {task.stopping ? "Stopping…" : "Stop run"}
        </button>
      )}
      <ul data-testid="workers">
        {(task?.workers ?? []).map((w) => (
          <li key={w.id} data-status={w.status}>
            {w.name}: {w.status} ({w.tools})
          </li>
        ))}
      </ul>
      <p data-testid="supervisor">{task?.summary ?? "working…"}</p>
    </section>
  );
}
