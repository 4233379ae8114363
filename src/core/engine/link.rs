//! The connection sub-machine: which link is current, its state, failures and
//! backoff, online/visible, the server's `retry:`, and the error-loop guard.
//!
//! Rules it follows (API.md `connectTimeoutMs`, `heartbeatTimeoutMs`,
//! `backoff`, "Quiet is healthy"):
//! - `connect_timeout_ms` covers only the time until response headers / `open`;
//!   after that a server may stay silent until its first heartbeat.
//! - After open, no byte (fetch) / frame (WebSocket) for `heartbeat_timeout_ms`
//!   reconnects. Not enforced on native EventSource, which hides comment lines,
//!   and not while the page is hidden (re-checked when it becomes visible).
//! - A link that was healthy (open `healthy_after_ms`, or applied a new event)
//!   resets the attempt count: the next reconnect goes at once.
//! - Every wait follows [`backoff::delay`]; a `Retry-After` is remembered and
//!   honoured by whatever wakes the client (timer, `online`, visibility); only
//!   `retryNow()` skips it.
//! - The error-loop guard counts only failures of attempts that started sooner
//!   than the backoff allowed (unpaced: the first attempt, a 401 refresh, an
//!   `online` wake-up) and made no progress; paced waits never count, so an
//!   ordinary outage backs off for as long as it lasts and never ends `failed`.

use std::collections::VecDeque;

use super::backoff;
use super::config::{Config, Ms, Transport};
use super::io::Connection;
use super::timers::{Timer, TimerTable};

/// How often `retryInMs` is refreshed on screen while waiting.
const COUNTDOWN_MS: Ms = 1000.0;

/// The link's state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Conn {
    /// Not started.
    Idle,
    /// Waiting for response headers / socket open / first frame.
    Connecting,
    /// Headers / `open` seen.
    Open {
        /// When.
        opened_at: Ms,
    },
    /// Backing off until `at`.
    Waiting {
        /// When the next attempt starts.
        at: Ms,
    },
    /// The browser is offline; `resume_at` is the earliest the backoff allows afterwards.
    Offline {
        /// Earliest reconnect (a backoff wait or `Retry-After` that was pending).
        resume_at: Option<Ms>,
    },
    /// The run finished (`run.completed` applied, or 204): never reconnects for events.
    Finished,
    /// `close()` was called.
    Closed,
    /// A final error, or the error-loop guard: waits for `retryNow()`.
    Failed,
    /// Another tab holds the connection (`share: "tabs"`): none of this tab's own.
    Following,
}

/// Bookkeeping of the current attempt.
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    /// When it started.
    pub started_at: Ms,
    /// It resumes from a cursor > 0.
    pub resumed: bool,
    /// It started after a real backoff wait (see the module docs).
    pub paced: bool,
    /// Last byte / frame.
    pub last_byte_at: Option<Ms>,
    /// First event.
    pub first_event_at: Option<Ms>,
    /// It applied a new event.
    pub progressed: bool,
    /// It was open `healthy_after_ms`.
    pub healthy: bool,
    /// Its replay phase is running.
    pub replaying: bool,
    /// Last event arrival.
    pub last_event_at: Ms,
    /// Events applied during its replay phase.
    pub replayed: u64,
}

/// What a failure leads to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failure {
    /// Reconnect at `at`.
    Wait(Ms),
    /// Offline: reconnect when the browser is online again.
    Offline,
    /// Too many unpaced failures in the guard's window: stopped (`n` failures).
    Loop(usize),
}

/// The connection sub-machine.
#[derive(Debug, Clone)]
pub struct Link {
    /// Current state.
    pub conn: Conn,
    /// Number of the current connection (inputs of older ones are ignored).
    pub id: u64,
    /// Connections opened so far.
    pub connects: u64,
    /// Consecutive failures without progress: the next backoff attempt.
    failures: u32,
    /// The next attempt follows a real backoff wait.
    next_paced: bool,
    /// The server's `retry:` (a floor of every wait).
    pub server_retry: Option<Ms>,
    /// Times of unpaced failures within the guard window.
    guard: VecDeque<Ms>,
    /// A 401 was answered by one immediate retry with refreshed headers.
    pub unauthorized_retried: bool,
    /// `navigator.onLine`.
    pub online: bool,
    /// The page is visible.
    pub visible: bool,
    /// The page is in the back/forward cache: no attempt is made until it
    /// comes back (the link waits as [`Conn::Offline`] does).
    pub cached: bool,
    /// Human-readable last error.
    pub last_error: Option<String>,
    /// The current attempt.
    pub attempt: Attempt,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            conn: Conn::Idle,
            id: 0,
            connects: 0,
            failures: 0,
            next_paced: false,
            server_retry: None,
            guard: VecDeque::new(),
            unauthorized_retried: false,
            online: true,
            visible: true,
            cached: false,
            last_error: None,
            attempt: Attempt::default(),
        }
    }
}

