//! Run state and its reducer (PROTOCOL.md §4 reconciliation rules, §6 shape).
//!
//! The same reducer runs in the browser (client) and in the reference server
//! (to answer the snapshot endpoint), so "the client converged" can be checked
//! by comparing the two states.
//!
//! The status enums live in [`super::vocab`] (shared with the envelope
//! decoder) and are re-exported here.
//!
//! Serialization: the JS API sees camelCase ([`serde::Serialize`]); the wire
//! (snapshots, PROTOCOL §6) is snake_case ([`serde::Deserialize`] and
//! [`RunState::to_wire`]).

use std::collections::VecDeque;

use super::strmap::StrMap;

#[cfg(not(target_arch = "wasm32"))]
use serde::{Deserialize, Serialize};
#[cfg(not(target_arch = "wasm32"))]
use serde_json::Value;

use super::envelope::EventKind;
use super::error::ReducerError;
#[cfg(not(target_arch = "wasm32"))]
use super::error::SnapshotError;
pub use super::vocab::{MessageRole, MessageStatus, RunStatus, ToolStatus, WorkerStatus};

/// PROTOCOL §6: a missing optional field and one that is `null` are the same
/// (treated as absent), so other servers' `null`s never reject a snapshot.
#[cfg(not(target_arch = "wasm32"))]
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A tool call of a worker.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
#[cfg_attr(
    not(target_arch = "wasm32"),
    serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))
)]
#[allow(missing_docs)]
pub struct Tool {
    pub tool_call_id: String,
    #[cfg_attr(not(target_arch = "wasm32"), serde(default))]
    pub name: Option<String>,
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default, deserialize_with = "null_as_default")
    )]
    pub status: ToolStatus,
}

/// A worker of a run, keyed by `worker_id`.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
#[cfg_attr(
    not(target_arch = "wasm32"),
    serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))
)]
#[allow(missing_docs)]
pub struct Worker {
    pub worker_id: String,
    /// The worker's latest job (PROTOCOL §6).
    #[cfg_attr(not(target_arch = "wasm32"), serde(default))]
    pub job_id: Option<String>,
    /// Every job the worker was given, in assignment order: the `job_id →
    /// worker_id` mappings a snapshot or a stored record carries (PROTOCOL
    /// §6). Bounded by [`MAX_JOBS_PER_WORKER`] (oldest dropped, with its
    /// mapping).
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default, deserialize_with = "null_as_default")
    )]
    pub job_ids: Vec<String>,
    #[cfg_attr(not(target_arch = "wasm32"), serde(default))]
    pub name: Option<String>,
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default, deserialize_with = "null_as_default")
    )]
    pub status: WorkerStatus,
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default, deserialize_with = "null_as_default")
    )]
    pub tools: Vec<Tool>,
}

/// Jobs remembered per worker (`job_ids`, PROTOCOL §6): beyond it the
/// oldest job and its `job_id → worker_id` mapping are dropped, so a late
/// job-only event of that job is parked like one of an unknown job (and
/// reconciled at the run's end).
pub const MAX_JOBS_PER_WORKER: usize = 256;

/// A chat message.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
#[cfg_attr(
    not(target_arch = "wasm32"),
    serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))
)]
#[allow(missing_docs)]
pub struct Message {
    /// `None` for an optimistic message the server has not acknowledged yet.
    #[cfg_attr(not(target_arch = "wasm32"), serde(default))]
    pub message_id: Option<String>,
    #[cfg_attr(not(target_arch = "wasm32"), serde(default))]
    pub client_request_id: Option<String>,
    #[cfg_attr(not(target_arch = "wasm32"), serde(default))]
    pub reply_to: Option<String>,
    pub role: MessageRole,
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default, deserialize_with = "null_as_default")
    )]
    pub content: String,
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default, deserialize_with = "null_as_default")
    )]
    pub status: MessageStatus,
}

/// The supervisor's result.
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
#[allow(missing_docs)]
pub struct Supervisor {
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default, deserialize_with = "null_as_default")
    )]
    pub completed: bool,
    #[cfg_attr(not(target_arch = "wasm32"), serde(default))]
    pub summary: Option<String>,
}

/// The reduced state of one run (PROTOCOL §6).
#[derive(Debug, Clone, Default)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
#[cfg_attr(
    not(target_arch = "wasm32"),
    serde(rename_all(serialize = "camelCase", deserialize = "snake_case"))
)]
pub struct RunState {
    /// The run's public id.
    pub run_id: String,
    /// Highest event id applied contiguously (0 = none).
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default, deserialize_with = "null_as_default")
    )]
    pub cursor: u64,
    /// Run status.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default, deserialize_with = "null_as_default")
    )]
    pub status: RunStatus,
    /// Workers, in the order first seen.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default, deserialize_with = "null_as_default")
    )]
    pub workers: Vec<Worker>,
    /// Messages, each in the position it had when first shown.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default, deserialize_with = "null_as_default")
    )]
    pub messages: Vec<Message>,
    /// Supervisor result.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default, deserialize_with = "null_as_default")
    )]
    pub supervisor: Supervisor,
    /// A run-wide `run.cancel_requested` was applied (PROTOCOL §8; a reply
    /// cancel shows as its message's end instead).
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default, deserialize_with = "null_as_default")
    )]
    pub cancel_requested: bool,
    #[cfg_attr(not(target_arch = "wasm32"), serde(skip))]
    index: Index,
    #[cfg_attr(not(target_arch = "wasm32"), serde(skip))]
    changes: Changes,
}

