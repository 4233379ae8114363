//! The event path of the coordinator: frames → envelopes → ordering → reducer,
//! snapshots, gap repair, and what an applied event means for the other
//! sub-machines (activity, outbox, link, metrics).

use super::link::Conn;
use super::ordering::{GapRepair, Offer};
use super::timers::Timer;
use super::{Action, Engine, Ms, Transport};
use crate::core::envelope::{decode_envelope, Envelope, EventKind, MAX_EVENT_ID};
use crate::core::error::{DecodeError, FrameError, SnapshotError};
use crate::core::json::write::concat_u64;
use crate::core::metrics::{EventClass, Metric, SpanFields, SpanStatus, Termination};
use crate::core::state::{Applied, RunState};
use crate::core::wire::{ClientOp, ErrorCode, ServerOp, SnapshotBody};

impl Engine {
    /// WebSocket connection `conn` is open: subscribe (resuming from the cursor).
    /// `headers` (the `headers` option, resolved for this connection) travel in
    /// the subscribe frame and in every send on this socket, since a browser
    /// WebSocket cannot set request headers; empty = none.
    pub fn handle_ws_open(&mut self, now: Ms, conn: u64, headers: Vec<(String, String)>) {
        if conn != self.link.id || self.link.conn != Conn::Connecting {
            return;
        }
        self.link.saw_byte(now, &self.cfg, &mut self.timers);
        self.ws_headers = (!headers.is_empty()).then(|| headers.into_iter().collect());
        if self.sends_only() {
            self.opened(now);
            return;
        }
        let text = self.subscribe_frame();
        self.actions.push_back(Action::WsSend { conn, text });
        // `connectTimeoutMs` covers only until `open` (API.md): a server may
        // stay silent after it, with nothing to replay; the heartbeat watch
        // (pings every 10 s, answered by pongs) takes over.
        self.opened(now);
    }

    /// The socket is opened only to deliver sends (after the run finished,
    /// or of a tab that follows another's connection): no subscribe.
    fn sends_only(&self) -> bool {
        self.state.is_finished() || (self.follow.following() && !self.follow.catching_up)
    }

    /// The shared socket of connection `conn` is open and the shell starts
    /// resolving this run's `headers` for its subscribe: call at
    /// `SocketAction::RunOpen`, before [`Engine::handle_ws_open`].
    /// `connectTimeoutMs` bounds that wait (API.md: no `open` for this long
    /// → retry), as it bounds a fetch's wait for its headers; the socket's
    /// own machine bounds the wait for the socket.
    pub fn handle_ws_ready(&mut self, now: Ms, conn: u64) {
        // Only on a shared socket: an own socket's connect timer runs from `begin`.
        if self.cfg.shared_socket && conn == self.link.id && self.link.conn == Conn::Connecting {
            self.timers
                .set(Timer::Connect, now + self.cfg.connect_timeout_ms);
        }
    }

    /// A text frame on WebSocket connection `conn`.
    pub fn handle_ws_text(&mut self, now: Ms, conn: u64, text: &str) {
        if !self.link.accepts(conn) {
            return;
        }
        self.link.saw_byte(now, &self.cfg, &mut self.timers);
        if text.len() > self.cfg.max_event_bytes {
            self.protocol_error(now, FrameError::TooLarge(text.len()).into());
            return;
        }
        match ServerOp::decode(text) {
            Ok(op) => self.handle_ws_op(now, conn, op),
            Err(e) => self.protocol_error(now, FrameError::from(e).into()),
        }
    }

