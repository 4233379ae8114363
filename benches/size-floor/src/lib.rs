//! Size-floor variants: only the byte path in Rust, behind a minimal export surface.
//! Build with exactly one of the features v1, v2, v3, v3full.
#![allow(missing_docs, clippy::all)]

#[cfg(not(any(feature = "v1", feature = "v2", feature = "v3", feature = "v3full")))]
compile_error!("build with one variant feature: v1, v2, v3 or v3full (scripts/size-floor.sh)");

use std::cell::UnsafeCell;
use wasm_bindgen::prelude::*;

/// Same global allocator as the shipped wasm (src/web/mod.rs).
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// A single-threaded global (wasm32 without atomics).
struct G<T>(UnsafeCell<Option<T>>);
unsafe impl<T> Sync for G<T> {}
impl<T> G<T> {
    const fn new() -> Self {
        G(UnsafeCell::new(None))
    }
    #[allow(clippy::mut_from_ref)]
    fn get(&self, init: impl FnOnce() -> T) -> &mut T {
        // SAFETY: wasm32 without threads; exports never re-enter.
        unsafe { (*self.0.get()).get_or_insert_with(init) }
    }
}

const RUN_ID: &str = "run_1";
const MAX_EVENT_BYTES: usize = 1 << 20;

fn mix(h: u32, v: u32) -> u32 {
    (h ^ v).wrapping_mul(0x0100_0193)
}
fn ol(s: &Option<String>) -> u32 {
    s.as_ref().map_or(7, |s| s.len() as u32)
}

use runstream_codec::envelope::EventKind;

/// Touches every field of a decoded payload so none of the decoding is dead.
fn weigh(k: &EventKind) -> u32 {
    #[cfg(feature = "bare")]
    if true {
        return matches!(k, EventKind::Unknown) as u32;
    }
    use EventKind::*;
    let mut h = 0x811c_9dc5u32;
    match k {
        RunStarted { title } => h = mix(h, ol(title)),
        RunCompleted { status, error } => h = mix(mix(h, *status as u32), ol(error)),
        SupervisorCompleted { summary } => h = mix(h, ol(summary)),
        CancelRequested {
            client_request_id,
            reason,
            reply_to,
        } => h = mix(mix(mix(h, ol(client_request_id)), ol(reason)), ol(reply_to)),
        WorkerStarted {
            worker_id,
            job_id,
            name,
        } => h = mix(mix(mix(h, worker_id.len() as u32), ol(job_id)), ol(name)),
        WorkerJobAssigned { worker_id, job_id } => {
            h = mix(mix(h, worker_id.len() as u32), job_id.len() as u32)
        }
        WorkerCompleted {
            worker_id,
            job_id,
            status,
            error,
        } => {
            h = mix(
                mix(mix(mix(h, ol(worker_id)), ol(job_id)), *status as u32),
                ol(error),
            )
        }
        ToolStarted {
            worker_id,
            job_id,
            tool_call_id,
            name,
        } => {
            h = mix(
                mix(
                    mix(mix(h, ol(worker_id)), ol(job_id)),
                    tool_call_id.len() as u32,
                ),
                name.len() as u32,
            )
        }
        ToolCompleted {
            worker_id,
            job_id,
            tool_call_id,
            ok,
            error,
            duration_ms,
        } => {
            h = mix(h, ol(worker_id) ^ ol(job_id) ^ tool_call_id.len() as u32);
            h = mix(
                mix(mix(h, *ok as u32), ol(error)),
                duration_ms.map_or(3, |d| d as u32),
            );
        }
        MessageCreated {
            message_id,
            role,
            client_request_id,
            reply_to,
            content,
        } => {
            h = mix(h, message_id.len() as u32 ^ role.as_str().len() as u32);
            h = mix(
                mix(mix(h, ol(client_request_id)), ol(reply_to)),
                ol(content),
            );
        }
        MessageDelta { message_id, delta } => {
            h = mix(mix(h, message_id.len() as u32), delta.len() as u32)
        }
        MessageCompleted {
            message_id,
            finish_reason,
            usage,
            fallback,
        } => {
            h = mix(h, message_id.len() as u32 ^ finish_reason.len() as u32);
            h = mix(
                mix(
                    h,
                    usage.map_or(5, |u| (u.prompt_tokens + u.completion_tokens) as u32),
                ),
                ol(fallback),
            );
        }
        MessageFailed { message_id, error } => {
            h = mix(mix(h, message_id.len() as u32), error.len() as u32)
        }
        Snapshot(s) => h = mix(h, s.len() as u32),
        Unknown => h = mix(h, 11),
    }
    h
}