/// Which entries of a list changed since the last [`RunState::take_changes`].
///
/// Bounded: beyond [`Dirty::MAX_TRACKED`] distinct entries it degrades to
/// "all", which is what a shell must assume anyway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Every entry may have changed (and the list may be reordered).
    pub all: bool,
    /// Positions of changed entries (may repeat), valid for the current list.
    pub positions: Vec<usize>,
    /// An entry was inserted before the end: earlier positions moved.
    pub reordered: bool,
}

impl Dirty {
    /// Tracked positions before the set degrades to `all`.
    pub const MAX_TRACKED: usize = 4096;

    fn mark(&mut self, i: usize) {
        if self.all {
            return;
        }
        if self.positions.last() != Some(&i) {
            self.positions.push(i);
        }
        if self.positions.len() > Self::MAX_TRACKED {
            self.mark_all();
        }
    }

    fn mark_all(&mut self) {
        self.all = true;
        self.reordered = true;
        self.positions = Vec::new();
    }

    /// An entry was inserted at `pos`: later positions move one up.
    fn inserted(&mut self, pos: usize) {
        self.reordered = true;
        for p in &mut self.positions {
            if *p >= pos {
                *p += 1;
            }
        }
        self.mark(pos);
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.all && self.positions.is_empty()
    }
}

/// What changed in the state since the shell last built its snapshot: the
/// shell rebuilds only these entries (structural sharing, API.md RunSnapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Workers (a worker's tools count as the worker).
    pub workers: Dirty,
    /// Messages.
    pub messages: Dirty,
}

/// The state as it travels in snapshots.
pub type WireState = RunState;

impl PartialEq for RunState {
    fn eq(&self, o: &Self) -> bool {
        self.run_id == o.run_id
            && self.cursor == o.cursor
            && self.status == o.status
            && self.workers == o.workers
            && self.messages == o.messages
            && self.supervisor == o.supervisor
            && self.cancel_requested == o.cancel_requested
    }
}

/// Lookup tables rebuilt from the vectors; never serialized.
#[derive(Debug, Clone, Default)]
struct Index {
    workers: StrMap<usize>,
    jobs: StrMap<String>,
    messages: StrMap<usize>,
    requests: StrMap<usize>,
    /// What `messages` last gave [`RunState::message_index`] (a run of
    /// deltas names one message): checked against the message's id before
    /// use, cleared whenever `messages` changes otherwise.
    last_message: Option<usize>,
}

/// Something the reducer did that metrics care about.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// A tool call id seen for the first time.
    ToolSeen,
    /// A tool call completed.
    ToolCompleted {
        /// `status: "ok"`.
        ok: bool,
        /// Also the first time this tool call id was seen.
        first_seen: bool,
    },
    /// A token arrived for a message (`reply_to` of that message, if any).
    Token {
        /// The `client_request_id` the message answers.
        reply_to: Option<String>,
    },
    /// A message reached `completed` or `failed`.
    MessageDone {
        /// The `client_request_id` the message answers.
        reply_to: Option<String>,
        /// `fallback` of `message.completed`.
        fallback: Option<String>,
    },
    /// The server failed a user's message (`message.failed` on it): the send
    /// gets no reply.
    SendFailed {
        /// Its `client_request_id`.
        client_request_id: String,
    },
    /// The server echoed an optimistic message.
    Echo {
        /// Its `client_request_id`.
        client_request_id: String,
    },
    /// `run.completed` was applied.
    RunCompleted,
}

/// Job-only events waiting for their `job_id → worker_id` mapping (bounded, drop-oldest).
#[derive(Debug, Clone, Default)]
pub struct Parked {
    events: VecDeque<(u64, EventKind)>,
}

impl Parked {
    /// Number of parked events.
    pub fn len(&self) -> usize {
        self.events.len()
    }
    /// True when nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
    /// Forgets every parked event (a snapshot covered them).
    pub fn clear(&mut self) {
        self.events.clear();
    }
    /// The parked events, oldest first (they are stored with the cursor).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &EventKind)> {
        self.events.iter().map(|(id, k)| (*id, k))
    }
    /// Parks a stored event again (restore), up to `cap`.
    pub fn restore(&mut self, event_id: u64, kind: EventKind, cap: usize) {
        if kind.job_only().is_some() && self.events.len() < cap.max(1) {
            self.events.push_back((event_id, kind));
        }
    }
}

