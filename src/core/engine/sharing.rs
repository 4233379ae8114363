//! The tab-sharing side of the coordinator (`share: "tabs"`): promotion and
//! stepping down, the leader's relays and answers, and a follower's handling
//! of channel messages. The rules are in [`follow`](super::follow); this file
//! turns them into actions, metrics and engine inputs.

use super::follow::{Reported, Role};
use super::link::Conn;
use super::timers::Timer;
use super::{Action, Connection, Engine, Ms};
use crate::core::metrics::{EventClass, Metric, Termination};
use crate::core::tabs::{max_message_bytes, Body, ChannelError, LeaderStatus, Message};

impl Engine {
    /// This tab's lock request for the stream key was granted: it leads, and
    /// connects from its own cursor (a run already finished stays finished).
    pub fn handle_lead(&mut self, now: Ms) {
        if self.follow.role != Role::Follower || self.link.conn == Conn::Closed {
            return;
        }
        self.follow.lead(self.state.cursor);
        // Asks sent while no tab led went unanswered: every follower learns
        // the new leader's cursor and catches up to it (an idle or finished
        // run relays nothing that would show it a gap).
        self.broadcast(None, Body::End(self.state.cursor));
        if self.link.live() {
            self.end_link(now, Termination::Shared, None);
        }
        self.timers.clear(Timer::Countdown);
        self.timers.clear(Timer::Reconnect);
        match self.link.conn {
            Conn::Finished | Conn::Idle => {}
            _ if !self.link.online => self.link.go_offline(&mut self.timers),
            _ => {
                self.link.conn = Conn::Idle;
                self.connect(now);
            }
        }
        self.mark_dirty();
    }

    /// Sharing cannot work here after all: the channel could not be opened,
    /// or the lock request failed (an opaque origin such as a sandboxed
    /// iframe raises a SecurityError). API.md: "Where Web Locks or
    /// BroadcastChannel are missing, each tab connects on its own": this tab
    /// turns solo and connects from its own cursor (a finished run stays
    /// finished; before `start()` it connects at `start()`).
    pub fn handle_share_unavailable(&mut self, now: Ms) {
        if self.follow.role != Role::Follower || self.link.conn == Conn::Closed {
            return;
        }
        self.follow.go_solo();
        self.timers.clear(Timer::Countdown);
        if self.link.conn == Conn::Following {
            if self.link.online {
                self.link.conn = Conn::Idle;
                self.connect(now);
            } else {
                self.link.go_offline(&mut self.timers);
            }
        }
        self.mark_dirty();
    }

    /// The shell gave up the lock (the page is hidden for good: `pagehide`,
    /// `freeze`): this tab stops leading, its connection ends, and it
    /// follows whichever tab is elected next.
    pub fn handle_step_down(&mut self, now: Ms) {
        if self.follow.role != Role::Leader {
            return;
        }
        self.follow.step_down();
        self.rest_following(now);
        self.watch_heartbeat(now);
        self.mark_dirty();
    }

    /// The page came back (`pageshow` from the back/forward cache, `resume`
    /// after `freeze`): a follower heard nothing meanwhile, so it asks the
    /// leader for every event after its cursor.
    pub fn handle_page_resumed(&mut self, now: Ms) {
        if self.follow.following() && self.link.conn == Conn::Following {
            self.ask(now);
            self.announce_visible();
        }
    }

