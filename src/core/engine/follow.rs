//! The tab-sharing sub-machine (`share: "tabs"`, API.md "Sharing
//! connections"): this tab's role, what the leader last reported, and the
//! leader's ring of relayed envelopes.
//!
//! Rules it follows:
//! - A tab that shares starts as a follower and does not connect; the shell
//!   asks Web Locks for the stream key's lock, and the tab whose request is
//!   granted leads ([`Role::Leader`]) until it closes or its page is hidden
//!   for good (`pagehide`, `freeze`): then the next queued tab leads, and
//!   connects from its own cursor.
//! - The leader relays every envelope it receives from the network (one
//!   whose `event_id` is readable) on arrival, before applying it itself, and
//!   keeps it in a [`Ring`] (bounds in [`crate::core::tabs`]). It reports its
//!   connection status whenever `connection`, `attempt`, the wait's deadline
//!   or `lastError` change.
//! - A follower applies relayed envelopes through the network path
//!   (validation, run check, ordering); it shows the leader's connection
//!   status, counting `retryInMs` down on its own clock.
//! - A follower catches up from its own cursor: it asks the leader when it
//!   starts, when the gap ladder says "replay", when its page comes back and
//!   when another tab starts leading (a new leader also broadcasts its
//!   cursor with `end` as it is elected: asks sent while no tab led are
//!   lost). The leader answers from its ring, or with a miss when the ring
//!   does not reach back that far (or its cursor jumped over ids by a
//!   snapshot or a skip). After a miss, or an `end` above its cursor with
//!   nothing held, the follower fetches the snapshot endpoint, or where
//!   there is none (or it fails) opens a catch-up connection of its own from
//!   its cursor, closed again once it has reached the leader's cursor.
//! - A gap the leader cannot fill gets one catch-up connection; if it is
//!   still there the next time the ladder says "skip", it is skipped.
//! - The heartbeat watch is off in a hidden tab, and the leader is usually a
//!   background tab: followers tell the leader when their page is visible
//!   (on asking, when it changes, when a new leader announces itself, `0`
//!   on close), and while one is, the leader watches its heartbeat as if
//!   its own page were visible.
//! - A follower's WebSocket sends need a socket: it opens one for them (no
//!   subscribe) and closes it once they are acknowledged.

use super::config::Ms;
use super::io::Connection;
use super::timers::{Timer, TimerTable};
use crate::core::vecmap::VecSet;

use crate::core::tabs::{Body, LeaderStatus, Message, Ring, MAX_WATCHERS};

/// How often a follower refreshes the leader's `retryInMs` countdown on screen.
const COUNTDOWN_MS: Ms = 1000.0;

/// This tab's part in sharing the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not sharing: connects on its own.
    Solo,
    /// Holds the lock and the connection; relays.
    Leader,
    /// Another tab holds the connection.
    Follower,
}

/// What the leader last reported, on this tab's clock.
#[derive(Debug, Clone, PartialEq)]
struct View {
    connection: Connection,
    attempt: u32,
    retry_at: Option<Ms>,
}

/// The status a leader last broadcast (to tell when it changed).
#[derive(Debug, Clone, PartialEq)]
pub struct Reported {
    /// Connection state.
    pub connection: Connection,
    /// Attempt.
    pub attempt: u32,
    /// The wait's deadline.
    pub wait_until: Option<Ms>,
    /// Last error.
    pub last_error: Option<String>,
}

/// The tab-sharing sub-machine.
#[derive(Debug)]
pub struct Follow {
    /// This tab's role.
    pub role: Role,
    /// This tab's id in channel messages.
    pub tab: String,
    /// The stream key (empty when solo).
    pub key: String,
    view: View,
    /// The highest cursor a leader reported (ends and misses).
    pub head: u64,
    /// A catch-up connection of this follower's own is wanted (after a miss, without a snapshot endpoint).
    pub catching_up: bool,
    /// Leader: recent envelopes; `since` is the cursor it started leading at.
    pub ring: Ring,
    /// Leader: its cursor when it started leading.
    pub since: u64,
    /// Leader: the status last broadcast.
    pub reported: Option<Reported>,
    /// Follower: the tab id the leader's messages last came from.
    leader: Option<String>,
    /// Follower: the cursor of the gap a catch-up connection was already
    /// tried for (the ladder skips it the next time round).
    pub gap_catch_up: Option<u64>,
    /// This tab's page is visible.
    pub page_visible: bool,
    /// Leader: the followers whose page is visible (at most [`MAX_WATCHERS`]).
    watchers: VecSet<String>,
}

