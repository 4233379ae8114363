// The body store in IndexedDB, in plain JS: the wasm calls these functions
// (src/web/idb.rs declares them) and awaits their promises. Moved out of the
// wasm for size: the same code through web-sys cost ~15 KB of wasm.
//
// One database per origin, "runstream", with three object stores:
// - "bodies": key [area, run_id, batch_key] -> one batch of bodies (a string);
// - "heads":  key [area, run_id] -> a head the storage area refused (quota);
// - "runs":   key [area, run_id] -> when its bodies were last written or read
//   (wall-clock ms); runs idle for IDLE_TTL_MS are swept at page load.
// Every function settles, never rejects: failures are `false` / `null`.

const DB_NAME = "runstream";
const STORES = ["bodies", "runs", "heads"];
/** Bodies of a run neither written nor read for 7 days are removed at page load. */
const IDLE_TTL_MS = 7 * 24 * 3600 * 1000;

let opening = null;
let swept = false;

const factory = () => {
  try {
    return globalThis.indexedDB || null;
  } catch {
    return null; // a sandboxed page may throw on access
  }
};

/** True when the page has IndexedDB (not in every private mode or sandbox). */
export function idb_available() {
  return factory() !== null;
}

const done = (req) =>
  new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });

const committed = (tx) =>
  new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });

/** The database, opened once per page (concurrent callers share the request). */
function open() {
  if (!opening) {
    opening = (async () => {
      const f = factory();
      if (!f) throw new Error("no IndexedDB");
      const req = f.open(DB_NAME, 1);
      req.onupgradeneeded = () => {
        const d = req.result;
        for (const name of STORES) if (!d.objectStoreNames.contains(name)) d.createObjectStore(name);
      };
      const d = await done(req);
      // Another page upgrading the database closes this connection, and the
      // browser may close it (storage cleared, disk error): reopen next time.
      d.onversionchange = () => {
        d.close();
        opening = null;
      };
      d.onclose = () => (opening = null);
      return d;
    })();
    // A failed open (blocked, refused) is tried again by the next caller.
    opening.catch(() => (opening = null));
  }
  return opening;
}

async function tx(write) {
  const d = await open();
  const t = d.transaction(STORES, write ? "readwrite" : "readonly");
  return [t, t.objectStore("bodies"), t.objectStore("runs"), t.objectStore("heads")];
}

/** Every key of a run's bodies: [area, run] <= key < [area, run, []] (an array sorts after every string). */
const runRange = (area, run) => IDBKeyRange.bound([area, run], [area, run, []]);

/** Records that a run's bodies were used now (the sweep's clock). */
const touch = (runs, area, run) => runs.put(Date.now(), [area, run]);

// Commit now rather than at the end of the task: a write may come from
// `pagehide`, and an uncommitted transaction is aborted with the page.
// Settles when the transaction has committed.
const commitNow = (t) => {
  const c = committed(t);
  try {
    t.commit?.();
  } catch {}
  return c;
};

const settled = (p) => p.then(() => true, () => false);

/**
 * Writes one batch of bodies (`text`, under `key`; nothing when empty) and
 * deletes the batches it replaces, in one transaction; true once committed.
 */
export function idb_put(area, run, key, text, replaces) {
  // A view into the wasm memory, valid during this call only: copied now.
  const gone = Array.from(replaces);
  return settled(
    (async () => {
      const [t, bodies, runs] = await tx(true);
      if (text) bodies.put(text, [area, run, key]);
      for (const old of gone) bodies.delete([area, run, old]);
      touch(runs, area, run);
      await commitNow(t);
    })(),
  );
}

/** Writes the head of a run (the storage area refused it); true once committed. */
export function idb_put_head(area, run, head) {
  return settled(
    (async () => {
      const [t, , runs, heads] = await tx(true);
      heads.put(head, [area, run]);
      touch(runs, area, run);
      await commitNow(t);
    })(),
  );
}

/**
 * What is stored for a run: `[head, keys, texts]` (head a string or
 * undefined; keys and texts of its body batches, in key order), or null
 * when IndexedDB is missing or fails. Records that are not a batch are skipped.
 */
export async function idb_read(area, run) {
  try {
    const [, bodies, runs, heads] = await tx(true);
    const range = runRange(area, run);
    const k = done(bodies.getAllKeys(range));
    const v = done(bodies.getAll(range));
    const h = done(heads.get([area, run]));
    touch(runs, area, run);
    const [keys, values, head] = await Promise.all([k, v, h]);
    const outKeys = [];
    const outTexts = [];
    keys.forEach((key, i) => {
      if (typeof key[2] === "number" && typeof values[i] === "string") {
        outKeys.push(key[2]);
        outTexts.push(values[i]);
      }
    });
    return [typeof head === "string" ? head : undefined, new Float64Array(outKeys), outTexts];
  } catch {
    return null;
  }
}

/** Deletes the runs `keys` ([area, run] each; null: every run idle for IDLE_TTL_MS), in one transaction. */
async function removeRuns(keys) {
  const [t, bodies, meta, heads] = await tx(true);
  if (!keys) {
    const now = Date.now();
    const [ks, times] = await Promise.all([done(meta.getAllKeys()), done(meta.getAll())]);
    keys = ks.filter((_, i) => now - (Number(times[i]) || 0) >= IDLE_TTL_MS);
  }
  for (const key of keys) {
    if (!Array.isArray(key) || typeof key[0] !== "string" || typeof key[1] !== "string") continue;
    bodies.delete(runRange(key[0], key[1]));
    heads.delete(key);
    meta.delete(key);
  }
  await committed(t);
}

/** Removes the bodies of `runs` (their heads were evicted). Best effort. */
export function idb_remove(area, runs) {
  if (idb_available()) removeRuns(runs.map((r) => [area, r])).catch(() => {});
}

/** Once per page: removes the bodies of runs idle for IDLE_TTL_MS. Best effort. */
export function idb_sweep() {
  if (swept || !idb_available()) return;
  swept = true;
  removeRuns(null).catch(() => {});
}