impl RunState {
    /// An empty state for `run_id`.
    pub fn new(run_id: &str) -> Self {
        Self {
            run_id: run_id.to_owned(),
            ..Self::default()
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// Parses a §6 wire state (snake_case), validating its shape.
    pub fn from_wire(value: Value) -> Result<Self, SnapshotError> {
        let mut s: RunState =
            serde_json::from_value(value).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        s.reindex();
        Ok(s)
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// The §6 wire form (snake_case keys).
    pub fn to_wire(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(v) => snake_keys(v),
            Err(_) => Value::Null,
        }
    }

    /// Rebuilds the lookup tables after the vectors were replaced. A
    /// worker's `job_ids` (PROTOCOL §6) is brought to the reducer's form
    /// first: the latest `job_id` is among them (a server that omits
    /// `job_ids` sends `job_id` alone), and at most [`MAX_JOBS_PER_WORKER`]
    /// are kept (the latest).
    pub fn reindex(&mut self) {
        let mut ix = Index::default();
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Some(j) = &w.job_id {
                if !w.job_ids.contains(j) {
                    w.job_ids.push(j.clone());
                }
            }
            let excess = w.job_ids.len().saturating_sub(MAX_JOBS_PER_WORKER);
            w.job_ids.drain(..excess);
            ix.workers.insert(w.worker_id.clone(), i);
            for j in &w.job_ids {
                ix.jobs.get_or_insert_with(j, || w.worker_id.clone());
            }
        }
        self.index = ix;
        self.reindex_messages();
    }

    /// Rebuilds the message tables only (messages moved or gained ids; the
    /// workers and their `job → worker` mappings did not change).
    pub fn reindex_messages(&mut self) {
        let ix = &mut self.index;
        ix.messages = StrMap::default();
        ix.requests = StrMap::default();
        ix.last_message = None;
        for (i, m) in self.messages.iter().enumerate() {
            if let Some(id) = &m.message_id {
                ix.messages.insert(id.clone(), i);
            }
            if let Some(c) = &m.client_request_id {
                ix.requests.get_or_insert_with(c, || i);
            }
        }
    }

    /// True once the run reached a final status.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    /// Number of workers and tools that are not in a terminal status.
    pub fn non_terminal(&self) -> usize {
        self.workers
            .iter()
            .map(|w| {
                usize::from(!w.status.is_terminal())
                    + w.tools
                        .iter()
                        .filter(|t| t.status == ToolStatus::Running)
                        .count()
            })
            .sum()
    }

    /// What changed since the last [`RunState::take_changes`], without taking it.
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// Marks every message and worker changed (the state was installed whole).
    pub fn mark_all_changed(&mut self) {
        self.changes.messages.mark_all();
        self.changes.workers.mark_all();
    }

    /// What changed since the last call (then nothing is marked).
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Message `i` for writing: marked changed.
    fn message_mut(&mut self, i: usize) -> Option<&mut Message> {
        self.changes.messages.mark(i);
        self.messages.get_mut(i)
    }

    /// Marks every non-terminal worker and tool `unknown` (never left "running").
    pub fn mark_unknown(&mut self) {
        self.changes.workers.mark_all();
        for w in &mut self.workers {
            if !w.status.is_terminal() {
                w.status = WorkerStatus::Unknown;
            }
            for t in &mut w.tools {
                if t.status == ToolStatus::Running {
                    t.status = ToolStatus::Unknown;
                }
            }
        }
    }

    /// Applies one in-order event (never `Snapshot`, which the engine handles).
    /// Job-only events whose job is not mapped yet are parked; at most
    /// `park_cap` are held, and overflow drops the oldest (returned as an error).
    pub fn apply(
        &mut self,
        event_id: u64,
        kind: EventKind,
        parked: &mut Parked,
        park_cap: usize,
        out: &mut Vec<Applied>,
    ) -> Result<(), ReducerError> {
        self.cursor = self.cursor.max(event_id);
        if let Some(job) = kind.job_only() {
            if !self.index.jobs.contains_key(job) {
                let overflow = parked.events.len() >= park_cap.max(1);
                if overflow {
                    parked.events.pop_front();
                }
                parked.events.push_back((event_id, kind));
                return if overflow {
                    Err(ReducerError::ParkOverflow)
                } else {
                    Ok(())
                };
            }
        }
        let learned = self.apply_now(kind, out);
        if let Some(job) = learned {
            self.unpark(&job, parked, out);
        }
        Ok(())
    }

    fn unpark(&mut self, job: &str, parked: &mut Parked, out: &mut Vec<Applied>) {
        let mut queue = vec![job.to_owned()];
        while let Some(job) = queue.pop() {
            let (ready, rest): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut parked.events)
                .into_iter()
                .partition(|(_, k)| k.job_only() == Some(job.as_str()));
            parked.events = rest;
            for (_, k) in ready {
                if let Some(j) = self.apply_now(k, out) {
                    queue.push(j);
                }
            }
        }
    }