impl Follow {
    /// Not sharing (`key` = `None`), or sharing stream `key` as tab `tab` (a follower until elected).
    pub fn new(key: Option<String>, tab: String) -> Self {
        let (role, key) = match key {
            Some(k) => (Role::Follower, k),
            None => (Role::Solo, String::new()),
        };
        Self {
            role,
            tab,
            key,
            view: View {
                connection: Connection::Connecting,
                attempt: 0,
                retry_at: None,
            },
            head: 0,
            catching_up: false,
            ring: Ring::default(),
            since: 0,
            reported: None,
            leader: None,
            gap_catch_up: None,
            page_visible: true,
            watchers: VecSet::new(),
        }
    }

    /// Whether this tab watches its connection's heartbeat: its page is
    /// visible, or (leading) a follower's is.
    pub fn watched(&self) -> bool {
        self.page_visible || (self.role == Role::Leader && !self.watchers.is_empty())
    }

    /// Leader: follower `tab`'s page became visible or hidden.
    pub fn watcher(&mut self, tab: &str, visible: bool) {
        if !visible {
            self.watchers.remove(tab);
        } else if self.watchers.len() < MAX_WATCHERS {
            self.watchers.insert(tab.to_owned());
        }
    }

    /// Follower: notes who sent `msg` if it is a leader's message (events,
    /// status, answers); `true` when it comes from another tab than the
    /// leader heard from before (a takeover this tab should ask again for).
    pub fn heard_from_leader(&mut self, msg: &Message) -> bool {
        let leaders = matches!(
            msg.body,
            Body::Event(_) | Body::Status(_) | Body::End(_) | Body::Miss(_)
        );
        if !leaders || self.leader.as_deref() == Some(msg.from.as_str()) {
            return false;
        }
        let changed = self.leader.is_some();
        self.leader = Some(msg.from.clone());
        changed
    }

    /// Another tab holds the connection.
    pub fn following(&self) -> bool {
        self.role == Role::Follower
    }

    /// Becomes leader at `cursor`: the ring starts empty.
    pub fn lead(&mut self, cursor: u64) {
        self.role = Role::Leader;
        self.catching_up = false;
        self.leader = None;
        self.watchers.clear();
        self.ring = Ring::default();
        self.since = cursor;
        self.reported = None;
    }

    /// Stops sharing for good (sharing is unavailable here): connects on its own.
    pub fn go_solo(&mut self) {
        self.role = Role::Solo;
        self.catching_up = false;
        self.leader = None;
        self.gap_catch_up = None;
        self.watchers.clear();
    }

    /// Steps down to follower.
    pub fn step_down(&mut self) {
        self.role = Role::Follower;
        self.watchers.clear();
        self.ring = Ring::default();
        self.reported = None;
        self.view = View {
            connection: Connection::Connecting,
            attempt: 0,
            retry_at: None,
        };
    }

    /// The leader reported `s` at `now`; arms the countdown while it waits.
    pub fn on_status(&mut self, now: Ms, s: &LeaderStatus, timers: &mut TimerTable) {
        let retry_at = s.retry_in_ms.map(|r| now + r);
        self.view = View {
            connection: s.connection,
            attempt: s.attempt,
            retry_at,
        };
        match retry_at {
            Some(at) => timers.set(Timer::Countdown, (now + COUNTDOWN_MS).min(at)),
            None => timers.clear(Timer::Countdown),
        }
    }

    /// The countdown timer fired: re-armed while the leader waits; `true` if
    /// the on-screen `retryInMs` changed.
    pub fn countdown(&mut self, now: Ms, timers: &mut TimerTable) -> bool {
        match self.view.retry_at {
            Some(at) if self.following() => {
                if at > now {
                    timers.set(Timer::Countdown, (now + COUNTDOWN_MS).min(at));
                }
                true
            }
            _ => false,
        }
    }

    /// The leader's status as this follower shows it (`connection`, `attempt`, `retryInMs`).
    pub fn status(&self, now: Ms) -> (Connection, u32, Option<f64>) {
        let retry = self.view.retry_at.map(|at| (at - now).max(0.0).ceil());
        (self.view.connection, self.view.attempt, retry)
    }
}
