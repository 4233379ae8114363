//! Snapshots that share structure (API.md RunSnapshot): between two snapshots
//! every message, worker, tool and array that did not change is the same JS
//! object, and every object is frozen.
//!
//! The engine reports which messages and workers changed since the last build
//! ([`crate::core::state::Changes`]); only those are serialized and parsed
//! again, so a delta on one message of a long conversation costs that message
//! plus one new `messages` array of references, not the whole history. A
//! rebuilt entry whose JSON is unchanged (e.g. after a snapshot replaced the
//! state) keeps its old object. Objects are cached by key (`message_id`, else
//! `client_request_id`; `worker_id`; `worker_id` + `tool_call_id`), so an
//! insertion in the middle of the list moves references, not contents.
//!
//! Bounded: the caches hold exactly one entry per message, worker and tool of
//! the current state (entries of removed or re-keyed ones are dropped at the
//! next build of their list).

use crate::core::strmap::{self, StrMap};

use crate::core::json::{self, ToJson, Writer};
use js_sys::{Array, Object, Reflect};
use wasm_bindgen::{JsCast, JsValue};

use crate::core::engine::Engine;
use crate::core::state::{Dirty, Message, RunStatus, Tool, Worker};

/// A built object and the hash of the JSON it was built from.
#[derive(Clone)]
struct Built {
    hash: u64,
    obj: JsValue,
}

/// The scalar part of `RunState`; the `state` object is rebuilt when it changes.
#[derive(PartialEq, Clone)]
struct Head<'a> {
    run_id: &'a str,
    cursor: u64,
    status: RunStatus,
    cancel_requested: bool,
}

impl ToJson for Head<'_> {
    fn write_json(&self, w: &mut Writer) {
        w.begin_object();
        w.key("runId").str(self.run_id);
        w.key("cursor").u64(self.cursor);
        w.key("status").str(self.status.as_str());
        w.key("cancelRequested").bool(self.cancel_requested);
        w.end_object();
    }
}

/// The JS objects of the last snapshot, reused for what did not change.
#[derive(Default)]
pub(super) struct SnapshotCache {
    /// One entry per message, aligned with the state's list: its key and object.
    messages: Vec<(String, Built)>,
    message_list: Option<JsValue>,
    workers: StrMap<Built>,
    tools: StrMap<Built>,
    worker_list: Option<JsValue>,
    supervisor: Option<Built>,
    /// Hash of the last head, and the `state` object built with it.
    state: Option<(u64, JsValue)>,
}

impl SnapshotCache {
    /// A new frozen `RunSnapshot` of `engine` as of `now`, sharing every
    /// unchanged part with the previous one.
    pub(super) fn build(&mut self, engine: &mut Engine, now: f64) -> JsValue {
        let changes = engine.take_state_changes();
        let st = engine.state();
        let messages_changed = self.build_messages(&st.messages, &changes.messages);
        let workers_changed = self.build_workers(&st.workers, &changes.workers);
        let supervisor_changed = match built(&st.supervisor) {
            Some(b) if self.supervisor.as_ref().is_some_and(|o| o.hash == b.hash) => false,
            Some(b) => {
                freeze_tree(&b.obj);
                self.supervisor = Some(b);
                true
            }
            None => false,
        };
        let head = Head {
            run_id: &st.run_id,
            cursor: st.cursor,
            status: st.status,
            cancel_requested: st.cancel_requested,
        };
        let head_hash = hash(&json::to_string(&head));
        let state_same = self.state.as_ref().is_some_and(|(h, _)| *h == head_hash);
        if !state_same || messages_changed || workers_changed || supervisor_changed {
            let obj = super::driver::to_js(&head);
            set(&obj, "workers", self.worker_list.as_ref());
            set(&obj, "messages", self.message_list.as_ref());
            set(&obj, "supervisor", self.supervisor.as_ref().map(|b| &b.obj));
            freeze(&obj);
            self.state = Some((head_hash, obj));
        }
        let snapshot = Object::new();
        let snapshot: &JsValue = snapshot.as_ref();
        let _ = Reflect::set(
            snapshot,
            &"version".into(),
            &JsValue::from_f64(engine.version() as f64),
        );
        set(snapshot, "state", self.state.as_ref().map(|(_, o)| o));
        let status = super::driver::to_js(&engine.status(now));
        freeze_tree(&status);
        set(snapshot, "status", Some(&status));
        let metrics = super::driver::to_js(engine.metrics());
        freeze_tree(&metrics);
        set(snapshot, "metrics", Some(&metrics));
        freeze(snapshot);
        snapshot.clone()
    }

