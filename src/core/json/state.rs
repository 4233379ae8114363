//! The §6 state (PROTOCOL.md, snake_case) read and written with the
//! scanner and the writer: [`RunState::from_wire_json`] and
//! [`RunState::to_wire_json`].
//!
//! Reading follows the serde derives the native build keeps (checked by
//! `tests/json.rs`): unknown fields are ignored; a missing optional field
//! and `null` are the same (PROTOCOL §6); `run_id` (state), `worker_id`,
//! `tool_call_id` and `role` are required strings (`role` one of the four
//! of PROTOCOL §4, like in events); `job_ids` an array of
//! strings (or `null`); numbers must be `u64`
//! integers (`cursor`); statuses must be known names. One difference: serde
//! also accepts a struct written as a JSON array of its fields in order;
//! this reader accepts only objects (no server writes arrays). A duplicated
//! key: the last occurrence wins, as it did through a `serde_json::Value`.
//! Errors are [`SnapshotError::Invalid`] with a short static reason.

use super::scan::{Scanner, Token};
use super::write::{ToJson, Writer};
use super::{JsonError, Number};
use crate::core::error::SnapshotError;
use crate::core::state::{Message, RunState, Supervisor, Tool, Worker};
use crate::core::vocab::{MessageRole, MessageStatus, RunStatus, ToolStatus, WorkerStatus};

/// What was wrong, as a static reason.
type Bad = &'static str;

fn json(e: JsonError) -> Bad {
    e.message()
}

/// `null` or absent → `None`; a string → `Some`; anything else is `bad`.
fn opt_string(s: &mut Scanner<'_>, bad: Bad) -> Result<Option<String>, Bad> {
    match s.peek().map_err(json)? {
        Token::Null => s.null().map(|()| None).map_err(json),
        Token::String => s.string().map(|c| Some(c.into_owned())).map_err(json),
        _ => Err(bad),
    }
}

fn status<T: Default>(
    s: &mut Scanner<'_>,
    parse: fn(&str) -> Option<T>,
    bad: Bad,
) -> Result<T, Bad> {
    match s.peek().map_err(json)? {
        Token::Null => s.null().map(|()| T::default()).map_err(json),
        Token::String => parse(&s.string().map_err(json)?).ok_or(bad),
        _ => Err(bad),
    }
}