    /// Applies an event whose worker can be resolved. Returns a job id whose
    /// mapping this event taught, so parked events for it can run.
    fn apply_now(&mut self, kind: EventKind, out: &mut Vec<Applied>) -> Option<String> {
        match kind {
            EventKind::RunStarted { .. } => {
                if self.status == RunStatus::Pending {
                    self.status = RunStatus::Running;
                }
                None
            }
            EventKind::RunCompleted { status, .. } => {
                self.status = status;
                out.push(Applied::RunCompleted);
                None
            }
            EventKind::CancelRequested { reply_to, .. } => {
                if reply_to.is_none() {
                    self.cancel_requested = true;
                }
                None
            }
            EventKind::SupervisorCompleted { summary } => {
                self.supervisor.completed = true;
                if summary.is_some() {
                    self.supervisor.summary = summary;
                }
                None
            }
            EventKind::WorkerStarted {
                worker_id,
                job_id,
                name,
            } => {
                let learned = self.map_job(&worker_id, job_id.as_deref());
                if let Some(w) = self.worker_mut(&worker_id) {
                    if name.is_some() {
                        w.name = name;
                    }
                    if !w.status.is_terminal() {
                        w.status = WorkerStatus::Running;
                    }
                }
                learned
            }
            EventKind::WorkerJobAssigned { worker_id, job_id } => {
                let learned = self.map_job(&worker_id, Some(&job_id));
                self.worker_mut(&worker_id);
                learned
            }
            EventKind::WorkerCompleted {
                worker_id,
                job_id,
                status,
                ..
            } => {
                let (wid, learned) = self.resolve(worker_id, job_id.as_deref())?;
                if let Some(w) = self.worker_mut(&wid) {
                    w.status = status;
                }
                learned
            }
            EventKind::ToolStarted {
                worker_id,
                job_id,
                tool_call_id,
                name,
            } => {
                let (wid, learned) = self.resolve(worker_id, job_id.as_deref())?;
                if let Some(w) = self.worker_mut(&wid) {
                    if !w.status.is_terminal() {
                        w.status = WorkerStatus::Running;
                    }
                    if let Some((t, first)) = tool_mut(w, &tool_call_id) {
                        t.name = Some(name);
                        if first {
                            out.push(Applied::ToolSeen);
                        }
                    }
                }
                learned
            }
            EventKind::ToolCompleted {
                worker_id,
                job_id,
                tool_call_id,
                ok,
                ..
            } => {
                let (wid, learned) = self.resolve(worker_id, job_id.as_deref())?;
                if let Some(w) = self.worker_mut(&wid) {
                    if w.status == WorkerStatus::Pending {
                        w.status = WorkerStatus::Running;
                    }
                    if let Some((t, first_seen)) = tool_mut(w, &tool_call_id) {
                        t.status = if ok {
                            ToolStatus::Ok
                        } else {
                            ToolStatus::Error
                        };
                        out.push(Applied::ToolCompleted { ok, first_seen });
                    }
                }
                learned
            }
            EventKind::MessageCreated {
                message_id,
                role,
                client_request_id,
                reply_to,
                content,
            } => {
                self.message_created(message_id, role, client_request_id, reply_to, content, out);
                None
            }
            EventKind::MessageDelta { message_id, delta } => {
                let i = self.message_index(&message_id);
                if let Some(m) = self.message_mut(i) {
                    if m.status == MessageStatus::Streaming {
                        m.content.push_str(&delta);
                        out.push(Applied::Token {
                            reply_to: m.reply_to.clone(),
                        });
                    }
                }
                None
            }
            EventKind::MessageCompleted {
                message_id,
                fallback,
                ..
            } => {
                self.finish_message(&message_id, MessageStatus::Completed, fallback, out);
                None
            }
            EventKind::MessageFailed { message_id, .. } => {
                self.finish_message(&message_id, MessageStatus::Failed, None, out);
                None
            }
            EventKind::Snapshot(_) | EventKind::Unknown => None,
        }
    }

    fn finish_message(
        &mut self,
        message_id: &str,
        status: MessageStatus,
        fallback: Option<String>,
        out: &mut Vec<Applied>,
    ) {
        let i = self.message_index(message_id);
        if let Some(m) = self.message_mut(i) {
            let was_final = matches!(m.status, MessageStatus::Completed | MessageStatus::Failed);
            let was_failed = m.status == MessageStatus::Failed;
            m.status = status;
            if m.role == MessageRole::User {
                // A user's message is not a reply: it ends no wait, except
                // its own when the server fails it (no reply will come).
                if let (MessageStatus::Failed, false, Some(c)) =
                    (status, was_failed, &m.client_request_id)
                {
                    out.push(Applied::SendFailed {
                        client_request_id: c.clone(),
                    });
                }
            } else if !was_final {
                out.push(Applied::MessageDone {
                    reply_to: m.reply_to.clone(),
                    fallback,
                });
            }
        }
    }

    /// Records `job → worker` if `job` is given and not mapped yet (the
    /// worker's `job_ids` and latest `job_id`); returns it when newly learned.
    fn map_job(&mut self, worker_id: &str, job: Option<&str>) -> Option<String> {
        let job = job?;
        if self.index.jobs.contains_key(job) {
            return None;
        }
        self.index.jobs.insert(job.to_owned(), worker_id.to_owned());
        let mut dropped = None;
        if let Some(w) = self.worker_mut(worker_id) {
            w.job_id = Some(job.to_owned());
            if w.job_ids.len() >= MAX_JOBS_PER_WORKER {
                dropped = Some(w.job_ids.remove(0));
            }
            w.job_ids.push(job.to_owned());
        }
        if let Some(old) = dropped {
            self.index.jobs.remove(&old);
        }
        Some(job.to_owned())
    }

