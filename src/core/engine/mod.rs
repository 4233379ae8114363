//! The sans-IO engine: one run's stream, state, outbox and status.
//!
//! Shaped like quinn-proto's `Connection`: [`Engine`] is a coordinator that
//! delegates each concern to one sub-machine and owns the side effects
//! (actions, metrics, telemetry):
//! - [`link`]: connection state, failures, backoff, online/visible, `retry:`;
//! - [`ordering`]: cursor discipline, reorder buffer, gap repair (replay → snapshot → skip);
//! - [`outbox`]: pending chat sends, retries, restore;
//! - [`activity`]: awaiting replies, last token, "working…";
//! - [`persist`]: the stored record and when it is written;
//! - [`follow`]: sharing one connection between tabs (role, leader's status, ring);
//! - [`timers`]: every deadline in one table.
//!
//! The shell feeds inputs (`handle_*`) with the current time, then drains
//! outputs with [`Engine::poll_action`] and [`Engine::poll_telemetry`], and
//! re-arms a single timer at [`Engine::poll_timeout`], calling
//! [`Engine::handle_timeout`] when it fires. The engine never reads a clock and
//! never draws randomness of its own (its [`Rng`] is seeded by the shell).

pub mod activity;
pub mod backoff;
mod cancel;
mod config;
mod events;
pub mod follow;
mod io;
pub mod link;
pub mod ordering;
pub mod outbox;
pub mod persist;
mod sends;
mod sharing;
mod stream;
pub mod timers;

use std::collections::VecDeque;

use super::wire::Headers;

pub use config::{Backoff, Config, Ms, Spans, Transport, MAX_RETRY_AFTER_MS};
pub use io::{
    Action, Activity, CancelState, CancelStatus, CloseCause, Connection, EngineError, SendResult,
    Sharing, StreamStatus,
};
pub use persist::STORAGE_VERSION;

use super::error::{FrameError, ProtocolError};
use super::json::write::concat_u64;
use super::metrics::{
    EventClass, Metric, RunMetrics, RuntimeEvent, SpanFields, Telemetry, Termination,
};
use super::rng::Rng;
use super::sse::{SseItemRef, SseParser};
use super::state::{Applied, MessageRole, MessageStatus, Parked, RunState};
use follow::{Follow, Role};
use link::{Conn, Link};
use ordering::Ordering;
use outbox::Outbox;
use persist::Persist;
use timers::{Timer, TimerTable};

/// One run's stream, state, outbox and status. See the module docs.
#[derive(Debug)]
pub struct Engine {
    cfg: Config,
    rng: Rng,
    state: RunState,
    parked: Parked,
    parser: SseParser,
    applied_scratch: Vec<Applied>,
    link: Link,
    ordering: Ordering,
    outbox: Outbox,
    activity: activity::Tracker,
    persist: Persist,
    timers: TimerTable,
    metrics: RunMetrics,
    telemetry: Telemetry,
    actions: VecDeque<Action>,
    dirty: bool,
    frame_requested: bool,
    frame_events: u64,
    version: u64,
    /// The final reconcile (after `run.completed`) is fetching the snapshot endpoint.
    reconciling: bool,
    run_trace: Option<String>,
    /// A `snapshot` event replaced the state: job-only events the server had
    /// parked before it are invisible here, so reconcile once the run ends.
    snapshot_replaced: bool,
    /// Headers resolved for the current WebSocket (sent in subscribe and send frames).
    ws_headers: Option<Headers>,
    /// Sharing the connection with other tabs (`share: "tabs"`).
    follow: Follow,
    /// The latest `cancel()` (API.md `status.cancel`).
    cancel: Option<CancelStatus>,
}

