// Vue binding shipped with the runstream package: plain JS, Vue is the app's
// own dependency (peer). See vue.d.ts.
import { onScopeDispose, shallowRef } from "vue";
import { RunStream } from "./runstream.js";

/**
 * Creates and starts a RunStream for the current effect scope (a component's
 * setup): `snapshot` is a shallowRef replaced at most once per animation frame;
 * the stream is closed and freed when the scope is disposed.
 */
export function useRunStream(options) {
  const stream = new RunStream(options);
  const snapshot = shallowRef(stream.getSnapshot());
  const off = stream.subscribe(() => {
    snapshot.value = stream.getSnapshot();
  });
  stream.start();
  onScopeDispose(() => {
    off();
    stream.close();
    stream.free();
  });
  return {
    snapshot,
    send: (content) => stream.send(content),
    retryNow: () => stream.retryNow(),
    stream,
  };
}