    /// The worker an event addresses, learning `job → worker` when it carries both.
    fn resolve(
        &mut self,
        worker_id: Option<String>,
        job_id: Option<&str>,
    ) -> Option<(String, Option<String>)> {
        match worker_id {
            Some(w) => {
                let learned = self.map_job(&w, job_id);
                Some((w, learned))
            }
            None => {
                let w = self.index.jobs.get(job_id?)?.clone();
                Some((w, None))
            }
        }
    }

    /// The worker `worker_id`, created as a `pending` placeholder if unknown.
    fn worker_mut(&mut self, worker_id: &str) -> Option<&mut Worker> {
        let i = match self.index.workers.get(worker_id) {
            Some(&i) => i,
            None => {
                self.workers.push(Worker {
                    worker_id: worker_id.to_owned(),
                    job_id: None,
                    job_ids: Vec::new(),
                    name: None,
                    status: WorkerStatus::Pending,
                    tools: Vec::new(),
                });
                let i = self.workers.len() - 1;
                self.index.workers.insert(worker_id.to_owned(), i);
                i
            }
        };
        self.changes.workers.mark(i);
        self.workers.get_mut(i)
    }

    /// Position of the message `message_id`, creating an assistant placeholder at the end if unknown.
    fn message_index(&mut self, message_id: &str) -> usize {
        if let Some(i) = self.index.last_message {
            let same = self
                .messages
                .get(i)
                .is_some_and(|m| m.message_id.as_deref() == Some(message_id));
            if same {
                return i;
            }
        }
        if let Some(&i) = self.index.messages.get(message_id) {
            self.index.last_message = Some(i);
            return i;
        }
        self.messages.push(Message {
            message_id: Some(message_id.to_owned()),
            client_request_id: None,
            reply_to: None,
            role: MessageRole::Assistant,
            content: String::new(),
            status: MessageStatus::Streaming,
        });
        let i = self.messages.len() - 1;
        self.index.messages.insert(message_id.to_owned(), i);
        self.index.last_message = Some(i);
        self.changes.messages.mark(i);
        i
    }

    fn message_created(
        &mut self,
        message_id: String,
        role: MessageRole,
        client_request_id: Option<String>,
        reply_to: Option<String>,
        content: Option<String>,
        out: &mut Vec<Applied>,
    ) {
        let existing = self.index.messages.get(&message_id).copied().or_else(|| {
            client_request_id
                .as_ref()
                .and_then(|c| self.index.requests.get(c).copied())
        });
        if let Some(i) = existing {
            if let Some(m) = self.message_mut(i) {
                let was_optimistic = m.message_id.is_none()
                    || matches!(
                        m.status,
                        MessageStatus::Queued | MessageStatus::Sending | MessageStatus::Sent
                    );
                m.message_id = Some(message_id.clone());
                m.role = role;
                if m.client_request_id.is_none() {
                    m.client_request_id = client_request_id.clone();
                }
                if m.reply_to.is_none() {
                    m.reply_to = reply_to;
                }
                if let Some(c) = content {
                    if m.content.is_empty() || was_optimistic {
                        m.content = c;
                    }
                }
                if was_optimistic {
                    m.status = if m.role == MessageRole::Assistant {
                        MessageStatus::Streaming
                    } else {
                        MessageStatus::Completed
                    };
                    if let Some(c) = &m.client_request_id {
                        out.push(Applied::Echo {
                            client_request_id: c.clone(),
                        });
                    }
                }
                self.index.messages.insert(message_id, i);
                self.index.last_message = None;
            }
            return;
        }
        let status = if role == MessageRole::Assistant {
            MessageStatus::Streaming
        } else {
            MessageStatus::Completed
        };
        let msg = Message {
            message_id: Some(message_id),
            client_request_id,
            reply_to,
            role,
            content: content.unwrap_or_default(),
            status,
        };
        self.insert_message(msg);
    }

    /// Inserts a new message: after the message it answers (and that message's
    /// earlier replies) when `reply_to` names a shown message, else at the end.
    pub fn insert_message(&mut self, msg: Message) {
        let pos = msg
            .reply_to
            .as_ref()
            .and_then(|r| self.index.requests.get(r).copied())
            .map(|q| {
                let mut p = q + 1;
                while self
                    .messages
                    .get(p)
                    .is_some_and(|m| m.reply_to.is_some() && m.reply_to == msg.reply_to)
                {
                    p += 1;
                }
                p
            })
            .unwrap_or(self.messages.len());
        if pos >= self.messages.len() {
            let i = self.messages.len();
            if let Some(id) = &msg.message_id {
                self.index.messages.insert(id.clone(), i);
                self.index.last_message = None;
            }
            if let Some(c) = &msg.client_request_id {
                self.index.requests.get_or_insert_with(c, || i);
            }
            self.messages.push(msg);
            self.changes.messages.mark(i);
        } else {
            self.messages.insert(pos, msg);
            self.changes.messages.inserted(pos);
            self.reindex_messages();
        }
    }

    /// Whether the message carrying `client_request_id` is the server's
    /// record of it (echoed: `completed` or `failed`), not only a local
    /// optimistic one.
    pub fn has_echoed_request(&self, client_request_id: &str) -> bool {
        self.index
            .requests
            .get(client_request_id)
            .and_then(|&i| self.messages.get(i))
            .is_some_and(|m| matches!(m.status, MessageStatus::Completed | MessageStatus::Failed))
    }

