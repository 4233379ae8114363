//! The wire of `share: "tabs"` (API.md "Sharing connections"): the messages
//! tabs exchange over their `BroadcastChannel`, and the leader's ring of
//! recent envelopes that a follower catches up from.
//!
//! A message is a string (a channel delivers whatever another script posts:
//! anything that is not a string is rejected by the shell and counted):
//!
//! ```text
//! runstream-tabs/1\n{key}\n{from}\n{to}\n{kind}\n{body}
//! ```
//!
//! - `runstream-tabs/1`: the magic and the version of this format. Another
//!   version (another build of the library in another tab) is rejected.
//! - `key`: the stream key (transport, credentials mode, resolved URL, and for
//!   WebSocket the run id); a message for another key is rejected.
//! - `from` / `to`: tab ids (1–32 of `[0-9a-z]`); `to` is `*` for everyone.
//! - `kind` and `body`:
//!   - `event`: the raw envelope text, as the leader received it;
//!   - `status`: `{connection}\n{attempt}\n{retryInMs or -}\n{lastError or empty}`;
//!   - `ask`: `{cursor}`: a follower asks for every event after its cursor;
//!   - `end`: `{cursor}`: the leader sent every held event after the asked cursor; its cursor;
//!   - `miss`: `{cursor}`: the leader's ring does not reach back to the asked cursor; its cursor.
//!   - `retry`: empty: a follower's `retryNow()`, for the leader.
//!   - `visible`: `1` or `0`: a follower's page is visible (or no longer):
//!     while one is, a hidden leader watches its connection's heartbeat.
//!
//! Nothing in a message is trusted: an `event` body goes through the same
//! envelope validation, run check and ordering as a network frame. Messages
//! longer than [`max_message_bytes`] are rejected before they are read.

use crate::core::json::write::push_u64;
use std::collections::VecDeque;

use crate::core::engine::{Connection, Transport};
use crate::core::envelope::MAX_EVENT_ID;

/// The first line of every message: magic and format version.
pub const MAGIC: &str = "runstream-tabs/1";
/// The magic without its version (a message of another version starts with it).
const MAGIC_PREFIX: &str = "runstream-tabs/";
/// Bytes a message may carry besides its envelope (header lines, a status).
pub const HEADER_ALLOWANCE: usize = 4096;
/// Longest tab id.
pub const MAX_TAB_ID: usize = 32;
/// Visible followers a leader keeps track of (beyond it, more are ignored:
/// the heartbeat is watched anyway while any is known).
pub const MAX_WATCHERS: usize = 64;
/// Events the leader's ring keeps (drop-oldest beyond).
pub const RING_EVENTS: usize = 1024;
/// Bytes of envelope text the leader's ring keeps (drop-oldest beyond).
pub const RING_BYTES: usize = 4 << 20;

/// The stream key tabs share one connection under (also the name of the Web
/// Lock and of the BroadcastChannel): `{MAGIC}|{transport}|{withCredentials}|{resolved
/// url}`, and for WebSocket `{MAGIC}|websocket|{withCredentials}|{resolved
/// wsUrl}|{runId}` (one socket carries many runs, each by its own subscribe).
/// The format version is part of it: tabs of another build (across a
/// deploy) elect and talk among themselves, never with this one.
pub fn stream_key(t: Transport, credentials: bool, resolved_url: &str, run_id: &str) -> String {
    let transport = match t {
        Transport::Fetch => "fetch",
        Transport::Sse => "sse",
        Transport::WebSocket => "websocket",
    };
    let mut key = String::with_capacity(MAGIC.len() + resolved_url.len() + run_id.len() + 24);
    for part in [
        MAGIC,
        transport,
        if credentials { "true" } else { "false" },
        resolved_url,
    ] {
        if !key.is_empty() {
            key.push('|');
        }
        key.push_str(part);
    }
    if t == Transport::WebSocket {
        key.push('|');
        key.push_str(run_id);
    }
    key
}

/// The longest message accepted for envelopes of at most `max_event_bytes`.
pub fn max_message_bytes(max_event_bytes: usize) -> usize {
    max_event_bytes.saturating_add(HEADER_ALLOWANCE)
}

/// Why a channel message was ignored (counted as `metrics.channelErrors`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The message data is not a string.
    #[error("message is not a string")]
    NotText,
    /// Longer than [`max_message_bytes`].
    #[error("message of {0} bytes exceeds the size bound")]
    TooLarge(usize),
    /// Another version of this format (another build of the library).
    #[error("message of another protocol version ({0})")]
    Version(String),
    /// Not this format, or a field is missing or malformed.
    #[error("malformed message: {0}")]
    Shape(&'static str),
    /// A message for another stream key.
    #[error("message for another stream")]
    ForeignKey,
}