    /// A frame of WebSocket connection `conn` already decoded (by a shared
    /// socket's machine, which routes each frame to its run: decoded once).
    pub fn handle_ws_op(&mut self, now: Ms, conn: u64, op: ServerOp) {
        if !self.link.accepts(conn) {
            return;
        }
        self.link.saw_byte(now, &self.cfg, &mut self.timers);
        if self.link.conn == Conn::Connecting
            && matches!(
                op,
                ServerOp::Event { .. }
                    | ServerOp::Snapshot { .. }
                    | ServerOp::Subscribed { .. }
                    | ServerOp::Error {
                        client_request_id: None,
                        ..
                    }
            )
        {
            // This run has not subscribed yet (its `handle_ws_open` subscribes
            // and opens): the frame answers another stream's subscription to
            // the same run on a shared socket (an error naming no send
            // included), or one this run dropped. Its own subscribe replays
            // from the cursor and gets its own answer. Acks and errors of
            // this run's sends still count: they answer its outbox.
            return;
        }
        match op {
            ServerOp::Event { event } => {
                self.handle_frame(now, event.get());
            }
            ServerOp::Snapshot {
                run_id,
                event_id,
                state,
            } => {
                let body = SnapshotBody {
                    run_id,
                    event_id,
                    state,
                };
                match snapshot_of(body, &self.cfg.run_id) {
                    Ok((id, st)) => {
                        // Not relayed: followers from before it miss and
                        // repair it themselves (`install_snapshot`).
                        self.note_event_arrival(now);
                        self.apply_snapshot(now, id, st)
                    }
                    Err(e) => self.protocol_error(now, e.into()),
                }
            }
            ServerOp::Subscribed { run_id, .. } if run_id == self.cfg.run_id => {
                self.link.authorized()
            }
            ServerOp::Subscribed { .. } => {}
            ServerOp::Pong { .. } => {}
            ServerOp::Ack {
                client_request_id,
                message_id,
                ..
            } if !self.outbox.is_cancel(&client_request_id) => {
                self.send_accepted(now, &client_request_id, Some(&message_id))
            }
            ServerOp::Ack { .. } => {}
            // A cancel's acceptance: the run's `run.cancel_requested` follows in its log.
            ServerOp::CancelAck {
                client_request_id, ..
            } => {
                if self.outbox.is_cancel(&client_request_id) {
                    self.cancel_accepted(now, &client_request_id);
                }
            }
            ServerOp::Error {
                run_id,
                code,
                message,
                client_request_id,
            } => {
                let msg: String = message.chars().take(200).collect();
                match client_request_id {
                    // A send this stream does not hold: another stream's on a
                    // shared socket (the error names no run), or one already
                    // settled. Not ours to report.
                    Some(crid) if !self.outbox.contains(&crid) => {}
                    Some(crid) => self.send_refused(now, &crid, code, &msg),
                    // Another run's refusal (PROTOCOL §7: "for that run
                    // alone"; a socket of our own carries every frame).
                    None if run_id.as_deref().is_some_and(|r| r != self.cfg.run_id) => {}
                    // No subscribe of ours to refuse on a socket just for
                    // sends: another stream's subscription to this run.
                    None if run_id.is_some() && self.sends_only() => {}
                    None if run_id.is_some() => self.run_refused(now, code, &msg),
                    // An error naming no run (the server could not read a
                    // frame): no verdict on this run, resumed as before.
                    None if code == ErrorCode::NotFound => {
                        self.fail_final(now, Termination::Http4xx, "run not found".into())
                    }
                    None => self.fail(
                        now,
                        Termination::ProtocolError,
                        None,
                        ["server error ", code.as_str(), ": ", &msg].concat(),
                    ),
                }
            }
        }
    }

    /// PROTOCOL §2b / §7: this run's subscription was refused (or its token
    /// expired mid-stream) with `code`: the WebSocket form of a stream's
    /// HTTP status.
    fn run_refused(&mut self, now: Ms, code: ErrorCode, msg: &str) {
        match code {
            // A 401: `headers` again and a new subscribe from the cursor, at
            // once, once per expiry (a `subscribed` re-arms it).
            ErrorCode::Unauthorized => self.unauthorized(now, ws_reason("not authorized", msg)),
            ErrorCode::Forbidden => {
                self.fail_final(now, Termination::Http4xx, ws_reason("forbidden", msg))
            }
            ErrorCode::NotFound => {
                self.fail_final(now, Termination::Http4xx, ws_reason("run not found", msg))
            }
            // The subscribe frame itself is not acceptable: sending it again
            // changes nothing (PROTOCOL §2b: final, never retried).
            ErrorCode::BadRequest => {
                self.fail_final(now, Termination::Http4xx, ws_reason("bad request", msg))
            }
            // Finished with nothing more to send: the socket's 204.
            ErrorCode::Finished => self.on_status(now, 204, None, false),
            ErrorCode::Unavailable => self.fail(
                now,
                Termination::Http5xx,
                None,
                ws_reason("server unavailable", msg),
            ),
            // A code the contract does not name: resumed with backoff.
            ErrorCode::Other(_) => self.fail(
                now,
                Termination::ProtocolError,
                None,
                ["server error ", code.as_str(), ": ", msg].concat(),
            ),
        }
    }