impl Engine {
    /// A new engine. `seed` seeds jitter, sampling and request ids. `stored`
    /// is the record an earlier page stored ([`Engine::storage_record`]); an
    /// unreadable or foreign record is ignored (the run starts from the beginning).
    /// A record whose completed messages are in the body store leaves the
    /// engine waiting for them ([`Engine::awaiting_bodies`]): it connects once
    /// they are handed over ([`Engine::restore_bodies`]).
    pub fn new(cfg: Config, seed: [u64; 2], stored: Option<&str>) -> Self {
        let mut rng = Rng::new(seed);
        let in_store = stored == Some(persist::HEAD_IN_BODY_STORE);
        let decoded = stored.and_then(|text| persist::decode_head(text, &cfg.run_id));
        // Cancels of this run's record (a foreign or unreadable one has none for us).
        let cancels = match (stored, &decoded) {
            (Some(text), Some(_)) => persist::decode_cancels(text),
            _ => Vec::new(),
        };
        let (restored, awaiting) = match decoded {
            Some(persist::Decoded::Ready(r)) => (Some(*r), None),
            Some(persist::Decoded::Pending(p)) => (None, Some(p)),
            None => (None, None),
        };
        let mut parked = Parked::default();
        let mut state = match restored {
            Some(r) => {
                for (id, kind) in r.parked {
                    parked.restore(id, kind, cfg.park_capacity);
                }
                r.state
            }
            None => RunState::new(&cfg.run_id),
        };
        state.reindex();
        let run_trace = match cfg.spans {
            Spans::Sampled(rate) if rng.next_f64() < rate => Some(hex_id(&mut rng)),
            _ => None,
        };
        // Sends a previous page had not delivered go again (same client_request_id).
        let mut outbox = Outbox::default();
        let failed = outbox.restore(&mut state.messages, cfg.outbox_capacity);
        // Sends not answered yet (undelivered, or accepted but without a
        // finished reply) are still awaited after a refresh.
        let mut activity = activity::Tracker::default();
        if !state.is_finished() {
            activity.restore(unanswered(&state), 0.0);
        }
        let mut link = Link::default();
        if failed > 0 {
            link.last_error = Some(concat_u64(
                "",
                failed as u64,
                " stored messages were not sent again: the outbox is full",
            ));
        }
        // Drawn only when sharing, so a solo engine's random sequence is unchanged.
        let tab = match cfg.share_key {
            Some(_) => hex_id(&mut rng),
            None => String::new(),
        };
        let follow = Follow::new(cfg.share_key.clone(), tab);
        Self {
            follow,
            parser: SseParser::new(cfg.max_event_bytes),
            telemetry: Telemetry::new(cfg.telemetry_capacity),
            persist: {
                let mut p = Persist::new(cfg.persist, cfg.persist_interval_ms, state.cursor);
                if let Some(a) = awaiting {
                    p.await_bodies(a);
                } else if in_store {
                    p.await_head();
                }
                p
            },
            cfg,
            rng,
            state,
            parked,
            applied_scratch: Vec::new(),
            link,
            ordering: Ordering::default(),
            outbox,
            activity,
            timers: TimerTable::default(),
            metrics: RunMetrics::default(),
            actions: VecDeque::new(),
            dirty: true,
            frame_requested: false,
            frame_events: 0,
            version: 0,
            reconciling: false,
            run_trace,
            snapshot_replaced: false,
            ws_headers: None,
            cancel: None,
        }
        .with_stored_cancels(cancels)
    }

    // ----- read side -------------------------------------------------------

    /// The reduced state.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// What changed in the state since the last call: the shell rebuilds only
    /// those entries of its snapshot (structural sharing).
    pub fn take_state_changes(&mut self) -> super::state::Changes {
        let changes = self.state.take_changes();
        self.persist.note_changes(&changes, &self.state);
        changes
    }

    /// The metrics.
    pub fn metrics(&self) -> &RunMetrics {
        &self.metrics
    }

    /// The visible-change counter (increases at each [`Engine::flush`] that had changes).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The cursor (highest contiguously applied event id).
    pub fn cursor(&self) -> u64 {
        self.state.cursor
    }

    /// The whole record with every message inline: what a shell without a
    /// body store stores after [`Action::Persist`]; [`Engine::new`] reads it back.
    pub fn storage_record(&self) -> String {
        persist::encode(&self.state, &self.parked, &self.outbox.cancels())
    }

    /// The run has finished (its stored record may be removed after a grace period).
    pub fn finished(&self) -> bool {
        self.state.is_finished()
    }

    /// Events held in the reorder buffer.
    pub fn buffered(&self) -> usize {
        self.ordering.len()
    }

    /// Job-only events parked.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Telemetry events dropped because nobody drained them in time.
    pub fn telemetry_dropped(&self) -> u64 {
        self.telemetry.dropped
    }

    /// Turns raw telemetry on (a listener exists) or off (no event objects are built).
    pub fn set_telemetry(&mut self, on: bool) {
        self.telemetry.enabled = on;
    }