    /// The message carrying `client_request_id`, if shown.
    pub fn message_by_request(&mut self, client_request_id: &str) -> Option<&mut Message> {
        let i = *self.index.requests.get(client_request_id)?;
        self.message_mut(i)
    }

    /// Replaces this state with `snap` (a §3 snapshot), keeping every message's
    /// shown position: messages present in both are updated in place, new ones
    /// are inserted by the usual rule, and local optimistic messages the
    /// snapshot does not know yet are kept.
    pub fn replace_with(&mut self, mut snap: RunState) {
        snap.reindex();
        let old = std::mem::take(&mut self.messages);
        let mut placed = vec![false; snap.messages.len()];
        let mut merged: Vec<Message> = Vec::with_capacity(old.len() + snap.messages.len());
        for m in old {
            let hit = m
                .message_id
                .as_ref()
                .and_then(|id| snap.index.messages.get(id))
                .or_else(|| {
                    m.client_request_id
                        .as_ref()
                        .and_then(|c| snap.index.requests.get(c))
                })
                .copied();
            match hit {
                Some(i) => {
                    if let (Some(s), Some(p)) = (snap.messages.get(i), placed.get_mut(i)) {
                        if !*p {
                            *p = true;
                            merged.push(s.clone());
                        }
                    }
                }
                // A send the snapshot does not know yet (queued, sending, or
                // accepted but not echoed before the snapshot was taken) keeps
                // its place: it must not vanish and come back.
                None if m.message_id.is_none()
                    || matches!(
                        m.status,
                        MessageStatus::Queued | MessageStatus::Sending | MessageStatus::Sent
                    ) =>
                {
                    merged.push(m)
                }
                None => {}
            }
        }
        let snap_messages = std::mem::take(&mut snap.messages);
        *self = snap;
        self.changes.messages.mark_all();
        self.changes.workers.mark_all();
        self.messages = merged;
        self.reindex();
        for (m, p) in snap_messages.into_iter().zip(placed) {
            if !p {
                self.insert_message(m);
            }
        }
    }
}

/// The tool `id` of `w`, created `running` if unknown; also whether it was new.
fn tool_mut<'a>(w: &'a mut Worker, id: &str) -> Option<(&'a mut Tool, bool)> {
    let pos = w.tools.iter().position(|t| t.tool_call_id == id);
    let first = pos.is_none();
    let i = pos.unwrap_or_else(|| {
        w.tools.push(Tool {
            tool_call_id: id.to_owned(),
            name: None,
            status: ToolStatus::Running,
        });
        w.tools.len() - 1
    });
    w.tools.get_mut(i).map(|t| (t, first))
}

