// The options object of `new RunStream(options)` (API.md), read once in
// plain JS: src/web/options.rs declares `read_options` and reads the compact
// array it returns by position (the `AT_*` constants there). Every option is
// validated here and the URL defaults are filled in; the clamps, defaults of
// the numbers and every decision stay in the wasm. Moved out of the wasm for
// size (issue 29): reading twenty named properties through js-sys, with a
// string passed for each key, cost ~4.6 KB of wasm.
//
// Errors are thrown as the wasm threw them: an `Error` named
// `RunStreamOptionError` with the text "option `k` must be …".

function bad(k, rule) {
  const e = new Error("option `" + k + "` must be " + rule);
  e.name = "RunStreamOptionError";
  return e;
}

const given = (v) => v !== undefined && v !== null;
const isObject = (v) => typeof v === "object" && v !== null;

function str(o, k) {
  const v = o[k];
  if (!given(v)) return undefined;
  if (typeof v !== "string") throw bad(k, "a string");
  return v;
}

function ms(o, k) {
  const v = o[k];
  if (!given(v)) return undefined;
  if (typeof v !== "number" || !(v >= 0) || v === Infinity) throw bad(k, "a non-negative number");
  return v;
}

/** The position of the string option `k` in `names` (0 when absent). */
function oneOf(o, k, names, rule) {
  const v = str(o, k);
  if (v === undefined) return 0;
  const i = names.indexOf(v);
  if (i < 0) throw bad(k, rule);
  return i;
}

/**
 * Validates `o` and returns
 * `[runId, transport, url, wsUrl, snapshotUrl, sendUrl, cancelUrl, headers,
 *   withCredentials, resume, shareTabs, stallAfterMs, connectTimeoutMs,
 *   heartbeatTimeoutMs, initialMs, maxMs, multiplier, spans]`:
 * `transport` 0 fetch, 1 sse, 2 websocket; `resume` 0 session, 1 local,
 * 2 none; `snapshotUrl` null for none; numbers undefined when not given
 * (`initialMs` etc. also when `backoff` is not an object); `spans` the
 * sample rate, or -1 for none.
 */
export function read_options(o) {
  if (!isObject(o)) throw bad("options", "an object");
  const runId = str(o, "runId");
  if (runId === undefined) throw bad("runId", "a non-empty string");
  const chars = [...runId].length;
  if (chars < 1 || chars > 128) throw bad("runId", "1 to 128 characters");
  const enc = encodeURIComponent(runId);
  const transport = oneOf(o, "transport", ["fetch", "sse", "websocket"], '"fetch", "sse" or "websocket"');
  const url = str(o, "url") ?? "/api/stream/runs/" + enc;
  const wsUrl = str(o, "wsUrl") ?? "/api/ws";
  let snapshotUrl = o.snapshotUrl;
  if (snapshotUrl === undefined) snapshotUrl = "/api/runs/" + enc + "/snapshot";
  else if (snapshotUrl !== null && typeof snapshotUrl !== "string") throw bad("snapshotUrl", "a string or null");
  const sendUrl = str(o, "sendUrl");
  const cancelUrl = str(o, "cancelUrl");
  const headers = o.headers;
  if (given(headers) && !isObject(headers) && typeof headers !== "function") {
    throw bad("headers", "an object or a function");
  }
  const resume = oneOf(o, "resume", ["session", "local", "none"], '"session", "local" or "none"');
  const shareTabs = oneOf(o, "share", ["none", "tabs"], '"none" or "tabs"') === 1;
  const b = isObject(o.backoff) ? o.backoff : {};
  const s = o.spans;
  let spans = -1;
  if (s === true) spans = 1;
  else if (isObject(s)) spans = Math.min(1, ms(s, "sampleRate") ?? 1);
  else if (s === undefined || s === "auto") {
    const h = typeof location === "object" ? location.hostname : "";
    if (h === "localhost" || h === "127.0.0.1" || h === "[::1]" || h === "::1") spans = 1;
  }
  return [
    runId, transport, url, wsUrl, snapshotUrl, sendUrl, cancelUrl, headers,
    o.withCredentials === true, resume, shareTabs,
    ms(o, "stallAfterMs"), ms(o, "connectTimeoutMs"), ms(o, "heartbeatTimeoutMs"),
    ms(b, "initialMs"), ms(b, "maxMs"), ms(b, "multiplier"), spans,
  ];
}
