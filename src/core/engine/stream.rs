//! The connection side of the coordinator: opening and ending links, what a
//! status, a close or a failure means, and the run's end. The decisions are
//! [`Link`](super::link::Link)'s; this file turns them into actions, metrics and spans.

use super::link::{Conn, Failure};
use super::timers::Timer;
use super::{Action, CloseCause, Engine, Ms, Transport};
use crate::core::json::write::{concat_u64, push_f64};
use crate::core::metrics::{EventClass, Metric, SpanFields, SpanStatus, Termination};

impl Engine {
    /// What an HTTP status (or a WebSocket close code mapped to one) means for the stream.
    pub(super) fn on_status(
        &mut self,
        now: Ms,
        status: u16,
        retry_after_ms: Option<Ms>,
        event_stream: bool,
    ) {
        match status {
            204 => {
                self.end_link(now, Termination::NoContent, None);
                self.finish(now);
            }
            200..=299 if event_stream => {
                self.link.authorized();
                self.opened(now);
            }
            200..=299 => self.fail(
                now,
                Termination::ProtocolError,
                None,
                concat_u64("HTTP ", u64::from(status), " is not an event stream"),
            ),
            401 => self.unauthorized(now, final_reason(401)),
            408 | 425 | 429 => self.fail(
                now,
                Termination::Http4xx,
                retry_after_ms,
                concat_u64("HTTP ", u64::from(status), ""),
            ),
            500..=599 => self.fail(
                now,
                Termination::Http5xx,
                retry_after_ms,
                concat_u64("HTTP ", u64::from(status), ""),
            ),
            400..=499 => self.fail_final(now, Termination::Http4xx, final_reason(status)),
            _ => self.fail(
                now,
                Termination::ProtocolError,
                retry_after_ms,
                concat_u64("HTTP ", u64::from(status), ""),
            ),
        }
    }

    /// PROTOCOL §7 `401` (or WebSocket `unauthorized`): the `headers`
    /// function is called once more (a new connection, at once: a refreshed
    /// token) before giving up with `final_msg`; a success in between
    /// ([`Link::authorized`](super::link::Link::authorized)) re-arms it.
    pub(super) fn unauthorized(&mut self, now: Ms, final_msg: String) {
        if self.link.unauthorized_retried {
            self.fail_final(now, Termination::Http4xx, final_msg);
            return;
        }
        self.link.unauthorized_retried = true;
        self.end_link(now, Termination::Http4xx, Some(final_msg));
        self.connect(now);
    }

    /// Connection `conn` ended.
    pub fn handle_closed(&mut self, now: Ms, conn: u64, cause: CloseCause) {
        if !self.link.accepts(conn) {
            return;
        }
        match cause {
            CloseCause::Eof => self.fail(
                now,
                Termination::ServerClosed,
                None,
                "the server closed the stream".into(),
            ),
            CloseCause::Network => {
                self.fail(now, Termination::NetworkError, None, "network error".into())
            }
            CloseCause::WsClose { code } => match ws_close_status(code) {
                Some(status) => self.on_status(now, status, None, false),
                None if code == 1006 => {
                    self.fail(now, Termination::NetworkError, None, "network error".into())
                }
                None => self.fail(
                    now,
                    Termination::ServerClosed,
                    None,
                    concat_u64("the server closed the socket (", u64::from(code), ")"),
                ),
            },
            CloseCause::ConnectTimeout => self.fail(
                now,
                Termination::ConnectTimeout,
                None,
                "connection timed out".into(),
            ),
            CloseCause::HeartbeatTimeout => self.fail(
                now,
                Termination::HeartbeatTimeout,
                None,
                "no heartbeat from the server".into(),
            ),
            // A token endpoint that fails (often the same outage) is retried
            // like a network error, with `headers` called again each time.
            CloseCause::HeadersFailed(msg) => self.fail(
                now,
                Termination::HeadersError,
                None,
                ["the headers option failed: ", &msg].concat(),
            ),
        }
    }

    pub(super) fn connect(&mut self, now: Ms) {
        if self.persist.is_awaiting() {
            // The stored state is still being rebuilt: its cursor is not known yet.
            self.persist.defer_connect();
            return;
        }
        if self.follow.following() && !self.side_link_needed() {
            // Another tab holds the connection: whatever asked (a backoff
            // timer, `online`, a 401 retry) rests in following instead.
            if self.link.live() {
                self.end_link(now, Termination::Shared, None);
            }
            self.timers.clear(Timer::Reconnect);
            self.timers.clear(Timer::Countdown);
            self.link.conn = Conn::Following;
            return;
        }
        if self.link.live() {
            self.end_link(now, Termination::RetryNow, None);
        }
        let conn = self
            .link
            .begin(now, self.state.cursor > 0, &self.cfg, &mut self.timers);
        // A socket opened after the run finished only for its sends is not a
        // reconnect (PROTOCOL §2a: a finished stream never reconnects).
        if self.link.connects > 1 && !self.state.is_finished() {
            self.metrics.reconnects += 1;
            self.telemetry
                .metric(EventClass::Counter, Metric::Reconnect, 1.0, now, &[]);
        }
        self.telemetry
            .metric(EventClass::Counter, Metric::Connect, 1.0, now, &[]);
        self.parser.reset_stream();
        self.actions.push_back(Action::Connect {
            conn,
            resume_from: self.state.cursor,
        });
        self.mark_dirty();
    }