// ---------------------------------------------------------------- V1: codec only
#[cfg(feature = "v1")]
mod v {
    use super::*;
    use runstream_codec::envelope::decode_envelope;
    use runstream_codec::error::DecodeError;
    use runstream_codec::sse::{SseItemRef, SseParser};

    struct S {
        parser: SseParser,
        sum: u32,
    }
    static ST: G<S> = G::new();

    /// Runs the SSE parser over `bytes`, decoding each event's data as an
    /// envelope; returns the number of valid envelopes (xor a checksum of them).
    #[wasm_bindgen]
    pub fn feed(bytes: &[u8]) -> u32 {
        let st = ST.get(|| S {
            parser: SseParser::new(MAX_EVENT_BYTES),
            sum: 0,
        });
        let mut n = 0u32;
        let mut sum = st.sum;
        st.parser.feed_ref(bytes, &mut |item| match item {
            SseItemRef::Event(ev) => match decode_envelope(ev.data, RUN_ID) {
                Ok(env) => {
                    n += 1;
                    sum = mix(mix(sum, env.event_id as u32), weigh(&env.kind));
                }
                Err(DecodeError::InvalidPayload {
                    event_id,
                    event_type,
                    reason,
                }) => {
                    sum = mix(
                        sum,
                        event_id as u32 ^ event_type.len() as u32 ^ reason.len() as u32,
                    )
                }
                Err(e) => sum = mix(sum, e.kind().len() as u32),
            },
            SseItemRef::Retry(ms) => sum = mix(sum, ms as u32),
            SseItemRef::Comment => sum = mix(sum, 1),
            SseItemRef::TooLarge(k) => sum = mix(sum, k as u32),
        });
        st.sum = sum;
        n ^ (sum << 16)
    }
}

// ------------------------------------------- V2: codec + ordering + reducer (no engine)
#[cfg(feature = "v2")]
mod v {
    use super::*;
    use runstream::core::engine::ordering::{Offer, Ordering};
    use runstream::core::state::{Applied, Parked, RunState};
    use runstream_codec::envelope::decode_envelope;
    use runstream_codec::error::DecodeError;
    use runstream_codec::sse::{SseItemRef, SseParser};

    const REORDER_CAPACITY: usize = 1024;
    const PARK_CAPACITY: usize = 256;

    struct S {
        parser: SseParser,
        state: RunState,
        parked: Parked,
        ordering: Ordering,
        applied: Vec<Applied>,
        sum: u32,
    }
    static ST: G<S> = G::new();

    impl S {
        fn apply(&mut self, id: u64, kind: EventKind) {
            self.sum = mix(self.sum, weigh(&kind));
            let r = self
                .state
                .apply(id, kind, &mut self.parked, PARK_CAPACITY, &mut self.applied);
            if let Err(e) = r {
                self.sum = mix(self.sum, e.kind().len() as u32);
            }
            for a in self.applied.drain(..) {
                self.sum = mix(
                    self.sum,
                    match a {
                        Applied::ToolSeen => 1,
                        Applied::ToolCompleted { ok, first_seen } => {
                            2 + ok as u32 + 2 * first_seen as u32
                        }
                        Applied::Token { reply_to } => 5 + ol(&reply_to),
                        Applied::MessageDone { reply_to, fallback } => {
                            6 + ol(&reply_to) + ol(&fallback)
                        }
                        Applied::Echo { client_request_id } => 7 + client_request_id.len() as u32,
                        Applied::RunCompleted => 8,
                        Applied::SendFailed { client_request_id } => {
                            9 + client_request_id.len() as u32
                        }
                    },
                );
            }
        }
        fn offer(&mut self, id: u64, kind: EventKind) {
            match self
                .ordering
                .offer(self.state.cursor, id, kind, REORDER_CAPACITY)
            {
                Offer::Duplicate => self.sum = mix(self.sum, 21),
                Offer::Held => self.sum = mix(self.sum, 22),
                Offer::Full => self.sum = mix(self.sum, 23),
                Offer::Apply(kind) => {
                    self.apply(id, kind);
                    self.drain();
                }
            }
        }
        fn drain(&mut self) {
            while let Some((id, kind)) = self.ordering.pop_ready(self.state.cursor) {
                self.apply(id, kind);
            }
        }
        fn frame(&mut self, text: &str) {
            match decode_envelope(text, RUN_ID) {
                Ok(env) => match env.kind {
                    #[cfg(feature = "nosnap")]
                    EventKind::Snapshot(json) => self.sum = mix(self.sum, json.len() as u32),
                    #[cfg(not(feature = "nosnap"))]
                    EventKind::Snapshot(json) => match RunState::from_wire_json(&json) {
                        Ok(st) if env.event_id > self.state.cursor => {
                            self.state.replace_with(st);
                            self.ordering.covered_up_to(env.event_id);
                            self.drain();
                        }
                        Ok(_) => self.sum = mix(self.sum, 31),
                        Err(e) => self.sum = mix(self.sum, e.message().len() as u32),
                    },
                    kind => self.offer(env.event_id, kind),
                },
                Err(DecodeError::InvalidPayload {
                    event_id,
                    event_type,
                    reason,
                }) => {
                    self.sum = mix(self.sum, reason.len() as u32);
                    if event_type != "snapshot" {
                        self.offer(event_id, EventKind::Unknown);
                    }
                }
                Err(e) => self.sum = mix(self.sum, e.kind().len() as u32),
            }
        }
    }

