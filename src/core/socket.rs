//! One WebSocket shared by many runs (PROTOCOL §2b: one socket, many runs).
//!
//! [`Socket`] owns what belongs to the socket, not to a run: whether it is
//! open, the connect timeout, one `ping` per interval, the heartbeat watch and
//! the reconnect backoff. It decodes each server frame once and routes it to
//! the runs it concerns by `run_id`. Each run keeps its own [`Engine`]
//! (cursor, ordering, outbox): the engine's `Connect` *attaches* the run here,
//! its `Disconnect` *detaches* it, and the socket tells it when it may
//! subscribe ([`SocketAction::RunOpen`] → `Engine::handle_ws_open`), what
//! arrived for it ([`SocketAction::Deliver`] → `Engine::handle_ws_op`) and
//! when the socket dropped ([`SocketAction::RunDropped`] → `Engine::handle_closed`).
//!
//! Rules:
//! - The socket opens when the first run attaches and closes when the last
//!   one detaches (detaching sends `unsubscribe` unless another attached run
//!   follows the same `run_id`).
//! - After a drop every attached run is told and detached; each resumes from
//!   its own cursor when it attaches again. The socket itself never reconnects
//!   sooner than its own backoff allows, whatever the runs ask: many runs
//!   waiting on one socket make one connection attempt, not one each.
//! - A socket open `healthy_after_ms`, or that delivered an event, resets the backoff.
//! - The heartbeat watch is off while nobody watches (the page hidden and no
//!   attached run watched from another tab). When it comes back on with the
//!   last frame older than `heartbeat_timeout_ms`, the socket is not dropped
//!   at once (our own pings were throttled too): it is pinged, and dropped
//!   only if no frame comes within [`RECHECK_GRACE_MS`].
//!
//! Sans-IO like the engine: inputs carry the time, outputs are drained with
//! [`Socket::poll_action`], the next deadline is [`Socket::poll_timeout`].
//!
//! [`Engine`]: super::engine::Engine

use std::borrow::Cow;
use std::collections::VecDeque;

use crate::core::vecmap::{VecMap, VecSet};

use super::engine::backoff;
use super::engine::{Backoff, CloseCause, Config, Ms};
use super::error::FrameError;
use super::json::{Field, Scanner};
use super::wire::{ClientOp, ServerOp};

/// How long a stale socket has to answer the `ping` of a heartbeat re-check
/// (the watch coming back on: the page visible again, or a run watched from
/// another tab) before it is dropped; at most `heartbeat_timeout_ms`.
pub const RECHECK_GRACE_MS: Ms = 3_000.0;

/// A run's number on its socket (the shell's choice; unique per socket).
pub type RunKey = u64;

/// The socket's timing and bounds (taken from the first run's [`Config`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SocketConfig {
    /// No `open` for this long → drop and back off.
    pub connect_timeout_ms: Ms,
    /// Open, and no frame for this long → drop and back off (suspended while hidden).
    pub heartbeat_timeout_ms: Ms,
    /// One `ping` per socket this often.
    pub ping_interval_ms: Ms,
    /// Open this long: the backoff resets.
    pub healthy_after_ms: Ms,
    /// Reconnect backoff of the socket.
    pub backoff: Backoff,
    /// Largest frame; larger ones are discarded and reported to every run.
    pub max_frame_bytes: usize,
}

impl From<&Config> for SocketConfig {
    fn from(c: &Config) -> Self {
        Self {
            connect_timeout_ms: c.connect_timeout_ms,
            heartbeat_timeout_ms: c.heartbeat_timeout_ms,
            ping_interval_ms: c.ws_ping_interval_ms,
            healthy_after_ms: c.healthy_after_ms,
            backoff: c.backoff,
            max_frame_bytes: c.max_event_bytes,
        }
    }
}

/// The socket's state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SocketState {
    /// No socket, no wait.
    Idle,
    /// Opened, waiting for `open`.
    Connecting,
    /// Open since `opened_at`.
    Open {
        /// When `open` arrived.
        opened_at: Ms,
    },
    /// Dropped; no new socket before `at`.
    Waiting {
        /// The earliest next attempt.
        at: Ms,
    },
}

