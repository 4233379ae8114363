//! Test helpers: a run-log generator, a reference reducer, and a simulated
//! server that drives the engine on a virtual clock (no sleeps).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use runstream::core::engine::{Action, CloseCause, Config, Engine, Ms};
use runstream::core::envelope::decode_envelope;
use runstream::core::state::{Parked, RunState};
use serde_json::{json, Value};

pub const RUN: &str = "run_T";

pub fn cfg() -> Config {
    let mut c = Config::new(RUN);
    c.has_snapshot_url = true;
    c.can_send = true;
    c
}

pub fn drain(e: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| e.poll_action()).collect()
}

/// A started engine and its first connection (no response yet).
pub fn connecting(c: Config, seed: [u64; 2]) -> (Engine, u64) {
    let mut e = Engine::new(c, seed, None);
    e.start(0.0);
    let (conn, _) = connect_of(&drain(&mut e)).unwrap();
    (e, conn)
}

/// An engine whose first connection is open (response 200 at t = 1 ms).
pub fn open(c: Config, seed: [u64; 2]) -> (Engine, u64) {
    let (mut e, conn) = connecting(c, seed);
    e.handle_response(1.0, conn, 200, None, true);
    (e, conn)
}

/// The `client_request_id`s of the sends the engine asked to POST.
pub fn posted_ids(e: &mut Engine) -> Vec<String> {
    drain(e)
        .into_iter()
        .filter_map(|a| match a {
            Action::Post {
                client_request_id, ..
            } => Some(client_request_id),
            _ => None,
        })
        .collect()
}

pub fn connect_of(actions: &[Action]) -> Option<(u64, u64)> {
    actions.iter().find_map(|a| match a {
        Action::Connect { conn, resume_from } => Some((*conn, *resume_from)),
        _ => None,
    })
}

/// Runs timers until the engine asks for a connection (at most `limit` ms
/// ahead); returns `(conn, resume_from, time)`.
pub fn next_connect(e: &mut Engine, mut now: Ms, limit: Ms) -> Option<(u64, u64, Ms)> {
    let end = now + limit;
    loop {
        if let Some((c, f)) = connect_of(&drain(e)) {
            return Some((c, f, now));
        }
        now = e.poll_timeout()?;
        if now > end {
            return None;
        }
        e.handle_timeout(now);
    }
}

/// Runs every timer up to `until` (the engine's own deadlines only); returns the actions.
pub fn run_until(e: &mut Engine, until: Ms) -> Vec<Action> {
    let mut acts = drain(e);
    while let Some(t) = e.poll_timeout() {
        if t > until {
            break;
        }
        e.handle_timeout(t);
        acts.extend(drain(e));
    }
    acts
}

/// Envelope JSON for event `id`.
pub fn envelope(id: u64, ty: &str, payload: Value) -> String {
    json!({
        "event_id": id, "run_id": RUN, "type": ty,
        "timestamp": "2026-11-22T12:00:00.000Z", "payload": payload
    })
    .to_string()
}

