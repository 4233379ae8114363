//! Activity (API.md `StreamStatus.activity`): is a reply pending, are tokens
//! flowing, or is it "working…" (no token for `stall_after_ms`).
//!
//! Rules: a reply is pending from `send()` until a reply that names it
//! (`reply_to`) completes or fails, or until an assistant message without
//! `reply_to` completes (it ends every wait); a message that
//! is streaming is pending too. A run that completes, a send that fails, and
//! `close()` end it: "working…" never outlives its cause.

use std::collections::VecDeque;

use super::config::Ms;
use super::io::Activity;
use super::timers::{Timer, TimerTable};
use crate::core::metrics::MAX_MESSAGE_METRICS;

/// The activity sub-machine.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Sends awaiting their reply (oldest first), at most [`MAX_MESSAGE_METRICS`].
    awaiting: VecDeque<String>,
    last_token_at: Ms,
    /// The stall was shown (the timer fired since the last token).
    stalled: bool,
    /// The run completed or the stream was closed: nothing is pending any more.
    ended: bool,
}

impl Tracker {
    /// Restored sends await their replies as well (the newest
    /// [`MAX_MESSAGE_METRICS`] of them, like sends made here).
    pub fn restore(&mut self, crids: impl IntoIterator<Item = String>, now: Ms) {
        self.awaiting.extend(crids);
        while self.awaiting.len() > MAX_MESSAGE_METRICS {
            self.awaiting.pop_front();
        }
        self.last_token_at = now;
    }

    /// `send()`: a reply to `crid` is now awaited.
    pub fn expect_reply(&mut self, crid: &str, now: Ms) {
        self.awaiting.push_back(crid.to_owned());
        while self.awaiting.len() > MAX_MESSAGE_METRICS {
            self.awaiting.pop_front();
        }
        self.ended = false;
        self.token(now);
    }

    /// A token (or any sign of a reply) arrived.
    pub fn token(&mut self, now: Ms) {
        self.last_token_at = now;
        self.stalled = false;
    }

    /// A reply finished (completed or failed): `reply_to` names its send; a
    /// reply without one ends every wait (API.md: it "ends working").
    pub fn reply_done(&mut self, reply_to: Option<&str>) {
        match reply_to {
            Some(crid) => self.awaiting.retain(|c| c != crid),
            None => self.awaiting.clear(),
        }
    }

    /// The sends whose reply is awaited, oldest first.
    pub fn awaited(&self) -> impl Iterator<Item = &String> {
        self.awaiting.iter()
    }

    /// Whether a reply to `crid` is awaited.
    pub fn awaits(&self, crid: &str) -> bool {
        self.awaiting.iter().any(|c| c == crid)
    }

    /// The send `crid` failed for good: no reply will come.
    pub fn forget(&mut self, crid: &str) {
        self.awaiting.retain(|c| c != crid);
    }

    /// The run completed or the stream was closed.
    pub fn end(&mut self, timers: &mut TimerTable) {
        self.awaiting.clear();
        self.ended = true;
        self.stalled = false;
        timers.clear(Timer::Stall);
    }

    /// The stall timer fired: "working…" shows now, unless a token came since
    /// it was armed (then it is re-armed for the new silence). Returns whether
    /// the activity changed.
    pub fn on_stall(&mut self, now: Ms, stall_after: Ms, timers: &mut TimerTable) -> bool {
        let at = self.last_token_at + stall_after;
        if now >= at {
            self.stalled = true;
            true
        } else {
            timers.set(Timer::Stall, at);
            false
        }
    }

    fn pending(&self, streaming: bool) -> bool {
        !self.ended && (!self.awaiting.is_empty() || streaming)
    }

    /// Arms the stall timer when a reply is pending and "working…" is not shown
    /// yet; disarms it when nothing is pending. `streaming` = a message is
    /// streaming. (Tokens do not re-arm it: the expiry checks the last token.)
    pub fn sync_timer(&self, streaming: bool, stall_after: Ms, timers: &mut TimerTable) {
        if !self.pending(streaming) || self.stalled {
            timers.clear(Timer::Stall);
        } else if !timers.is_armed(Timer::Stall) {
            timers.set(Timer::Stall, self.last_token_at + stall_after);
        }
    }

    /// Activity as of `now`: `working` exactly when `now − last token ≥ stall_after`.
    pub fn state(&self, now: Ms, streaming: bool, stall_after: Ms) -> Activity {
        if !self.pending(streaming) {
            Activity::Idle
        } else if now - self.last_token_at >= stall_after {
            Activity::Working
        } else {
            Activity::Streaming
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_after_the_stall_and_streaming_again_on_a_token() {
        let mut a = Tracker::default();
        a.expect_reply("c1", 0.0);
        assert_eq!(a.state(1999.0, false, 2000.0), Activity::Streaming);
        assert_eq!(a.state(2000.0, false, 2000.0), Activity::Working);
        a.token(2500.0);
        assert_eq!(a.state(3000.0, false, 2000.0), Activity::Streaming);
    }

    #[test]
    fn restored_waits_are_bounded_like_live_ones() {
        let mut a = Tracker::default();
        a.restore((0..MAX_MESSAGE_METRICS + 10).map(|i| i.to_string()), 0.0);
        assert_eq!(a.awaiting.len(), MAX_MESSAGE_METRICS);
        assert!(!a.awaits("0"), "the oldest go first");
        assert!(a.awaits(&(MAX_MESSAGE_METRICS + 9).to_string()));
    }

    #[test]
    fn a_reply_without_reply_to_ends_every_wait() {
        let mut a = Tracker::default();
        a.expect_reply("c1", 0.0);
        a.expect_reply("c2", 0.0);
        a.reply_done(None);
        assert_eq!(a.state(10_000.0, false, 2000.0), Activity::Idle);
    }

    #[test]
    fn completion_and_close_end_working_even_with_a_message_streaming() {
        let mut t = TimerTable::default();
        let mut a = Tracker::default();
        a.expect_reply("c1", 0.0);
        a.sync_timer(true, 2000.0, &mut t);
        assert_eq!(t.get(Timer::Stall), Some(2000.0));
        a.end(&mut t);
        assert_eq!(a.state(10_000.0, true, 2000.0), Activity::Idle);
        a.sync_timer(true, 2000.0, &mut t);
        assert!(!t.is_armed(Timer::Stall));
    }

    #[test]
    fn the_stall_timer_fires_once_per_silence() {
        let mut t = TimerTable::default();
        let mut a = Tracker::default();
        a.expect_reply("c1", 0.0);
        a.sync_timer(false, 2000.0, &mut t);
        a.token(1500.0);
        // Fires at 2000 but a token came at 1500: re-armed for 3500.
        assert!(!a.on_stall(2000.0, 2000.0, &mut t));
        assert_eq!(t.get(Timer::Stall), Some(3500.0));
        assert!(a.on_stall(3500.0, 2000.0, &mut t));
        a.sync_timer(false, 2000.0, &mut t);
        assert!(!t.is_armed(Timer::Stall));
        a.token(4000.0);
        a.sync_timer(false, 2000.0, &mut t);
        assert_eq!(t.get(Timer::Stall), Some(6000.0));
    }
}