/// What the shell must do. Drain with [`Socket::poll_action`] after every input.
#[derive(Debug, Clone)]
pub enum SocketAction {
    /// Create WebSocket number `conn`; report its events with that number.
    Open {
        /// Socket number.
        conn: u64,
    },
    /// Close WebSocket `conn` and drop every later event of it.
    Close {
        /// Socket number.
        conn: u64,
    },
    /// Write this text frame on WebSocket `conn` (`ping`, `unsubscribe`).
    Send {
        /// Socket number.
        conn: u64,
        /// The frame.
        text: String,
    },
    /// The socket is open: call the run's `Engine::handle_ws_open` (it subscribes).
    RunOpen {
        /// The run.
        run: RunKey,
    },
    /// A frame for this run: `Engine::handle_ws_op`.
    Deliver {
        /// The run.
        run: RunKey,
        /// The decoded frame.
        op: ServerOp,
    },
    /// A frame nobody can use (binary, not JSON, too large): `Engine::handle_ws_frame_error`.
    Unreadable {
        /// The run.
        run: RunKey,
        /// What was wrong.
        error: FrameError,
    },
    /// The socket dropped: `Engine::handle_closed`; the run is detached.
    RunDropped {
        /// The run.
        run: RunKey,
        /// Why.
        cause: CloseCause,
    },
}

/// Deadlines of the socket (at most one of each).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Deadlines {
    connect: Option<Ms>,
    heartbeat: Option<Ms>,
    ping: Option<Ms>,
    healthy: Option<Ms>,
    reconnect: Option<Ms>,
}

/// The `run_id` of an event envelope, read without decoding the rest:
/// `None` unless the envelope is a JSON object whose `run_id` is a string
/// (the last one, if repeated).
fn run_of(envelope: &str) -> Option<String> {
    let mut s = Scanner::new(envelope);
    let mut run = None;
    s.object().ok()?;
    while let Some(k) = s.key().ok()? {
        if k == "run_id" {
            run = match Field::read(&mut s).ok()? {
                Field::Str(r) => Some(r),
                Field::Null => None,
                _ => return None,
            };
        } else {
            s.skip().ok()?;
        }
    }
    s.end().ok()?;
    run.map(Cow::into_owned)
}

/// One shared WebSocket. See the module docs.
#[derive(Debug, Clone)]
pub struct Socket {
    cfg: SocketConfig,
    state: SocketState,
    conn: u64,
    /// Consecutive failures without a healthy socket: the next backoff attempt.
    failures: u32,
    last_frame_at: Ms,
    /// The page is visible (its shell says so with [`Socket::set_visible`]).
    visible: bool,
    /// Runs whose stream wants the heartbeat watched whatever this page's
    /// visibility (a leading tab with a visible follower, `share: "tabs"`):
    /// [`Socket::set_run_watched`]. Only attached runs count; at most one
    /// entry per live stream (its shell unmarks it when the stream goes).
    watched: VecSet<RunKey>,
    /// Attached runs and the run each follows.
    runs: VecMap<RunKey, String>,
    deadlines: Deadlines,
    actions: VecDeque<SocketAction>,
    /// Sockets opened so far.
    pub opens: u64,
    /// Pings written so far.
    pub pings: u64,
    /// Frames for a run no attached run follows (late frames after `unsubscribe`).
    pub unroutable: u64,
}

impl Socket {
    /// A socket machine with nothing attached.
    pub fn new(cfg: SocketConfig) -> Self {
        Self {
            cfg,
            state: SocketState::Idle,
            conn: 0,
            failures: 0,
            last_frame_at: 0.0,
            visible: true,
            watched: VecSet::new(),
            runs: VecMap::new(),
            deadlines: Deadlines::default(),
            actions: VecDeque::new(),
            opens: 0,
            pings: 0,
            unroutable: 0,
        }
    }