    /// A binary frame on WebSocket connection `conn` (a protocol error).
    pub fn handle_ws_binary(&mut self, now: Ms, conn: u64) {
        self.handle_ws_frame_error(now, conn, FrameError::Binary);
    }

    /// A frame of WebSocket connection `conn` that could not be used (binary,
    /// not JSON, too large): a protocol error, counted.
    pub fn handle_ws_frame_error(&mut self, now: Ms, conn: u64, e: FrameError) {
        if !self.link.accepts(conn) {
            return;
        }
        self.link.saw_byte(now, &self.cfg, &mut self.timers);
        self.protocol_error(now, e.into());
    }

    /// The snapshot request's response headers arrived: `connect_timeout_ms`
    /// no longer applies (API.md: it bounds the wait for headers). Its body
    /// may take until `heartbeat_timeout_ms` of silence, the bound a stream's
    /// body has (the shell sees no progress inside a text body, so it is
    /// counted from the headers).
    pub fn handle_snapshot_headers(&mut self, now: Ms) {
        if self.timers.is_armed(Timer::Snapshot) {
            self.timers
                .set(Timer::Snapshot, now + self.cfg.heartbeat_timeout_ms);
        }
    }

    /// Snapshot endpoint answered: `Ok(body)` for a 200, `Err(reason)` otherwise.
    pub fn handle_snapshot(&mut self, now: Ms, result: Result<&str, String>) {
        self.timers.clear(Timer::Snapshot);
        // A body that is not a valid snapshot of this run (not the §6 shape,
        // a role outside §4's four, another run) is counted as a protocol
        // error, as the same state in a `snapshot` event is; an HTTP or
        // network failure is not.
        let parsed = match result {
            Ok(body) => {
                let valid = match SnapshotBody::decode(body) {
                    Ok(b) => snapshot_of(b, &self.cfg.run_id),
                    Err(e) => Err(SnapshotError::Invalid(e.message())),
                };
                valid.map_err(|e| {
                    let why = e.message();
                    self.protocol_error(now, e.into());
                    why
                })
            }
            Err(e) => Err(e),
        };
        let failed = parsed.is_err();
        match parsed {
            // Final reconciliation: the endpoint's state is authoritative,
            // also when it comes after the wait for it gave up (leftovers
            // were marked `unknown` meanwhile: PROTOCOL §4 says so only "if
            // that fails").
            Ok((id, st))
                if (self.reconciling || self.state.is_finished()) && id >= self.state.cursor =>
            {
                self.install_snapshot(now, id, st);
            }
            Ok((id, st)) => self.apply_snapshot(now, id, st),
            Err(e) => {
                self.link.last_error = Some(["snapshot unavailable: ", &e].concat());
            }
        }
        // A gap the snapshot did not repair is skipped (PROTOCOL §1), when
        // the ladder asked for it; a follower's fetch after a miss falls back
        // to a catch-up connection instead.
        if let GapRepair::Skip { from, to } = self.ordering.snapshot_failed(self.state.cursor) {
            self.skip_gap(now, from, to);
        } else if failed {
            self.snapshot_missed(now);
        }
        if self.reconciling {
            self.reconciling = false;
            if self.state.is_finished()
                && (self.state.non_terminal() > 0 || !self.parked.is_empty())
            {
                self.mark_leftovers_unknown(now);
            }
        }
        self.mark_dirty();
    }