impl ChannelError {
    /// A stable, short name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotText => "not_text",
            Self::TooLarge(_) => "too_large",
            Self::Version(_) => "version",
            Self::Shape(_) => "shape",
            Self::ForeignKey => "foreign_key",
        }
    }
}

/// The connection status a leader reports (API.md `StreamStatus`).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderStatus {
    /// `status.connection` of the leader.
    pub connection: Connection,
    /// `status.attempt`.
    pub attempt: u32,
    /// `status.retryInMs` when it was sent.
    pub retry_in_ms: Option<f64>,
    /// `status.lastError`.
    pub last_error: Option<String>,
}

/// What a message says.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A raw envelope the leader received.
    Event(String),
    /// The leader's connection status.
    Status(LeaderStatus),
    /// A follower asks for every event after this cursor.
    Ask(u64),
    /// The leader answered an ask in full; its cursor.
    End(u64),
    /// The leader cannot answer an ask from its ring; its cursor.
    Miss(u64),
    /// A follower's `retryNow()`: the leader skips its backoff wait.
    Retry,
    /// A follower's page became visible (`true`) or hidden (`false`).
    Visible(bool),
}

/// A decoded channel message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The sending tab.
    pub from: String,
    /// The addressee (`None`: every tab).
    pub to: Option<String>,
    /// The content.
    pub body: Body,
}

impl Message {
    /// Encodes this message for stream `key`.
    pub fn encode(&self, key: &str) -> String {
        // Built by hand: no `core::fmt` number formatting in the wasm.
        let to = self.to.as_deref().unwrap_or("*");
        let mut out = String::with_capacity(MAGIC.len() + key.len() + self.from.len() + 48);
        for part in [MAGIC, key, &self.from, to] {
            out.push_str(part);
            out.push('\n');
        }
        let (kind, cursor) = match &self.body {
            Body::Event(_) => ("event", None),
            Body::Status(_) => ("status", None),
            Body::Ask(c) => ("ask", Some(*c)),
            Body::End(c) => ("end", Some(*c)),
            Body::Miss(c) => ("miss", Some(*c)),
            Body::Retry => ("retry", None),
            Body::Visible(_) => ("visible", None),
        };
        out.push_str(kind);
        out.push('\n');
        if let Some(c) = cursor {
            push_u64(&mut out, c);
        }
        match &self.body {
            Body::Event(text) => out.push_str(text),
            Body::Status(s) => {
                out.push_str(s.connection.as_str());
                out.push('\n');
                push_u64(&mut out, u64::from(s.attempt));
                out.push('\n');
                match s.retry_in_ms {
                    // Whole milliseconds (saturating; NaN → 0).
                    Some(r) => push_u64(&mut out, r.max(0.0).round() as u64),
                    None => out.push('-'),
                }
                out.push('\n');
                out.push_str(s.last_error.as_deref().unwrap_or(""));
            }
            Body::Visible(v) => out.push(if *v { '1' } else { '0' }),
            Body::Ask(_) | Body::End(_) | Body::Miss(_) | Body::Retry => {}
        }
        out
    }

    /// Decodes and validates `text` for stream `key`, bounded by `max_bytes`.
    pub fn decode(text: &str, key: &str, max_bytes: usize) -> Result<Self, ChannelError> {
        if text.len() > max_bytes {
            return Err(ChannelError::TooLarge(text.len()));
        }
        let mut parts = text.splitn(6, '\n');
        let magic = parts.next().unwrap_or("");
        if magic != MAGIC {
            return Err(match magic.strip_prefix(MAGIC_PREFIX) {
                Some(v) => ChannelError::Version(v.chars().take(16).collect()),
                None => ChannelError::Shape("not a runstream tabs message"),
            });
        }
        let k = parts.next().ok_or(ChannelError::Shape("no key"))?;
        if k != key {
            return Err(ChannelError::ForeignKey);
        }
        let from = parts.next().ok_or(ChannelError::Shape("no sender"))?;
        if !is_tab_id(from) {
            return Err(ChannelError::Shape("bad sender"));
        }
        let to = match parts.next().ok_or(ChannelError::Shape("no addressee"))? {
            "*" => None,
            t if is_tab_id(t) => Some(t.to_owned()),
            _ => return Err(ChannelError::Shape("bad addressee")),
        };
        let kind = parts.next().ok_or(ChannelError::Shape("no kind"))?;
        let body = parts.next().ok_or(ChannelError::Shape("no body"))?;
        let body = match kind {
            "event" => Body::Event(body.to_owned()),
            "status" => Body::Status(decode_status(body)?),
            "ask" => Body::Ask(cursor(body)?),
            "end" => Body::End(cursor(body)?),
            "miss" => Body::Miss(cursor(body)?),
            "retry" if body.is_empty() => Body::Retry,
            "visible" if body == "1" => Body::Visible(true),
            "visible" if body == "0" => Body::Visible(false),
            _ => return Err(ChannelError::Shape("unknown kind")),
        };
        Ok(Self {
            from: from.to_owned(),
            to,
            body,
        })
    }
}