    /// The status as of `now`.
    pub fn status(&self, now: Ms) -> StreamStatus {
        // A follower shows the leader's connection, whatever link of its own
        // it may hold (a catch-up, or a socket for its sends).
        let mirrored = self.follow.following()
            && !matches!(self.link.conn, Conn::Idle | Conn::Closed | Conn::Finished);
        let (connection, attempt, retry_in_ms) = match self.finished_status() {
            Some(shown) => shown,
            None if mirrored => self.follow.status(now),
            None => self.link.status(now),
        };
        StreamStatus {
            connection,
            activity: self.activity(now),
            attempt,
            retry_in_ms,
            last_error: self.link.last_error.clone(),
            sharing: match self.follow.role {
                Role::Solo => Sharing::Solo,
                Role::Leader => Sharing::Leader,
                Role::Follower => Sharing::Follower,
            },
            cancel: self.cancel.clone(),
        }
    }

    /// PROTOCOL §2a: once `run.completed` is applied the stream is `closed`.
    /// A socket opened after that only for sends (its backoff, its failure:
    /// the send shows it, and `lastError` says why) is not shown as the
    /// connection coming back, here or in what a leading tab relays.
    pub(super) fn finished_status(&self) -> Option<(Connection, u32, Option<f64>)> {
        let side = matches!(
            self.link.conn,
            Conn::Connecting
                | Conn::Open { .. }
                | Conn::Waiting { .. }
                | Conn::Offline { .. }
                | Conn::Failed
        );
        (self.state.is_finished() && side).then_some((Connection::Closed, 0, None))
    }

    /// This tab's id in the tabs' channel messages (`share: "tabs"`).
    pub fn tab_id(&self) -> &str {
        &self.follow.tab
    }

    /// Activity as of `now`: `working` exactly when `now - last token ≥ stall_after_ms`.
    pub fn activity(&self, now: Ms) -> Activity {
        self.activity
            .state(now, self.streaming(), self.cfg.stall_after_ms)
    }

    fn streaming(&self) -> bool {
        self.state
            .messages
            .iter()
            .any(|m| m.status == MessageStatus::Streaming)
    }

    // ----- outputs ---------------------------------------------------------

    /// The next action for the shell; call until `None` after every input.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next raw telemetry event; call until `None` after every input.
    pub fn poll_telemetry(&mut self) -> Option<RuntimeEvent> {
        self.telemetry.pop()
    }

