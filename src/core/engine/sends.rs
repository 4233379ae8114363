//! The chat side of the coordinator: `send()`, the outcome of each attempt,
//! writing due sends on the current channel, and per-send metrics.

use super::io::CancelState;
use super::link::Conn;
use super::outbox::{Request, SendTiming};
use super::timers::Timer;
use super::{hex_id, Action, Engine, EngineError, Ms, SendResult, Spans};
use crate::core::json::write::concat_u64;
use crate::core::metrics::{
    EventClass, MessageMetrics, Metric, SpanFields, SpanStatus, MAX_MESSAGE_METRICS,
};
use crate::core::state::{Message, MessageRole, MessageStatus};
use crate::core::wire::{Accepted, ClientOp, ErrorCode, Headers};

impl Engine {
    /// Sends a chat message: the optimistic message shows at once; returns its `client_request_id`.
    /// Works until `close()` (also after the run completed).
    pub fn send(&mut self, now: Ms, content: &str) -> Result<String, EngineError> {
        if !self.cfg.can_send {
            return Err(EngineError::NoSendTarget);
        }
        if self.link.conn == Conn::Closed {
            return Err(EngineError::Closed);
        }
        if content.is_empty() {
            return Err(EngineError::EmptyMessage);
        }
        if self.outbox.len() >= self.cfg.outbox_capacity {
            return Err(EngineError::OutboxFull(self.outbox.len()));
        }
        let crid = self.rng.uuid_v4();
        self.state.insert_message(Message {
            message_id: None,
            client_request_id: Some(crid.clone()),
            reply_to: None,
            role: MessageRole::User,
            content: content.to_owned(),
            status: MessageStatus::Queued,
        });
        let trace = match self.cfg.spans {
            Spans::Sampled(rate) if self.rng.next_f64() < rate => Some(hex_id(&mut self.rng)),
            _ => None,
        };
        self.outbox.timings.insert(
            crid.clone(),
            SendTiming {
                sent_at: now,
                trace,
            },
        );
        self.metric_entry(&crid);
        self.outbox.push(&crid, content, now);
        if !self.state.is_finished() {
            // A finished run's stream is over: no reply can arrive on it.
            self.activity.expect_reply(&crid, now);
            self.activity
                .sync_timer(true, self.cfg.stall_after_ms, &mut self.timers);
        }
        self.pump_sends(now);
        // Stored at once: a reload right after send() must send it again.
        self.persist.touch();
        self.request_persist(now, true);
        self.mark_dirty();
        Ok(crid)
    }

    /// Result of the POST for `client_request_id`.
    pub fn handle_send_result(&mut self, now: Ms, client_request_id: &str, r: SendResult) {
        if !self.outbox.contains(client_request_id) {
            return;
        }
        if self.outbox.is_cancel(client_request_id) {
            self.handle_cancel_result(now, client_request_id, r);
            return;
        }
        if r.headers_error.is_some() {
            // Retried after its backoff like a network error (the message
            // shows "queued"; `headers` is called again then).
            self.retry_send(now, client_request_id, None);
            return;
        }
        match r.status {
            Some(200..=299) => {
                // A 2xx is acceptance even if the body is not the §5 shape.
                let accepted = r.body.as_deref().and_then(|b| Accepted::decode(b).ok());
                let mid = accepted.map(|a| a.message_id);
                self.send_accepted(now, client_request_id, mid.as_deref());
            }
            Some(401) => self.send_unauthorized(now, client_request_id, "HTTP 401"),
            None | Some(408 | 425 | 429 | 500..=599) => {
                self.retry_send(now, client_request_id, r.retry_after_ms)
            }
            Some(code) => self.send_failed_final(
                now,
                client_request_id,
                concat_u64("HTTP ", u64::from(code), ""),
            ),
        }
    }

    /// PROTOCOL §2b / §7: the server answered WebSocket send `crid` with an
    /// `error` of `code` (detail `msg`).
    pub(super) fn send_refused(&mut self, now: Ms, crid: &str, code: ErrorCode, msg: &str) {
        if self.outbox.is_cancel(crid) {
            self.cancel_refused(now, crid, code, msg);
            return;
        }
        match code {
            // A 401: one attempt at once with refreshed headers, then final.
            ErrorCode::Unauthorized => self.send_unauthorized(now, crid, "unauthorized"),
            // A refusal: sending it again changes nothing.
            ErrorCode::Forbidden
            | ErrorCode::NotFound
            | ErrorCode::BadRequest
            | ErrorCode::Finished => {
                self.send_failed_final(now, crid, [code.as_str(), ": ", msg].concat())
            }
            // `unavailable` (a 5xx), or a code the contract does not name.
            ErrorCode::Unavailable | ErrorCode::Other(_) => self.retry_send(now, crid, None),
        }
    }

