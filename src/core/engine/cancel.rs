//! The cancel side of the coordinator (PROTOCOL §8, API.md "A cancel is
//! durable like a send"): `cancel()`, the outcome of each attempt, and
//! `status.cancel`.
//!
//! A cancel is an outbox entry ([`Request::Cancel`]): queued, written on the
//! current channel (a POST to `cancelUrl`, or the `cancel` op on the socket)
//! by the same pump as sends, retried with the same backoff across
//! reconnects, stored with the cursor (the record's `cancels`). It leaves the
//! outbox when the server accepts it (2xx, `ack`), when the target has
//! finished (409, `finished`, or its end shows in the log), or when it is
//! refused for good (403/404 and other final answers: dropped from the stored
//! record at once). "working…" and the run status follow the events only.

use super::io::{CancelState, CancelStatus};
use super::link::Conn;
use super::outbox::{CancelReq, Request};
use super::timers::Timer;
use super::{Engine, EngineError, Ms, SendResult};
use crate::core::json::write::concat_u64;
use crate::core::json::Writer;
use crate::core::state::{MessageRole, MessageStatus};
use crate::core::wire::{ClientOp, ErrorCode, Headers};

impl Engine {
    /// Asks the server to stop the run (`reply_to: None`) or the reply to
    /// send `reply_to` (PROTOCOL §8). Returns the cancel's
    /// `client_request_id`; while a cancel of the same target is still on its
    /// way (or accepted and not yet done), the same one: presses repeat it.
    pub fn cancel(
        &mut self,
        now: Ms,
        reply_to: Option<&str>,
        reason: Option<&str>,
    ) -> Result<String, EngineError> {
        if !self.cfg.can_cancel {
            return Err(EngineError::NoCancelTarget);
        }
        if self.link.conn == Conn::Closed {
            return Err(EngineError::Closed);
        }
        if let Some(c) = &self.cancel {
            let open = matches!(
                c.state,
                CancelState::Queued | CancelState::Sent | CancelState::Accepted
            );
            if open && c.reply_to.as_deref() == reply_to {
                return Ok(c.client_request_id.clone());
            }
        }
        let req = CancelReq {
            reply_to: reply_to.map(str::to_owned),
            reason: reason.map(str::to_owned),
        };
        let crid = self.rng.uuid_v4();
        let finished = self.cancel_target_finished(reply_to);
        self.cancel = Some(CancelStatus {
            client_request_id: crid.clone(),
            reply_to: req.reply_to.clone(),
            state: if finished {
                CancelState::Done
            } else {
                CancelState::Queued
            },
        });
        self.mark_dirty();
        if finished {
            // Nothing left to stop: the server would answer 409.
            return Ok(crid);
        }
        if self.outbox.len() >= self.cfg.outbox_capacity {
            self.cancel_settled(now, &crid, CancelState::Failed);
            return Err(EngineError::OutboxFull(self.outbox.len()));
        }
        self.outbox.push_request(&crid, Request::Cancel(req), now);
        self.pump_sends(now);
        // Stored at once: a reload right after cancel() must send it again.
        self.persist.touch();
        self.request_persist(now, true);
        Ok(crid)
    }

    /// Takes the cancels of a stored record back (same ids), unless what they
    /// stop has finished meanwhile. The last one is `status.cancel`.
    pub(super) fn with_stored_cancels(mut self, cancels: Vec<(String, CancelReq)>) -> Self {
        self.restore_cancels(0.0, cancels);
        self
    }

    pub(super) fn restore_cancels(&mut self, now: Ms, cancels: Vec<(String, CancelReq)>) {
        for (crid, req) in cancels {
            if self.outbox.contains(&crid)
                || self.cancel_target_finished(req.reply_to.as_deref())
                || self.outbox.len() >= self.cfg.outbox_capacity
            {
                continue;
            }
            self.cancel = Some(CancelStatus {
                client_request_id: crid.clone(),
                reply_to: req.reply_to.clone(),
                state: CancelState::Queued,
            });
            self.outbox.push_request(&crid, Request::Cancel(req), now);
            self.mark_dirty();
        }
    }

    /// Whether what a cancel of `reply_to` stops has ended in the log: the
    /// run (always), or the reply's message (completed or failed), or the
    /// send itself failed (no reply will come).
    fn cancel_target_finished(&self, reply_to: Option<&str>) -> bool {
        if self.state.is_finished() {
            return true;
        }
        let Some(r) = reply_to else { return false };
        let done = |s: MessageStatus| matches!(s, MessageStatus::Completed | MessageStatus::Failed);
        self.state.messages.iter().any(|m| {
            (m.reply_to.as_deref() == Some(r) && done(m.status))
                || (m.role == MessageRole::User
                    && m.client_request_id.as_deref() == Some(r)
                    && m.status == MessageStatus::Failed
                    && m.message_id.is_some())
        })
    }

