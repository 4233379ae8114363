// Vue binding shipped with the runstream package: plain JS, Vue is the app's
// own dependency (peer). See vue.d.ts.
//
// Server-safe: importing this module reads no browser global. In a component
// nothing browser-side happens before onMounted (which never runs during
// server rendering); outside one (a store's effectScope, say) nothing happens
// where there is no browser (`window` undefined: server rendering), so the
// wasm is never fetched there and no promise is left to reject. The snapshot
// is `null` until the wasm is loaded (once per page, initRunStream) and the
// stream is created.
import { getCurrentInstance, onMounted, onScopeDispose, shallowRef, toValue, watch } from "vue";
import { RunStream } from "./runstream.js";
import { initRunStream } from "./lazy.js";

export { initRunStream };

/** The options that decide which stream it is: a change of any of them opens a new one. */
const streamKey = (o) => [o.runId, o.transport, o.url, o.wsUrl, o.sendUrl, o.cancelUrl].join("\u0000");

/**
 * `options` as the stream is created with, but with `headers` read from the
 * latest options each time the stream calls it (a token a store refreshes).
 */
function withLatestHeaders(read) {
  const o = read();
  if (o.headers === undefined || o.headers === null) return o;
  return {
    ...o,
    headers: () => {
      const h = read().headers;
      return typeof h === "function" ? h() : h;
    },
  };
}

/**
 * A RunStream for the current effect scope: in a component it is created after
 * mount (outside one, e.g. in a store's effectScope, at once in a browser),
 * closed and freed when the scope is disposed. `options` may be a ref or a
 * getter (`() => ({ runId: props.runId, … })`): when its runId, transport or
 * URLs change (a reused component given another run), the old stream is
 * closed and one for the new options is opened. `snapshot` is a shallowRef
 * replaced at most once per animation frame; with `select` it holds
 * `select(snapshot)` and is only replaced when that changes by `isEqual`
 * (default `Object.is`).
 */
export function useRunStream(options, select, isEqual) {
  const eq = isEqual || Object.is;
  const read = () => toValue(options);
  const snapshot = shallowRef(null);
  const stream = shallowRef(null);
  let disposed = false;
  let started = false;
  let opening = 0; // the latest open(); an older one that resolves late creates nothing
  let off = null;
  let has = false;
  const update = (s) => {
    const snap = s.getSnapshot();
    const next = select ? select(snap) : snap;
    if (!has || !eq(snapshot.value, next)) snapshot.value = next;
    has = true;
  };
  const closeCurrent = () => {
    const s = stream.value;
    if (!s) return;
    if (off) off();
    off = null;
    s.close();
    s.free();
    stream.value = null;
  };
  const open = async () => {
    const mine = ++opening;
    started = true;
    await initRunStream();
    if (disposed || mine !== opening) return;
    const s = new RunStream(withLatestHeaders(read));
    off = s.subscribe(() => update(s));
    update(s);
    s.start();
    stream.value = s;
  };
  // Another stream: close this one at once (the server sees it go), show
  // nothing until the new one exists. Before the first open there is
  // nothing to follow yet.
  watch(
    () => streamKey(read()),
    () => {
      if (!started || disposed) return;
      closeCurrent();
      has = false;
      snapshot.value = null;
      return open();
    },
  );
  // In a component, errors of the async hook (and of the watcher's reopen)
  // go to Vue's error handler.
  if (getCurrentInstance()) onMounted(open);
  else if (typeof window !== "undefined") open();
  onScopeDispose(() => {
    disposed = true;
    closeCurrent();
  });
  return {
    snapshot,
    send: (content) => {
      if (!stream.value) throw new Error("runstream: the stream is not ready yet (snapshot is null until it is)");
      return stream.value.send(content);
    },
    cancel: (opts) => {
      if (!stream.value) throw new Error("runstream: the stream is not ready yet (snapshot is null until it is)");
      return stream.value.cancel(opts);
    },
    retryNow: () => {
      if (stream.value) stream.value.retryNow();
    },
    stream,
  };
}
