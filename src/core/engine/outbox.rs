//! Chat sends not yet accepted by the server (API.md "Sends survive everything").
//!
//! Rules:
//! - A send is pending from `send()` until the server accepts it (202, WebSocket
//!   `ack`, or its echo in the log). Pending sends are at most `outbox_capacity`;
//!   `send()` beyond it fails with `OutboxFull`.
//! - A retryable failure (network, 408/425/429/5xx, a timeout) waits
//!   [`backoff::delay`] for its attempt, honouring `Retry-After`, for as long as
//!   it takes: sends survive everything the stream survives. Only a final
//!   answer (another 4xx, a second 401, a refused WebSocket send) fails a send.
//! - A send written to a WebSocket that then drops goes back to the queue: only
//!   an `ack` proves delivery (the same `client_request_id` makes a repeat safe).
//! - Sends are persisted with the cursor (as optimistic messages of the state);
//!   a new page restores them and sends them again with the same id.
//! - Cancels (PROTOCOL §8) are entries of the same queue with the same
//!   retries; they are persisted in the record's `cancels` list.

use std::collections::VecDeque;

use crate::core::strmap::StrMap;

use super::backoff;
use super::config::{Backoff, Ms};
use crate::core::state::{Message, MessageStatus};

#[derive(Debug, Clone, Copy, PartialEq)]
enum SendState {
    Queued {
        due: Ms,
    },
    /// Written; `on_socket` = on the current WebSocket (lost if it drops).
    InFlight {
        on_socket: bool,
    },
}

/// What a cancel asks for (PROTOCOL §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelReq {
    /// The send whose reply to stop (`None`: the whole run).
    pub reply_to: Option<String>,
    /// Why, as given to `cancel()`.
    pub reason: Option<String>,
}

/// What a pending entry delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A chat send of this text.
    Send(String),
    /// A cancel.
    Cancel(CancelReq),
}

#[derive(Debug, Clone)]
struct PendingSend {
    client_request_id: String,
    request: Request,
    state: SendState,
    attempts: u32,
    unauthorized_retried: bool,
}

/// When a send was made, and its trace (spans).
#[derive(Debug, Clone)]
pub struct SendTiming {
    /// `send()` time.
    pub sent_at: Ms,
    /// Sampled trace id, if any.
    pub trace: Option<String>,
}

/// A send or cancel to write now.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    /// Idempotency key.
    pub client_request_id: String,
    /// What it delivers.
    pub request: Request,
}

/// Pending sends and the timings of recent sends.
#[derive(Debug, Default)]
pub struct Outbox {
    pending: VecDeque<PendingSend>,
    /// Per-send timing for TTFB/TTFT/duration (bounded with the per-send metrics).
    pub timings: StrMap<SendTiming>,
}

impl Outbox {
    /// Pending sends.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// No pending send.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether `crid` is pending.
    pub fn contains(&self, crid: &str) -> bool {
        self.pending.iter().any(|s| s.client_request_id == crid)
    }

    /// Whether `crid` was taken for a WebSocket and not yet answered.
    pub fn in_flight_on_socket(&self, crid: &str) -> bool {
        self.pending.iter().any(|s| {
            s.client_request_id == crid && s.state == (SendState::InFlight { on_socket: true })
        })
    }

    /// What pending entry `crid` delivers.
    pub fn request(&self, crid: &str) -> Option<&Request> {
        self.pending
            .iter()
            .find(|s| s.client_request_id == crid)
            .map(|s| &s.request)
    }

    /// Whether `crid` is a pending cancel.
    pub fn is_cancel(&self, crid: &str) -> bool {
        matches!(self.request(crid), Some(Request::Cancel(_)))
    }

    /// The pending cancels, oldest first (what the stored record keeps).
    pub fn cancels(&self) -> Vec<(String, CancelReq)> {
        self.pending
            .iter()
            .filter_map(|s| match &s.request {
                Request::Cancel(c) => Some((s.client_request_id.clone(), c.clone())),
                Request::Send(_) => None,
            })
            .collect()
    }

    /// Queues a new send, due at `now`.
    pub fn push(&mut self, crid: &str, content: &str, now: Ms) {
        self.push_request(crid, Request::Send(content.to_owned()), now);
    }

    /// Queues a new entry, due at `now`.
    pub fn push_request(&mut self, crid: &str, request: Request, now: Ms) {
        self.pending.push_back(PendingSend {
            client_request_id: crid.to_owned(),
            request,
            state: SendState::Queued { due: now },
            attempts: 0,
            unauthorized_retried: false,
        });
    }

    /// Takes back the sends a previous page had not delivered (optimistic
    /// messages without a `message_id`), oldest first, up to `capacity`; the
    /// rest are marked failed (returned count) rather than left "queued".
    pub fn restore(&mut self, messages: &mut [Message], capacity: usize) -> usize {
        let mut over = 0;
        for m in messages.iter_mut().filter(|m| {
            m.message_id.is_none()
                && matches!(m.status, MessageStatus::Queued | MessageStatus::Sending)
        }) {
            let Some(crid) = m.client_request_id.clone() else {
                continue;
            };
            if self.pending.len() >= capacity {
                m.status = MessageStatus::Failed;
                over += 1;
                continue;
            }
            m.status = MessageStatus::Queued;
            self.push(&crid, &m.content, 0.0);
        }
        over
    }

    /// Marks every due queued send in flight (oldest first) and returns them.
    pub fn take_due(&mut self, now: Ms, on_socket: bool) -> Vec<Due> {
        let mut out = Vec::new();
        for s in &mut self.pending {
            if let SendState::Queued { due } = s.state {
                if due <= now {
                    s.state = SendState::InFlight { on_socket };
                    s.attempts += 1;
                    out.push(Due {
                        client_request_id: s.client_request_id.clone(),
                        request: s.request.clone(),
                    });
                }
            }
        }
        out
    }