    /// A string message from the tabs' channel.
    pub fn handle_tab_text(&mut self, now: Ms, text: &str) {
        if self.follow.role == Role::Solo || self.link.conn == Conn::Closed {
            return;
        }
        let max = max_message_bytes(self.cfg.max_event_bytes);
        let msg = match Message::decode(text, &self.follow.key, max) {
            Ok(m) => m,
            Err(e) => return self.channel_error(now, e),
        };
        if msg.to.as_deref().is_some_and(|to| to != self.follow.tab) {
            return;
        }
        let to_all = msg.to.is_none();
        if self.follow.role == Role::Follower && self.follow.heard_from_leader(&msg) {
            // Another tab leads now: what it holds may differ from the last
            // one's, and it does not know this tab is visible.
            self.ask(now);
            self.announce_visible();
        }
        match (self.follow.role, msg.body) {
            // Until the stored state is installed its cursor is unknown: a
            // relay applied now would be lost or applied twice; the restore
            // asks for everything after the restored cursor instead.
            (Role::Follower, Body::Event(_)) if self.persist.is_awaiting() => {}
            (Role::Follower, Body::Event(text)) => {
                if text.len() > self.cfg.max_event_bytes {
                    let e = crate::core::error::FrameError::TooLarge(text.len());
                    self.protocol_error(now, e.into());
                } else {
                    self.handle_frame(now, &text);
                }
            }
            (Role::Follower, Body::Status(s)) => {
                self.follow.on_status(now, &s, &mut self.timers);
                if s.last_error.is_some() || s.connection == Connection::Open {
                    // As a connection of its own would: an error shows, an open link clears it.
                    self.link.last_error = s.last_error;
                }
                self.mark_dirty();
            }
            (Role::Follower, Body::End(head)) => {
                if to_all {
                    // A leader announcing itself: it watches the heartbeat for visible tabs.
                    self.announce_visible();
                }
                self.follow.head = self.follow.head.max(head);
                if self.ordering.is_empty() {
                    // Behind the leader with nothing held: no gap will ever
                    // show, so repair it as a miss.
                    self.replay_missed(now);
                }
            }
            (Role::Follower, Body::Miss(head)) => {
                self.follow.head = self.follow.head.max(head);
                self.replay_missed(now);
            }
            (Role::Leader, Body::Ask(cursor)) => self.answer(msg.from, cursor),
            (Role::Leader, Body::Retry) => self.retry_now(now),
            (Role::Leader, Body::Visible(v)) => {
                self.follow.watcher(&msg.from, v);
                self.watch_heartbeat(now);
            }
            // Asks are for the leader, answers for followers.
            _ => {}
        }
        self.settle_side_link(now);
    }

    /// A string message from the tabs' channel of `len` UTF-16 units, more
    /// than [`max_message_bytes`] allows: rejected before it is copied
    /// (its UTF-8 form is at least as long).
    pub fn handle_tab_too_large(&mut self, now: Ms, len: usize) {
        if self.follow.role == Role::Solo || self.link.conn == Conn::Closed {
            return;
        }
        self.channel_error(now, ChannelError::TooLarge(len));
    }

    /// The longest channel message this tab reads (the shell rejects longer
    /// ones with [`Self::handle_tab_too_large`] before copying them).
    pub fn tab_message_limit(&self) -> usize {
        max_message_bytes(self.cfg.max_event_bytes)
    }

    /// A message from the tabs' channel that is not a string.
    pub fn handle_tab_unreadable(&mut self, now: Ms) {
        if self.follow.role == Role::Solo || self.link.conn == Conn::Closed {
            return;
        }
        self.channel_error(now, ChannelError::NotText);
    }

    /// Call after every input (the shell's `drive` does): while leading,
    /// queues a status broadcast if `connection`, `attempt`, the wait's
    /// deadline or `lastError` changed since the last one.
    pub fn relay_status(&mut self, now: Ms) {
        if self.follow.role != Role::Leader {
            return;
        }
        let finished = self.finished_status();
        let (connection, attempt, _) = finished.unwrap_or_else(|| self.link.status(now));
        let wait_until = match self.link.conn {
            Conn::Waiting { at } if finished.is_none() => Some(at),
            _ => None,
        };
        let r = Reported {
            connection,
            attempt,
            wait_until,
            last_error: self.link.last_error.clone(),
        };
        if self.follow.reported.as_ref() == Some(&r) {
            return;
        }
        let s = LeaderStatus {
            connection,
            attempt,
            retry_in_ms: wait_until.map(|at| (at - now).max(0.0)),
            last_error: r.last_error.clone(),
        };
        self.follow.reported = Some(r);
        self.broadcast(None, Body::Status(s));
    }

    /// Starts following: no connection; asks the leader for what this tab lacks.
    pub(super) fn start_following(&mut self, now: Ms) {
        self.link.conn = Conn::Following;
        self.ask(now);
        self.announce_visible();
        self.mark_dirty();
    }

    /// Asks the leader for every event after the cursor.
    pub(super) fn ask(&mut self, _now: Ms) {
        if self.persist.is_awaiting() {
            // The stored state is still being read: its cursor is not known
            // yet; the restore asks once it is installed.
            return;
        }
        let c = self.state.cursor;
        self.broadcast(None, Body::Ask(c));
    }

    /// Follower: tells the leader this tab's page is visible (if it is).
    fn announce_visible(&mut self) {
        if self.follow.page_visible {
            self.broadcast(None, Body::Visible(true));
        }
    }

    /// Leader: relays envelope `id` (its raw text) to every follower and keeps it in the ring.
    pub(super) fn relay(&mut self, id: u64, text: &str) {
        if self.follow.role != Role::Leader {
            return;
        }
        self.follow.ring.push(id, text);
        self.broadcast(None, Body::Event(text.to_owned()));
    }

