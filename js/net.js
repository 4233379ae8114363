// The browser's WebSocket and EventSource in plain JS: src/web/transport.rs
// and src/web/socket.rs declare these functions; every decision stays in the
// wasm. Moved out of the wasm for size: through web-sys, one closure per
// callback and one listener per event type cost more wasm than these lines.
//
// Each connection reports to the wasm through one function, `on(kind, arg)`,
// and stops reporting once closed here (`*_close`), so the wasm can drop
// that function right after.
//
// WebSocket kinds: WS_OPEN; WS_TEXT (arg: the text); WS_BINARY (any frame
// that is not text: the protocol is text-only); WS_CLOSE (arg: the close
// code, or -1 when the event carries none).
// EventSource kinds: ES_OPEN; ES_DATA (arg: the data of an event of one of
// the listened types); ES_ERROR (arg: true when the browser gave up on the
// connection, readyState CLOSED). On an error the EventSource is closed
// here at once: it never reconnects on its own, the wasm's backoff does.

const WS_OPEN = 0;
const WS_TEXT = 1;
const WS_BINARY = 2;
const WS_CLOSE = 3;
const ES_OPEN = 0;
const ES_DATA = 1;
const ES_ERROR = 2;

/** Opens a WebSocket to `url`; null if the browser refuses to create it (bad URL, CSP). */
export function ws_open(url, on) {
  let ws;
  try {
    ws = new WebSocket(url);
  } catch {
    return null;
  }
  ws.binaryType = "arraybuffer";
  ws.onopen = () => on(WS_OPEN);
  ws.onmessage = (ev) => (typeof ev.data === "string" ? on(WS_TEXT, ev.data) : on(WS_BINARY));
  ws.onclose = (ev) => on(WS_CLOSE, typeof ev.code === "number" ? ev.code : -1);
  return ws;
}

/**
 * `p` (the promise a `headers` function returned), or an AbortError once
 * `signal` aborts (the connection or request it was for is gone). The wasm
 * waits on this promise, so an abandoned wait settles and frees its
 * callbacks even if `p` never does; `p` keeps only plain JS callbacks.
 */
export function until_abort(p, signal) {
  return new Promise((resolve, reject) => {
    const stop = () => reject(new DOMException("the wait for headers was abandoned", "AbortError"));
    if (signal.aborted) return stop();
    signal.addEventListener("abort", stop, { once: true });
    Promise.resolve(p)
      .then(resolve, reject)
      .finally(() => signal.removeEventListener("abort", stop));
  });
}

/**
 * Writes a text frame, only on an OPEN socket. A socket the server has begun
 * to close is still "open" to the wasm until its close event arrives; send()
 * on it drops the frame and the browser logs "WebSocket is already in
 * CLOSING or CLOSED state." as a page error (seen in the reliability suite
 * on a Redis Cluster). Dropped here instead, silently: the close event
 * follows, and the engine re-sends what matters (subscribes, sends,
 * cancels) on the next socket.
 */
export function ws_send(ws, text) {
  if (ws.readyState !== 1) return;
  try {
    ws.send(text);
  } catch {
    // A socket that closed between the check and the send.
  }
}

/** Closes the socket and stops its reports. */
export function ws_close(ws) {
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  try {
    ws.close();
  } catch {
    // Already closed.
  }
}

/**
 * Opens an EventSource on `url`. Native EventSource delivers named events
 * only to listeners of that name: `types` is every name to listen to,
 * separated by spaces. Null if the browser refuses to create it.
 */
export function es_open(url, withCredentials, types, on) {
  let es;
  try {
    es = new EventSource(url, { withCredentials });
  } catch {
    return null;
  }
  const c = { es, open: true };
  es.addEventListener("open", () => c.open && on(ES_OPEN));
  const data = (ev) => {
    if (c.open && typeof ev.data === "string") on(ES_DATA, ev.data);
  };
  for (const t of types.split(" ")) if (t) es.addEventListener(t, data);
  es.addEventListener("error", () => {
    if (!c.open) return;
    const fatal = es.readyState === EventSource.CLOSED;
    es_close(c);
    on(ES_ERROR, fatal);
  });
  return c;
}

/** Closes the EventSource and stops its reports. */
export function es_close(c) {
  c.open = false;
  c.es.close();
}