    /// The earliest time [`Engine::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Ms> {
        self.timers.next()
    }

    // ----- inputs ----------------------------------------------------------

    /// Starts streaming (from the restored cursor, if any).
    pub fn start(&mut self, now: Ms) {
        if self.link.conn == Conn::Idle && self.state.is_finished() {
            // A stored finished run: it never reconnects (PROTOCOL §2a); the
            // reconcile still runs if something was left non-terminal.
            self.finish(now);
        } else if self.link.conn == Conn::Idle && self.follow.following() {
            self.start_following(now);
        } else if self.link.conn == Conn::Idle {
            if self.link.online {
                self.connect(now);
            } else {
                self.link.go_offline(&mut self.timers);
                self.mark_dirty();
            }
        }
        self.pump_sends(now);
    }

    /// Stops everything: the transport is dropped and nothing is retried.
    pub fn close(&mut self, now: Ms) {
        if self.link.conn == Conn::Closed {
            return;
        }
        if self.follow.following() && self.follow.page_visible {
            // The leader stops watching its heartbeat for this tab.
            self.broadcast(None, crate::core::tabs::Body::Visible(false));
        }
        self.end_link(now, Termination::ClientClosed, None);
        self.link.conn = Conn::Closed;
        self.outbox.clear();
        self.activity.end(&mut self.timers);
        self.timers = TimerTable::default();
        self.request_persist(now, true);
        // No frame follows `close()` (the shell drops it), so the change is
        // counted here: `version` increases with every visible change.
        self.dirty = false;
        self.version += 1;
    }

    /// Skips the backoff wait (a "retry" button); also leaves `failed` and `offline`.
    /// A follower asks the leader to do it (the connection is the leader's).
    pub fn retry_now(&mut self, now: Ms) {
        match self.link.conn {
            Conn::Following => self.broadcast(None, crate::core::tabs::Body::Retry),
            Conn::Idle | Conn::Waiting { .. } | Conn::Failed | Conn::Offline { .. } => {
                self.link.reset_for_retry();
                self.connect(now);
            }
            Conn::Closed | Conn::Finished | Conn::Connecting | Conn::Open { .. } => {}
        }
        self.outbox.all_due_now(now);
        self.pump_sends(now);
    }

    /// The browser went online (`true`) or offline (`false`).
    pub fn handle_online(&mut self, now: Ms, online: bool) {
        if self.link.online == online {
            return;
        }
        self.link.online = online;
        if online {
            if let Conn::Offline { resume_at } = self.link.conn {
                // The backoff and a pending Retry-After still hold (API.md).
                match resume_at {
                    Some(at) if at > now => self.link.wait_until(now, at, &mut self.timers),
                    _ => self.connect(now),
                }
            }
            self.pump_sends(now);
        } else {
            match self.link.conn {
                Conn::Connecting | Conn::Open { .. } => {
                    self.end_link(now, Termination::Offline, Some("offline".into()));
                    self.link.go_offline(&mut self.timers);
                }
                Conn::Waiting { .. } => self.link.go_offline(&mut self.timers),
                _ => {}
            }
        }
        self.mark_dirty();
    }

    /// The page went into the back/forward cache (`pagehide` with
    /// `persisted`: `cached` is `true`) or came back from it (`pageshow` with
    /// `persisted`: `false`). Call it for a stream that does not share tabs
    /// (`share: "tabs"` has its own `pagehide`/`pageshow` handling).
    ///
    /// A cached page holds no connection and makes no attempt: a live link
    /// is ended (`page_hidden`, not a failure) and a pending wait is
    /// remembered; coming back reconnects at once from the cursor, or when
    /// the remembered wait allows (API.md: retries honour the backoff
    /// whatever wakes the client). Engines differ in what they do to a
    /// cached page's connections (WebKit cuts them before `pagehide`, and an
    /// attempt made then fails too; Chromium keeps a fetch stream and
    /// buffers it; an EventSource's error may arrive only after `pageshow`,
    /// when timers may still be throttled): ending the link here makes the
    /// return the same everywhere, and frees the server's connection while
    /// the user is elsewhere.
    pub fn handle_page_cached(&mut self, now: Ms, cached: bool) {
        if self.cfg.share_key.is_some() || self.link.cached == cached {
            return;
        }
        if cached {
            match self.link.conn {
                Conn::Connecting | Conn::Open { .. } => {
                    self.end_link(now, Termination::PageHidden, None);
                    self.link.go_offline(&mut self.timers);
                }
                Conn::Waiting { .. } => self.link.go_offline(&mut self.timers),
                _ => return,
            }
            self.link.cached = true;
        } else {
            self.link.cached = false;
            if let (true, Conn::Offline { resume_at }) = (self.link.online, self.link.conn) {
                match resume_at {
                    Some(at) if at > now => self.link.wait_until(now, at, &mut self.timers),
                    _ => self.connect(now),
                }
            }
        }
        self.mark_dirty();
    }

    /// The page became visible (`true`) or hidden (`false`). A backoff wait is
    /// never cut short by becoming visible.
    pub fn handle_visibility(&mut self, now: Ms, visible: bool) {
        if !visible {
            self.request_persist(now, true);
        }
        let changed = self.follow.page_visible != visible;
        self.follow.page_visible = visible;
        if changed && self.follow.following() && self.link.conn != Conn::Closed {
            // The leader watches its heartbeat while a follower is visible.
            self.broadcast(None, crate::core::tabs::Body::Visible(visible));
        }
        self.watch_heartbeat(now);
    }

    /// Whether this stream's heartbeat is to be watched: its page is
    /// visible, or (leading, `share: "tabs"`) a follower's is. A shell whose
    /// streams ride a shared socket tells the socket when this changes
    /// ([`crate::core::socket::Socket::set_run_watched`]); call after every
    /// input, like [`Self::poll_timeout`].
    pub fn heartbeat_watched(&self) -> bool {
        self.follow.watched()
    }

    /// Turns the heartbeat watch on or off as this tab is watched (its page,
    /// or a follower's, is visible); a link found silent too long fails.
    pub(super) fn watch_heartbeat(&mut self, now: Ms) {
        let watched = self.follow.watched();
        let stale = self
            .link
            .set_visible(now, watched, &self.cfg, &mut self.timers);
        if stale {
            self.fail(
                now,
                Termination::HeartbeatTimeout,
                None,
                "no data from the server".into(),
            );
        }
    }

    /// Response headers of connection `conn` (fetch), or its `open` event (EventSource: 200).
    /// `event_stream`: the content type is `text/event-stream`.
    pub fn handle_response(
        &mut self,
        now: Ms,
        conn: u64,
        status: u16,
        retry_after_ms: Option<Ms>,
        event_stream: bool,
    ) {
        if conn != self.link.id || self.link.conn != Conn::Connecting {
            return;
        }
        self.on_status(now, status, retry_after_ms, event_stream);
    }

    /// Body bytes of fetch connection `conn`.
    pub fn handle_bytes(&mut self, now: Ms, conn: u64, bytes: &[u8]) {
        if !self.link.accepts(conn) {
            return;
        }
        self.link.saw_byte(now, &self.cfg, &mut self.timers);
        // Events are handled as the parser completes them (no per-chunk list).
        // The parser is moved out for the duration so the callback can use `self`.
        let mut parser = std::mem::replace(&mut self.parser, SseParser::new(0));
        parser.feed_ref(bytes, &mut |item| {
            if !self.link.accepts(conn) {
                return;
            }
            match item {
                SseItemRef::Event(ev) => self.handle_frame(now, ev.data),
                SseItemRef::Retry(ms) => self.link.server_retry = Some(ms as f64),
                SseItemRef::Comment => {}
                SseItemRef::TooLarge(n) => self.protocol_error(now, FrameError::TooLarge(n).into()),
            }
        });
        if self.link.id != conn {
            // A resync started a new connection mid-chunk: it starts a fresh stream.
            parser.reset_stream();
        }
        self.parser = parser;
    }

    /// An event dispatched by native `EventSource` connection `conn` (its `data`).
    pub fn handle_sse_event(&mut self, now: Ms, conn: u64, data: &str) {
        if !self.link.accepts(conn) {
            return;
        }
        if self.link.conn == Conn::Connecting {
            self.opened(now);
        }
        self.link.saw_byte(now, &self.cfg, &mut self.timers);
        if data.len() > self.cfg.max_event_bytes {
            self.protocol_error(now, FrameError::TooLarge(data.len()).into());
            return;
        }
        self.handle_frame(now, data);
    }

    /// Advances timers; call at (or after) [`Engine::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Ms) {
        let due: Vec<Timer> = self.timers.expired(now).collect();
        for t in due {
            self.on_timer(t, now);
        }
    }

    /// The one place each expiry is dispatched.
    fn on_timer(&mut self, t: Timer, now: Ms) {
        match t {
            Timer::Connect => {
                if self.link.conn == Conn::Connecting {
                    self.fail(
                        now,
                        Termination::ConnectTimeout,
                        None,
                        "connection timed out".into(),
                    );
                }
            }
            Timer::Heartbeat => {
                if matches!(self.link.conn, Conn::Open { .. }) {
                    self.fail(
                        now,
                        Termination::HeartbeatTimeout,
                        None,
                        "no heartbeat from the server".into(),
                    );
                }
            }
            Timer::Healthy => {
                self.link.became_healthy();
                self.mark_dirty();
            }
            Timer::Ping => {
                if matches!(self.link.conn, Conn::Open { .. }) {
                    self.timers
                        .set(Timer::Ping, now + self.cfg.ws_ping_interval_ms);
                    let text = Self::ping_frame(now);
                    self.actions.push_back(Action::WsSend {
                        conn: self.link.id,
                        text,
                    });
                }
            }
            Timer::Reconnect => {
                if matches!(self.link.conn, Conn::Waiting { .. }) {
                    self.connect(now);
                }
            }
            Timer::Countdown => {
                if self.link.countdown(now, &mut self.timers)
                    || self.follow.countdown(now, &mut self.timers)
                {
                    self.mark_dirty();
                }
            }
            Timer::Gap => self.on_gap_timeout(now),
            Timer::Snapshot => self.handle_snapshot(
                now,
                Err("the snapshot endpoint did not answer in time".into()),
            ),
            Timer::Persist => self.request_persist(now, true),
            Timer::Stall => {
                if self
                    .activity
                    .on_stall(now, self.cfg.stall_after_ms, &mut self.timers)
                {
                    self.mark_dirty();
                }
            }
            Timer::Send => self.pump_sends(now),
        }
    }

    /// Called at an animation frame after [`Action::RequestFrame`]: returns
    /// `true` (and bumps `version`) when there is a visible change to render.
    pub fn flush(&mut self, now: Ms) -> bool {
        self.frame_requested = false;
        self.request_persist(now, false);
        self.activity
            .sync_timer(self.streaming(), self.cfg.stall_after_ms, &mut self.timers);
        if !self.dirty {
            return false;
        }
        self.dirty = false;
        self.version += 1;
        if self.frame_events > 0 {
            let n = self.frame_events as f64;
            self.telemetry
                .metric(EventClass::Histogram, Metric::UiFlushEvents, n, now, &[]);
            self.frame_events = 0;
        }
        true
    }

    /// The shell could not store the record of the last [`Action::Persist`]
    /// (quota): it is asked for again after `persist_interval_ms`.
    pub fn persist_refused(&mut self) {
        self.persist.refused(&mut self.timers);
    }

    /// Asks for a [`Action::Persist`] now if anything stored changed (page hide / unload).
    pub fn persist_now(&mut self, now: Ms) {
        self.request_persist(now, true);
    }
}

