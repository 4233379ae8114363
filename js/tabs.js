// `share: "tabs"` in plain JS: the Web Locks election and the BroadcastChannel
// of one stream key (API.md "Sharing connections"). src/web/tabs.rs declares
// these functions; the decisions stay in the engine. Moved out of the wasm for
// size: the same calls through web-sys and wasm-bindgen closures cost ~13 KB
// of wasm.
//
// A member reports to the wasm through one function, `on(kind, arg)`:
//   LEAD        the lock was granted; `on` returns true if the stream leads,
//               false (closed meanwhile) and the lock is given straight back;
//   UNAVAILABLE the lock request failed other than by our own abort (an
//               opaque origin raises a SecurityError): the tab connects on
//               its own;
//   TEXT        a string from the channel (arg: the string);
//   TOO_LARGE   a string longer than `limit` (arg: its length), not copied;
//   UNREADABLE  anything else from the channel;
//   HIDDEN      pagehide / freeze (arg: whether this tab led). The page may
//               be gone or frozen for good: after `on` returns, the lock is
//               given back (leader) or the queued request withdrawn
//               (follower): a lock granted to a frozen page could not run
//               its callback, and no tab would lead;
//   RESUMED     pageshow / resume: queued for the lock again (arg: whether
//               the request could be made).
// After `tabs_leave` nothing is reported: a late grant gives the lock back.

const LEAD = 0;
const UNAVAILABLE = 1;
const TEXT = 2;
const TOO_LARGE = 3;
const UNREADABLE = 4;
const HIDDEN = 5;
const RESUMED = 6;

/** Web Locks and BroadcastChannel both exist here (else each tab connects on its own). */
export function tabs_supported() {
  try {
    return typeof BroadcastChannel === "function" && !!globalThis.navigator?.locks?.request;
  } catch {
    return false;
  }
}

/** Queues member `m` for its lock; false if the request could not be made. */
function request(m) {
  const lock = { ctl: new AbortController(), release: null, dropped: false };
  let p;
  try {
    p = navigator.locks.request(m.key, { signal: lock.ctl.signal, mode: "exclusive" }, () =>
      new Promise((resolve) => {
        // Held until `release` is called: on leave, pagehide or freeze.
        if (lock.dropped || m.left || !m.on(LEAD)) resolve();
        else lock.release = resolve;
      }),
    );
  } catch {
    return false;
  }
  // A request we withdrew rejects with an AbortError: ignored.
  p.catch(() => {
    if (!lock.dropped && !m.left) m.on(UNAVAILABLE);
  });
  m.lock = lock;
  return true;
}

/** Gives the lock back (if held) and withdraws the request (if queued). */
function withdraw(m) {
  const lock = m.lock;
  if (!lock) return;
  m.lock = null;
  lock.dropped = true;
  lock.ctl.abort();
  if (lock.release) lock.release();
}

/**
 * Opens the channel of `key` and queues for its lock; strings longer than
 * `limit` are not read. Returns the member, or null if the channel or the
 * lock request could not be made (the caller turns the stream solo).
 */
export function tabs_join(key, limit, on) {
  let channel;
  try {
    channel = new BroadcastChannel(key);
  } catch {
    return null;
  }
  const m = { key, on, channel, lock: null, left: false, listeners: [] };
  channel.onmessage = (ev) => {
    if (m.left) return;
    const data = ev.data;
    if (typeof data !== "string") on(UNREADABLE);
    else if (data.length > limit) on(TOO_LARGE, data.length);
    else on(TEXT, data);
  };
  const hidden = () => {
    if (m.left) return;
    // The connection ends first, then the lock goes: never two leaders' connections at once.
    on(HIDDEN, !!m.lock?.release);
    withdraw(m);
  };
  const resumed = () => {
    if (m.left) return;
    on(RESUMED, m.lock !== null || request(m));
  };
  const listen = (target, kind, f) => {
    target.addEventListener(kind, f);
    m.listeners.push(() => target.removeEventListener(kind, f));
  };
  if (typeof window !== "undefined") {
    listen(window, "pagehide", hidden);
    listen(window, "pageshow", resumed);
    if (typeof document !== "undefined") {
      listen(document, "freeze", hidden);
      listen(document, "resume", resumed);
    }
  }
  if (!request(m)) {
    tabs_leave(m);
    return null;
  }
  return m;
}

/** Posts an engine message to the other tabs. */
export function tabs_post(m, text) {
  try {
    m.channel.postMessage(text);
  } catch {
    // A closed channel: the member is leaving.
  }
}

/** Leaves for good: closes the channel, gives the lock back (the next tab leads), removes the listeners. */
export function tabs_leave(m) {
  if (m.left) return;
  m.left = true;
  m.channel.onmessage = null;
  m.channel.close();
  withdraw(m);
  for (const off of m.listeners) off();
  m.listeners.length = 0;
}
