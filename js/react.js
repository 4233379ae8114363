// React binding shipped with the runstream package: plain JS, no build step,
// React is the app's own dependency (peer). See react.d.ts.
//
// Server-safe: importing this module reads no browser global, and during server
// rendering (and hydration) the hook returns `snapshot: null` through
// useSyncExternalStore's getServerSnapshot. The wasm is instantiated after
// mount, once per page (initRunStream), and the stream is created when it is ready.
import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import { RunStream } from "./runstream.js";
import { initRunStream } from "./lazy.js";

export { initRunStream };

const noop = () => {};
const subscribeNone = () => noop;
const none = () => null;

/**
 * `options` as the stream is created with, but with `headers` read from the
 * latest render's options each time the stream calls it: a `headers` closure
 * over React state (a token an auth hook refreshes) is never a stale one.
 */
function withLatestHeaders(ref) {
  const o = ref.current;
  if (o.headers === undefined || o.headers === null) return o;
  return {
    ...o,
    headers: () => {
      const h = ref.current.headers;
      return typeof h === "function" ? h() : h;
    },
  };
}

/**
 * One RunStream per mounted component (per runId/transport/url): created after
 * mount once the wasm is ready, closed and freed on unmount. Under StrictMode's
 * mount → unmount → mount the first effect is cancelled before the wasm promise
 * settles, so only one stream is ever created and the server sees one connection.
 *
 * `select` picks a slice of the snapshot: the component re-renders only when the
 * slice changes by `isEqual` (default `Object.is`). The selection is cached per
 * snapshot, and an equal selection keeps the previous value's identity.
 */
export function useRunStream(options, select, isEqual) {
  const optionsRef = useRef(options);
  optionsRef.current = options;
  const key = [options.runId, options.transport, options.url, options.wsUrl, options.sendUrl, options.cancelUrl].join("\u0000");
  const [stream, setStream] = useState(null);
  // Rethrows a failed wasm load or a constructor error into render, where an error boundary sees it.
  const [, setFailure] = useState(null);
  useEffect(() => {
    let live = true;
    let s = null;
    initRunStream().then(
      () => {
        if (!live) return;
        let created = null;
        try {
          created = new RunStream(withLatestHeaders(optionsRef));
          created.start();
        } catch (e) {
          if (created) created.free();
          setFailure(() => {
            throw e;
          });
          return;
        }
        s = created;
        setStream(s);
      },
      (e) => {
        if (live) {
          setFailure(() => {
            throw e;
          });
        }
      },
    );
    return () => {
      live = false;
      if (s) {
        const gone = s;
        gone.close();
        gone.free();
        setStream((cur) => (cur === gone ? null : cur));
      }
    };
  }, [key]);

  const subscribe = useCallback((cb) => (stream ? stream.subscribe(cb) : noop), [stream]);
  // The last selection React rendered, so that a new `select` function (an inline
  // arrow, new every render) that picks an equal value keeps its identity.
  const last = useRef(null);
  const getSelection = useMemo(() => {
    if (!stream) return none;
    if (!select) return () => stream.getSnapshot();
    const eq = isEqual || Object.is;
    let memo = null; // { snap, value }: getSnapshot must return a cached value for an unchanged snapshot
    return () => {
      const snap = stream.getSnapshot();
      if (memo && memo.snap === snap) return memo.value;
      let value = select(snap);
      const prev = memo || (last.current && last.current.stream === stream ? last.current : null);
      if (prev && eq(prev.value, value)) value = prev.value;
      memo = { snap, value };
      return value;
    };
  }, [stream, select, isEqual]);
  const snapshot = useSyncExternalStore(stream ? subscribe : subscribeNone, getSelection, none);
  useEffect(() => {
    last.current = stream ? { stream, value: snapshot } : null;
  });

  const send = useCallback((content) => {
    if (!stream) throw new Error("runstream: the stream is not ready yet (snapshot is null until it is)");
    return stream.send(content);
  }, [stream]);
  const cancel = useCallback((opts) => {
    if (!stream) throw new Error("runstream: the stream is not ready yet (snapshot is null until it is)");
    return stream.cancel(opts);
  }, [stream]);
  const retryNow = useCallback(() => {
    if (stream) stream.retryNow();
  }, [stream]);
  return { snapshot, send, cancel, retryNow, stream };
}