/// An array of `item`s, or `null` (empty).
fn list<T>(
    s: &mut Scanner<'_>,
    item: fn(&mut Scanner<'_>) -> Result<T, Bad>,
    bad: Bad,
) -> Result<Vec<T>, Bad> {
    match s.peek().map_err(json)? {
        Token::Null => s.null().map(|()| Vec::new()).map_err(json),
        Token::Array => {
            s.array().map_err(json)?;
            let mut out = Vec::new();
            while s.item().map_err(json)? {
                out.push(item(s)?);
            }
            Ok(out)
        }
        _ => Err(bad),
    }
}

/// Opens an object (`bad` if the value is not one).
fn object(s: &mut Scanner<'_>, bad: Bad) -> Result<(), Bad> {
    if s.peek().map_err(json)? != Token::Object {
        return Err(bad);
    }
    s.object().map_err(json)
}

fn tool(s: &mut Scanner<'_>) -> Result<Tool, Bad> {
    object(s, "a tool must be an object")?;
    let (mut id, mut name, mut st) = (None, None, ToolStatus::default());
    while let Some(k) = s.key().map_err(json)? {
        match &*k {
            "tool_call_id" => id = opt_string(s, "`tool_call_id` must be a string")?,
            "name" => name = opt_string(s, "tool `name` must be a string")?,
            "status" => st = status(s, tool_status, "unknown tool status")?,
            _ => s.skip().map_err(json)?,
        }
    }
    Ok(Tool {
        tool_call_id: id.ok_or("missing field `tool_call_id`")?,
        name,
        status: st,
    })
}

fn job_id(s: &mut Scanner<'_>) -> Result<String, Bad> {
    match s.peek().map_err(json)? {
        Token::String => s.string().map(|c| c.into_owned()).map_err(json),
        _ => Err("`job_ids` must be an array of strings"),
    }
}

fn worker(s: &mut Scanner<'_>) -> Result<Worker, Bad> {
    object(s, "a worker must be an object")?;
    let mut w = (None, None, None, WorkerStatus::default(), Vec::new());
    let mut job_ids = Vec::new();
    while let Some(k) = s.key().map_err(json)? {
        match &*k {
            "worker_id" => w.0 = opt_string(s, "`worker_id` must be a string")?,
            "job_id" => w.1 = opt_string(s, "`job_id` must be a string")?,
            "job_ids" => job_ids = list(s, job_id, "`job_ids` must be an array of strings")?,
            "name" => w.2 = opt_string(s, "worker `name` must be a string")?,
            "status" => w.3 = status(s, worker_status, "unknown worker status")?,
            "tools" => w.4 = list(s, tool, "`tools` must be an array")?,
            _ => s.skip().map_err(json)?,
        }
    }
    Ok(Worker {
        worker_id: w.0.ok_or("missing field `worker_id`")?,
        job_id: w.1,
        job_ids,
        name: w.2,
        status: w.3,
        tools: w.4,
    })
}

/// One §6 message (an object).
pub(crate) fn message(s: &mut Scanner<'_>) -> Result<Message, Bad> {
    object(s, "a message must be an object")?;
    let mut m = (None, None, None, None, None, MessageStatus::default());
    while let Some(k) = s.key().map_err(json)? {
        match &*k {
            "message_id" => m.0 = opt_string(s, "`message_id` must be a string")?,
            "client_request_id" => m.1 = opt_string(s, "`client_request_id` must be a string")?,
            "reply_to" => m.2 = opt_string(s, "`reply_to` must be a string")?,
            "role" => m.3 = Some(status(s, role, "unknown message role")?),
            "content" => m.4 = opt_string(s, "`content` must be a string")?,
            "status" => m.5 = status(s, message_status, "unknown message status")?,
            _ => s.skip().map_err(json)?,
        }
    }
    Ok(Message {
        message_id: m.0,
        client_request_id: m.1,
        reply_to: m.2,
        role: m.3.flatten().ok_or("missing field `role`")?,
        content: m.4.unwrap_or_default(),
        status: m.5,
    })
}

fn supervisor(s: &mut Scanner<'_>) -> Result<Supervisor, Bad> {
    if s.take_null().map_err(json)? {
        return Ok(Supervisor::default());
    }
    object(s, "`supervisor` must be an object")?;
    let mut sup = Supervisor::default();
    while let Some(k) = s.key().map_err(json)? {
        match &*k {
            "completed" => {
                sup.completed = match s.peek().map_err(json)? {
                    Token::Null => s.null().map(|()| false).map_err(json)?,
                    Token::Bool => s.bool().map_err(json)?,
                    _ => return Err("`completed` must be a boolean"),
                }
            }
            "summary" => sup.summary = opt_string(s, "`summary` must be a string")?,
            _ => s.skip().map_err(json)?,
        }
    }
    Ok(sup)
}

fn state(s: &mut Scanner<'_>) -> Result<RunState, Bad> {
    let mut messages = Vec::new();
    let mut st = state_with(s, &mut |s| {
        messages = list(s, message, "`messages` must be an array")?;
        Ok(())
    })?;
    st.messages = messages;
    Ok(st)
}

/// A §6 state whose `messages` value is read by `messages` (the stored
/// head's, whose entries are messages or references); the returned state's
/// `messages` is empty.
pub(crate) fn state_with(
    s: &mut Scanner<'_>,
    messages: &mut dyn FnMut(&mut Scanner<'_>) -> Result<(), Bad>,
) -> Result<RunState, Bad> {
    object(s, "the state must be an object")?;
    let mut st = RunState::default();
    let mut run_id = None;
    while let Some(k) = s.key().map_err(json)? {
        match &*k {
            "run_id" => {
                run_id = match s.peek().map_err(json)? {
                    Token::String => Some(s.string().map_err(json)?.into_owned()),
                    _ => return Err("`run_id` must be a string"),
                }
            }
            "cursor" => {
                st.cursor = match s.peek().map_err(json)? {
                    Token::Null => s.null().map(|()| 0).map_err(json)?,
                    Token::Number => match s.number().map_err(json)? {
                        Number::U64(n) => n,
                        _ => return Err("`cursor` must be a non-negative integer"),
                    },
                    _ => return Err("`cursor` must be a non-negative integer"),
                }
            }
            "status" => st.status = status(s, run_status, "unknown run status")?,
            "workers" => st.workers = list(s, worker, "`workers` must be an array")?,
            "messages" => messages(s)?,
            "supervisor" => st.supervisor = supervisor(s)?,
            "cancel_requested" => {
                st.cancel_requested = match s.peek().map_err(json)? {
                    Token::Null => s.null().map(|()| false).map_err(json)?,
                    Token::Bool => s.bool().map_err(json)?,
                    _ => return Err("`cancel_requested` must be a boolean"),
                }
            }
            _ => s.skip().map_err(json)?,
        }
    }
    st.run_id = run_id.ok_or("missing field `run_id`")?;
    Ok(st)
}

/// A role outside the protocol's four is an invalid snapshot (counted as a
/// protocol error, as it is in a `message.created` event); `null` is `None`.
fn role(s: &str) -> Option<Option<MessageRole>> {
    MessageRole::parse(s).map(Some)
}

fn run_status(s: &str) -> Option<RunStatus> {
    [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ]
    .into_iter()
    .find(|v| v.as_str() == s)
}

fn worker_status(s: &str) -> Option<WorkerStatus> {
    [
        WorkerStatus::Pending,
        WorkerStatus::Running,
        WorkerStatus::Succeeded,
        WorkerStatus::Failed,
        WorkerStatus::Cancelled,
        WorkerStatus::Unknown,
    ]
    .into_iter()
    .find(|v| v.as_str() == s)
}

fn tool_status(s: &str) -> Option<ToolStatus> {
    [
        ToolStatus::Running,
        ToolStatus::Ok,
        ToolStatus::Error,
        ToolStatus::Unknown,
    ]
    .into_iter()
    .find(|v| v.as_str() == s)
}

fn message_status(s: &str) -> Option<MessageStatus> {
    [
        MessageStatus::Queued,
        MessageStatus::Sending,
        MessageStatus::Sent,
        MessageStatus::Streaming,
        MessageStatus::Completed,
        MessageStatus::Failed,
    ]
    .into_iter()
    .find(|v| v.as_str() == s)
}

impl RunState {
    /// The state of a §6 JSON text (a snapshot body's or a `snapshot` event's
    /// `state`), validated as the module docs say, with its indexes built.
    pub fn from_wire_json(text: &str) -> Result<Self, SnapshotError> {
        let mut s = Scanner::new(text);
        let mut st = state(&mut s)
            .and_then(|st| s.end().map(|()| st).map_err(json))
            .map_err(|why| SnapshotError::Invalid(why.into()))?;
        st.reindex();
        Ok(st)
    }

    /// The §6 JSON text of this state (snake_case; every field written).
    pub fn to_wire_json(&self) -> String {
        super::to_string(&Wire(self))
    }
}

/// A state in its §6 (wire) form.
struct Wire<'a>(&'a RunState);

impl ToJson for Wire<'_> {
    fn write_json(&self, w: &mut Writer) {
        write_state_with(w, self.0, &mut |w| {
            for m in &self.0.messages {
                write_message(w, m);
            }
        });
    }
}