impl Link {
    /// A connection is being made or is open.
    pub fn live(&self) -> bool {
        matches!(self.conn, Conn::Connecting | Conn::Open { .. })
    }

    /// Inputs of connection `conn` are current.
    pub fn accepts(&self, conn: u64) -> bool {
        conn == self.id && self.live()
    }

    /// Starts a new connection; returns its number.
    pub fn begin(&mut self, now: Ms, resumed: bool, cfg: &Config, timers: &mut TimerTable) -> u64 {
        self.id += 1;
        self.connects += 1;
        self.conn = Conn::Connecting;
        self.attempt = Attempt {
            started_at: now,
            resumed,
            paced: std::mem::take(&mut self.next_paced),
            ..Attempt::default()
        };
        timers.clear(Timer::Reconnect);
        timers.clear(Timer::Countdown);
        timers.clear(Timer::Heartbeat);
        timers.clear(Timer::Healthy);
        timers.clear(Timer::Ping);
        if !Self::socket_shared(cfg) {
            timers.set(Timer::Connect, now + cfg.connect_timeout_ms);
        }
        self.id
    }

    /// Headers / `open` arrived: the connect timeout ends, the heartbeat watch begins.
    pub fn opened(&mut self, now: Ms, cfg: &Config, timers: &mut TimerTable) {
        self.conn = Conn::Open { opened_at: now };
        self.last_error = None;
        self.attempt.last_byte_at = Some(now);
        timers.clear(Timer::Connect);
        timers.set(Timer::Healthy, now + cfg.healthy_after_ms);
        self.watch_heartbeat(now, cfg, timers);
        if cfg.transport == Transport::WebSocket && !Self::socket_shared(cfg) {
            timers.set(Timer::Ping, now + cfg.ws_ping_interval_ms);
        }
    }

    /// A byte (fetch) or frame (EventSource event, WebSocket) of the current link.
    pub fn saw_byte(&mut self, now: Ms, cfg: &Config, timers: &mut TimerTable) {
        self.attempt.last_byte_at = Some(now);
        if matches!(self.conn, Conn::Open { .. }) {
            self.watch_heartbeat(now, cfg, timers);
        }
    }

    /// Whether the heartbeat watchdog applies to this transport at all.
    fn heartbeat_enforced(cfg: &Config) -> bool {
        // Native EventSource hides comment lines (heartbeats) from script; a
        // shared socket is watched by its own machine.
        cfg.transport != Transport::Sse && !Self::socket_shared(cfg)
    }

    /// The link is one run on a shared WebSocket (its machine owns the timers).
    fn socket_shared(cfg: &Config) -> bool {
        cfg.transport == Transport::WebSocket && cfg.shared_socket
    }

    fn watch_heartbeat(&mut self, now: Ms, cfg: &Config, timers: &mut TimerTable) {
        if Self::heartbeat_enforced(cfg) && self.visible {
            let last = self.attempt.last_byte_at.unwrap_or(now);
            timers.set(Timer::Heartbeat, last + cfg.heartbeat_timeout_ms);
        }
    }

    /// The page became visible or hidden. Returns `true` when, on becoming
    /// visible, the open link turns out to have been silent too long.
    pub fn set_visible(
        &mut self,
        now: Ms,
        visible: bool,
        cfg: &Config,
        timers: &mut TimerTable,
    ) -> bool {
        self.visible = visible;
        if !visible {
            timers.clear(Timer::Heartbeat);
            return false;
        }
        if !matches!(self.conn, Conn::Open { .. }) || !Self::heartbeat_enforced(cfg) {
            return false;
        }
        let last = self.attempt.last_byte_at.unwrap_or(now);
        if now - last >= cfg.heartbeat_timeout_ms {
            return true;
        }
        self.watch_heartbeat(now, cfg, timers);
        false
    }

    /// The link was open `healthy_after_ms`: the attempt count resets, and
    /// the next 401 gets its refreshed-headers retry again.
    pub fn became_healthy(&mut self) {
        if matches!(self.conn, Conn::Open { .. }) {
            self.attempt.healthy = true;
            self.failures = 0;
            self.guard.clear();
            self.authorized();
        }
    }