    fn st() -> &'static mut S {
        ST.get(|| S {
            parser: SseParser::new(MAX_EVENT_BYTES),
            state: RunState::new(RUN_ID),
            parked: Parked::default(),
            ordering: Ordering::default(),
            applied: Vec::new(),
            sum: 0,
        })
    }

    /// SSE → envelope → exactly-once ordering → reducer. Returns the checksum.
    #[wasm_bindgen]
    pub fn feed(bytes: &[u8]) -> u32 {
        let st = st();
        let mut parser = std::mem::replace(&mut st.parser, SseParser::new(0));
        parser.feed_ref(bytes, &mut |item| match item {
            SseItemRef::Event(ev) => st.frame(ev.data),
            SseItemRef::Retry(ms) => st.sum = mix(st.sum, ms as u32),
            SseItemRef::Comment => {}
            SseItemRef::TooLarge(k) => st.sum = mix(st.sum, k as u32),
        });
        st.parser = parser;
        st.sum
    }

    /// Message count plus a checksum of their contents.
    #[wasm_bindgen]
    pub fn messages() -> u32 {
        let st = st();
        let mut h = st.state.cursor as u32;
        for m in &st.state.messages {
            h = mix(
                h,
                m.content.len() as u32 ^ m.status as u32 ^ ol(&m.message_id),
            );
        }
        for w in &st.state.workers {
            h = mix(h, w.worker_id.len() as u32 ^ w.tools.len() as u32);
        }
        (st.state.messages.len() as u32) ^ (h << 8)
    }
}

// ------------------------------------- V3 / V3full: the whole Engine, no src/web
#[cfg(any(feature = "v3", feature = "v3full"))]
mod v {
    use super::*;
    use runstream::core::engine::{Action, Config, Engine};

    struct S {
        engine: Engine,
        conn: u64,
        sum: u32,
    }
    static ST: G<S> = G::new();

    fn make() -> S {
        S {
            engine: Engine::new(Config::new(RUN_ID), [1, 2], None),
            conn: 0,
            sum: 0,
        }
    }