    /// An envelope's text, from the network or relayed by the leading tab
    /// (one path: a relayed envelope is validated like any other). A leader
    /// relays what it received from the network, on arrival, before applying it.
    pub(super) fn handle_frame(&mut self, now: Ms, text: &str) {
        let r = decode_envelope(text, &self.cfg.run_id);
        let id = match &r {
            Ok(env) => Some(env.event_id),
            Err(DecodeError::InvalidPayload { event_id, .. }) => Some(*event_id),
            Err(_) => None,
        };
        if let Some(id) = id {
            if self.link.live() {
                self.relay(id, text);
            }
        }
        self.handle_decoded(now, r);
        if self.follow.catching_up {
            self.settle_side_link(now);
        }
    }

    fn note_event_arrival(&mut self, now: Ms) {
        if !self.link.live() {
            // A relayed envelope of a tab with no connection of its own: no attempt to time.
            return;
        }
        let a = &mut self.link.attempt;
        if a.first_event_at.is_none() {
            a.first_event_at = Some(now);
            a.replaying = a.resumed;
            let ttfe = now - a.started_at;
            let started = a.started_at;
            self.metrics.time_to_first_event_ms = Some(ttfe);
            self.telemetry.metric(
                EventClass::Histogram,
                Metric::TimeToFirstEvent,
                ttfe,
                now,
                &[],
            );
            let f = SpanFields {
                attempt: Some(self.link.connects),
                ..SpanFields::new("connect", started, now, SpanStatus::Ok)
            };
            self.span(self.run_trace.clone(), f);
        } else if a.replaying && now - a.last_event_at >= self.cfg.replay_quiet_ms {
            self.end_replay();
        }
        self.link.attempt.last_event_at = now;
    }

    pub(super) fn end_replay(&mut self) {
        let a = &mut self.link.attempt;
        if !a.replaying {
            return;
        }
        a.replaying = false;
        let (end, n, started, first) =
            (a.last_event_at, a.replayed, a.started_at, a.first_event_at);
        self.telemetry.metric(
            EventClass::Histogram,
            Metric::ReplayEvents,
            n as f64,
            end,
            &[],
        );
        if let Some(start) = first {
            let f = SpanFields {
                events: Some(n),
                ..SpanFields::new("replay", started, end.max(start), SpanStatus::Ok)
            };
            self.span(self.run_trace.clone(), f);
        }
    }

    fn handle_decoded(&mut self, now: Ms, r: Result<Envelope, DecodeError>) {
        match r {
            Ok(env) => {
                self.note_event_arrival(now);
                if !env.timestamp_valid {
                    // Informational (PROTOCOL §1): counted, and the event applies.
                    self.protocol_error(now, DecodeError::BadTimestamp.into());
                }
                match env.kind {
                    EventKind::Snapshot(state) => match RunState::from_wire_json(&state) {
                        Ok(st) => self.apply_snapshot(now, env.event_id, st),
                        // Not the §6 shape: an invalid payload of a `snapshot`
                        // event, which is not a log entry (§3) and consumes no id.
                        Err(e) => self.protocol_error(
                            now,
                            DecodeError::InvalidPayload {
                                event_id: env.event_id,
                                event_type: "snapshot".to_owned(),
                                reason: ["`state`: ", &snapshot_reason(e)].concat(),
                            }
                            .into(),
                        ),
                    },
                    EventKind::Unknown => {
                        let fresh =
                            env.event_id > self.state.cursor && !self.ordering.holds(env.event_id);
                        if fresh {
                            // Forward compatibility (PROTOCOL §1): counted, reported, a no-op.
                            self.metrics.unknown_events += 1;
                            self.telemetry.metric(
                                EventClass::Counter,
                                Metric::UnknownEvent,
                                1.0,
                                now,
                                &[],
                            );
                        }
                        self.offer(now, env.event_id, EventKind::Unknown);
                    }
                    kind => self.offer(now, env.event_id, kind),
                }
            }
            Err(DecodeError::InvalidPayload {
                event_id,
                event_type,
                reason,
            }) => {
                self.note_event_arrival(now);
                // A log event's id is consumed so the log can move on (it has no
                // effect). A snapshot is not a log entry (§3): it consumes nothing.
                let consume = event_type != "snapshot"
                    && event_id > self.state.cursor
                    && !self.ordering.holds(event_id);
                self.protocol_error(
                    now,
                    DecodeError::InvalidPayload {
                        event_id,
                        event_type,
                        reason,
                    }
                    .into(),
                );
                if consume {
                    self.offer(now, event_id, EventKind::Unknown);
                }
            }
            Err(e) => self.protocol_error(now, e.into()),
        }
    }