    /// A 401 (or `unauthorized`) for send `crid`: once it is sent again at
    /// once (the `headers` function is called for it again), then it fails
    /// with `why`.
    fn send_unauthorized(&mut self, now: Ms, crid: &str, why: &str) {
        if self.outbox.unauthorized(crid, now) {
            self.pump_sends(now);
        } else {
            self.send_failed_final(now, crid, why.to_owned());
        }
    }

    /// A retryable failure of a send's attempt: queued again after its backoff.
    pub(super) fn retry_send(&mut self, now: Ms, crid: &str, retry_after: Option<Ms>) {
        let jitter = self.rng.next_f64();
        if self
            .outbox
            .retry(crid, now, retry_after, &self.cfg.backoff, jitter)
            .is_some()
        {
            if let Some(m) = self.state.message_by_request(crid) {
                m.status = MessageStatus::Queued;
            }
            self.cancel_progress(crid, CancelState::Queued);
            self.timers.set_opt(Timer::Send, self.outbox.next_due());
            self.mark_dirty();
        }
    }

    /// Writes every due send on the current channel (oldest first) and arms
    /// the timer of the next one. Over WebSocket sends wait for an open socket;
    /// after the run finished, a socket is opened just for them.
    pub(super) fn pump_sends(&mut self, now: Ms) {
        let ws = self.socket_transport();
        let ready = match self.link.conn {
            Conn::Closed => false,
            _ if !self.link.online => false,
            _ if !ws => true,
            Conn::Open { .. } => true,
            Conn::Finished | Conn::Following if self.outbox.has_queued() => {
                // A socket just for the sends (no subscribe), closed once they are acknowledged.
                self.connect(now);
                false
            }
            _ => false,
        };
        if !ready {
            // `online`, `open` and retryNow() pump again.
            self.timers.clear(Timer::Send);
            return;
        }
        let conn = self.link.id;
        for d in self.outbox.take_due(now, ws) {
            let crid = d.client_request_id.clone();
            if ws && self.cfg.headers_per_send {
                self.actions.push_back(Action::WsSendHeaders {
                    conn,
                    client_request_id: crid,
                });
            } else if ws {
                let headers = self.ws_headers.clone();
                let text = self.request_frame(&crid, &d.request, headers);
                self.actions.push_back(Action::WsSend { conn, text });
            } else {
                self.actions.push_back(match d.request {
                    Request::Send(content) => Action::Post {
                        client_request_id: crid,
                        content,
                    },
                    Request::Cancel(c) => Action::PostCancel {
                        body: Self::cancel_body(&crid, &c),
                        client_request_id: crid,
                    },
                });
            }
            self.cancel_progress(&d.client_request_id, CancelState::Sent);
            if let Some(m) = self.state.message_by_request(&d.client_request_id) {
                if m.status == MessageStatus::Queued {
                    m.status = MessageStatus::Sending;
                }
            }
            self.mark_dirty();
        }
        self.timers.set_opt(Timer::Send, self.outbox.next_due());
    }

    /// The WebSocket frame of outbox entry `crid`: a `send` or a `cancel` op.
    fn request_frame(&self, crid: &str, request: &Request, headers: Option<Headers>) -> String {
        match request {
            Request::Send(content) => ClientOp::Send {
                session_id: self.cfg.session_id.clone(),
                client_request_id: crid.to_owned(),
                content: content.clone(),
                headers,
            }
            .encode(),
            Request::Cancel(c) => self.cancel_frame(crid, c, headers),
        }
    }

    /// The `headers` option resolved (or failed) for WebSocket send `crid`
    /// on connection `conn` ([`Action::WsSendHeaders`]): the frame is
    /// written with them; a failure is retried after the send's backoff like
    /// a network error. Ignored when the send is no longer in flight on
    /// `conn` (the socket dropped: the send is queued for the next one).
    pub fn handle_ws_send_headers(
        &mut self,
        now: Ms,
        conn: u64,
        crid: &str,
        headers: Result<Vec<(String, String)>, String>,
    ) {
        if conn != self.link.id || !self.outbox.in_flight_on_socket(crid) {
            return;
        }
        match headers {
            Ok(h) => {
                let Some(request) = self.outbox.request(crid).cloned() else {
                    return;
                };
                let headers = (!h.is_empty()).then(|| h.into_iter().collect());
                let text = self.request_frame(crid, &request, headers);
                self.actions.push_back(Action::WsSend { conn, text });
            }
            Err(_) => self.retry_send(now, crid, None),
        }
    }

    pub(super) fn record_ttfb(&mut self, now: Ms, crid: &str) {
        let sent = self.outbox.timings.get(crid).map(|s| s.sent_at);
        if let (Some(sent), Some(m)) = (sent, self.metrics.messages.get_mut(crid)) {
            if m.ttfb_ms.is_none() {
                let v = now - sent;
                m.ttfb_ms = Some(v);
                self.telemetry
                    .metric(EventClass::Histogram, Metric::MessageTtfb, v, now, &[]);
            }
        }
    }