    /// The server accepted the credentials (a 2xx event stream, a WebSocket
    /// `subscribed`, a healthy link): a later 401 is a new expiry, which gets
    /// its own retry with refreshed headers (API.md `headers`).
    pub fn authorized(&mut self) {
        self.unauthorized_retried = false;
    }

    /// Disarms the current link's timers (the caller sets the next state).
    pub fn ended(&mut self, timers: &mut TimerTable) {
        timers.clear(Timer::Connect);
        timers.clear(Timer::Heartbeat);
        timers.clear(Timer::Healthy);
        timers.clear(Timer::Ping);
    }

    /// The current link failed (already ended): decide the wait.
    pub fn fail(
        &mut self,
        now: Ms,
        retry_after: Option<Ms>,
        jitter: f64,
        cfg: &Config,
        timers: &mut TimerTable,
    ) -> Failure {
        // Progress (a new event) or a link open `healthy_after_ms` resets the
        // backoff (the next reconnect may go at once) and the guard. Otherwise a
        // failure counts toward the guard only if its attempt started sooner
        // than the backoff allowed.
        if self.attempt.healthy || self.attempt.progressed {
            self.failures = 0;
            self.guard.clear();
        } else {
            if !self.attempt.paced {
                self.guard.push_back(now);
                while self
                    .guard
                    .front()
                    .is_some_and(|&t| now - t > cfg.loop_guard_window_ms)
                {
                    self.guard.pop_front();
                }
                if self.guard.len() >= cfg.loop_guard_failures.max(1) {
                    let n = self.guard.len();
                    self.conn = Conn::Failed;
                    return Failure::Loop(n);
                }
            }
            self.failures = self.failures.saturating_add(1);
        }
        let delay = backoff::delay(
            &cfg.backoff,
            self.failures,
            jitter,
            self.server_retry,
            retry_after,
        );
        self.next_paced = self.failures > 0 || retry_after.is_some();
        let at = now + delay;
        if !self.online {
            self.conn = Conn::Offline {
                resume_at: Some(at),
            };
            return Failure::Offline;
        }
        self.wait_until(now, at, timers);
        Failure::Wait(at)
    }

    /// Waits until `at` (a backoff wait already decided).
    pub fn wait_until(&mut self, now: Ms, at: Ms, timers: &mut TimerTable) {
        self.conn = Conn::Waiting { at };
        timers.set(Timer::Reconnect, at);
        timers.set(Timer::Countdown, (now + COUNTDOWN_MS).min(at));
    }

    /// The countdown timer fired: re-armed while waiting; `true` if the
    /// on-screen `retryInMs` changed.
    pub fn countdown(&mut self, now: Ms, timers: &mut TimerTable) -> bool {
        match self.conn {
            Conn::Waiting { at } => {
                timers.set(Timer::Countdown, (now + COUNTDOWN_MS).min(at));
                true
            }
            _ => false,
        }
    }

    /// The browser went offline: pending waits are remembered, timers stop.
    pub fn go_offline(&mut self, timers: &mut TimerTable) {
        let resume_at = match self.conn {
            Conn::Waiting { at } => Some(at),
            _ => None,
        };
        self.conn = Conn::Offline { resume_at };
        timers.clear(Timer::Reconnect);
        timers.clear(Timer::Countdown);
    }

    /// `retryNow()`: the guard and the 401 budget start over.
    pub fn reset_for_retry(&mut self) {
        self.guard.clear();
        self.unauthorized_retried = false;
        self.next_paced = false;
    }