    /// Exactly-once, in-order: duplicate, apply (+ drain), or hold beyond a gap.
    fn offer(&mut self, now: Ms, id: u64, kind: EventKind) {
        match self
            .ordering
            .offer(self.state.cursor, id, kind, self.cfg.reorder_capacity)
        {
            Offer::Duplicate => {
                self.metrics.duplicates_dropped += 1;
                self.telemetry
                    .metric(EventClass::Counter, Metric::Duplicate, 1.0, now, &[]);
                self.mark_dirty();
            }
            Offer::Apply(kind) => {
                self.apply(now, id, kind);
                self.drain(now);
            }
            Offer::Held => {
                self.metrics.out_of_order += 1;
                self.telemetry
                    .metric(EventClass::Counter, Metric::OutOfOrder, 1.0, now, &[]);
                if !self.timers.is_armed(Timer::Gap) {
                    self.timers.set(Timer::Gap, now + self.cfg.gap_timeout_ms);
                }
                self.mark_dirty();
            }
            Offer::Full => self.on_gap_timeout(now),
        }
    }

    /// Applies every held event that follows the cursor; re-arms the gap deadline.
    fn drain(&mut self, now: Ms) {
        while let Some((id, kind)) = self.ordering.pop_ready(self.state.cursor) {
            self.apply(now, id, kind);
        }
        let gap = self
            .ordering
            .has_gap()
            .then_some(now + self.cfg.gap_timeout_ms);
        self.timers.set_opt(Timer::Gap, gap);
    }

    fn apply(&mut self, now: Ms, id: u64, kind: EventKind) {
        let mut out = std::mem::take(&mut self.applied_scratch);
        let parked_before = self.parked.len();
        let r = self
            .state
            .apply(id, kind, &mut self.parked, self.cfg.park_capacity, &mut out);
        if self.parked.len() != parked_before {
            // Parked events are stored with the cursor that is past them.
            self.persist.touch();
        }
        self.metrics.events_applied += 1;
        self.frame_events += 1;
        self.link.attempt.progressed = true;
        if self.link.attempt.replaying {
            self.link.attempt.replayed += 1;
            self.metrics.events_replayed += 1;
        }
        if let Err(e) = r {
            self.protocol_error(now, e.into());
        }
        for a in out.drain(..) {
            self.on_applied(now, a);
        }
        self.applied_scratch = out;
        self.mark_dirty();
    }

    fn on_applied(&mut self, now: Ms, a: Applied) {
        match a {
            Applied::ToolSeen => self.metrics.tool_calls += 1,
            Applied::ToolCompleted { ok, first_seen } => {
                if first_seen {
                    self.metrics.tool_calls += 1;
                }
                if !ok {
                    self.metrics.tool_errors += 1;
                    self.telemetry
                        .metric(EventClass::Counter, Metric::ToolError, 1.0, now, &[]);
                }
            }
            Applied::Token { reply_to } => {
                self.activity.token(now);
                if let Some(crid) = reply_to {
                    self.note_token(now, &crid);
                }
            }
            Applied::MessageDone { reply_to, fallback } => {
                self.activity.reply_done(reply_to.as_deref());
                if let Some(crid) = reply_to {
                    self.note_reply_done(now, crid, fallback);
                }
                self.settle_cancels(now);
            }
            Applied::SendFailed { client_request_id } => {
                self.activity.forget(&client_request_id);
                self.settle_cancels(now);
            }
            Applied::Echo { client_request_id } => {
                // The echo proves the server has it: no further attempts needed.
                if self.outbox.remove(&client_request_id) {
                    self.record_ttfb(now, &client_request_id);
                    self.persist.touch();
                    self.timers.set_opt(Timer::Send, self.outbox.next_due());
                }
            }
            Applied::RunCompleted => {
                self.settle_cancels(now);
                self.end_link(now, Termination::RunCompleted, None);
                self.finish(now);
            }
        }
    }