    /// The state.
    pub fn state(&self) -> SocketState {
        self.state
    }

    /// Runs attached now.
    pub fn attached(&self) -> usize {
        self.runs.len()
    }

    /// The next action for the shell; call until `None` after every input.
    pub fn poll_action(&mut self) -> Option<SocketAction> {
        self.actions.pop_front()
    }

    /// The earliest time [`Socket::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Ms> {
        let d = self.deadlines;
        [d.connect, d.heartbeat, d.ping, d.healthy, d.reconnect]
            .into_iter()
            .flatten()
            .reduce(Ms::min)
    }

    // ----- runs --------------------------------------------------------------

    /// Run `run` (following `run_id`) wants the socket: it is opened if
    /// needed, and [`SocketAction::RunOpen`] comes once it is open (at once if it is).
    pub fn attach(&mut self, now: Ms, run: RunKey, run_id: &str) {
        self.runs.insert(run, run_id.to_owned());
        match self.state {
            SocketState::Open { .. } => self.actions.push_back(SocketAction::RunOpen { run }),
            SocketState::Idle => self.connect(now),
            SocketState::Connecting | SocketState::Waiting { .. } => {}
        }
    }

    /// Run `run` is done with the socket (closed, finished, resyncing, …):
    /// `unsubscribe` unless another run follows the same id; the socket closes
    /// with the last run.
    pub fn detach(&mut self, run: RunKey) {
        let Some(run_id) = self.runs.remove(&run) else {
            return;
        };
        if !self.watching() {
            // It was the run watched from another page.
            self.deadlines.heartbeat = None;
        }
        if let SocketState::Open { .. } = self.state {
            if !self.runs.values().any(|r| *r == run_id) {
                let text = ClientOp::Unsubscribe { run_id }.encode();
                self.actions.push_back(SocketAction::Send {
                    conn: self.conn,
                    text,
                });
            }
        }
        if self.runs.is_empty() {
            match self.state {
                SocketState::Connecting | SocketState::Open { .. } => {
                    self.actions
                        .push_back(SocketAction::Close { conn: self.conn });
                    self.deadlines = Deadlines::default();
                    self.state = SocketState::Idle;
                }
                // The backoff still holds for whoever attaches next.
                SocketState::Waiting { .. } | SocketState::Idle => {}
            }
        }
    }

    // ----- socket events -------------------------------------------------------

    /// The page became visible or hidden: the heartbeat watch is suspended
    /// while hidden (timers are throttled) and re-checked on becoming visible.
    pub fn set_visible(&mut self, now: Ms, visible: bool) {
        self.visible = visible;
        self.rewatch(now);
    }

    /// Run `run`'s stream wants (or no longer wants) its heartbeat watched
    /// (`Engine::heartbeat_watched`: its page, or as a leading tab a
    /// follower's, is visible; API.md enforces the heartbeat while a tab that
    /// follows the stream is visible). While any attached run does, the
    /// heartbeat is watched even with this page hidden.
    pub fn set_run_watched(&mut self, now: Ms, run: RunKey, watched: bool) {
        let changed = if watched {
            self.watched.insert(run)
        } else {
            self.watched.remove(&run)
        };
        if changed {
            self.rewatch(now);
        }
    }

    /// Whether the heartbeat is watched: the page is visible, or an attached
    /// run is watched from another page.
    fn watching(&self) -> bool {
        self.visible || self.runs.keys().any(|r| self.watched.contains(r))
    }

    /// The watch went on or off: suspended while nobody watches (timers are
    /// throttled), re-checked when it comes back on.
    fn rewatch(&mut self, now: Ms) {
        if !self.watching() {
            self.deadlines.heartbeat = None;
        } else if let SocketState::Open { .. } = self.state {
            if now - self.last_frame_at >= self.cfg.heartbeat_timeout_ms {
                // Stale, but while nobody watched, the browser throttled our
                // own ping timer too: ask the server now rather than drop a
                // socket that may be healthy. Unanswered within the grace: dropped.
                let by = now + RECHECK_GRACE_MS.min(self.cfg.heartbeat_timeout_ms);
                if self.deadlines.heartbeat.is_none_or(|t| t > by) {
                    self.ping(now);
                    self.deadlines.heartbeat = Some(by);
                }
            } else {
                self.watch_heartbeat();
            }
        }
    }

    /// WebSocket `conn` is open: every attached run may subscribe.
    pub fn handle_open(&mut self, now: Ms, conn: u64) {
        if conn != self.conn || self.state != SocketState::Connecting {
            return;
        }
        self.state = SocketState::Open { opened_at: now };
        self.last_frame_at = now;
        self.deadlines.connect = None;
        self.deadlines.ping = Some(now + self.cfg.ping_interval_ms);
        self.deadlines.healthy = Some(now + self.cfg.healthy_after_ms);
        self.watch_heartbeat();
        for &run in self.runs.keys() {
            self.actions.push_back(SocketAction::RunOpen { run });
        }
    }

    /// A text frame of WebSocket `conn`: decoded once, routed to its runs.
    pub fn handle_text(&mut self, now: Ms, conn: u64, text: &str) {
        if !self.accepts(conn) {
            return;
        }
        self.saw_frame(now);
        if text.len() > self.cfg.max_frame_bytes {
            return self.unreadable(FrameError::TooLarge(text.len()));
        }
        let op = match ServerOp::decode(text) {
            Ok(op) => op,
            Err(e) => return self.unreadable(FrameError::from(e)),
        };
        let run_id: Option<String> = match &op {
            ServerOp::Pong { .. } => return,
            ServerOp::Event { event } => {
                // Progress: the socket works, whatever drops it later.
                self.failures = 0;
                run_of(event.get())
            }
            ServerOp::Snapshot { run_id, .. }
            | ServerOp::Subscribed { run_id, .. }
            | ServerOp::Ack { run_id, .. }
            | ServerOp::CancelAck { run_id, .. } => Some(run_id.clone()),
            ServerOp::Error { run_id, .. } => run_id.clone(),
        };
        let targets: Vec<RunKey> = match &run_id {
            Some(id) => self
                .runs
                .iter()
                .filter(|(_, r)| *r == id)
                .map(|(k, _)| *k)
                .collect(),
            None => Vec::new(),
        };
        let targets = if !targets.is_empty() {
            targets
        } else if run_id.is_none()
            || matches!(
                op,
                ServerOp::Ack { .. }
                    | ServerOp::CancelAck { .. }
                    | ServerOp::Error {
                        client_request_id: Some(_),
                        ..
                    }
            )
        {
            // No run id, or the answer to a send naming a run nobody here
            // follows (the run its session's messages go to): every run gets
            // it and each engine validates it (an engine ignores an answer to
            // a send it does not hold, and reports a foreign or invalid
            // envelope as a protocol error, as on a socket of its own).
            self.runs.keys().copied().collect()
        } else {
            // Late frames of an unsubscribed run.
            self.unroutable += 1;
            Vec::new()
        };
        if let Some((last, rest)) = targets.split_last() {
            for &run in rest {
                let op = op.clone();
                self.actions.push_back(SocketAction::Deliver { run, op });
            }
            self.actions
                .push_back(SocketAction::Deliver { run: *last, op });
        }
    }

    /// A binary frame of WebSocket `conn` (a protocol error for every run).
    pub fn handle_binary(&mut self, now: Ms, conn: u64) {
        if !self.accepts(conn) {
            return;
        }
        self.saw_frame(now);
        self.unreadable(FrameError::Binary);
    }

    /// WebSocket `conn` closed (or could not be created). `jitter` is a
    /// uniform draw in `[0, 1)` for the backoff.
    pub fn handle_closed(&mut self, now: Ms, conn: u64, cause: CloseCause, jitter: f64) {
        if !self.accepts(conn) {
            return;
        }
        self.drop_socket(now, cause, jitter, false);
    }

    /// Advances the deadlines; call at (or after) [`Socket::poll_timeout`].
    /// `jitter` as in [`Socket::handle_closed`].
    pub fn handle_timeout(&mut self, now: Ms, jitter: f64) {
        let d = self.deadlines;
        if d.connect.is_some_and(|t| t <= now) {
            self.deadlines.connect = None;
            self.drop_socket(now, CloseCause::ConnectTimeout, jitter, true);
        }
        if d.heartbeat.is_some_and(|t| t <= now) {
            self.deadlines.heartbeat = None;
            self.drop_socket(now, CloseCause::HeartbeatTimeout, jitter, true);
        }
        if d.healthy.is_some_and(|t| t <= now) {
            self.deadlines.healthy = None;
            self.failures = 0;
        }
        if self.deadlines.ping.is_some_and(|t| t <= now) {
            self.ping(now);
        }
        if self.deadlines.reconnect.is_some_and(|t| t <= now) {
            self.deadlines.reconnect = None;
            self.state = SocketState::Idle;
            if !self.runs.is_empty() {
                self.connect(now);
            }
        }
    }

    // ----- internals -----------------------------------------------------------

    fn accepts(&self, conn: u64) -> bool {
        conn == self.conn
            && matches!(
                self.state,
                SocketState::Connecting | SocketState::Open { .. }
            )
    }

    fn connect(&mut self, now: Ms) {
        self.conn += 1;
        self.opens += 1;
        self.state = SocketState::Connecting;
        self.deadlines = Deadlines {
            connect: Some(now + self.cfg.connect_timeout_ms),
            ..Deadlines::default()
        };
        self.actions
            .push_back(SocketAction::Open { conn: self.conn });
    }

    /// Writes a `ping`; the next one is due an interval later.
    fn ping(&mut self, now: Ms) {
        self.deadlines.ping = Some(now + self.cfg.ping_interval_ms);
        self.pings += 1;
        self.actions.push_back(SocketAction::Send {
            conn: self.conn,
            text: ClientOp::ping(now.round()).encode(),
        });
    }

    fn saw_frame(&mut self, now: Ms) {
        self.last_frame_at = now;
        self.watch_heartbeat();
    }

    fn watch_heartbeat(&mut self) {
        if self.watching() {
            self.deadlines.heartbeat = Some(self.last_frame_at + self.cfg.heartbeat_timeout_ms);
        }
    }

    fn unreadable(&mut self, error: FrameError) {
        for &run in self.runs.keys() {
            self.actions.push_back(SocketAction::Unreadable {
                run,
                error: error.clone(),
            });
        }
    }

    /// The socket is gone: every run is told and detached; back off.
    fn drop_socket(&mut self, now: Ms, cause: CloseCause, jitter: f64, close: bool) {
        if close {
            self.actions
                .push_back(SocketAction::Close { conn: self.conn });
        }
        for run in std::mem::take(&mut self.runs).into_keys() {
            self.actions.push_back(SocketAction::RunDropped {
                run,
                cause: cause.clone(),
            });
        }
        let delay = backoff::delay(&self.cfg.backoff, self.failures, jitter, None, None);
        self.failures = self.failures.saturating_add(1);
        let at = now + delay;
        self.state = SocketState::Waiting { at };
        self.deadlines = Deadlines {
            reconnect: Some(at),
            ..Deadlines::default()
        };
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn run_of_reads_only_the_run_id() {
        let r = run_of(r#"{"event_id":3,"run_id":"r1","payload":{"x":[1]}}"#);
        assert_eq!(r.as_deref(), Some("r1"));
        assert_eq!(run_of(r#"{"run_id":"r\u0031"}"#).as_deref(), Some("r1"));
        for none in [
            r#"{"run_id":7}"#,
            r#"{"event_id":3}"#,
            "[]",
            r#"{"run_id":"r"} x"#,
            "{",
        ] {
            assert_eq!(run_of(none), None, "{none}");
        }
    }
}
