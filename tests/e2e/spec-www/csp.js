// Strict-CSP page: streams ?run= over ?transport= to the end with the public
// API only, exercises every function the API hands out (unsubscribe functions,
// also those of a closed stream), and records CSP violations and errors.
// Result: window.cspResult (a promise of {snap, violations, errors}).
const violations = [];
const errors = [];
document.addEventListener("securitypolicyviolation", (e) =>
  violations.push({ directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample, source: e.sourceFile, line: e.lineNumber }),
);
window.addEventListener("error", (e) => errors.push(`error: ${e.message}`));
window.addEventListener("unhandledrejection", (e) => errors.push(`unhandledrejection: ${e.reason}`));

const q = new URLSearchParams(location.search);
const runId = q.get("run");
const transport = q.get("transport") || "fetch";
const call = (what, f) => {
  try {
    return f();
  } catch (e) {
    errors.push(`${what}: ${e && e.name}: ${e && e.message}`);
    return undefined;
  }
};

window.cspResult = (async () => {
  try {
    const { default: init, RunStream } = await import("/pkg/runstream.js");
    await init();
    const s = new RunStream({
      runId, transport,
      url: `/api/stream/runs/${encodeURIComponent(runId)}`,
      wsUrl: "/api/ws",
      snapshotUrl: `/api/runs/${encodeURIComponent(runId)}/snapshot`,
      resume: "none",
    });
    let events = 0;
    const offEvents = call("subscribeEvents", () => s.subscribeEvents(() => events++));
    const snap = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(s.getSnapshot()), 15000);
      const off = call("subscribe", () =>
        s.subscribe(() => {
          const sn = s.getSnapshot();
          document.getElementById("status").textContent = `${sn.status.connection} / ${sn.state.status}`;
          document.getElementById("messages").replaceChildren(
            ...sn.state.messages.map((m) => Object.assign(document.createElement("li"), { textContent: `${m.role}: ${m.content}` })),
          );
          if (sn.status.connection === "closed" || sn.status.connection === "failed") {
            clearTimeout(timer);
            call("unsubscribe", () => off());
            resolve(sn);
          }
        }),
      );
      call("start", () => s.start());
    });
    call("unsubscribe events", () => offEvents());
    call("retryNow", () => s.retryNow());
    call("close", () => s.close());
    // A closed stream still hands out unsubscribe functions; calling them is harmless.
    call("subscribe after close", () => s.subscribe(() => {})());
    call("subscribeEvents after close", () => s.subscribeEvents(() => {})());
    call("close twice", () => s.close());
    // Violations are reported asynchronously: let them arrive.
    await new Promise((r) => setTimeout(r, 300));
    return { snap, events, violations, errors };
  } catch (e) {
    errors.push(`fatal: ${e && e.name}: ${e && e.message}`);
    return { snap: null, events: 0, violations, errors };
  }
})();
