// runstream benchmarks, side by side with peers, in headless Chromium against
// the reference server on loopback. Prints a table and writes JSON.
//   node benches/run.mjs            full run (several minutes)
//   node benches/run.mjs --smoke    short version (the test command runs it)
//   node benches/run.mjs --only 8   only section 8 (the sections that are functions of their own)
import { build } from "esbuild";
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { gzipSync } from "node:zlib";
import { readFileSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const smoke = process.argv.includes("--smoke");
const P = smoke
  ? { tokens: 20_000, rounds: 3, rate: 5000, seconds: 2, drops: 8, refreshes: 3, memory: 100_000, history: 1500, historySeconds: 3 }
  : { tokens: 100_000, rounds: 7, rate: 5000, seconds: 10, drops: 50, refreshes: 7, memory: 1_000_000, history: 1500, historySeconds: 10 };

const freePort = () => new Promise((res) => {
  const s = createServer();
  s.listen(0, "127.0.0.1", () => {
    const { port } = s.address();
    s.close(() => res(port));
  });
});

// Section 8: concurrent streams, and the length of each run they follow (s).
const S = smoke ? { streams: 12, streamSeconds: 2 } : { streams: 12, streamSeconds: 6 };
// Section 5's guard: the core package's size (wasm + glue + snippets, gzip -9), bytes.
const SIZE_GUARD_GZ = 127_480;
// --only 8: run only these sections (comma-separated; see `sections`).
const onlyArg = process.argv.indexOf("--only");
const only = onlyArg > 0 ? String(process.argv[onlyArg + 1] || "").split(",").map(Number) : null;

async function startServer() {
  if (process.env.RUNSTREAM_SERVER) return { url: process.env.RUNSTREAM_SERVER, stop() {} };
  const bin = join(root, "target/release/runstream-server");
  if (!existsSync(bin)) throw new Error("build the server first: cargo build --release -p runstream-server");
  const port = await freePort();
  const child = spawn(bin, ["--auth", "none", "--dev", "--addr", `127.0.0.1:${port}`, "--www", join(root, "www"), "--pkg", join(root, "pkg")], { stdio: "ignore" });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    try {
      await fetch(url + "/api/runs/x/snapshot");
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return { url, stop: () => child.kill() };
}

const gz = (buf) => gzipSync(buf, { level: 9 }).length;
async function bundleSize(entryCode) {
  const r = await build({ stdin: { contents: entryCode, resolveDir: join(root, "benches"), loader: "js" }, bundle: true, minify: true, format: "esm", write: false, logLevel: "silent" });
  const code = Buffer.from(r.outputFiles[0].contents);
  return { min: code.length, gz: gz(code) };
}

async function devtoolsSizes() {
  const rows = {};
  for (const [name, file, external] of [
    ["runstream/devtools", "pkg/devtools.js", []],
    ["runstream/devtools/react", "pkg/devtools-react.js", ["react"]],
  ]) {
    try {
      const r = await build({ entryPoints: [join(root, file)], bundle: true, minify: true, format: "esm", write: false, logLevel: "silent", external });
      const code = Buffer.from(r.outputFiles[0].contents);
      rows[name] = { min: code.length, gz: gz(code), detail: `its own import, not in runstream's figure${external.length ? "; react external" : ""}` };
    } catch (e) {
      rows[name] = { error: String(e.message || e).split("\n")[0] };
    }
  }
  return rows;
}

async function sizes() {
  const glue = await build({ entryPoints: [join(root, "pkg/runstream.js")], bundle: true, minify: true, format: "esm", write: false, logLevel: "silent" });
  const glueBuf = Buffer.from(glue.outputFiles[0].contents);
  const wasmBuf = readFileSync(join(root, "pkg/runstream_bg.wasm"));
  const rows = { runstream: { min: glueBuf.length + wasmBuf.length, gz: gz(glueBuf) + gz(wasmBuf), detail: `wasm ${gz(wasmBuf)} B gz + JS ${gz(glueBuf)} B gz` } };
  // The devtools panel: its own imports (runstream/devtools, runstream/devtools/react),
  // never loaded by the core entry, so measured apart (React is the app's, external).
  Object.assign(rows, await devtoolsSizes());
  const peers = {
    "@microsoft/fetch-event-source": `export * from "@microsoft/fetch-event-source";`,
    "eventsource-parser": `export * from "eventsource-parser";`,
    "reconnecting-websocket": `export { default } from "reconnecting-websocket";`,
    partysocket: `export * from "partysocket";`,
    centrifuge: `export * from "centrifuge";`,
    "@durable-streams/client": `export * from "@durable-streams/client";`,
  };
  for (const [name, code] of Object.entries(peers)) {
    try {
      rows[name] = await bundleSize(code);
    } catch (e) {
      rows[name] = { error: String(e.message || e).split("\n")[0] };
    }
  }
  return rows;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Creates a run on the reference server (`POST /api/admin/runs`); its `run_id`. */
async function createRun(server, body) {
  const r = await fetch(`${server.url}/api/admin/runs`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  return (await r.json()).run_id;
}

/**
 * Samples the server's `GET /api/admin/connections` every 20 ms while a case
 * runs: `peak` = most streaming HTTP connections (SSE streams + WebSockets)
 * open at once above what was open before, `opened` = how many were opened,
 * `subscriptions` = runs subscribed on WebSockets. null where the server has
 * no such endpoint.
 */
async function connectionSampler(url) {
  const get = async () => {
    try {
      const r = await fetch(url + "/api/admin/connections");
      return r.ok ? await r.json() : null;
    } catch {
      return null;
    }
  };
  // Let streams of an earlier case close first (the server sees a client go at once).
  let base = await get();
  for (let i = 0; i < 50 && base && base.open > 0; i++) {
    await sleep(100);
    base = await get();
  }
  if (!base) return { stop: async () => null };
  let peak = 0;
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const v = await get();
      if (v) peak = Math.max(peak, v.open - base.open);
      await sleep(20);
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      const end = await get();
      if (!end) return null;
      const d = (k) => end[k].total - base[k].total;
      return { peak, opened: d("sse_streams") + d("ws_sockets"), subscriptions: d("ws_subscriptions") };
    },
  };
}

/** Per-stream first-event times (epoch ms) of one case → its row. */
function streamRow(results, timeoutMs, conns) {
  const t0 = Math.min(...results.map((r) => r.t0));
  const first = results.flatMap((r) => r.first);
  const got = first.filter((x) => x !== null).map((x) => x - t0);
  return {
    streams: first.length,
    delivered: got.length,
    slowestMs: got.length === first.length ? Math.max(...got) : null,
    withinOneSecond: got.filter((x) => x <= 1000).length,
    timeoutMs,
    sharing: [...new Set(results.flatMap((r) => r.sharing))],
    connections: conns,
  };
}

/** Section 8: many concurrent streams over plain HTTP/1.1, side by side. */
async function concurrentStreams(browser, server, results) {
  console.log(`\n8. ${S.streams} concurrent streams over plain HTTP/1.1 (loopback server; runs of ${S.streamSeconds} s at 20 events/s)`);
  console.log("   time until the slowest stream delivers its first event; server connections counted by the server (GET /api/admin/connections)");
  const cs = (results.concurrentStreams = {});
  const timeoutMs = 3 * S.streamSeconds * 1000 + 3000;
  const newRuns = async (n) => {
    const runs = [];
    for (let i = 0; i < n; i++) {
      runs.push(await createRun(server, { tokens: 20 * S.streamSeconds, rate: 20 }));
    }
    return runs;
  };
  // One tab, one stream per run.
  const inTab = async (kind) => {
    const p = await browser.newPage();
    try {
      await p.goto(`${server.url}/bench/index.html`);
      await p.evaluate(() => window.bench.ready);
      const sampler = await connectionSampler(server.url);
      // Runs start when created: create them once the page is ready.
      const runs = await newRuns(S.streams);
      const r = await p.evaluate(([k, runs, t]) => window.bench.concurrent(k, runs, t), [kind, runs, timeoutMs]);
      return streamRow([r], timeoutMs, await sampler.stop());
    } finally {
      await p.close();
    }
  };
  // Tabs (pages of one browser context, which share its connection pool) following one run.
  const inTabs = async (share) => {
    const ctx = await browser.newContext();
    try {
      const pages = [];
      for (let i = 0; i < S.streams; i++) {
        const p = await ctx.newPage();
        p.on("pageerror", (e) => console.error("pageerror:", e.message));
        await p.goto(`${server.url}/bench/index.html`);
        await p.evaluate(() => window.bench.ready);
        pages.push(p);
      }
      const sampler = await connectionSampler(server.url);
      const [run] = await newRuns(1);
      const opts = { runId: run, transport: "fetch", url: `/api/stream/runs/${run}`, share };
      // keep: every tab holds its stream until the slowest one has its first event.
      const rs = await Promise.all(pages.map((p) => p.evaluate(([o, t]) => window.bench.follow([o], t, true), [opts, timeoutMs])));
      const conns = await sampler.stop();
      await Promise.all(pages.map((p) => p.evaluate(() => window.bench.release())));
      return streamRow(rs, timeoutMs, conns);
    } finally {
      await ctx.close();
    }
  };
  cs.nativeEventSource = await inTab("eventsource");
  cs.websocket = await inTab("websocket");
  cs.tabsShared = await inTabs("tabs");
  // share: "tabs" is detected, not assumed: a build without it reports "solo" in every tab.
  cs.tabsShared.supported = cs.tabsShared.sharing.some((x) => x === "leader" || x === "follower");
  cs.fetchOneTab = await inTab("fetch");
  cs.tabsUnshared = await inTabs("none");
  console.log("   client                                                 slowest first event   first event ≤ 1 s   server connections: peak open / opened");
  const rows = [
    [`(a) ${S.streams} native EventSources, one tab`, cs.nativeEventSource],
    [`(b) runstream websocket, ${S.streams} runs, one tab`, cs.websocket],
    [`(c) runstream fetch, share: "tabs", ${S.streams} tabs, one run`, cs.tabsShared],
    [`    control: runstream fetch, ${S.streams} runs, one tab`, cs.fetchOneTab],
    [`    control: runstream fetch, share: "none", ${S.streams} tabs`, cs.tabsUnshared],
  ];
  for (const [name, v] of rows) {
    if (v === cs.tabsShared && !v.supported) {
      console.log(`   ${name.padEnd(54)} n/a (share: tabs not in this build)`);
      continue;
    }
    const slowest = v.slowestMs === null ? `never (${v.delivered}/${v.streams} in ${fmt(v.timeoutMs / 1000)} s)` : `${fmt(v.slowestMs)} ms`;
    const c = v.connections ? `${v.connections.peak} / ${v.connections.opened}${v.connections.subscriptions ? ` (${v.connections.subscriptions} subscriptions)` : ""}` : "—";
    console.log(`   ${name.padEnd(54)} ${slowest.padStart(19)}   ${`${v.withinOneSecond}/${v.streams}`.padStart(17)}   ${c}`);
  }
  const limitShows = cs.nativeEventSource.withinOneSecond < S.streams;
  const wsMet = cs.websocket.slowestMs !== null && cs.websocket.slowestMs <= 1000 && cs.websocket.connections?.peak === 1;
  console.log(`   the browser's per-origin limit shows on native EventSource → ${limitShows ? "yes" : "no"}; runstream websocket all in ≤ 1 s on one connection → ${wsMet ? "met" : "MISSED"}`);
  if (cs.tabsShared.supported) {
    const tabsMet = cs.tabsShared.slowestMs !== null && cs.tabsShared.slowestMs <= 1000 && cs.tabsShared.connections?.peak === 1;
    console.log(`   share: "tabs" all in ≤ 1 s on one connection → ${tabsMet ? "met" : "MISSED"}`);
  }
}

/**
 * Section 4b: a run with a long history (PROTOCOL's chat run, the server's
 * `history` knob), followed in `www/bench/history.html` with the default
 * `resume: "session"`; each reload mid-stream times navigation start → the
 * first snapshot holding the whole history (the page's `fullMs`).
 */
async function refreshLongHistory(browser, server, reloads) {
  const run = await createRun(server, { tokens: 2500, rate: 100, history: P.history, history_bytes: 3000 });
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await page.goto(`${server.url}/bench/history.html?run=${run}&history=${P.history}&resume=session`);
    await page.waitForFunction(() => document.body.dataset.fullMs, null, { timeout: 60000 });
    // Let the completed bodies commit to IndexedDB over a few persist intervals.
    await page.waitForFunction((h) => window.stream.getSnapshot().state.cursor > h * 1.5 + 150, P.history, { timeout: 20000 });
    await sleep(3500);
    const samples = [];
    for (let i = 0; i < reloads; i++) {
      await page.reload();
      await page.waitForFunction(() => document.body.dataset.fullMs, null, { timeout: 30000 });
      const d = await page.evaluate(() => ({ ...document.body.dataset }));
      // Restored, not replayed: the first full snapshot holds more than the stream applied since the reload.
      if (Number(d.fullCursor) - Number(d.fullApplied) <= P.history * 1.5) throw new Error(`section 4b: the history was replayed, not restored (${JSON.stringify(d)})`);
      samples.push(Number(d.fullMs));
      await sleep(1200);
    }
    const sorted = samples.slice().sort((a, b) => a - b);
    return { samples, median: sorted[Math.floor(sorted.length / 2)] };
  } finally {
    await context.close();
  }
}

/**
 * Section 1: bytes → applied state, runstream next to the JS pipeline, on the
 * same SSE bytes from memory (`P.rounds` alternating rounds).
 */
async function pipelineThroughput(page, results) {
  console.log(`\n1. Pipeline throughput (SSE bytes from memory → applied, deduplicated state; ${P.rounds} alternating rounds: median [min – max])`);
  const t = (results.throughput = await page.evaluate(([n, r]) => window.bench.throughput(n, r), [P.tokens, P.rounds]));
  const range = (x, d = 0) => `${fmt(x.median, d)} [${fmt(x.min, d)} – ${fmt(x.max, d)}]`;
  console.log(`   events                 ${fmt(t.events)}`);
  console.log(`   runstream (wasm)       ${range(t.runstream)} events/s`);
  console.log(`   JS pipeline            ${range(t.jsPipeline)} events/s   (eventsource-parser + JSON.parse + Map + immutable update)`);
  console.log(`   ratio (per round)      ${range(t.ratio, 2)}×   goal median ≥ 1.5× → ${t.ratio.median >= 1.5 ? "met" : "MISSED"}`);
}

/** Section 1 alone: its own page. */
async function throughputAlone(browser, server, results) {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("pageerror:", e.message));
  await page.goto(`${server.url}/bench/index.html`);
  await page.evaluate(() => window.bench.ready);
  await pipelineThroughput(page, results);
  await page.close();
}

