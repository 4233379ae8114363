// Test page of the spec server: only the public JS API (API.md).
import init, { RunStream } from "/pkg/runstream.js";

window.ready = init().then(() => {
  window.RunStream = RunStream;
  return true;
});
window.streams = {};

/**
 * Starts a RunStream under `key` and records every change of its connection
 * and activity status (on each notification and every 100 ms), with times.
 * Returns the snapshot it had before start() (what a refresh restored).
 */
window.follow = (key, opts) => {
  // `tokenHeaders`: a `headers` function over the page's current `window.token`
  // (as an auth hook's would be), which the test rotates.
  if (opts.tokenHeaders) {
    const { tokenHeaders, ...rest } = opts;
    opts = { ...rest, headers: async () => ({ Authorization: `Bearer ${window.token}` }) };
  }
  const s = new RunStream(opts);
  const rec = { s, samples: [] };
  const sample = () => {
    const { connection: c, activity: a } = s.getSnapshot().status;
    const last = rec.samples[rec.samples.length - 1];
    if (!last || last.c !== c || last.a !== a) rec.samples.push({ t: Math.round(performance.now()), c, a });
  };
  const restored = s.getSnapshot();
  rec.off = s.subscribe(sample);
  rec.timer = setInterval(sample, 100);
  s.start();
  sample();
  window.streams[key] = rec;
  return restored;
};

/** The current snapshot of `key` and the status changes seen so far. */
window.peek = (key) => {
  const rec = window.streams[key];
  return { snap: rec.s.getSnapshot(), samples: rec.samples, now: Math.round(performance.now()) };
};

window.sendOn = (key, text) => window.streams[key].s.send(text);

window.stop = (key) => {
  const rec = window.streams[key];
  clearInterval(rec.timer);
  rec.off();
  rec.s.close();
  delete window.streams[key];
};
