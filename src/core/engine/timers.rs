//! Every deadline of the engine in one table (the quinn-proto `TimerTable`).
//!
//! A sub-machine arms or clears its own [`Timer`]; nothing else computes a
//! deadline. [`TimerTable::next`] is the one place that picks the next wakeup
//! (the shell's single `setTimeout`), and [`TimerTable::expired`] the one place
//! that decides which timers fire at `now`, in a fixed order.

use super::config::Ms;

/// One kind of deadline. At most one of each is armed at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// No response headers (fetch) / `open` (EventSource, WebSocket) yet: retry.
    Connect,
    /// Open, and no byte (fetch) / frame (WebSocket) for `heartbeat_timeout_ms`: reconnect.
    Heartbeat,
    /// Open long enough to count as healthy: the attempt count resets.
    Healthy,
    /// Next WebSocket `ping`.
    Ping,
    /// The backoff wait is over: reconnect.
    Reconnect,
    /// Once a second while waiting, so `retryInMs` counts down on screen.
    Countdown,
    /// A gap in event ids did not fill in time.
    Gap,
    /// The snapshot endpoint did not answer in time (gap repair, final reconcile).
    Snapshot,
    /// The throttled write of the stored record is due.
    Persist,
    /// A reply is pending and no token came for `stall_after_ms`: show "working…".
    Stall,
    /// The earliest queued chat send is due.
    Send,
}

impl Timer {
    /// Every timer, in the order expiries are handled at one instant.
    pub const ALL: [Timer; 11] = [
        Timer::Connect,
        Timer::Heartbeat,
        Timer::Healthy,
        Timer::Ping,
        Timer::Reconnect,
        Timer::Countdown,
        Timer::Gap,
        Timer::Snapshot,
        Timer::Persist,
        Timer::Stall,
        Timer::Send,
    ];

    fn slot(self) -> usize {
        self as usize
    }
}

/// The armed deadlines.
#[derive(Debug, Clone, Default)]
pub struct TimerTable {
    at: [Option<Ms>; Timer::ALL.len()],
}

impl TimerTable {
    /// Arms `t` at `at` (replacing its previous deadline).
    pub fn set(&mut self, t: Timer, at: Ms) {
        if let Some(s) = self.at.get_mut(t.slot()) {
            *s = Some(at);
        }
    }

    /// Arms `t` at `at`, or clears it for `None`.
    pub fn set_opt(&mut self, t: Timer, at: Option<Ms>) {
        if let Some(s) = self.at.get_mut(t.slot()) {
            *s = at;
        }
    }

    /// Disarms `t`.
    pub fn clear(&mut self, t: Timer) {
        self.set_opt(t, None);
    }

    /// The deadline of `t`, if armed.
    pub fn get(&self, t: Timer) -> Option<Ms> {
        self.at.get(t.slot()).copied().flatten()
    }

    /// Whether `t` is armed.
    pub fn is_armed(&self, t: Timer) -> bool {
        self.get(t).is_some()
    }

    /// The earliest armed deadline: when the shell must call `handle_timeout`.
    pub fn next(&self) -> Option<Ms> {
        self.at.iter().flatten().copied().reduce(Ms::min)
    }

    /// Disarms and returns every timer due at `now`, in [`Timer::ALL`] order.
    pub fn expired(&mut self, now: Ms) -> impl Iterator<Item = Timer> {
        let mut due = [None; Timer::ALL.len()];
        for (slot, t) in due.iter_mut().zip(Timer::ALL) {
            if self.get(t).is_some_and(|at| at <= now) {
                self.clear(t);
                *slot = Some(t);
            }
        }
        due.into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_the_earliest_and_expired_disarms_in_order() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Stall, 30.0);
        t.set(Timer::Connect, 50.0);
        t.set(Timer::Gap, 10.0);
        assert_eq!(t.next(), Some(10.0));
        let due: Vec<_> = t.expired(30.0).collect();
        assert_eq!(due, vec![Timer::Gap, Timer::Stall]);
        assert_eq!(t.next(), Some(50.0));
        assert!(!t.is_armed(Timer::Gap));
        t.clear(Timer::Connect);
        assert_eq!(t.next(), None);
    }

    #[test]
    fn set_replaces_the_previous_deadline() {
        let mut t = TimerTable::default();
        t.set(Timer::Heartbeat, 100.0);
        t.set(Timer::Heartbeat, 200.0);
        assert_eq!(t.expired(150.0).count(), 0);
        assert_eq!(t.get(Timer::Heartbeat), Some(200.0));
    }
}