    /// The earliest due time of a queued send.
    pub fn next_due(&self) -> Option<Ms> {
        self.pending
            .iter()
            .filter_map(|s| match s.state {
                SendState::Queued { due } => Some(due),
                SendState::InFlight { .. } => None,
            })
            .reduce(Ms::min)
    }

    /// Some send is queued (not in flight).
    pub fn has_queued(&self) -> bool {
        self.next_due().is_some()
    }

    /// The WebSocket they were written to dropped: those sends are due again
    /// at `now` (returns their ids). Only an `ack` proves delivery.
    pub fn requeue_socket_sends(&mut self, now: Ms) -> Vec<String> {
        let mut out = Vec::new();
        for s in &mut self.pending {
            if s.state == (SendState::InFlight { on_socket: true }) {
                s.state = SendState::Queued { due: now };
                out.push(s.client_request_id.clone());
            }
        }
        out
    }

    /// Every queued send is due now (`retryNow()`).
    pub fn all_due_now(&mut self, now: Ms) {
        for s in &mut self.pending {
            if let SendState::Queued { due } = &mut s.state {
                *due = now;
            }
        }
    }

    /// The server accepted `crid`: it leaves the outbox (returns whether it was pending).
    pub fn remove(&mut self, crid: &str) -> bool {
        let before = self.pending.len();
        self.pending.retain(|s| s.client_request_id != crid);
        before != self.pending.len()
    }

    /// A 401: one immediate retry with refreshed headers (`true`), then final (`false`).
    pub fn unauthorized(&mut self, crid: &str, now: Ms) -> bool {
        match self
            .pending
            .iter_mut()
            .find(|s| s.client_request_id == crid)
        {
            Some(s) if !s.unauthorized_retried => {
                s.unauthorized_retried = true;
                s.state = SendState::Queued { due: now };
                true
            }
            _ => false,
        }
    }

    /// A retryable failure of `crid`'s attempt: queued again after the backoff
    /// of its attempt (honouring `Retry-After`). Returns when, or `None` if it
    /// is not pending.
    pub fn retry(
        &mut self,
        crid: &str,
        now: Ms,
        retry_after: Option<Ms>,
        policy: &Backoff,
        jitter: f64,
    ) -> Option<Ms> {
        let s = self
            .pending
            .iter_mut()
            .find(|s| s.client_request_id == crid)?;
        let at = now + backoff::delay(policy, s.attempts.max(1), jitter, None, retry_after);
        s.state = SendState::Queued { due: at };
        Some(at)
    }

    /// Drops every pending send (`close()`). Cancels stay (not delivered
    /// after `close()`, but kept in the stored record for the next page).
    pub fn clear(&mut self) {
        self.pending
            .retain(|s| matches!(s.request, Request::Cancel(_)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::state::MessageRole;

    fn msg(crid: &str, status: MessageStatus, id: Option<&str>) -> Message {
        Message {
            message_id: id.map(str::to_owned),
            client_request_id: Some(crid.to_owned()),
            reply_to: None,
            role: MessageRole::User,
            content: crid.to_owned(),
            status,
        }
    }

    #[test]
    fn socket_sends_go_back_to_the_queue_when_the_socket_drops() {
        let mut o = Outbox::default();
        o.push("a", "x", 0.0);
        o.push("b", "y", 0.0);
        assert_eq!(o.take_due(0.0, true).len(), 2);
        assert!(!o.has_queued());
        assert_eq!(o.requeue_socket_sends(5.0), vec!["a", "b"]);
        assert_eq!(o.next_due(), Some(5.0));
        // HTTP sends in flight are not the socket's: untouched.
        let _ = o.take_due(5.0, false);
        assert!(o.requeue_socket_sends(6.0).is_empty());
    }

    #[test]
    fn retries_back_off_honour_retry_after_and_never_give_up() {
        let mut o = Outbox::default();
        let p = Backoff::default();
        o.push("a", "x", 0.0);
        let _ = o.take_due(0.0, false);
        assert_eq!(o.retry("a", 10.0, Some(3000.0), &p, 0.0), Some(3010.0));
        assert!(o.take_due(3009.0, false).is_empty());
        assert_eq!(o.take_due(3010.0, false).len(), 1);
        let mut now = 3010.0;
        for _ in 0..100 {
            let at = o.retry("a", now, None, &p, 0.99).unwrap();
            assert!(at - now <= p.max_ms);
            now = at;
            assert_eq!(o.take_due(now, false).len(), 1);
        }
        assert_eq!(o.retry("zz", 0.0, None, &p, 0.0), None);
    }

    #[test]
    fn restore_takes_undelivered_sends_and_fails_the_excess_visibly() {
        let mut ms = vec![
            msg("a", MessageStatus::Sending, None),
            msg("b", MessageStatus::Sent, Some("m1")),
            msg("c", MessageStatus::Queued, None),
            msg("d", MessageStatus::Queued, None),
        ];
        let mut o = Outbox::default();
        assert_eq!(o.restore(&mut ms, 2), 1);
        assert_eq!(o.len(), 2);
        assert!(o.contains("a") && o.contains("c"));
        assert_eq!(ms[0].status, MessageStatus::Queued);
        assert_eq!(ms[3].status, MessageStatus::Failed);
    }

    #[test]
    fn one_refresh_on_401() {
        let mut o = Outbox::default();
        o.push("a", "x", 0.0);
        let _ = o.take_due(0.0, false);
        assert!(o.unauthorized("a", 1.0));
        let _ = o.take_due(1.0, false);
        assert!(!o.unauthorized("a", 2.0));
    }
}