    pub(super) fn note_token(&mut self, now: Ms, crid: &str) {
        let sent = self.outbox.timings.get(crid).map(|s| s.sent_at);
        if let (Some(sent), Some(m)) = (sent, self.metrics.messages.get_mut(crid)) {
            m.tokens += 1;
            if m.ttft_ms.is_none() {
                let ttft = now - sent;
                m.ttft_ms = Some(ttft);
                self.telemetry
                    .metric(EventClass::Histogram, Metric::MessageTtft, ttft, now, &[]);
            }
        }
    }

    pub(super) fn note_reply_done(&mut self, now: Ms, crid: String, fallback: Option<String>) {
        let timing = self.outbox.timings.remove(&crid);
        if let (Some(t), Some(m)) = (timing, self.metrics.messages.get_mut(&crid)) {
            let d = now - t.sent_at;
            m.duration_ms = Some(d);
            m.fallback = fallback;
            let (ttfb, ttft) = (m.ttfb_ms, m.ttft_ms);
            self.telemetry
                .metric(EventClass::Histogram, Metric::MessageDuration, d, now, &[]);
            let f = SpanFields {
                ttfb_ms: ttfb,
                ttft_ms: ttft,
                client_request_id: Some(crid),
                ..SpanFields::new("message", t.sent_at, now, SpanStatus::Ok)
            };
            self.span(t.trace, f);
        }
    }

    pub(super) fn send_accepted(&mut self, now: Ms, crid: &str, message_id: Option<&str>) {
        self.record_ttfb(now, crid);
        self.outbox.remove(crid);
        self.persist.touch();
        if let Some(m) = self.state.message_by_request(crid) {
            if matches!(m.status, MessageStatus::Queued | MessageStatus::Sending) {
                m.status = MessageStatus::Sent;
            }
            if m.message_id.is_none() {
                if let Some(id) = message_id {
                    m.message_id = Some(id.to_owned());
                }
            }
        }
        self.state.reindex_messages();
        self.timers.set_opt(Timer::Send, self.outbox.next_due());
        self.close_send_only_socket(now);
        self.mark_dirty();
    }

    /// A final answer for send `crid` (PROTOCOL §7): it leaves the outbox
    /// and, at once, the stored record (a reload must not send it again),
    /// and shows as failed.
    pub(super) fn send_failed_final(&mut self, now: Ms, crid: &str, why: String) {
        self.outbox.remove(crid);
        self.persist.touch();
        self.activity.forget(crid);
        if let Some(m) = self.state.message_by_request(crid) {
            if m.message_id.is_none() {
                m.status = MessageStatus::Failed;
            }
        }
        if let Some(t) = self.outbox.timings.remove(crid) {
            let f = SpanFields {
                error_kind: Some("send_failed"),
                error: Some(why.clone()),
                client_request_id: Some(crid.to_owned()),
                ..SpanFields::new("message", t.sent_at, now, SpanStatus::Error)
            };
            self.span(t.trace, f);
        }
        self.link.last_error = Some(["message not sent: ", &why].concat());
        self.timers.set_opt(Timer::Send, self.outbox.next_due());
        self.close_send_only_socket(now);
        // Stored at once, as `send()` stored it at once.
        self.request_persist(now, true);
        self.mark_dirty();
    }

    /// A socket opened after the run finished only for sends closes once they are delivered.
    pub(super) fn close_send_only_socket(&mut self, now: Ms) {
        self.settle_side_link(now);
        if self.state.is_finished()
            && self.socket_transport()
            && self.outbox.is_empty()
            && self.link.live()
        {
            self.end_link(now, crate::core::metrics::Termination::RunCompleted, None);
            self.link.conn = Conn::Finished;
        }
    }

    fn metric_entry(&mut self, crid: &str) {
        while self.metrics.messages.len() >= MAX_MESSAGE_METRICS {
            // Drop the oldest send's figures (the one sent first).
            let timings = &self.outbox.timings;
            let oldest = self
                .metrics
                .messages
                .keys()
                .min_by(|a, b| {
                    let ta = timings.get(a).map_or(f64::MIN, |s| s.sent_at);
                    let tb = timings.get(b).map_or(f64::MIN, |s| s.sent_at);
                    ta.total_cmp(&tb)
                })
                .cloned();
            match oldest {
                Some(k) => {
                    self.metrics.messages.remove(&k);
                    self.outbox.timings.remove(&k);
                }
                None => break,
            }
        }
        self.metrics
            .messages
            .insert(crid.to_owned(), MessageMetrics::default());
    }

    /// The WebSocket `ping` frame (PROTOCOL §2b).
    pub(super) fn ping_frame(now: Ms) -> String {
        ClientOp::ping(now.round()).encode()
    }
}