    /// After the run finished: every worker and tool must reach a terminal status.
    pub(super) fn after_finish(&mut self, now: Ms) {
        self.request_persist(now, true);
        if self.state.is_finished()
            && self.state.non_terminal() == 0
            && self.parked.is_empty()
            && !self.snapshot_replaced
        {
            return;
        }
        if self.cfg.has_snapshot_url {
            if !self.reconciling {
                self.reconciling = true;
                self.fetch_snapshot(now);
            }
        } else if self.state.is_finished() {
            self.mark_leftovers_unknown(now);
        }
    }

    /// Asks the snapshot endpoint; an answer that does not come within
    /// `connect_timeout_ms` counts as a failure (the caller's fallback runs).
    pub(super) fn fetch_snapshot(&mut self, now: Ms) {
        self.actions.push_back(Action::FetchSnapshot);
        self.timers
            .set(Timer::Snapshot, now + self.cfg.connect_timeout_ms);
    }

    /// PROTOCOL §4: after `run.completed` nothing is left "running".
    fn mark_leftovers_unknown(&mut self, now: Ms) {
        self.state.mark_unknown();
        self.parked.clear();
        self.persist.touch();
        self.request_persist(now, true);
    }

    /// Replaces the state with snapshot `st` as of `id` (parked events are covered by it).
    fn install_snapshot(&mut self, now: Ms, id: u64, mut st: RunState) {
        st.cursor = id;
        st.run_id = self.cfg.run_id.clone();
        self.state.replace_with(st);
        self.relay_gap(id);
        self.parked.clear();
        self.persist.touch();
        self.settle_sends_from_state(now);
        self.settle_cancels(now);
    }

    /// A snapshot applies no events, so nothing reports the echoes and
    /// replies it already holds: a pending send whose echo is in it is
    /// accepted, and a wait whose reply finished in it ends.
    fn settle_sends_from_state(&mut self, now: Ms) {
        let mut echoed = Vec::new();
        for m in &self.state.messages {
            if let (Some(crid), Some(_)) = (&m.client_request_id, &m.message_id) {
                if self.outbox.contains(crid) {
                    echoed.push(crid.clone());
                }
            }
        }
        // The waits the history itself ends, by the rule a refresh uses
        // (`unanswered`): a finished reply naming the send, or without
        // `reply_to` after it, or the send failed. A send the snapshot does
        // not hold (only the local optimistic message) is still awaited.
        let open = super::unanswered(&self.state);
        let answered: Vec<String> = self
            .activity
            .awaited()
            .filter(|c| !open.contains(c) && self.state.has_echoed_request(c))
            .cloned()
            .collect();
        for crid in echoed {
            self.outbox.remove(&crid);
            self.record_ttfb(now, &crid);
        }
        for crid in answered {
            self.activity.reply_done(Some(&crid));
            self.note_reply_done(now, crid, None);
        }
        self.timers.set_opt(Timer::Send, self.outbox.next_due());
    }

    fn apply_snapshot(&mut self, now: Ms, id: u64, st: RunState) {
        if id <= self.state.cursor {
            self.metrics.duplicates_dropped += 1;
            return;
        }
        self.install_snapshot(now, id, st);
        self.snapshot_replaced = true;
        self.ordering.covered_up_to(id);
        self.link.attempt.progressed = true;
        self.drain(now);
        if self.state.is_finished() && !matches!(self.link.conn, Conn::Finished | Conn::Closed) {
            self.end_link(now, Termination::RunCompleted, None);
            self.finish(now);
        }
        self.mark_dirty();
    }

