//! The servers' driver of the reducer: a run's state reduced from its log
//! with the raw job-only events still parked, its stored form (the pruned
//! base both servers write and read), and the window rule that decides when
//! a log is pruned.
//!
//! One implementation for the Rust gateway (`server/src/store`) and the
//! TypeScript kit (`kit/reducer`, compiled to wasm): a base written by one
//! server is read by the other, and both prune at the same point. It adds no
//! rule to [`RunState::apply`]; it only keeps what a stored base needs to
//! survive a prune: the texts of job-only events that are still parked
//! (waiting for their `job_id → worker_id` mapping), so a mapping logged
//! after the prune point still places them.
//!
//! Bounds: at most [`PARK_CAP`] events parked (drop-oldest, the reducer's
//! rule) and as many raw texts (those no longer parked are forgotten once the
//! map passes the cap, and before every [`Reduced::to_stored`]).

use std::collections::{BTreeMap, HashSet};

use crate::core::envelope::decode_envelope;
use crate::core::error::SnapshotError;
use crate::core::json::scan::{Scanner, Token};
use crate::core::json::write::push_u64;
use crate::core::json::JsonError;
use crate::core::state::{Parked, RunState};

/// Most job-only events parked while a server reduces a run's state.
pub const PARK_CAP: usize = 4096;

/// The window rule: where a run holding events `first_id..=last_id` is pruned
/// to, or `None` while it holds at most `window + window / 10` events (so a
/// long run is pruned in steps of 10 %, amortized O(1) per event). The
/// result keeps the newest `window` events: everything before it becomes
/// the base. `window` below 1 counts as 1.
pub fn prune_point(first_id: u64, last_id: u64, window: u64) -> Option<u64> {
    let window = window.max(1);
    let held = last_id.saturating_add(1).saturating_sub(first_id);
    (held > window.saturating_add(window / 10)).then(|| last_id.saturating_add(1) - window)
}

/// A run's state reduced from its log, with the raw job-only events still
/// parked (so a pruned base can be stored and restored without losing them).
#[derive(Debug, Clone)]
pub struct Reduced {
    /// The state (its `cursor` is the last applied id).
    pub state: RunState,
    parked: Parked,
    /// Raw texts of job-only events, by id, while they may still be parked.
    parked_raw: BTreeMap<u64, String>,
    run_id: String,
}

impl Reduced {
    /// The empty state of run `run_id`.
    pub fn new(run_id: &str) -> Self {
        Self {
            state: RunState::new(run_id),
            parked: Parked::default(),
            parked_raw: BTreeMap::new(),
            run_id: run_id.to_owned(),
        }
    }

    /// The last applied id.
    pub fn cursor(&self) -> u64 {
        self.state.cursor
    }

    /// Applies one logged envelope `text` with id `id` (an invalid one is
    /// skipped, the cursor still moves: the log was written by a server).
    pub fn apply(&mut self, id: u64, text: &str) {
        if let Ok(env) = decode_envelope(text, &self.run_id) {
            if env.kind.job_only().is_some() {
                self.parked_raw.insert(id, text.to_owned());
            }
            let mut out = Vec::new();
            let _ = self
                .state
                .apply(id, env.kind, &mut self.parked, PARK_CAP, &mut out);
        }
        self.state.cursor = self.state.cursor.max(id);
        if self.parked_raw.len() > PARK_CAP {
            self.compact();
        }
    }

    /// Marks everything before `id + 1` as covered (a pruned base).
    pub fn set_cursor(&mut self, id: u64) {
        self.state.cursor = id;
    }

    /// Forgets the raw texts of events no longer parked.
    fn compact(&mut self) {
        let live: HashSet<u64> = self.parked.iter().map(|(i, _)| i).collect();
        self.parked_raw.retain(|i, _| live.contains(i));
    }

    /// The §6 state as JSON text (a snapshot's `state`).
    pub fn state_json(&self) -> String {
        self.state.to_wire_json()
    }

    /// The stored form of this state, what a pruned base is kept as:
    /// `{"event_id":N,"parked":[raw events, oldest first],"state":{§6}}`.
    pub fn to_stored(&mut self) -> String {
        self.compact();
        let state = self.state.to_wire_json();
        let parked: usize = self.parked_raw.values().map(|t| t.len() + 1).sum();
        let mut out = String::with_capacity(40 + parked + state.len());
        out.push_str("{\"event_id\":");
        push_u64(&mut out, self.state.cursor);
        out.push_str(",\"parked\":[");
        for (i, text) in self.parked_raw.values().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(text);
        }
        out.push_str("],\"state\":");
        out.push_str(&state);
        out.push('}');
        out
    }

    /// Reads [`Reduced::to_stored`] (either server's) back: `event_id` and
    /// `state` are required, `parked` may be absent or `null`, other keys are
    /// ignored; a parked event that does not decode is dropped.
    pub fn from_stored(run_id: &str, text: &str) -> Result<Self, SnapshotError> {
        let (event_id, state, parked) =
            stored_parts(text).map_err(|why| SnapshotError::Invalid(["base: ", why].concat()))?;
        let mut state = RunState::from_wire_json(state).map_err(|e| match e {
            SnapshotError::Invalid(why) => SnapshotError::Invalid(["base: ", &why].concat()),
            other => other,
        })?;
        state.cursor = event_id;
        let mut me = Self {
            state,
            parked: Parked::default(),
            parked_raw: BTreeMap::new(),
            run_id: run_id.to_owned(),
        };
        for raw in parked {
            if let Ok(env) = decode_envelope(raw, run_id) {
                me.parked_raw.insert(env.event_id, raw.to_owned());
                me.parked.restore(env.event_id, env.kind, PARK_CAP);
            }
        }
        Ok(me)
    }
}

