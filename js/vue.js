// Vue binding shipped with the runstream package: plain JS, Vue is the app's
// own dependency (peer). See vue.d.ts.
//
// Server-safe: importing this module reads no browser global, and in a
// component nothing browser-side happens before onMounted (which never runs
// during server rendering): the snapshot is `null` until the wasm is loaded
// (once per page, initRunStream) and the stream is created.
import { getCurrentInstance, onMounted, onScopeDispose, shallowRef } from "vue";
import { RunStream } from "./runstream.js";
import { initRunStream } from "./lazy.js";

export { initRunStream };

/**
 * A RunStream for the current effect scope: in a component it is created after
 * mount (outside one, e.g. in a store's effectScope, at once), closed and freed
 * when the scope is disposed. `snapshot` is a shallowRef replaced at most once
 * per animation frame; with `select` it holds `select(snapshot)` and is only
 * replaced when that changes by `isEqual` (default `Object.is`).
 */
export function useRunStream(options, select, isEqual) {
  const eq = isEqual || Object.is;
  const snapshot = shallowRef(null);
  const stream = shallowRef(null);
  let disposed = false;
  let off = null;
  let has = false;
  const update = (s) => {
    const snap = s.getSnapshot();
    const next = select ? select(snap) : snap;
    if (!has || !eq(snapshot.value, next)) snapshot.value = next;
    has = true;
  };
  const open = async () => {
    await initRunStream();
    if (disposed) return;
    const s = new RunStream(options);
    off = s.subscribe(() => update(s));
    update(s);
    s.start();
    stream.value = s;
  };
  // In a component, errors of the async hook go to Vue's error handler.
  if (getCurrentInstance()) onMounted(open);
  else open();
  onScopeDispose(() => {
    disposed = true;
    const s = stream.value;
    if (!s) return;
    if (off) off();
    s.close();
    s.free();
    stream.value = null;
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