/// Sends of `state` not answered yet, as the activity rules (`activity.rs`)
/// would have left them: the history is replayed in order. A send (a user
/// message with a `client_request_id`: optimistic, accepted or echoed; not
/// failed) is awaited until a finished reply names it (`reply_to`) or a
/// finished message without `reply_to` follows it (it ends every wait).
/// Once echoed, a page's own sends look like any other client's: every
/// unanswered send of the history is awaited after a refresh.
fn unanswered(state: &RunState) -> Vec<String> {
    let mut awaiting: Vec<String> = Vec::new();
    for m in &state.messages {
        let finished = matches!(m.status, MessageStatus::Completed | MessageStatus::Failed);
        if m.role == MessageRole::User {
            if let (Some(c), false) = (&m.client_request_id, m.status == MessageStatus::Failed) {
                awaiting.push(c.clone());
            }
        } else if finished {
            match &m.reply_to {
                Some(r) => awaiting.retain(|c| c != r),
                None => awaiting.clear(),
            }
        }
    }
    awaiting
}

pub(super) fn hex_id(rng: &mut Rng) -> String {
    let mut s = String::with_capacity(16);
    crate::core::json::write::push_hex(&mut s, rng.next_u64(), 16);
    s
}

// ----- side effects shared by the sub-machines --------------------------------
impl Engine {
    pub(super) fn mark_dirty(&mut self) {
        self.dirty = true;
        if !self.frame_requested {
            self.frame_requested = true;
            self.actions.push_back(Action::RequestFrame);
        }
    }

