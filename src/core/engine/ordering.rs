//! Exactly-once, in-order application (PROTOCOL §1): duplicates, the reorder
//! buffer beyond a gap, and what to do with a gap that does not fill.
//!
//! Rules:
//! - `id ≤ cursor`, or an id already held: a duplicate, dropped.
//! - `id = cursor + 1`: applied, then every held event that follows it.
//! - `id > cursor + 1`: held in the reorder buffer (at most `reorder_capacity`
//!   events; a full buffer resumes from the cursor at once).
//! - A gap that does not fill within `gap_timeout_ms` resumes from the cursor
//!   (the server replays what is missing). A gap still there after two such
//!   replays is repaired from the snapshot endpoint; where there is none, or
//!   it fails, the missing ids are skipped, counted (`gapsSkipped`) and
//!   reported: the client never freezes and never resumes in a loop.

use crate::core::envelope::EventKind;

/// Replays of the same gap before the snapshot endpoint (or a skip) repairs it.
pub const REPLAYS_PER_GAP: u32 = 2;

/// What to do with an offered event.
#[derive(Debug)]
pub enum Offer {
    /// Already applied or already held: drop it.
    Duplicate,
    /// The next event: apply it (then drain with [`Ordering::pop_ready`]).
    Apply(EventKind),
    /// Held beyond a gap.
    Held,
    /// The reorder buffer is full: resume from the cursor (the event is dropped; replay brings it).
    Full,
}

/// What to do about a gap that did not fill in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapRepair {
    /// Resume from the cursor: the server replays what is missing.
    Replay,
    /// Ask the snapshot endpoint for the authoritative state.
    Snapshot,
    /// Give up on ids `from..=to`: jump the cursor past them.
    Skip {
        /// First missing id.
        from: u64,
        /// Last missing id.
        to: u64,
    },
    /// Nothing is held any more.
    Nothing,
}

/// The reorder buffer and the gap-repair ladder.
#[derive(Debug, Default)]
pub struct Ordering {
    /// Held events, sorted by id in *descending* order: the next one to
    /// apply is the last, so draining a filled gap pops from the end.
    /// Bounded by the caller's `capacity` (`Config::reorder_capacity`).
    buffer: Vec<(u64, EventKind)>,
    /// The cursor at which the current gap was found, and how often it was replayed.
    stuck_at: u64,
    replays: u32,
    /// The snapshot endpoint was asked for the current gap.
    snapshot_asked: bool,
}

impl Ordering {
    /// Classifies event `id` given the `cursor`; holds it if it is beyond a gap.
    pub fn offer(&mut self, cursor: u64, id: u64, kind: EventKind, capacity: usize) -> Offer {
        if id <= cursor {
            return Offer::Duplicate;
        }
        let at = match self.find(id) {
            Ok(_) => return Offer::Duplicate,
            Err(at) => at,
        };
        if id == cursor + 1 {
            return Offer::Apply(kind);
        }
        if self.buffer.len() >= capacity {
            return Offer::Full;
        }
        self.buffer.insert(at, (id, kind));
        Offer::Held
    }

    /// The held event that comes right after `cursor`, if any.
    pub fn pop_ready(&mut self, cursor: u64) -> Option<(u64, EventKind)> {
        match self.buffer.last() {
            Some((id, _)) if *id == cursor + 1 => self.buffer.pop(),
            _ => None,
        }
    }