#[cfg(not(target_arch = "wasm32"))]
/// Converts every object key from camelCase to snake_case, recursively.
pub fn snake_keys(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (to_snake(&k), snake_keys(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(snake_keys).collect()),
        other => other,
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn to_snake(k: &str) -> String {
    let mut s = String::with_capacity(k.len() + 4);
    for c in k.chars() {
        if c.is_ascii_uppercase() {
            s.push('_');
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply_all(events: Vec<EventKind>) -> (RunState, Parked) {
        let mut s = RunState::new("r");
        let mut parked = Parked::default();
        let mut out = Vec::new();
        for (i, k) in events.into_iter().enumerate() {
            s.apply(i as u64 + 1, k, &mut parked, 16, &mut out).unwrap();
        }
        (s, parked)
    }

    #[test]
    fn a_run_wide_cancel_request_sets_cancel_requested_a_reply_cancel_does_not() {
        let cancel = |reply_to: Option<&str>| EventKind::CancelRequested {
            client_request_id: Some("c1".into()),
            reason: None,
            reply_to: reply_to.map(Into::into),
        };
        let (s, _) = apply_all(vec![cancel(Some("s1"))]);
        assert!(
            !s.cancel_requested,
            "a reply cancel shows as its message's end"
        );
        let (s, _) = apply_all(vec![cancel(Some("s1")), cancel(None), cancel(None)]);
        assert!(s.cancel_requested);
        assert_eq!(
            s.status,
            RunStatus::Pending,
            "the status follows the events, never a guess"
        );
        // Every wire form carries it: the §6 JSON both ways (wasm's writer and parser).
        let text = s.to_wire_json();
        assert!(text.contains("\"cancel_requested\":true"), "{text}");
        let back = RunState::from_wire_json(&text).unwrap();
        assert!(back.cancel_requested);
        assert_eq!(back, s);
        let without = RunState::from_wire_json(r#"{"run_id":"r"}"#).unwrap();
        assert!(!without.cancel_requested, "a server that omits it: false");
        assert!(RunState::from_wire_json(r#"{"run_id":"r","cancel_requested":"yes"}"#).is_err());
    }

    #[test]
    fn deltas_go_to_the_message_they_name_whichever_was_named_last() {
        let delta = |m: &str, d: &str| EventKind::MessageDelta {
            message_id: m.into(),
            delta: d.into(),
        };
        let created = |m: &str| EventKind::MessageCreated {
            message_id: m.into(),
            role: MessageRole::Assistant,
            client_request_id: None,
            reply_to: None,
            content: None,
        };
        let (s, _) = apply_all(vec![
            delta("m1", "a"),
            delta("m1", "b"),
            created("m2"),
            delta("m2", "x"),
            delta("m1", "c"),
            delta("m3", "p"),
            delta("m2", "y"),
            delta("m3", "q"),
            delta("m3", "r"),
        ]);
        let content: Vec<(&str, &str)> = s
            .messages
            .iter()
            .map(|m| (m.message_id.as_deref().unwrap_or(""), m.content.as_str()))
            .collect();
        assert_eq!(content, [("m1", "abc"), ("m2", "xy"), ("m3", "pqr")]);
    }

    fn ws(w: &str, j: Option<&str>) -> EventKind {
        EventKind::WorkerStarted {
            worker_id: w.into(),
            job_id: j.map(Into::into),
            name: Some(format!("{w}-name")),
        }
    }
    fn tool_done(w: Option<&str>, j: Option<&str>, t: &str, ok: bool) -> EventKind {
        EventKind::ToolCompleted {
            worker_id: w.map(Into::into),
            job_id: j.map(Into::into),
            tool_call_id: t.into(),
            ok,
            error: None,
            duration_ms: None,
        }
    }
    fn worker_done(w: Option<&str>, j: Option<&str>) -> EventKind {
        EventKind::WorkerCompleted {
            worker_id: w.map(Into::into),
            job_id: j.map(Into::into),
            status: WorkerStatus::Succeeded,
            error: None,
        }
    }

    #[test]
    fn tool_before_worker_creates_placeholder_then_fills_in() {
        let (s, _) = apply_all(vec![
            EventKind::ToolStarted {
                worker_id: Some("w1".into()),
                job_id: None,
                tool_call_id: "t1".into(),
                name: "fetch".into(),
            },
            ws("w1", Some("j1")),
        ]);
        assert_eq!(s.workers.len(), 1);
        let w = &s.workers[0];
        assert_eq!(w.name.as_deref(), Some("w1-name"));
        assert_eq!(w.job_id.as_deref(), Some("j1"));
        assert_eq!(w.status, WorkerStatus::Running);
        assert_eq!(w.tools[0].status, ToolStatus::Running);
    }

    #[test]
    fn job_only_completion_is_parked_until_mapping_and_never_creates_a_second_worker() {
        let (s, parked) = apply_all(vec![
            ws("w1", None),
            worker_done(None, Some("j1")),
            tool_done(None, Some("j1"), "t1", false),
        ]);
        assert_eq!(parked.len(), 2);
        assert_eq!(s.workers[0].status, WorkerStatus::Running);
        let mut s = s;
        let mut parked = parked;
        let mut out = Vec::new();
        s.apply(
            4,
            EventKind::WorkerJobAssigned {
                worker_id: "w1".into(),
                job_id: "j1".into(),
            },
            &mut parked,
            16,
            &mut out,
        )
        .unwrap();
        assert!(parked.is_empty());
        assert_eq!(s.workers.len(), 1);
        assert_eq!(s.workers[0].status, WorkerStatus::Succeeded);
        assert_eq!(s.workers[0].tools[0].status, ToolStatus::Error);
        assert_eq!(s.cursor, 4);
    }

    #[test]
    fn terminal_worker_is_not_revived() {
        let (s, _) = apply_all(vec![
            ws("w1", Some("j1")),
            worker_done(Some("w1"), None),
            ws("w1", None),
        ]);
        assert_eq!(s.workers[0].status, WorkerStatus::Succeeded);
    }

    #[test]
    fn park_overflow_drops_oldest_and_reports() {
        let mut s = RunState::new("r");
        let mut parked = Parked::default();
        let mut out = Vec::new();
        for i in 0..3 {
            s.apply(
                i + 1,
                worker_done(None, Some(&format!("j{i}"))),
                &mut parked,
                2,
                &mut out,
            )
            .ok();
        }
        assert_eq!(parked.len(), 2);
        let err = s.apply(4, worker_done(None, Some("j9")), &mut parked, 2, &mut out);
        assert_eq!(err, Err(ReducerError::ParkOverflow));
    }

    #[test]
    fn mark_unknown_leaves_nothing_running() {
        let (mut s, _) = apply_all(vec![
            ws("w1", None),
            EventKind::ToolStarted {
                worker_id: Some("w1".into()),
                job_id: None,
                tool_call_id: "t".into(),
                name: "n".into(),
            },
        ]);
        assert_eq!(s.non_terminal(), 2);
        s.mark_unknown();
        assert_eq!(s.non_terminal(), 0);
        assert_eq!(s.workers[0].status, WorkerStatus::Unknown);
        assert_eq!(s.workers[0].tools[0].status, ToolStatus::Unknown);
    }

    fn created(id: &str, role: &str, crid: Option<&str>, reply_to: Option<&str>) -> EventKind {
        EventKind::MessageCreated {
            message_id: id.into(),
            role: MessageRole::parse(role).unwrap(),
            client_request_id: crid.map(Into::into),
            reply_to: reply_to.map(Into::into),
            content: if role == "user" {
                Some(format!("q-{id}"))
            } else {
                None
            },
        }
    }

    #[test]
    fn replies_go_under_their_question_and_echo_merges_in_place() {
        let mut s = RunState::new("r");
        for c in ["c1", "c2"] {
            s.insert_message(Message {
                message_id: None,
                client_request_id: Some(c.into()),
                reply_to: None,
                role: MessageRole::User,
                content: format!("local {c}"),
                status: MessageStatus::Sending,
            });
        }
        let mut parked = Parked::default();
        let mut out = Vec::new();
        let evs = vec![
            created("u1", "user", Some("c1"), None),
            created("u2", "user", Some("c2"), None),
            created("a2", "assistant", None, Some("c2")),
            created("a1", "assistant", None, Some("c1")),
            EventKind::MessageDelta {
                message_id: "a1".into(),
                delta: "Hi".into(),
            },
        ];
        for (i, e) in evs.into_iter().enumerate() {
            s.apply(i as u64 + 1, e, &mut parked, 8, &mut out).unwrap();
        }
        let ids: Vec<_> = s
            .messages
            .iter()
            .map(|m| m.message_id.clone().unwrap_or_default())
            .collect();
        assert_eq!(ids, vec!["u1", "a1", "u2", "a2"]);
        assert_eq!(s.messages[0].content, "q-u1");
        assert_eq!(s.messages[0].status, MessageStatus::Completed);
        assert_eq!(s.messages[1].content, "Hi");
        assert!(out.contains(&Applied::Echo {
            client_request_id: "c1".into()
        }));
    }

    #[test]
    fn changes_name_exactly_the_touched_entries_and_follow_insertions() {
        let (mut s, _) = apply_all(vec![
            created("u1", "user", Some("c1"), None),
            created("a1", "assistant", None, Some("c1")),
            ws("w1", None),
        ]);
        let _ = s.take_changes();
        let mut parked = Parked::default();
        let mut out = Vec::new();
        let delta = EventKind::MessageDelta {
            message_id: "a1".into(),
            delta: "x".into(),
        };
        s.apply(4, delta.clone(), &mut parked, 8, &mut out).unwrap();
        s.apply(5, delta, &mut parked, 8, &mut out).unwrap();
        let ch = s.take_changes();
        assert_eq!(ch.messages.positions, vec![1]);
        assert!(ch.workers.is_empty());
        assert!(s.take_changes().messages.is_empty());
        // A reply inserted under u1 moves a1 down: a1's pending mark follows it.
        s.apply(
            6,
            created("u2", "user", Some("c2"), None),
            &mut parked,
            8,
            &mut out,
        )
        .unwrap();
        let _ = s.take_changes();
        s.apply(
            7,
            EventKind::MessageDelta {
                message_id: "a1".into(),
                delta: "y".into(),
            },
            &mut parked,
            8,
            &mut out,
        )
        .unwrap();
        s.apply(
            8,
            created("a0", "assistant", None, Some("c1")),
            &mut parked,
            8,
            &mut out,
        )
        .unwrap();
        let ch = s.take_changes();
        let a1 = s
            .messages
            .iter()
            .position(|m| m.message_id.as_deref() == Some("a1"))
            .unwrap();
        let a0 = s
            .messages
            .iter()
            .position(|m| m.message_id.as_deref() == Some("a0"))
            .unwrap();
        assert!(ch.messages.positions.contains(&a1) && ch.messages.positions.contains(&a0));
        assert!(!ch.messages.positions.contains(&0));
        s.mark_unknown();
        assert!(s.take_changes().workers.all);
    }

    #[test]
    fn wire_round_trip_is_snake_case() {
        let (s, _) = apply_all(vec![
            ws("w1", Some("j1")),
            created("m1", "assistant", None, None),
        ]);
        let text = s.to_wire_json();
        assert!(text.contains("\"worker_id\":\"w1\""), "{text}");
        assert!(text.contains("\"message_id\":\"m1\""), "{text}");
        let back = RunState::from_wire_json(&text).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn snapshot_replacement_keeps_positions_and_optimistic_messages() {
        let mut s = RunState::new("r");
        s.insert_message(Message {
            message_id: Some("m1".into()),
            client_request_id: None,
            reply_to: None,
            role: MessageRole::Assistant,
            content: "old".into(),
            status: MessageStatus::Streaming,
        });
        s.insert_message(Message {
            message_id: None,
            client_request_id: Some("c9".into()),
            reply_to: None,
            role: MessageRole::User,
            content: "pending".into(),
            status: MessageStatus::Sending,
        });
        let mut snap = RunState::new("r");
        snap.cursor = 10;
        snap.insert_message(Message {
            message_id: Some("m0".into()),
            client_request_id: None,
            reply_to: None,
            role: MessageRole::System,
            content: "new".into(),
            status: MessageStatus::Completed,
        });
        snap.insert_message(Message {
            message_id: Some("m1".into()),
            client_request_id: None,
            reply_to: None,
            role: MessageRole::Assistant,
            content: "old and more".into(),
            status: MessageStatus::Completed,
        });
        s.replace_with(snap);
        let got: Vec<_> = s.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(got, vec!["old and more", "pending", "new"]);
        assert_eq!(s.cursor, 10);
    }
}
