// Example exporter (not part of the library): batches runstream's raw events
// and ships them with navigator.sendBeacon, mapped to OTel-like records
// (docs/TELEMETRY.md). Bounded: at most `maxQueue` events, drop-oldest.
export function exportTelemetry(stream, { url, maxBatch = 100, maxQueue = 1000, flushMs = 5000 } = {}) {
  const queue = [];
  let dropped = 0;
  const origin = performance.timeOrigin;
  const toRecord = (e) =>
    e.kind === "span"
      ? {
          type: "span",
          name: `runstream.${e.op}`,
          traceId: e.traceId,
          spanId: e.spanId,
          startTimeUnixMs: origin + e.start,
          endTimeUnixMs: origin + e.start + e.durationMs,
          status: e.status === "ok" ? "OK" : e.status === "error" ? "ERROR" : "UNSET",
          attributes: {
            "error.type": e.errorKind,
            "runstream.attempt": e.attempt,
            "runstream.replay.events": e.events,
            "runstream.ttfb_ms": e.ttfbMs,
            "runstream.ttft_ms": e.ttftMs,
          },
        }
      : { type: e.kind, name: e.name, value: e.value, timeUnixMs: origin + e.ts, attributes: e.attrs || {} };
  const off = stream.subscribeEvents((e) => {
    if (queue.length >= maxQueue) {
      queue.shift();
      dropped++;
    }
    queue.push(toRecord(e));
    if (queue.length >= maxBatch) flush();
  });
  function flush() {
    if (!queue.length) return;
    const batch = queue.splice(0, maxBatch);
    const body = JSON.stringify({ records: batch, dropped });
    if (!navigator.sendBeacon(url, new Blob([body], { type: "application/json" }))) {
      // Beacon refused (too large / quota): put the batch back, oldest first.
      queue.unshift(...batch.slice(0, Math.max(0, maxQueue - queue.length)));
    }
  }
  const timer = setInterval(flush, flushMs);
  const onHide = () => document.visibilityState === "hidden" && flush();
  document.addEventListener("visibilitychange", onHide);
  return () => {
    off();
    clearInterval(timer);
    document.removeEventListener("visibilitychange", onHide);
    flush();
  };
}
