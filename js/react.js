// React binding shipped with the runstream package: plain JS, no build step,
// React is the app's own dependency (peer). See react.d.ts.
import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from "react";
import { RunStream } from "./runstream.js";

const noop = () => {};
const subscribeNone = () => noop;
const snapshotNone = () => null;

/**
 * One RunStream per mounted component (per runId/transport/url): created and
 * started after mount, closed and freed on unmount. Under StrictMode's
 * mount → unmount → mount the first instance is closed before it ever
 * connects (start is deferred by one task), so the server sees one connection.
 */
export function useRunStream(options) {
  const optionsRef = useRef(options);
  optionsRef.current = options;
  const key = [options.runId, options.transport, options.url, options.wsUrl, options.sendUrl].join("\u0000");
  const [stream, setStream] = useState(null);
  useEffect(() => {
    const s = new RunStream(optionsRef.current);
    const timer = setTimeout(() => s.start(), 0);
    setStream(s);
    return () => {
      clearTimeout(timer);
      s.close();
      s.free();
      setStream((cur) => (cur === s ? null : cur));
    };
  }, [key]);
  const subscribe = useCallback((cb) => (stream ? stream.subscribe(cb) : noop), [stream]);
  const getSnapshot = useCallback(() => (stream ? stream.getSnapshot() : null), [stream]);
  const snapshot = useSyncExternalStore(stream ? subscribe : subscribeNone, stream ? getSnapshot : snapshotNone);
  const send = useCallback((content) => {
    if (!stream) throw new Error("runstream: the stream is not mounted yet");
    return stream.send(content);
  }, [stream]);
  const retryNow = useCallback(() => stream && stream.retryNow(), [stream]);
  return { snapshot, send, retryNow, stream };
}