    /// The log moved (an event or a snapshot was applied): cancels whose
    /// target ended are done (and leave the outbox if still pending).
    pub(super) fn settle_cancels(&mut self, now: Ms) {
        let pending = self.outbox.cancels();
        let open = self.cancel.as_ref().is_some_and(|c| {
            matches!(
                c.state,
                CancelState::Queued | CancelState::Sent | CancelState::Accepted
            )
        });
        if pending.is_empty() && !open {
            return;
        }
        for (crid, req) in pending {
            if self.cancel_target_finished(req.reply_to.as_deref()) {
                self.cancel_settled(now, &crid, CancelState::Done);
            }
        }
        if let Some(c) = &self.cancel {
            if open && self.cancel_target_finished(c.reply_to.as_deref()) {
                let crid = c.client_request_id.clone();
                self.cancel_settled(now, &crid, CancelState::Done);
            }
        }
    }

    /// `status.cancel` moves to `state` if `crid` is the latest cancel (a
    /// settled state is never left).
    pub(super) fn cancel_progress(&mut self, crid: &str, state: CancelState) {
        if let Some(c) = self.cancel.as_mut() {
            let settled = matches!(c.state, CancelState::Done | CancelState::Failed);
            let backwards = c.state == CancelState::Accepted
                && matches!(state, CancelState::Queued | CancelState::Sent);
            if c.client_request_id == crid && !settled && !backwards && c.state != state {
                c.state = state;
                self.mark_dirty();
            }
        }
    }

    /// Cancel `crid` is over (`Accepted`, `Done` or `Failed`): it leaves the
    /// outbox and, at once, the stored record.
    fn cancel_settled(&mut self, now: Ms, crid: &str, state: CancelState) {
        self.cancel_progress(crid, state);
        if self.outbox.remove(crid) {
            self.persist.touch();
            self.request_persist(now, true);
            self.timers.set_opt(Timer::Send, self.outbox.next_due());
            self.close_send_only_socket(now);
        }
    }

    /// The server accepted cancel `crid` (2xx, WebSocket `ack`).
    pub(super) fn cancel_accepted(&mut self, now: Ms, crid: &str) {
        self.cancel_settled(now, crid, CancelState::Accepted);
        // The acceptance may come after its effect was applied.
        self.settle_cancels(now);
    }

    /// Result of the POST for cancel `crid` (from [`Engine::handle_send_result`]).
    pub(super) fn handle_cancel_result(&mut self, now: Ms, crid: &str, r: SendResult) {
        if r.headers_error.is_some() {
            self.retry_send(now, crid, None);
            return;
        }
        match r.status {
            Some(200..=299) => self.cancel_accepted(now, crid),
            // Already finished: quietly done (PROTOCOL §8).
            Some(409) => self.cancel_settled(now, crid, CancelState::Done),
            Some(401) => self.cancel_unauthorized(now, crid, "HTTP 401"),
            None | Some(408 | 425 | 429 | 500..=599) => {
                self.retry_send(now, crid, r.retry_after_ms)
            }
            Some(code) => self.cancel_failed(now, crid, &concat_u64("HTTP ", u64::from(code), "")),
        }
    }

    /// PROTOCOL §2b / §7: the server answered WebSocket cancel `crid` with an
    /// `error` of `code` (detail `msg`).
    pub(super) fn cancel_refused(&mut self, now: Ms, crid: &str, code: ErrorCode, msg: &str) {
        match code {
            ErrorCode::Unauthorized => self.cancel_unauthorized(now, crid, "unauthorized"),
            ErrorCode::Finished => self.cancel_settled(now, crid, CancelState::Done),
            ErrorCode::Forbidden | ErrorCode::NotFound | ErrorCode::BadRequest => {
                self.cancel_failed(now, crid, &[code.as_str(), ": ", msg].concat())
            }
            ErrorCode::Unavailable | ErrorCode::Other(_) => self.retry_send(now, crid, None),
        }
    }

    fn cancel_unauthorized(&mut self, now: Ms, crid: &str, why: &str) {
        if self.outbox.unauthorized(crid, now) {
            self.cancel_progress(crid, CancelState::Queued);
            self.pump_sends(now);
        } else {
            self.cancel_failed(now, crid, why);
        }
    }

    fn cancel_failed(&mut self, now: Ms, crid: &str, why: &str) {
        self.link.last_error = Some(["cancel not sent: ", why].concat());
        self.cancel_settled(now, crid, CancelState::Failed);
        self.mark_dirty();
    }

    /// The HTTP body of cancel `crid` (PROTOCOL §8).
    pub(super) fn cancel_body(crid: &str, c: &CancelReq) -> String {
        let mut w = Writer::new();
        w.begin_object();
        w.key("client_request_id").str(crid);
        if let Some(r) = &c.reason {
            w.key("reason").str(r);
        }
        if let Some(r) = &c.reply_to {
            w.key("reply_to").str(r);
        }
        w.end_object();
        w.finish()
    }

    /// The WebSocket `cancel` op of cancel `crid`.
    pub(super) fn cancel_frame(
        &self,
        crid: &str,
        c: &CancelReq,
        headers: Option<Headers>,
    ) -> String {
        ClientOp::Cancel {
            run_id: self.cfg.run_id.clone(),
            client_request_id: crid.to_owned(),
            reply_to: c.reply_to.clone(),
            reason: c.reason.clone(),
            headers,
        }
        .encode()
    }
}