/** Section 5: sizes of the package (and of the devtools panel, apart) and of peers. */
async function sizeSection(_browser, _server, results) {
  console.log("\n5. Size (minified, gzip -9)");
  const sz = (results.size = await sizes());
  for (const [k, v] of Object.entries(sz)) console.log(`   ${k.padEnd(32)} ${v.error ? v.error : `${fmt(v.gz).padStart(8)} B gz   ${fmt(v.min).padStart(9)} B min${v.detail ? "   " + v.detail : ""}`}`);
  // A guard, not a goal (issue 29: the 40 KB goal is retired, the engine stays in Rust): the
  // core package (wasm + glue + snippets) must not grow past what it was on 2026-12-07. Past
  // it, this run (and so the test command's bench-smoke step) fails. The devtools rows are
  // their own imports, measured apart.
  const guard = sz.runstream.gz <= SIZE_GUARD_GZ;
  console.log(`   guard runstream ≤ ${fmt(SIZE_GUARD_GZ)} B gz → ${guard ? "met" : "EXCEEDED"}`);
  if (!guard) process.exitCode = 1;
}

/** Sections that can run alone (`--only`). */
const sections = { 1: throughputAlone, 5: sizeSection, 8: concurrentStreams };

const fmt = (x, d = 0) => (x === null || x === undefined || Number.isNaN(x) ? "—" : Number(x).toLocaleString("en-US", { maximumFractionDigits: d }));