    fn st() -> &'static mut S {
        ST.get(make)
    }

    /// Drains every output of the engine into the checksum, executing the
    /// ones a shell answers synchronously (connect → 200 event-stream, frame → flush).
    fn pump(st: &mut S, now: f64) -> u32 {
        loop {
            let Some(a) = st.engine.poll_action() else {
                break;
            };
            st.sum = mix(
                st.sum,
                match a {
                    Action::Connect { conn, resume_from } => {
                        st.conn = conn;
                        st.engine.handle_response(now, conn, 200, None, true);
                        1 ^ resume_from as u32
                    }
                    Action::Disconnect { conn } => 2 ^ conn as u32,
                    Action::WsSend { conn, text } => 3 ^ conn as u32 ^ text.len() as u32,
                    Action::WsSendHeaders {
                        conn,
                        client_request_id,
                    } => 9 ^ conn as u32 ^ client_request_id.len() as u32,
                    Action::FetchSnapshot => 4,
                    Action::Post {
                        client_request_id,
                        content,
                    } => 5 ^ client_request_id.len() as u32 ^ content.len() as u32,
                    Action::PostCancel {
                        client_request_id,
                        body,
                    } => 10 ^ client_request_id.len() as u32 ^ body.len() as u32,
                    Action::Persist { cursor } => {
                        #[cfg(feature = "v3full")]
                        {
                            let rec = st.engine.storage_record();
                            st.sum = mix(st.sum, rec.len() as u32);
                        }
                        6 ^ cursor as u32
                    }
                    Action::RequestFrame => 7 ^ st.engine.flush(now) as u32,
                    Action::Measure(f) => {
                        8 ^ f.span_id.len() as u32 ^ f.trace_id.len() as u32 ^ f.duration_ms as u32
                    }
                    Action::Broadcast { text } => 9 ^ text.len() as u32,
                },
            );
        }
        while let Some(e) = st.engine.poll_telemetry() {
            st.sum = mix(
                st.sum,
                e.name.len() as u32 ^ e.value as u32 ^ e.attrs.len() as u32,
            );
        }
        st.sum = mix(st.sum, st.engine.poll_timeout().map_or(0, |t| t as u32));
        st.sum ^ st.engine.version() as u32
    }

    /// Starts the engine at `now` (connects).
    #[wasm_bindgen]
    pub fn start(now: f64) -> u32 {
        let st = st();
        st.engine.start(now);
        pump(st, now)
    }

    /// Body bytes of the current connection.
    #[wasm_bindgen]
    pub fn feed(now: f64, bytes: &[u8]) -> u32 {
        let st = st();
        st.engine.handle_bytes(now, st.conn, bytes);
        pump(st, now)
    }

    /// Advances time.
    #[wasm_bindgen]
    pub fn tick(now: f64) -> u32 {
        let st = st();
        st.engine.handle_timeout(now);
        pump(st, now)
    }

    /// Message count plus a checksum of the state.
    #[wasm_bindgen]
    pub fn messages() -> u32 {
        let st = st();
        let s = st.engine.state();
        let mut h = s.cursor as u32;
        for m in &s.messages {
            h = mix(
                h,
                m.content.len() as u32 ^ m.status as u32 ^ ol(&m.message_id),
            );
        }
        (s.messages.len() as u32) ^ (h << 8)
    }

    // ---- v3full: the other inputs a shell without tabs sharing uses
    #[cfg(feature = "v3full")]
    mod full {
        use super::*;
        use runstream::core::engine::{CloseCause, SendResult, Transport};

        /// Constructs with a stored record (resume) and a chosen transport.
        #[wasm_bindgen]
        pub fn init(stored: Option<String>, websocket: bool, snapshot_url: bool, send_url: bool) {
            let mut cfg = Config::new(RUN_ID);
            if websocket {
                cfg.transport = Transport::WebSocket;
            }
            cfg.has_snapshot_url = snapshot_url;
            cfg.can_send = send_url || websocket;
            let engine = Engine::new(cfg, [1, 2], stored.as_deref());
            // SAFETY: single-threaded.
            unsafe {
                *ST.0.get() = Some(S {
                    engine,
                    conn: 0,
                    sum: 0,
                })
            };
        }

        #[wasm_bindgen]
        pub fn ws_text(now: f64, text: &str) -> u32 {
            let st = st();
            st.engine.handle_ws_text(now, st.conn, text);
            pump(st, now)
        }

        #[wasm_bindgen]
        pub fn sse_event(now: f64, data: &str) -> u32 {
            let st = st();
            st.engine.handle_sse_event(now, st.conn, data);
            pump(st, now)
        }

        #[wasm_bindgen]
        pub fn snapshot(now: f64, body: Option<String>) -> u32 {
            let st = st();
            st.engine
                .handle_snapshot(now, body.as_deref().ok_or_else(|| "failed".to_owned()));
            pump(st, now)
        }

        #[wasm_bindgen]
        pub fn closed(now: f64, code: u16) -> u32 {
            let st = st();
            let cause = if code == 0 {
                CloseCause::Eof
            } else {
                CloseCause::WsClose { code }
            };
            st.engine.handle_closed(now, st.conn, cause);
            pump(st, now)
        }

        #[wasm_bindgen]
        pub fn send(now: f64, content: &str) -> u32 {
            let st = st();
            let r = match st.engine.send(now, content) {
                Ok(crid) => crid.len() as u32,
                Err(e) => e.message().len() as u32,
            };
            mix(pump(st, now), r)
        }

        #[wasm_bindgen]
        pub fn send_result(now: f64, crid: &str, status: u16, body: Option<String>) -> u32 {
            let st = st();
            let r = SendResult {
                status: (status != 0).then_some(status),
                body,
                ..SendResult::default()
            };
            st.engine.handle_send_result(now, crid, r);
            pump(st, now)
        }

        #[wasm_bindgen]
        pub fn online(now: f64, on: bool, visible: bool) -> u32 {
            let st = st();
            st.engine.handle_online(now, on);
            st.engine.handle_visibility(now, visible);
            pump(st, now)
        }

        #[wasm_bindgen]
        pub fn changes() -> u32 {
            let st = st();
            let c = st.engine.take_state_changes();
            let s = st.engine.status(0.0);
            c.messages.all as u32 ^ c.workers.all as u32 ^ s.attempt ^ ol(&s.last_error)
        }
    }
}