    /// Leader: its cursor jumped to `up_to` without relaying the ids before
    /// it (a snapshot replaced the state, or a gap was skipped): asks from
    /// before it miss.
    pub(super) fn relay_gap(&mut self, up_to: u64) {
        if self.follow.role == Role::Leader {
            self.follow.ring.cut(up_to);
        }
    }

    /// Leader: answers `to`'s ask from `cursor` (events from the ring, then
    /// `end`; or `miss`), and reports its status again for the newcomer.
    fn answer(&mut self, to: String, cursor: u64) {
        let head = self.state.cursor;
        let held: Option<Vec<String>> = self
            .follow
            .ring
            .after(cursor, self.follow.since)
            .map(|v| v.into_iter().map(str::to_owned).collect());
        match held {
            Some(events) => {
                for text in events {
                    self.broadcast(Some(to.clone()), Body::Event(text));
                }
                self.broadcast(Some(to), Body::End(head));
            }
            None => self.broadcast(Some(to), Body::Miss(head)),
        }
        self.follow.reported = None;
    }

    /// Follower: the leader's ring does not reach back to the cursor. The
    /// snapshot endpoint repairs it, or (without one, or when it fails: see
    /// [`Self::snapshot_missed`]) a catch-up connection. Ids are skipped only
    /// by the gap ladder.
    fn replay_missed(&mut self, now: Ms) {
        if !self.behind_leader() || self.timers.is_armed(Timer::Snapshot) {
            return;
        }
        if self.cfg.has_snapshot_url && !self.follow.catching_up {
            self.fetch_snapshot(now);
        } else {
            self.catch_up(now);
        }
    }

    /// Follower: the cursor is below the leader's, or a gap is held.
    fn behind_leader(&self) -> bool {
        self.state.cursor < self.follow.head || self.ordering.has_gap()
    }

    /// Follower: a snapshot fetch failed; if still behind, the server
    /// replays what is missing over a catch-up connection.
    pub(super) fn snapshot_missed(&mut self, now: Ms) {
        if self.follow.following() && self.behind_leader() {
            self.catch_up(now);
        }
    }

    /// Follower: opens a catch-up connection of its own from the cursor.
    pub(super) fn catch_up(&mut self, now: Ms) {
        if self.follow.catching_up {
            return;
        }
        self.follow.catching_up = true;
        if !self.link.live() && !matches!(self.link.conn, Conn::Waiting { .. }) {
            self.connect(now);
        }
    }

    /// A follower needs a connection of its own: to catch up, or for WebSocket sends.
    pub(super) fn side_link_needed(&self) -> bool {
        self.follow.catching_up || (self.socket_transport() && !self.outbox.is_empty())
    }

    /// Follower: ends a catch-up that reached the leader's cursor, and a
    /// connection of its own that is no longer needed.
    pub(super) fn settle_side_link(&mut self, now: Ms) {
        if !self.follow.following() {
            return;
        }
        if self.follow.catching_up
            && self.ordering.is_empty()
            && self.state.cursor >= self.follow.head
        {
            self.follow.catching_up = false;
        }
        let own = matches!(
            self.link.conn,
            Conn::Connecting | Conn::Open { .. } | Conn::Waiting { .. } | Conn::Offline { .. }
        );
        if own && !self.side_link_needed() {
            self.rest_following(now);
        }
    }

    /// Ends this tab's own connection (if any) and rests in following.
    fn rest_following(&mut self, now: Ms) {
        if self.link.live() {
            self.end_link(now, Termination::Shared, None);
        }
        self.timers.clear(Timer::Reconnect);
        self.timers.clear(Timer::Countdown);
        if !matches!(self.link.conn, Conn::Finished | Conn::Closed | Conn::Failed) {
            self.link.conn = Conn::Following;
        }
    }

    pub(super) fn broadcast(&mut self, to: Option<String>, body: Body) {
        let text = Message {
            from: self.follow.tab.clone(),
            to,
            body,
        }
        .encode(&self.follow.key);
        self.actions.push_back(Action::Broadcast { text });
    }

    /// A channel message was ignored: counted (`metrics.channelErrors`) and
    /// reported on the raw event stream with its kind; `lastError` stays what
    /// the connection says.
    fn channel_error(&mut self, now: Ms, e: ChannelError) {
        self.metrics.channel_errors += 1;
        self.telemetry.metric(
            EventClass::Counter,
            Metric::ChannelError,
            1.0,
            now,
            &[("kind", e.kind())],
        );
        self.mark_dirty();
    }
}