/// A deterministic, realistic run log from `seed`: workers whose job ids come
/// late, job-only completions, tools before workers, chat deltas, unknown types.
pub fn gen_log(seed: u64, workers: usize) -> Vec<String> {
    let mut r = runstream::core::rng::Rng::new([seed, 99]);
    let mut evs: Vec<(String, Value)> = vec![("run.started".into(), json!({"title": "t"}))];
    let mut pending: Vec<Vec<(String, Value)>> = Vec::new();
    for w in 0..workers {
        let wid = format!("w{w}");
        let jid = format!("j{w}");
        let mut seq: Vec<(String, Value)> = Vec::new();
        let style = r.next_u64() % 4;
        // Tool before worker started (placeholder), or worker first.
        if style == 0 {
            seq.push((
                "tool.started".into(),
                json!({"worker_id": wid, "tool_call_id": format!("t{w}a"), "name": "fetch"}),
            ));
        }
        match style {
            1 => seq.push((
                "worker.started".into(),
                json!({"worker_id": wid, "job_id": jid, "name": "n"}),
            )),
            _ => seq.push((
                "worker.started".into(),
                json!({"worker_id": wid, "name": "n"}),
            )),
        }
        // A job-only event before the mapping is known (parked), then the mapping.
        if style == 2 {
            seq.push((
                "tool.started".into(),
                json!({"job_id": jid, "tool_call_id": format!("t{w}b"), "name": "search"}),
            ));
        }
        if style != 1 {
            seq.push((
                "worker.job_assigned".into(),
                json!({"worker_id": wid, "job_id": jid}),
            ));
        }
        let ok = r.next_u64() % 3 != 0;
        seq.push(("tool.completed".into(), json!({"job_id": jid, "tool_call_id": format!("t{w}b"), "status": if ok {"ok"} else {"error"}})));
        if style == 0 {
            seq.push(("tool.completed".into(), json!({"worker_id": wid, "tool_call_id": format!("t{w}a"), "status": "ok", "duration_ms": 12})));
        }
        seq.push(("future.event".into(), json!({"x": w})));
        let done = if r.next_u64() % 2 == 0 {
            json!({"job_id": jid, "status": "succeeded"})
        } else {
            json!({"worker_id": wid, "status": "failed", "error": "x"})
        };
        seq.push(("worker.completed".into(), done));
        pending.push(seq);
    }
    // Chat: a reply streamed in deltas.
    let mut chat = vec![
        (
            "message.created".to_string(),
            json!({"message_id": "u1", "role": "user", "client_request_id": "c1", "content": "hi"}),
        ),
        (
            "message.created".to_string(),
            json!({"message_id": "a1", "role": "assistant", "reply_to": "c1"}),
        ),
    ];
    for i in 0..(3 + r.next_u64() % 10) {
        chat.push((
            "message.delta".into(),
            json!({"message_id": "a1", "delta": format!("tok{i} ")}),
        ));
    }
    chat.push((
        "message.completed".into(),
        json!({"message_id": "a1", "finish_reason": "stop"}),
    ));
    pending.push(chat);
    // Interleave the per-worker sequences, keeping each one's internal order.
    loop {
        let live: Vec<usize> = (0..pending.len())
            .filter(|&i| !pending[i].is_empty())
            .collect();
        if live.is_empty() {
            break;
        }
        let pick = live[(r.next_u64() as usize) % live.len()];
        evs.push(pending[pick].remove(0));
    }
    evs.push(("supervisor.completed".into(), json!({"summary": "done"})));
    evs.push(("run.completed".into(), json!({"status": "succeeded"})));
    evs.into_iter()
        .enumerate()
        .map(|(i, (t, p))| envelope(i as u64 + 1, &t, p))
        .collect()
}

/// The state after applying `log[..n]` once, in order (what the server would snapshot).
pub fn reference(log: &[String], n: usize) -> RunState {
    let mut s = RunState::new(RUN);
    let mut parked = Parked::default();
    let mut out = Vec::new();
    for text in &log[..n] {
        let e = decode_envelope(text, RUN).expect("valid log");
        s.apply(e.event_id, e.kind, &mut parked, 1024, &mut out)
            .expect("apply");
    }
    s
}

/// SSE bytes of one envelope.
pub fn sse_frame(text: &str) -> Vec<u8> {
    let id = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["event_id"].as_u64())
        .unwrap_or(0);
    format!("id: {id}\nevent: x\ndata: {text}\n\n").into_bytes()
}

/// How the simulated server misbehaves on each connection.
#[derive(Debug, Clone, Default)]
pub struct Chaos {
    /// Events each connection delivers before the server drops it (0 = never).
    pub drop_after: Vec<usize>,
    /// Duplicate every k-th event (0 = never).
    pub dup_every: usize,
    /// Swap adjacent pairs every k-th event (0 = never).
    pub swap_every: usize,
    /// Byte chunk sizes to cut the stream into (cycled; empty = one chunk per event).
    pub chunks: Vec<usize>,
    /// The server only keeps events with id > prune_below; older resumes get a snapshot.
    pub prune_below: u64,
    /// Events the server has logged at each connection (grows: a live run). 0 = all.
    pub live_step: usize,
}

/// A simulated server + virtual clock around one engine.
pub struct Sim {
    pub engine: Engine,
    pub log: Vec<String>,
    pub now: Ms,
    pub chaos: Chaos,
    pub connections: usize,
    pub flushes: u64,
    pub persisted: Option<u64>,
    pub snapshot_fetches: usize,
    pub actions: Vec<Action>,
}