    pub(super) fn protocol_error(&mut self, now: Ms, e: ProtocolError) {
        self.metrics.protocol_errors += 1;
        self.metrics
            .protocol_errors_by_kind
            .increment(e.kind(), str::to_owned);
        self.telemetry.metric(
            EventClass::Counter,
            Metric::ProtocolError,
            1.0,
            now,
            &[("kind", e.kind())],
        );
        self.mark_dirty();
    }

    pub(super) fn request_persist(&mut self, now: Ms, force: bool) {
        if self
            .persist
            .due(now, self.state.cursor, force, &mut self.timers)
        {
            self.actions.push_back(Action::Persist {
                cursor: self.state.cursor,
            });
        }
    }

    /// Records a finished span if its trace is sampled: a Performance measure and a span event.
    pub(super) fn span(&mut self, trace: Option<String>, mut f: SpanFields) {
        let Some(trace_id) = trace else { return };
        f.span_id = hex_id(&mut self.rng);
        f.trace_id = trace_id;
        self.actions.push_back(Action::Measure(f.clone()));
        self.telemetry.push(RuntimeEvent {
            kind: EventClass::Span,
            name: "runstream:span",
            value: f.duration_ms,
            ts: f.start + f.duration_ms,
            attrs: crate::core::vecmap::VecMap::new(),
            span: Some(f),
        });
    }
}