fn is_tab_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TAB_ID
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

fn cursor(s: &str) -> Result<u64, ChannelError> {
    match s.parse::<u64>() {
        Ok(c) if c <= MAX_EVENT_ID && !s.starts_with('+') => Ok(c),
        _ => Err(ChannelError::Shape("bad cursor")),
    }
}

fn decode_status(body: &str) -> Result<LeaderStatus, ChannelError> {
    let mut p = body.splitn(4, '\n');
    let connection = Connection::from_name(p.next().unwrap_or(""))
        .ok_or(ChannelError::Shape("bad connection state"))?;
    let attempt = p
        .next()
        .and_then(|a| a.parse::<u32>().ok())
        .ok_or(ChannelError::Shape("bad attempt"))?;
    let retry_in_ms = match p.next().ok_or(ChannelError::Shape("no retry"))? {
        "-" => None,
        // Whole milliseconds, written by `encode`.
        r => match r.parse::<u64>() {
            Ok(v) if !r.starts_with('+') && v <= MAX_EVENT_ID => Some(v as f64),
            _ => return Err(ChannelError::Shape("bad retry")),
        },
    };
    let last_error = p
        .next()
        .filter(|e| !e.is_empty())
        .map(|e| e.chars().take(300).collect());
    Ok(LeaderStatus {
        connection,
        attempt,
        retry_in_ms,
        last_error,
    })
}

/// The leader's ring of the raw envelopes it relayed most recently, in
/// arrival order: at most [`RING_EVENTS`] events and [`RING_BYTES`] bytes of
/// text, the oldest dropped first. A follower's ask is served from it when it
/// reaches back to the follower's cursor; otherwise the answer is a miss.
#[derive(Debug, Default)]
pub struct Ring {
    entries: VecDeque<(u64, String)>,
    bytes: usize,
    /// The lowest event id ever dropped (or cleared) from the ring, if any:
    /// an ask from below it cannot be served in full.
    dropped_up_to: u64,
}

impl Ring {
    /// Keeps envelope `id` (its raw `text`), dropping the oldest beyond the bounds.
    pub fn push(&mut self, id: u64, text: &str) {
        self.entries.push_back((id, text.to_owned()));
        self.bytes += text.len();
        while self.entries.len() > RING_EVENTS || self.bytes > RING_BYTES {
            match self.entries.pop_front() {
                Some((old, t)) => {
                    self.bytes -= t.len();
                    self.dropped_up_to = self.dropped_up_to.max(old);
                }
                None => break,
            }
        }
    }

    /// Forgets the ids up to `up_to`: the leader's cursor jumped there
    /// without relaying them (a snapshot, a skipped gap), so an ask from
    /// below it is a miss. Held ids above it stay servable.
    pub fn cut(&mut self, up_to: u64) {
        self.entries.retain(|(id, _)| *id > up_to);
        self.bytes = self.entries.iter().map(|(_, t)| t.len()).sum();
        self.dropped_up_to = self.dropped_up_to.max(up_to);
    }