    /// An event is held beyond a gap.
    pub fn has_gap(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// Nothing is held.
    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    /// The id `id` is held.
    pub fn holds(&self, id: u64) -> bool {
        self.find(id).is_ok()
    }

    /// Where `id` is (or would go) in the descending buffer.
    fn find(&self, id: u64) -> Result<usize, usize> {
        self.buffer.binary_search_by(|(k, _)| id.cmp(k))
    }

    /// Forgets held events (the link ended: the resume replays them).
    pub fn clear(&mut self) {
        self.buffer.clear();
    }

    /// A snapshot as of `id` replaced the state: held events up to it are covered.
    pub fn covered_up_to(&mut self, id: u64) {
        self.buffer.retain(|(k, _)| *k > id);
    }

    /// The gap did not fill in time (or the buffer filled): the next rung of the ladder.
    pub fn on_gap_timeout(&mut self, cursor: u64, has_snapshot_url: bool) -> GapRepair {
        if self.stuck_at != cursor {
            self.stuck_at = cursor;
            self.replays = 0;
            self.snapshot_asked = false;
        }
        if self.replays < REPLAYS_PER_GAP {
            self.replays += 1;
            return GapRepair::Replay;
        }
        if has_snapshot_url && !self.snapshot_asked {
            self.snapshot_asked = true;
            return GapRepair::Snapshot;
        }
        self.skip(cursor)
    }

    /// The snapshot endpoint could not repair the gap at `cursor`: skip it.
    pub fn snapshot_failed(&mut self, cursor: u64) -> GapRepair {
        if self.snapshot_asked && self.stuck_at == cursor && self.has_gap() {
            self.skip(cursor)
        } else {
            GapRepair::Nothing
        }
    }

    /// The snapshot endpoint was asked for the gap at `cursor` and has not answered.
    pub fn awaiting_snapshot(&self, cursor: u64) -> bool {
        self.snapshot_asked && self.stuck_at == cursor
    }

    fn skip(&mut self, cursor: u64) -> GapRepair {
        self.replays = 0;
        self.snapshot_asked = false;
        match self.buffer.last().map(|(k, _)| *k) {
            Some(first) if first > cursor + 1 => GapRepair::Skip {
                from: cursor + 1,
                to: first - 1,
            },
            _ => GapRepair::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k() -> EventKind {
        EventKind::Unknown
    }

    #[test]
    fn duplicate_apply_hold_and_drain() {
        let mut o = Ordering::default();
        assert!(matches!(o.offer(5, 5, k(), 8), Offer::Duplicate));
        assert!(matches!(o.offer(5, 6, k(), 8), Offer::Apply(_)));
        assert!(matches!(o.offer(5, 8, k(), 8), Offer::Held));
        assert!(matches!(o.offer(5, 8, k(), 8), Offer::Duplicate));
        assert!(o.has_gap());
        assert!(o.pop_ready(6).is_none());
        assert_eq!(o.pop_ready(7).map(|(id, _)| id), Some(8));
        assert!(!o.has_gap());
    }

    /// Several events held in any arrival order drain in id order once the
    /// gap fills; a snapshot covers those up to its id; a skip names the
    /// first one still held.
    #[test]
    fn held_events_drain_in_id_order_whatever_their_arrival_order() {
        let mut o = Ordering::default();
        for id in [6, 3, 9, 4, 7, 5] {
            assert!(matches!(o.offer(1, id, k(), 8), Offer::Held), "{id}");
        }
        for id in [3, 9, 6] {
            assert!(matches!(o.offer(1, id, k(), 8), Offer::Duplicate), "{id}");
            assert!(o.holds(id));
        }
        assert!(!o.holds(2) && !o.holds(8));
        assert!(o.pop_ready(1).is_none());
        // 2 arrives (applied by the caller): 3 to 7 drain, 9 waits for 8.
        let drained: Vec<u64> = std::iter::successors(Some(2), |c| Some(c + 1))
            .map_while(|c| o.pop_ready(c).map(|(id, _)| id))
            .collect();
        assert_eq!(drained, [3, 4, 5, 6, 7]);
        assert_eq!(o.len(), 1);
        assert_eq!(o.snapshot_failed(7), GapRepair::Nothing);
        let _ = o.offer(7, 12, k(), 8);
        let _ = o.offer(7, 11, k(), 8);
        o.covered_up_to(9);
        assert!(!o.holds(9) && o.holds(11) && o.holds(12));
        assert_eq!(o.on_gap_timeout(9, false), GapRepair::Replay);
        assert_eq!(o.on_gap_timeout(9, false), GapRepair::Replay);
        assert_eq!(
            o.on_gap_timeout(9, false),
            GapRepair::Skip { from: 10, to: 10 }
        );
    }

    #[test]
    fn a_full_buffer_asks_for_a_resume() {
        let mut o = Ordering::default();
        assert!(matches!(o.offer(0, 3, k(), 1), Offer::Held));
        assert!(matches!(o.offer(0, 4, k(), 1), Offer::Full));
    }

    #[test]
    fn ladder_replays_twice_then_snapshot_then_skip() {
        let mut o = Ordering::default();
        let _ = o.offer(10, 14, k(), 8);
        assert_eq!(o.on_gap_timeout(10, true), GapRepair::Replay);
        assert_eq!(o.on_gap_timeout(10, true), GapRepair::Replay);
        assert_eq!(o.on_gap_timeout(10, true), GapRepair::Snapshot);
        assert!(o.awaiting_snapshot(10));
        assert_eq!(o.snapshot_failed(10), GapRepair::Skip { from: 11, to: 13 });
    }

    #[test]
    fn without_a_snapshot_url_the_third_timeout_skips() {
        let mut o = Ordering::default();
        let _ = o.offer(0, 2, k(), 8);
        assert_eq!(o.on_gap_timeout(0, false), GapRepair::Replay);
        assert_eq!(o.on_gap_timeout(0, false), GapRepair::Replay);
        assert_eq!(
            o.on_gap_timeout(0, false),
            GapRepair::Skip { from: 1, to: 1 }
        );
    }

    #[test]
    fn progress_restarts_the_ladder() {
        let mut o = Ordering::default();
        let _ = o.offer(0, 5, k(), 8);
        assert_eq!(o.on_gap_timeout(0, false), GapRepair::Replay);
        assert_eq!(o.on_gap_timeout(0, false), GapRepair::Replay);
        // The cursor moved (part of the gap filled): two fresh replays.
        assert_eq!(o.on_gap_timeout(2, false), GapRepair::Replay);
    }

    #[test]
    fn a_snapshot_covers_held_events() {
        let mut o = Ordering::default();
        let _ = o.offer(0, 3, k(), 8);
        let _ = o.offer(0, 9, k(), 8);
        o.covered_up_to(5);
        assert_eq!(o.len(), 1);
        assert!(o.holds(9));
    }
}
