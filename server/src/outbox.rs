//! The frames queued for one WebSocket's client, bounded twice.
//!
//! A socket's writer task sends what this queue holds; everything the socket
//! answers (events of its subscriptions, snapshots, acks, errors, pongs) goes
//! through it. Each queued frame is the socket's own copy of its bytes (a
//! WebSocket text frame owns its text), so the queue is bounded:
//! - in frames: `--client-buffer` (256) per socket, the channel's capacity;
//! - in bytes: `--client-buffer-bytes` (1 MiB) per socket. A frame waits until
//!   its bytes fit; a frame larger than the whole budget waits until the queue
//!   is empty of bytes and then goes alone, so the bound is the budget or one
//!   frame, whichever is larger.
//!
//! A frame's bytes return to the budget when the writer has written it (or
//! the socket is gone). A subscription that cannot queue within
//! `--slow-client-ms` drops the socket (the caller's `send_timeout`). The bytes
//! queued over all sockets are the `runstream_websocket_queued_bytes` gauge.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// One queued frame: its bytes are held from the budget until it is dropped.
pub(crate) struct Queued {
    msg: Option<Message>,
    len: u32,
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Queued {
    /// The frame to write (once).
    pub(crate) fn take(&mut self) -> Option<Message> {
        self.msg.take()
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.metrics.ws_queued(-i64::from(self.len));
    }
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The writer is gone (the socket closed).
    Closed,
    /// No room within the wait (`send_timeout`) or at once (`try_send`).
    Full,
}

/// The sending side of one socket's queue (cloned into each subscription).
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    budget: u32,
    metrics: Arc<Metrics>,
}

/// A socket's queue: its sending side and the writer's receiving side.
pub(crate) fn outbox(
    frames: usize,
    bytes: usize,
    metrics: Arc<Metrics>,
) -> (Outbox, mpsc::Receiver<Queued>) {
    let (tx, rx) = mpsc::channel(frames.max(1));
    // Semaphore permits are counted in u32 here; the budget is at least 1 byte.
    let budget = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
    let bytes = Arc::new(Semaphore::new(budget as usize));
    (
        Outbox {
            tx,
            bytes,
            budget,
            metrics,
        },
        rx,
    )
}

fn frame_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(c) => 2 + c.as_ref().map_or(0, |c| c.reason.len()),
    }
}

impl Outbox {
    /// The permits a frame holds: its length, at most the whole budget.
    fn cost(&self, m: &Message) -> (u32, u32) {
        let len = u32::try_from(frame_len(m)).unwrap_or(u32::MAX);
        (len, len.clamp(1, self.budget))
    }

    fn wrap(&self, msg: Message, len: u32, permit: OwnedSemaphorePermit) -> Queued {
        self.metrics.ws_queued(i64::from(len));
        Queued {
            msg: Some(msg),
            len,
            _permit: permit,
            metrics: self.metrics.clone(),
        }
    }

    /// Queues `msg`, waiting as long as it takes for room.
    pub(crate) async fn send(&self, msg: Message) -> Result<(), Refused> {
        let (len, cost) = self.cost(&msg);
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Refused::Closed)?;
        self.tx
            .send(self.wrap(msg, len, permit))
            .await
            .map_err(|_| Refused::Closed)
    }

    /// Queues `msg` if room (bytes, then a slot) frees within `wait`.
    pub(crate) async fn send_timeout(&self, msg: Message, wait: Duration) -> Result<(), Refused> {
        let (len, cost) = self.cost(&msg);
        let deadline = tokio::time::Instant::now() + wait;
        let permit =
            match tokio::time::timeout_at(deadline, self.bytes.clone().acquire_many_owned(cost))
                .await
            {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Err(Refused::Closed),
                Err(_) => {
                    return Err(if self.tx.is_closed() {
                        Refused::Closed
                    } else {
                        Refused::Full
                    })
                }
            };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match self
            .tx
            .send_timeout(self.wrap(msg, len, permit), left)
            .await
        {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Refused::Closed),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(Refused::Full),
        }
    }

    /// Queues `msg` only if there is room now.
    pub(crate) fn try_send(&self, msg: Message) -> Result<(), Refused> {
        let (len, cost) = self.cost(&msg);
        let permit = self
            .bytes
            .clone()
            .try_acquire_many_owned(cost)
            .map_err(|_| Refused::Full)?;
        self.tx
            .try_send(self.wrap(msg, len, permit))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
                mpsc::error::TrySendError::Full(_) => Refused::Full,
            })
    }

    /// Resolves when the writer is gone.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Message {
        Message::Text("x".repeat(n).into())
    }

    #[tokio::test]
    async fn bytes_are_bounded_and_return_when_written() {
        let m = Arc::new(Metrics::new());
        let (out, mut rx) = outbox(256, 1000, m.clone());
        out.try_send(text(600)).unwrap();
        // 600 + 600 > 1000: no room for a second frame until the first is written.
        assert_eq!(out.try_send(text(600)), Err(Refused::Full));
        assert_eq!(
            out.send_timeout(text(600), Duration::from_millis(20)).await,
            Err(Refused::Full)
        );
        out.try_send(text(400)).unwrap();
        assert_eq!(m.ws_queued_now(), 1000);
        let mut first = rx.recv().await.unwrap();
        assert!(first.take().is_some());
        drop(first);
        assert_eq!(m.ws_queued_now(), 400);
        out.try_send(text(600)).unwrap();
        assert_eq!(m.ws_queued_now(), 1000);
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_goes_alone() {
        let m = Arc::new(Metrics::new());
        let (out, mut rx) = outbox(256, 1000, m.clone());
        out.try_send(text(10)).unwrap();
        assert_eq!(out.try_send(text(5000)), Err(Refused::Full));
        drop(rx.recv().await.unwrap());
        out.try_send(text(5000)).unwrap();
        assert_eq!(out.try_send(text(1)), Err(Refused::Full));
        drop(rx.recv().await.unwrap());
        assert_eq!(m.ws_queued_now(), 0);
    }

    #[tokio::test]
    async fn frames_are_bounded_in_count_too() {
        let (out, _rx) = outbox(2, 1 << 20, Arc::new(Metrics::new()));
        out.try_send(text(1)).unwrap();
        out.try_send(text(1)).unwrap();
        assert_eq!(out.try_send(text(1)), Err(Refused::Full));
    }

    #[tokio::test]
    async fn a_closed_socket_refuses() {
        let (out, rx) = outbox(2, 1 << 20, Arc::new(Metrics::new()));
        drop(rx);
        assert_eq!(out.send(text(1)).await, Err(Refused::Closed));
        assert_eq!(
            out.send_timeout(text(1), Duration::from_millis(10)).await,
            Err(Refused::Closed)
        );
    }
}
