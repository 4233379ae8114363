// runstream/devtools/react: <RunStreamDevtools streams={…} /> over the
// <runstream-devtools> custom element. Plain JS, no build step; React is the
// app's own dependency (peer). Loaded only when imported: neither the core
// package nor runstream/react imports it. Server-safe: on the server it renders
// the bare element, which the browser upgrades after hydration.
import { createElement, useEffect, useRef } from "react";
import "./devtools.js";

export {
  DEFAULT_MAX_EVENTS,
  MAX_TIMELINE,
  MAX_HISTORY,
  RATE_SAMPLES,
  TRACE_FORMAT,
  TRACE_VERSION,
} from "./devtools.js";

/**
 * The devtools panel as a React component. `streams`: one stream, a list (the
 * `stream` of `useRunStream`, `null` until it is ready, is skipped), or
 * `{ stream, label }` entries. `onReady` receives the element (for
 * `exportTrace()`), and `null` on unmount.
 */
export function RunStreamDevtools({ streams, maxEvents, className, style, onReady }) {
  const ref = useRef(null);
  // The element compares the list by identity: the same streams keep their history.
  useEffect(() => {
    if (ref.current) ref.current.streams = streams;
  });
  useEffect(() => {
    if (!onReady) return undefined;
    onReady(ref.current);
    return () => onReady(null);
  }, [onReady]);
  return createElement("runstream-devtools", {
    ref,
    className,
    style,
    "max-events": maxEvents === undefined ? undefined : String(maxEvents),
  });
}