    pub(super) fn opened(&mut self, now: Ms) {
        self.link.opened(now, &self.cfg, &mut self.timers);
        if self.cfg.transport == Transport::WebSocket {
            self.pump_sends(now);
        }
        self.mark_dirty();
    }

    /// Ends the current link (if any) with `reason`: disconnect, count, span.
    pub(super) fn end_link(&mut self, now: Ms, reason: Termination, error: Option<String>) {
        if !self.link.live() {
            return;
        }
        self.actions
            .push_back(Action::Disconnect { conn: self.link.id });
        self.count_termination(now, reason);
        self.end_replay();
        if self.link.attempt.first_event_at.is_none() {
            let ok = matches!(
                reason,
                Termination::RunCompleted
                    | Termination::ClientClosed
                    | Termination::NoContent
                    | Termination::PageHidden
            );
            let status = if ok {
                SpanStatus::Canceled
            } else {
                SpanStatus::Error
            };
            let f = SpanFields {
                error_kind: Some(reason.as_str()),
                error,
                attempt: Some(self.link.connects),
                ..SpanFields::new("connect", self.link.attempt.started_at, now, status)
            };
            self.span(self.run_trace.clone(), f);
        }
        self.link.ended(&mut self.timers);
        // Held events come back with the resume's replay.
        self.ordering.clear();
        self.timers.clear(Timer::Gap);
        // Only an `ack` proves a WebSocket send was delivered: the rest go again.
        let requeued = self.outbox.requeue_socket_sends(now);
        if !requeued.is_empty() {
            for crid in &requeued {
                self.cancel_progress(crid, super::CancelState::Queued);
            }
            self.timers.set_opt(Timer::Send, self.outbox.next_due());
            self.mark_dirty();
        }
    }

    /// A transient failure: back off and reconnect (or stop if looping / offline).
    pub(super) fn fail(
        &mut self,
        now: Ms,
        reason: Termination,
        retry_after: Option<Ms>,
        msg: String,
    ) {
        self.end_link(now, reason, Some(msg.clone()));
        self.link.last_error = Some(msg);
        let jitter = self.rng.next_f64();
        match self
            .link
            .fail(now, retry_after, jitter, &self.cfg, &mut self.timers)
        {
            Failure::Wait(_) | Failure::Offline => {}
            Failure::Loop(n) => {
                self.count_termination(now, Termination::ErrorLoop);
                let mut msg = concat_u64("stopped after ", n as u64, " failed attempts in ");
                push_f64(&mut msg, (self.cfg.loop_guard_window_ms / 1000.0).round());
                msg.push_str(" s (");
                msg.push_str(reason.as_str());
                msg.push_str("); retry to continue");
                self.link.last_error = Some(msg);
            }
        }
        self.mark_dirty();
    }

    /// One termination, in `metrics.terminations` and on the raw event stream.
    fn count_termination(&mut self, now: Ms, reason: Termination) {
        self.metrics
            .terminations
            .increment(reason.as_str(), str::to_owned);
        self.telemetry.metric(
            EventClass::Counter,
            Metric::Termination,
            1.0,
            now,
            &[("reason", reason.as_str())],
        );
    }

    pub(super) fn fail_final(&mut self, now: Ms, reason: Termination, msg: String) {
        self.end_link(now, reason, Some(msg.clone()));
        self.link.last_error = Some(msg);
        self.link.conn = Conn::Failed;
        self.mark_dirty();
    }

    /// The run is finished: the stream ends for good (sends still work).
    pub(super) fn finish(&mut self, now: Ms) {
        self.link.conn = Conn::Finished;
        self.ordering.clear();
        self.timers.clear(Timer::Gap);
        self.activity.end(&mut self.timers);
        self.after_finish(now);
        self.mark_dirty();
    }
}

fn final_reason(status: u16) -> String {
    match status {
        401 => "HTTP 401: not authorized".into(),
        403 => "HTTP 403: forbidden".into(),
        404 => "HTTP 404: run not found".into(),
        410 => "HTTP 410: run gone".into(),
        s => concat_u64("HTTP ", u64::from(s), ""),
    }
}

/// The HTTP status a WebSocket close code stands for, if any: 4400–4599 embed
/// one (4401 → 401, 4404 → 404, 4503 → 503); 1008 (policy violation) is how
/// many servers refuse a socket's credentials, read as 403.
fn ws_close_status(code: u16) -> Option<u16> {
    match code {
        1008 => Some(403),
        4400..=4599 => Some(code - 4000),
        _ => None,
    }
}