/// One §6 message.
pub(crate) fn write_message(w: &mut Writer, m: &Message) {
    w.begin_object();
    w.key("message_id").opt_str(m.message_id.as_deref());
    w.key("client_request_id")
        .opt_str(m.client_request_id.as_deref());
    w.key("reply_to").opt_str(m.reply_to.as_deref());
    w.key("role").str(m.role.as_str());
    w.key("content").str(&m.content);
    w.key("status").str(m.status.as_str());
    w.end_object();
}

/// The §6 state `st` with the entries of its `messages` array written by
/// `messages` (the stored head writes references in place of some).
pub(crate) fn write_state_with(
    w: &mut Writer,
    st: &RunState,
    messages: &mut dyn FnMut(&mut Writer),
) {
    w.begin_object();
    w.key("run_id").str(&st.run_id);
    w.key("cursor").u64(st.cursor);
    w.key("status").str(st.status.as_str());
    w.key("workers").begin_array();
    for wk in &st.workers {
        w.begin_object();
        w.key("worker_id").str(&wk.worker_id);
        w.key("job_id").opt_str(wk.job_id.as_deref());
        w.key("job_ids").begin_array();
        for j in &wk.job_ids {
            w.str(j);
        }
        w.end_array();
        w.key("name").opt_str(wk.name.as_deref());
        w.key("status").str(wk.status.as_str());
        w.key("tools").begin_array();
        for t in &wk.tools {
            w.begin_object();
            w.key("tool_call_id").str(&t.tool_call_id);
            w.key("name").opt_str(t.name.as_deref());
            w.key("status").str(t.status.as_str());
            w.end_object();
        }
        w.end_array();
        w.end_object();
    }
    w.end_array();
    w.key("messages").begin_array();
    messages(w);
    w.end_array();
    w.key("supervisor").begin_object();
    w.key("completed").bool(st.supervisor.completed);
    w.key("summary").opt_str(st.supervisor.summary.as_deref());
    w.end_object();
    w.key("cancel_requested").bool(st.cancel_requested);
    w.end_object();
}