    /// The gap deadline passed (or the reorder buffer filled): the next rung
    /// of the repair ladder (replay, replay, snapshot, skip).
    pub(super) fn on_gap_timeout(&mut self, now: Ms) {
        if !self.ordering.has_gap() {
            return;
        }
        match self
            .ordering
            .on_gap_timeout(self.state.cursor, self.cfg.has_snapshot_url)
        {
            GapRepair::Replay if self.follow.following() => {
                // The leader replays from its ring (or answers with a miss);
                // the next rung comes after another gap timeout.
                self.ask(now);
                self.timers.set(Timer::Gap, now + self.cfg.gap_timeout_ms);
            }
            GapRepair::Skip { .. }
                if self.follow.following()
                    && !self.cfg.has_snapshot_url
                    && self.follow.gap_catch_up != Some(self.state.cursor) =>
            {
                // Nothing lost for want of a leader's answer: catch up on our
                // own, once per gap (next time round, the gap is skipped).
                self.follow.gap_catch_up = Some(self.state.cursor);
                self.catch_up(now);
                self.timers.set(Timer::Gap, now + self.cfg.gap_timeout_ms);
            }
            GapRepair::Replay => {
                // Through the backoff like any other reconnect (counted, paced).
                self.fail(
                    now,
                    Termination::Resync,
                    None,
                    "a gap in event ids did not fill in time".into(),
                );
            }
            GapRepair::Snapshot => self.fetch_snapshot(now),
            GapRepair::Skip { from, to } => self.skip_gap(now, from, to),
            GapRepair::Nothing => {}
        }
    }

    /// Gives up on ids `from..=to` (PROTOCOL §1): counted, reported, and the
    /// events held beyond them are applied.
    fn skip_gap(&mut self, now: Ms, from: u64, to: u64) {
        let n = to.saturating_sub(from) + 1;
        self.metrics.gaps_skipped += n;
        self.telemetry
            .metric(EventClass::Counter, Metric::GapSkipped, n as f64, now, &[]);
        self.link.last_error = Some(if from == to {
            concat_u64("event ", from, " could not be recovered and was skipped")
        } else {
            [
                concat_u64("events ", from, "–"),
                concat_u64("", to, " could not be recovered and were skipped"),
            ]
            .concat()
        });
        self.state.cursor = self.state.cursor.max(to);
        self.relay_gap(to);
        self.drain(now);
        if self.follow.catching_up {
            self.settle_side_link(now);
        }
        self.mark_dirty();
    }

    /// The subscribe frame of this run on the current socket.
    fn subscribe_frame(&self) -> String {
        ClientOp::Subscribe {
            run_id: self.cfg.run_id.clone(),
            last_event_id: (self.state.cursor > 0).then_some(self.state.cursor),
            headers: self.ws_headers.clone(),
        }
        .encode()
    }

    /// Sends ride the WebSocket (they wait for an open socket) rather than HTTP POSTs.
    pub(super) fn socket_transport(&self) -> bool {
        self.cfg.transport == Transport::WebSocket
    }
}

/// The reason shown for a refusal over WebSocket: `what`, and the server's detail.
fn ws_reason(what: &str, msg: &str) -> String {
    if msg.is_empty() {
        what.to_owned()
    } else {
        [what, ": ", msg].concat()
    }
}

/// Validates a snapshot body (endpoint body or WS `snapshot` op) of `run_id`.
fn snapshot_of(b: SnapshotBody, run_id: &str) -> Result<(u64, RunState), SnapshotError> {
    if b.run_id != run_id {
        return Err(SnapshotError::ForeignRun);
    }
    if b.event_id > MAX_EVENT_ID {
        return Err(SnapshotError::Invalid("`event_id` out of range".into()));
    }
    let id = b.event_id;
    Ok((id, b.into_state()?))
}

/// What was wrong with a snapshot state, without the "invalid snapshot" prefix.
fn snapshot_reason(e: SnapshotError) -> String {
    match e {
        SnapshotError::Invalid(reason) => reason,
        other => other.message(),
    }
}