async function main() {
  mkdirSync(join(root, "www/bench"), { recursive: true });
  await build({ entryPoints: [join(root, "benches/page/bench.js")], bundle: true, format: "esm", outfile: join(root, "www/bench/bench.bundle.js"), external: ["/pkg/*"], logLevel: "silent" });
  const server = await startServer();
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic", "--enable-precise-memory-info", "--js-flags=--expose-gc"],
  });
  const results = { smoke, params: { ...P, ...S }, date: new Date().toISOString() };
  if (only) {
    try {
      for (const n of only) {
        if (!sections[n]) throw new Error(`--only: section ${n} cannot run alone (${Object.keys(sections).join(", ")} can)`);
        await sections[n](browser, server, results);
      }
    } finally {
      await browser.close();
      server.stop();
    }
    const name = `only-${only.join("-")}${smoke ? "-smoke" : ""}`;
    mkdirSync(join(root, "target/bench"), { recursive: true });
    writeFileSync(join(root, "target/bench", `${name}.json`), JSON.stringify(results, null, 2));
    console.log(`\nJSON: target/bench/${name}.json`);
    return;
  }
  try {
    const page = await browser.newPage();
    page.on("pageerror", (e) => console.error("pageerror:", e.message));
    await page.goto(`${server.url}/bench/index.html`);
    await page.evaluate(() => window.bench.ready);

    await pipelineThroughput(page, results);

    console.log(`\n2. Frame budget (${P.rate} events/s for ${P.seconds} s)`);
    const f = (results.frameBudget = await page.evaluate(([r, s]) => window.bench.frameBudget(r, s), [P.rate, P.seconds]));
    console.log("   renderer            calls/s   calls/frame   long tasks   worst frame");
    for (const [k, v] of Object.entries({ "runstream subscribe": f.runstream, "render per event": f.perEvent })) {
      console.log(`   ${k.padEnd(18)}  ${fmt(v.callsPerSec).padStart(7)}   ${fmt(v.callsPerFrame, 2).padStart(11)}   ${fmt(v.longTasks).padStart(10)}   ${fmt(v.worstFrameMs, 1).padStart(8)} ms`);
    }
    console.log(`   goal ≤ 1 call/frame and 0 long tasks → ${f.runstream.callsPerFrame <= 1.05 && f.runstream.longTasks === 0 ? "met" : "MISSED"}`);

    console.log(`\n3. Reconnect latency (${P.drops} server drops; drop → first resumed event)`);
    const rc = (results.reconnect = await page.evaluate((d) => window.bench.reconnect(d), P.drops));
    console.log("   client                          p50 ms    p95 ms   drops seen");
    for (const [k, v] of Object.entries(rc)) console.log(`   ${k.padEnd(30)}  ${fmt(v.p50, 1).padStart(7)}  ${fmt(v.p95, 1).padStart(8)}   ${v.n}`);
    const worstP95 = Math.max(...Object.entries(rc).filter(([k]) => k.startsWith("runstream")).map(([, v]) => v.p95 ?? Infinity));
    console.log(`   goal runstream p95 ≤ 150 ms → ${worstP95 <= 150 ? "met" : "MISSED"} (worst transport ${fmt(worstP95, 1)} ms)`);

    console.log(`\n4. Refresh → first resumed event rendered (${P.refreshes} reloads, ms since navigation start)`);
    const times = [];
    for (let i = 0; i < P.refreshes; i++) {
      const run = await createRun(server, { tokens: 4000, rate: 300 });
      const p2 = await browser.newPage();
      await p2.goto(`${server.url}/bench/refresh.html?run=${run}`);
      await p2.waitForFunction(() => Number(document.body.dataset.cursor || 0) >= 50);
      await p2.reload();
      await p2.waitForFunction(() => document.body.dataset.resumedMs, null, { timeout: 10000 });
      times.push(Number(await p2.evaluate(() => document.body.dataset.resumedMs)));
      await p2.close();
    }
    times.sort((a, b) => a - b);
    results.refresh = { samples: times, median: times[Math.floor(times.length / 2)] };
    console.log(`   runstream median ${fmt(results.refresh.median, 1)} ms (samples ${times.map((x) => x.toFixed(0)).join(", ")}); goal ≤ 300 ms → ${results.refresh.median <= 300 ? "met" : "MISSED"}`);
    console.log("   (peers have no cursor persistence across a reload: they restart the stream from the beginning)");

    const LH = smoke ? { reloads: 2 } : { reloads: 5 };
    console.log(`\n4b. Refresh of a long history (${fmt(P.history)} completed messages of 3 KB, one streaming at 100 tokens/s; ${LH.reloads} reloads mid-stream, ms from navigation start to the whole history shown)`);
    results.refreshLongHistory = await refreshLongHistory(browser, server, LH.reloads);
    const rl = results.refreshLongHistory;
    console.log(`   runstream median ${fmt(rl.median, 1)} ms (samples ${rl.samples.map((x) => x.toFixed(0)).join(", ")}); restored cursor then resumed from it; goal ≤ 300 ms → ${rl.median <= 300 ? "met" : "MISSED"}`);

    await sizeSection(browser, server, results);

    console.log(`\n6. Memory (${fmt(P.memory)} events through one run; unknown-type events, so the state itself does not grow; JS heap after a forced GC)`);
    const m = (results.memory = await page.evaluate((n) => window.bench.memory(n), P.memory));
    console.log("   events applied    wasm memory     JS heap");
    for (const s of m.samples) console.log(`   ${fmt(s.events).padStart(14)}   ${fmt(s.wasmBytes).padStart(12)}   ${fmt(s.jsHeapBytes).padStart(10)}`);
    const first = m.samples[0];
    const last = m.samples[m.samples.length - 1];
    // Flat = no growth over the second half of the run (a one-time high-water mark while
    // the first large chunks arrive is allocator capacity, not history).
    const mid = m.samples[Math.floor(m.samples.length / 2)];
    const flat = mid && last && last.wasmBytes === mid.wasmBytes;
    console.log("   JS pipeline (peer): events applied → JS heap");
    console.log("   " + m.jsPipeline.map((x) => `${fmt(x.events)} → ${fmt(x.jsHeapBytes)}`).join("; "));
    console.log(`   goal flat → ${flat ? "met" : "MISSED"}: wasm memory ${fmt(first?.wasmBytes)} B at ${fmt(first?.events)} events, ${fmt(mid?.wasmBytes)} B at ${fmt(mid?.events)}, ${fmt(last?.wasmBytes)} B at ${fmt(last?.events)}`);

    console.log(`\n7. Long history (${fmt(P.history)} completed messages of 3 KB, one streaming at 100 tokens/s for ${P.historySeconds} s)`);
    const lh = (results.longHistory = await page.evaluate(([h, s]) => window.bench.longHistory(h, 3000, 100, s), [P.history, P.historySeconds]));
    console.log("   pipeline                      notifications   p95 ms   worst ms   long tasks   unchanged rows kept identity");
    for (const [k, v] of Object.entries({ "runstream getSnapshot()": lh.runstream, "JS immutable update": lh.jsPipeline })) {
      console.log(`   ${k.padEnd(28)}  ${fmt(v.notifications).padStart(13)}   ${fmt(v.p95Ms, 2).padStart(6)}   ${fmt(v.worstMs, 2).padStart(8)}   ${fmt(v.longTasks).padStart(10)}   ${v.keptIdentity === null ? "—" : (100 * v.keptIdentity).toFixed(1) + " %"}`);
    }
    const lhMet = (lh.runstream.p95Ms <= Math.max(2, 2 * lh.jsPipeline.p95Ms)) && lh.runstream.longTasks === 0 && lh.runstream.keptIdentity >= 0.99;
    console.log(`   goal p95 ≤ 2× JS (or ≤ 2 ms), 0 long tasks, ≥ 99 % identity → ${lhMet ? "met" : "MISSED"}`);

    await concurrentStreams(browser, server, results);
  } finally {
    await browser.close();
    server.stop();
  }
  const out = join(root, "target/bench");
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, smoke ? "smoke.json" : "results.json"), JSON.stringify(results, null, 2));
  console.log(`\nJSON: target/bench/${smoke ? "smoke" : "results"}.json`);

}

main().catch((e) => {
  console.error(e);

  process.exit(1);
});