impl Sim {
    pub fn new(cfg: Config, log: Vec<String>, chaos: Chaos) -> Self {
        Self {
            engine: Engine::new(cfg, [1, 2], None),
            log,
            now: 1000.0,
            chaos,
            connections: 0,
            flushes: 0,
            persisted: None,
            snapshot_fetches: 0,
            actions: Vec::new(),
        }
    }

    fn logged(&self) -> usize {
        if self.chaos.live_step == 0 {
            self.log.len()
        } else {
            (self.chaos.live_step * (self.connections + 1)).min(self.log.len())
        }
    }

    /// Runs until the engine is closed/failed or `max_steps` timer jumps pass.
    pub fn run(&mut self, max_steps: usize) {
        self.engine.start(self.now);
        for _ in 0..max_steps {
            if !self.pump() {
                match self.engine.poll_timeout() {
                    Some(t) => {
                        self.now = self.now.max(t);
                        self.engine.handle_timeout(self.now);
                    }
                    None => return,
                }
            }
        }
    }

    /// Executes queued actions; returns true if any connection was served.
    pub fn pump(&mut self) -> bool {
        let mut served = false;
        while let Some(a) = self.engine.poll_action() {
            self.actions.push(a.clone());
            match a {
                Action::Connect { conn, resume_from } => {
                    served = true;
                    self.serve(conn, resume_from);
                }
                Action::RequestFrame => {
                    self.now += 16.0;
                    if self.engine.flush(self.now) {
                        self.flushes += 1;
                    }
                }
                Action::Persist { cursor } => self.persisted = Some(cursor),
                Action::FetchSnapshot => {
                    self.snapshot_fetches += 1;
                    let n = self.logged();
                    let body = json!({"run_id": RUN, "event_id": n, "state": reference(&self.log, n).to_wire()}).to_string();
                    self.engine.handle_snapshot(self.now, Ok(&body));
                }
                _ => {}
            }
        }
        served
    }

    fn serve(&mut self, conn: u64, resume_from: u64) {
        let idx = self.connections;
        self.connections += 1;
        self.now += 5.0;
        self.engine.handle_response(self.now, conn, 200, None, true);
        let logged = self.logged();
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut start = resume_from as usize;
        if resume_from < self.chaos.prune_below && (self.chaos.prune_below as usize) <= logged {
            let n = self.chaos.prune_below as usize;
            let snap = json!({"event_id": n, "run_id": RUN, "type": "snapshot",
                "timestamp": "2026-11-22T12:00:00Z", "payload": {"state": reference(&self.log, n).to_wire()}}).to_string();
            frames.push(sse_frame(&snap));
            start = n;
        }
        let mut evs: Vec<&String> = self.log[start.min(logged)..logged].iter().collect();
        if self.chaos.swap_every > 0 {
            let k = self.chaos.swap_every.max(2);
            let mut i = 0;
            while i + 1 < evs.len() {
                if i % k == 0 {
                    evs.swap(i, i + 1);
                }
                i += 2;
            }
        }
        for (i, e) in evs.iter().enumerate() {
            frames.push(sse_frame(e));
            if self.chaos.dup_every > 0 && i % self.chaos.dup_every == 0 {
                frames.push(sse_frame(e));
            }
        }
        let drop_after = self.chaos.drop_after.get(idx).copied().unwrap_or(0);
        if drop_after > 0 {
            frames.truncate(drop_after);
        }
        let bytes: Vec<u8> = frames.concat();
        let mut pos = 0;
        let mut c = 0;
        while pos < bytes.len() {
            let size = if self.chaos.chunks.is_empty() {
                bytes.len()
            } else {
                self.chaos.chunks[c % self.chaos.chunks.len()].max(1)
            };
            c += 1;
            let end = (pos + size).min(bytes.len());
            self.now += 1.0;
            self.engine.handle_bytes(self.now, conn, &bytes[pos..end]);
            pos = end;
            self.pump();
        }
        // The server ends the response (dropped, or all logged events sent for a live run).
        if drop_after > 0 || logged < self.log.len() {
            self.now += 1.0;
            self.engine.handle_closed(self.now, conn, CloseCause::Eof);
        }
        self.pump();
    }
}