/// The parts of a stored base: its `event_id`, its `state` text and its
/// parked events' texts.
fn stored_parts(text: &str) -> Result<(u64, &str, Vec<&str>), &'static str> {
    let json = |e: JsonError| e.message();
    let mut s = Scanner::new(text);
    if s.peek().map_err(json)? != Token::Object {
        return Err("not a JSON object");
    }
    s.object().map_err(json)?;
    let (mut event_id, mut state, mut parked) = (None, None, Vec::new());
    while let Some(key) = s.key().map_err(json)? {
        match &*key {
            "event_id" => {
                if s.peek().map_err(json)? != Token::Number {
                    return Err("event_id must be an integer");
                }
                let n = s.number().map_err(json)?.as_u64();
                event_id = Some(n.ok_or("event_id must be an integer")?);
            }
            "state" => state = Some(s.raw().map_err(json)?),
            "parked" => match s.peek().map_err(json)? {
                Token::Null => s.null().map_err(json)?,
                Token::Array => {
                    parked.clear();
                    s.array().map_err(json)?;
                    while s.item().map_err(json)? {
                        parked.push(s.raw().map_err(json)?);
                    }
                }
                _ => return Err("parked must be an array"),
            },
            _ => s.skip().map_err(json)?,
        }
    }
    s.end().map_err(json)?;
    Ok((
        event_id.ok_or("missing event_id")?,
        state.ok_or("missing state")?,
        parked,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(id: u64, ty: &str, payload: &str) -> String {
        format!(
            r#"{{"event_id":{id},"run_id":"r","type":"{ty}","timestamp":"2026-01-01T00:00:00Z","payload":{payload}}}"#
        )
    }

    #[test]
    fn the_window_prunes_past_ten_percent_over_it_and_keeps_the_newest_window() {
        // 100 events kept: nothing to prune up to 110 held.
        assert_eq!(prune_point(1, 110, 100), None);
        assert_eq!(prune_point(1, 111, 100), Some(12));
        // After it: 100 held (12..=111), pruned again 10 % later.
        assert_eq!(prune_point(12, 121, 100), None);
        assert_eq!(prune_point(12, 122, 100), Some(23));
        // Small windows: 10 % of 5 is 0.
        assert_eq!(prune_point(1, 5, 5), None);
        assert_eq!(prune_point(1, 6, 5), Some(2));
        assert_eq!(prune_point(1, 1, 0), None);
        assert_eq!(prune_point(1, 2, 0), Some(2));
        // An empty run, and no overflow at the top.
        assert_eq!(prune_point(1, 0, 1), None);
        assert_eq!(prune_point(u64::MAX, u64::MAX, 1), None);
        assert_eq!(prune_point(1, u64::MAX, 10), Some(u64::MAX - 10));
    }

    #[test]
    fn parked_events_survive_a_stored_base() {
        let mut r = Reduced::new("r");
        let tool = env(
            1,
            "tool.started",
            r#"{"job_id":"j1","tool_call_id":"t","name":"x"}"#,
        );
        r.apply(1, &tool);
        r.apply(2, &env(2, "run.started", "{}"));
        let stored = r.to_stored();
        assert!(
            stored.starts_with(&format!(r#"{{"event_id":2,"parked":[{tool}],"state":{{"#)),
            "{stored}"
        );
        let mut back = Reduced::from_stored("r", &stored).unwrap();
        assert_eq!(back.cursor(), 2);
        assert_eq!(back.to_stored(), stored);
        back.apply(
            3,
            &env(
                3,
                "worker.job_assigned",
                r#"{"worker_id":"w","job_id":"j1"}"#,
            ),
        );
        assert_eq!(back.state.workers[0].tools[0].tool_call_id, "t");
        // No longer parked: not stored again.
        assert!(back.to_stored().contains(r#""parked":[]"#));
    }

    #[test]
    fn a_stored_base_in_another_key_order_or_without_parked_is_read() {
        let mut r = Reduced::new("r");
        r.apply(1, &env(1, "run.started", "{}"));
        let state = r.state_json();
        let other = format!(r#"{{"state":{state}, "event_id": 7, "extra": [1]}}"#);
        let back = Reduced::from_stored("r", &other).unwrap();
        assert_eq!(back.cursor(), 7);
        let nul = format!(r#"{{"event_id":7,"parked":null,"state":{state}}}"#);
        assert_eq!(Reduced::from_stored("r", &nul).unwrap().cursor(), 7);
    }

    #[test]
    fn a_corrupt_base_is_an_error_never_a_panic() {
        for bad in [
            "",
            "[]",
            "{",
            r#"{"event_id":1}"#,
            r#"{"state":{"run_id":"r"}}"#,
            r#"{"event_id":-1,"state":{"run_id":"r"}}"#,
            r#"{"event_id":"1","state":{"run_id":"r"}}"#,
            r#"{"event_id":1,"state":{"run_id":"r"},"parked":{}}"#,
            r#"{"event_id":1,"state":[]}"#,
            r#"{"event_id":1,"state":{"run_id":"r"}} x"#,
        ] {
            match Reduced::from_stored("r", bad) {
                Err(SnapshotError::Invalid(why)) => assert!(why.starts_with("base: "), "{why}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_raw_texts_kept_are_bounded_by_the_park_cap() {
        let mut r = Reduced::new("r");
        for i in 1..=(PARK_CAP as u64 + 10) {
            let t = env(
                i,
                "tool.started",
                &format!(r#"{{"job_id":"j{i}","tool_call_id":"t{i}","name":"x"}}"#),
            );
            r.apply(i, &t);
        }
        assert!(r.parked_raw.len() <= PARK_CAP);
        assert!(r.parked.len() <= PARK_CAP);
    }
}