    /// Rebuilds the dirty messages and the list; returns whether the list changed.
    ///
    /// Fast path (the common case: deltas on a streaming message, messages
    /// appended): the previous array is copied natively and only the changed
    /// positions are rebuilt. After a reorder (a reply inserted under its
    /// question) or a replaced state, objects are matched by key.
    fn build_messages(&mut self, messages: &[Message], dirty: &Dirty) -> bool {
        let prev = match &self.message_list {
            Some(l) if !dirty.all && !dirty.reordered && messages.len() >= self.messages.len() => {
                l.clone()
            }
            _ => return self.build_messages_keyed(messages),
        };
        if dirty.is_empty() && messages.len() == self.messages.len() {
            return false;
        }
        let list =
            Array::from(&prev).slice(0, u32::try_from(self.messages.len()).unwrap_or(u32::MAX));
        let old_len = self.messages.len();
        let changed = marked(&dirty.positions, messages.len());
        // Whether any element is a new object: a dirty message whose JSON is
        // unchanged keeps its object, and then the list keeps its identity too.
        let mut replaced = messages.len() != old_len;
        for (i, m) in messages.iter().enumerate() {
            if i < old_len && !changed.get(i).is_some_and(|c| *c) {
                continue;
            }
            let key = message_key(m, i);
            let old = self
                .messages
                .get(i)
                .filter(|(k, _)| *k == key)
                .map(|(_, b)| b.clone());
            let kept = old.as_ref().map(|o| o.hash);
            let b = rebuild(old, m);
            replaced |= kept != Some(b.hash);
            list.set(i as u32, b.obj.clone());
            if let Some(slot) = self.messages.get_mut(i) {
                *slot = (key, b);
            } else {
                self.messages.push((key, b));
            }
        }
        if !replaced {
            return false;
        }
        freeze(&list);
        self.message_list = Some(list.into());
        true
    }

    /// Rebuilds the message list matching cached objects by key.
    fn build_messages_keyed(&mut self, messages: &[Message]) -> bool {
        let mut old: StrMap<Built> = self.messages.drain(..).collect();
        let list = Array::new_with_length(u32::try_from(messages.len()).unwrap_or(u32::MAX));
        for (i, m) in messages.iter().enumerate() {
            let key = message_key(m, i);
            let b = rebuild(old.remove(&key), m);
            list.set(i as u32, b.obj.clone());
            self.messages.push((key, b));
        }
        let list: JsValue = list.into();
        if same_elements(self.message_list.as_ref(), &list) {
            return false;
        }
        freeze(&list);
        self.message_list = Some(list);
        true
    }

    /// Rebuilds the dirty workers (and their changed tools) and the list.
    fn build_workers(&mut self, workers: &[Worker], dirty: &Dirty) -> bool {
        let all = dirty.all || self.worker_list.is_none();
        if !all && dirty.is_empty() {
            return false;
        }
        let marks = marked(&dirty.positions, workers.len());
        let mut next = StrMap::with_capacity(workers.len());
        let mut next_tools = StrMap::new();
        let list = Array::new_with_length(u32::try_from(workers.len()).unwrap_or(u32::MAX));
        for (i, w) in workers.iter().enumerate() {
            let changed = all || marks.get(i).is_some_and(|c| *c);
            let old = self.workers.remove(&w.worker_id);
            let b = match old {
                Some(b) if !changed => {
                    for t in &w.tools {
                        let k = tool_key(w, t);
                        if let Some(tb) = self.tools.remove(&k) {
                            next_tools.insert(k, tb);
                        }
                    }
                    b
                }
                old => {
                    let tools = Array::new();
                    for t in &w.tools {
                        let k = tool_key(w, t);
                        let tb = reuse_or_build(&mut self.tools, &k, true, t);
                        tools.push(&tb.obj);
                        next_tools.insert(k, tb);
                    }
                    freeze(&tools);
                    match built(w) {
                        Some(b) if old.as_ref().is_some_and(|o| o.hash == b.hash) => {
                            old.unwrap_or(b)
                        }
                        Some(b) => {
                            let _ = Reflect::set(&b.obj, &"tools".into(), &tools);
                            freeze_tree(&b.obj);
                            b
                        }
                        None => old.unwrap_or(Built {
                            hash: 0,
                            obj: JsValue::NULL,
                        }),
                    }
                }
            };
            list.set(i as u32, b.obj.clone());
            next.insert(w.worker_id.clone(), b);
        }
        self.workers = next;
        self.tools = next_tools;
        let list: JsValue = list.into();
        if same_elements(self.worker_list.as_ref(), &list) {
            return false;
        }
        freeze(&list);
        self.worker_list = Some(list);
        true
    }
}