    /// Everything after `cursor`, if the ring reaches back to it: held entries
    /// with a larger id, in arrival order. `None`: a miss. `since` is the
    /// leader's first cursor (events at or below it never passed the ring).
    pub fn after(&self, cursor: u64, since: u64) -> Option<Vec<&str>> {
        // Every event after `max(since, dropped)` that reached the leader is held.
        if cursor < since.max(self.dropped_up_to) {
            return None;
        }
        Some(
            self.entries
                .iter()
                .filter(|(id, _)| *id > cursor)
                .map(|(_, t)| t.as_str())
                .collect(),
        )
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of text held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const KEY: &str = "runstream-tabs|fetch|false|http://x/api/stream/runs/r1";

    fn msg(body: Body) -> Message {
        Message {
            from: "a1".into(),
            to: None,
            body,
        }
    }

    #[test]
    fn the_stream_key_carries_the_format_version() {
        // Review item 5: tabs of another build must not queue on this lock.
        let k = stream_key(Transport::Fetch, false, "http://x/api/stream/runs/r1", "r1");
        assert_eq!(
            k,
            "runstream-tabs/1|fetch|false|http://x/api/stream/runs/r1"
        );
        let w = stream_key(Transport::WebSocket, true, "ws://x/api/ws", "r1");
        assert_eq!(w, "runstream-tabs/1|websocket|true|ws://x/api/ws|r1");
        assert!(stream_key(Transport::Sse, false, "u", "r").starts_with(MAGIC));
    }

    #[test]
    fn every_kind_round_trips() {
        let bodies = [
            Body::Event("{\"event_id\":1,\n\"x\":2}".into()),
            Body::Status(LeaderStatus {
                connection: Connection::Reconnecting,
                attempt: 3,
                retry_in_ms: Some(1500.0),
                last_error: Some("HTTP 503\nsecond line".into()),
            }),
            Body::Status(LeaderStatus {
                connection: Connection::Open,
                attempt: 0,
                retry_in_ms: None,
                last_error: None,
            }),
            Body::Ask(7),
            Body::End(9),
            Body::Miss(0),
            Body::Retry,
            Body::Visible(true),
            Body::Visible(false),
        ];
        for b in bodies {
            let mut m = msg(b);
            m.to = Some("b2".into());
            let text = m.encode(KEY);
            assert_eq!(Message::decode(&text, KEY, 1 << 20), Ok(m));
        }
    }

    #[test]
    fn bad_input_is_typed() {
        let ok = msg(Body::Ask(3)).encode(KEY);
        let cases: Vec<(String, &str)> = vec![
            (
                ok.replace("runstream-tabs/1", "runstream-tabs/2"),
                "version",
            ),
            ("hello".into(), "shape"),
            (String::new(), "shape"),
            (ok.replace(KEY, "other"), "foreign_key"),
            (ok.replace("\na1\n", "\nA!\n"), "shape"),
            (ok.replace("\n*\n", "\n\n"), "shape"),
            (ok.replace("ask", "dance"), "shape"),
            (ok.replace("\n3", "\n-3"), "shape"),
            (ok.replace("\n3", "\n9007199254740992"), "shape"),
            (format!("{MAGIC}\n{KEY}\na1"), "shape"),
            (msg(Body::Event("x".repeat(5000))).encode(KEY), "too_large"),
            (
                format!("{MAGIC}\n{KEY}\na1\n*\nstatus\nopen\nx\n-\n"),
                "shape",
            ),
            (
                format!("{MAGIC}\n{KEY}\na1\n*\nstatus\nweird\n0\n-\n"),
                "shape",
            ),
        ];
        for (text, kind) in cases {
            let e = Message::decode(&text, KEY, 1000).unwrap_err();
            assert_eq!(e.kind(), kind, "{text:?}: {e}");
        }
    }

    #[test]
    fn the_ring_is_bounded_and_serves_only_what_reaches_back() {
        let mut r = Ring::default();
        for id in 1..=(RING_EVENTS as u64 + 10) {
            r.push(id, "e");
        }
        assert_eq!(r.len(), RING_EVENTS);
        // Ids 1..=10 were dropped: an ask from 5 is a miss, from 10 is served.
        assert!(r.after(5, 0).is_none());
        assert_eq!(r.after(10, 0).map(|v| v.len()), Some(RING_EVENTS));
        assert_eq!(r.after(RING_EVENTS as u64 + 8, 0).map(|v| v.len()), Some(2));
        let mut big = Ring::default();
        let text = "x".repeat(RING_BYTES / 2 + 1);
        big.push(1, &text);
        big.push(2, &text);
        assert_eq!(big.len(), 1);
        assert!(big.bytes() <= RING_BYTES);
    }

    #[test]
    fn a_leader_that_started_late_cannot_serve_an_older_cursor() {
        let mut r = Ring::default();
        // The leader resumed at cursor 40: its ring starts at 41.
        r.push(41, "e41");
        r.push(42, "e42");
        assert!(r.after(10, 40).is_none());
        assert_eq!(r.after(40, 40), Some(vec!["e41", "e42"]));
        assert_eq!(r.after(41, 40), Some(vec!["e42"]));
        // Nothing relayed yet, follower level with the leader's start.
        assert_eq!(Ring::default().after(40, 40), Some(vec![]));
        assert!(Ring::default().after(39, 40).is_none());
        // The cursor jumped to 60 (a snapshot) with 61 already relayed.
        r.push(61, "e61");
        r.cut(60);
        assert!(r.after(50, 40).is_none());
        assert_eq!(r.after(60, 40), Some(vec!["e61"]));
        assert_eq!((r.len(), r.bytes()), (1, 3));
    }
}