    /// API.md `StreamStatus.connection`, `attempt`, `retryInMs`.
    pub fn status(&self, now: Ms) -> (Connection, u32, Option<f64>) {
        let connection = match self.conn {
            Conn::Idle => Connection::Idle,
            Conn::Connecting if self.connects <= 1 => Connection::Connecting,
            Conn::Connecting | Conn::Waiting { .. } => Connection::Reconnecting,
            Conn::Open { .. } => Connection::Open,
            Conn::Offline { .. } => Connection::Offline,
            Conn::Finished | Conn::Closed => Connection::Closed,
            Conn::Failed => Connection::Failed,
            // Shown as the leader reports it (the engine's status mirrors it).
            Conn::Following => Connection::Connecting,
        };
        let retry_in = match self.conn {
            Conn::Waiting { at } => Some((at - now).max(0.0).ceil()),
            _ => None,
        };
        let attempt = match self.conn {
            Conn::Open { .. } | Conn::Idle | Conn::Closed | Conn::Finished | Conn::Following => 0,
            _ => self.failures.max(1),
        };
        (connection, attempt, retry_in)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(t: Transport) -> Config {
        Config {
            transport: t,
            ..Config::new("run")
        }
    }

    #[test]
    fn connect_timeout_ends_at_open_and_heartbeat_takes_over() {
        let c = cfg(Transport::Fetch);
        let mut t = TimerTable::default();
        let mut l = Link::default();
        l.begin(0.0, true, &c, &mut t);
        assert_eq!(t.get(Timer::Connect), Some(c.connect_timeout_ms));
        l.opened(100.0, &c, &mut t);
        assert!(!t.is_armed(Timer::Connect));
        assert_eq!(
            t.get(Timer::Heartbeat),
            Some(100.0 + c.heartbeat_timeout_ms)
        );
        l.saw_byte(15_100.0, &c, &mut t);
        assert_eq!(
            t.get(Timer::Heartbeat),
            Some(15_100.0 + c.heartbeat_timeout_ms)
        );
    }

    #[test]
    fn native_eventsource_has_no_heartbeat_watch() {
        let c = cfg(Transport::Sse);
        let mut t = TimerTable::default();
        let mut l = Link::default();
        l.begin(0.0, false, &c, &mut t);
        l.opened(10.0, &c, &mut t);
        assert!(!t.is_armed(Timer::Heartbeat));
        assert!(!l.set_visible(1e9, true, &c, &mut t));
    }

    #[test]
    fn hidden_suspends_the_heartbeat_and_visible_rechecks_it() {
        let c = cfg(Transport::WebSocket);
        let mut t = TimerTable::default();
        let mut l = Link::default();
        l.begin(0.0, false, &c, &mut t);
        l.opened(0.0, &c, &mut t);
        l.set_visible(1000.0, false, &c, &mut t);
        assert!(!t.is_armed(Timer::Heartbeat));
        assert!(l.set_visible(60_000.0, true, &c, &mut t));
    }

    #[test]
    fn paced_failures_never_trip_the_guard() {
        let c = cfg(Transport::Fetch);
        let mut t = TimerTable::default();
        let mut l = Link::default();
        let mut now = 0.0;
        for _ in 0..100 {
            l.begin(now, false, &c, &mut t);
            match l.fail(now + 1.0, None, 0.0, &c, &mut t) {
                Failure::Wait(at) => now = at,
                other => panic!("{other:?}"),
            }
        }
        // Only the very first attempt (start) was unpaced.
        assert_eq!(l.guard.len(), 1);
    }

    #[test]
    fn unpaced_failures_trip_the_guard() {
        let c = cfg(Transport::Fetch);
        let mut t = TimerTable::default();
        let mut l = Link::default();
        let mut out = None;
        for i in 0..c.loop_guard_failures {
            let now = i as f64 * 10.0;
            l.begin(now, false, &c, &mut t);
            l.next_paced = false;
            l.attempt.paced = false;
            out = Some(l.fail(now + 1.0, None, 0.0, &c, &mut t));
        }
        assert_eq!(out, Some(Failure::Loop(c.loop_guard_failures)));
        assert_eq!(l.conn, Conn::Failed);
    }

    #[test]
    fn a_healthy_link_reconnects_at_once_then_backs_off() {
        let c = cfg(Transport::Fetch);
        let mut t = TimerTable::default();
        let mut l = Link::default();
        l.begin(0.0, false, &c, &mut t);
        l.opened(0.0, &c, &mut t);
        l.became_healthy();
        let Failure::Wait(at) = l.fail(10_000.0, None, 0.99, &c, &mut t) else {
            panic!()
        };
        assert!(at - 10_000.0 < backoff::IMMEDIATE_JITTER_MS);
        l.begin(at, false, &c, &mut t);
        let Failure::Wait(at2) = l.fail(at + 1.0, None, 0.99, &c, &mut t) else {
            panic!()
        };
        assert!(at2 - (at + 1.0) > 400.0);
    }

    #[test]
    fn offline_remembers_the_pending_wait() {
        let c = cfg(Transport::Fetch);
        let mut t = TimerTable::default();
        let mut l = Link::default();
        l.begin(0.0, false, &c, &mut t);
        let _ = l.fail(1.0, Some(120_000.0), 0.0, &c, &mut t);
        l.go_offline(&mut t);
        assert_eq!(
            l.conn,
            Conn::Offline {
                resume_at: Some(120_001.0)
            }
        );
        assert!(!t.is_armed(Timer::Reconnect));
    }
}