/// A new frozen object of `value`, or `old` if its JSON is unchanged.
fn rebuild<T: ToJson>(old: Option<Built>, value: &T) -> Built {
    match built(value) {
        Some(b) if old.as_ref().is_some_and(|o| o.hash == b.hash) => old.unwrap_or(b),
        Some(b) => {
            freeze_tree(&b.obj);
            b
        }
        None => old.unwrap_or(Built {
            hash: 0,
            obj: JsValue::NULL,
        }),
    }
}

/// The cached object under `key` if `changed` is false (or if rebuilding it
/// gives the same JSON); otherwise a new frozen one.
fn reuse_or_build<T: ToJson>(
    cache: &mut StrMap<Built>,
    key: &str,
    changed: bool,
    value: &T,
) -> Built {
    let old = cache.remove(key);
    if let (false, Some(b)) = (changed, &old) {
        return b.clone();
    }
    rebuild(old, value)
}

/// A JS object of `value` (not frozen yet) and the hash of its JSON.
fn built<T: ToJson>(value: &T) -> Option<Built> {
    let json = json::to_string(value);
    let obj = js_sys::JSON::parse(&json).ok()?;
    Some(Built {
        hash: hash(&json),
        obj,
    })
}

fn hash(s: &str) -> u64 {
    strmap::hash(s)
}

fn message_key(m: &Message, i: usize) -> String {
    match (&m.message_id, &m.client_request_id) {
        (Some(id), _) => ["m:", id].concat(),
        (None, Some(c)) => ["c:", c].concat(),
        (None, None) => {
            let mut k = String::from("p:");
            json::write::push_u64(&mut k, i as u64);
            k
        }
    }
}

fn tool_key(w: &Worker, t: &Tool) -> String {
    [w.worker_id.as_str(), "\u{0}", t.tool_call_id.as_str()].concat()
}

/// Which of `len` positions are among `positions` (repeats and positions past
/// `len` allowed): one pass over a bitmap, so the rebuild goes in ascending
/// order, each position once. A bitmap rather than sorting the positions:
/// `sort_unstable` costs ~3 KB of wasm, and `len` is bounded by retention.
fn marked(positions: &[usize], len: usize) -> Vec<bool> {
    let mut marks = vec![false; len];
    for p in positions {
        if let Some(m) = marks.get_mut(*p) {
            *m = true;
        }
    }
    marks
}

/// Whether `next` holds the very objects of `prev`, in the same order (API.md:
/// an array that did not change keeps its identity, even when its entries were
/// rebuilt to the same JSON, e.g. after a snapshot replaced the state).
fn same_elements(prev: Option<&JsValue>, next: &JsValue) -> bool {
    let (Some(prev), Some(next)) = (
        prev.and_then(|p| p.dyn_ref::<Array>()),
        next.dyn_ref::<Array>(),
    ) else {
        return false;
    };
    prev.length() == next.length()
        && (0..prev.length()).all(|i| Object::is(&prev.get(i), &next.get(i)))
}

fn set(obj: &JsValue, key: &str, value: Option<&JsValue>) {
    if let Some(v) = value {
        let _ = Reflect::set(obj, &key.into(), v);
    }
}

fn freeze(v: &JsValue) {
    if let Some(o) = v.dyn_ref::<Object>() {
        Object::freeze(o);
    }
}

/// Freezes `v` and every object inside it, at any depth (a tool's `args`,
/// a message's nested fields): API.md "Snapshot objects are frozen". Objects
/// already frozen are not entered: they are shared ones, frozen with their
/// contents when built, so a rebuilt worker does not walk its unchanged tools.
/// Iterative (an explicit stack), so a deeply nested payload cannot exhaust
/// the wasm stack; the stack holds at most the object's own values.
fn freeze_tree(v: &JsValue) {
    let mut stack = vec![v.clone()];
    while let Some(v) = stack.pop() {
        let Some(o) = v.dyn_ref::<Object>() else {
            continue;
        };
        if Object::is_frozen(o) {
            continue;
        }
        stack.extend(Object::values(o).iter().filter(JsValue::is_object));
        Object::freeze(o);
    }
}
