//! The JS API's view of the core's values (API.md: `RunState` in camelCase,
//! `StreamStatus`, `RunMetrics`, `RuntimeEvent`), written with the
//! [`Writer`]: the shell turns the text into objects with `JSON.parse`.
//!
//! Field names, order and `null`/omitted rules are those of the serde
//! derives these types keep in native builds; `tests/json.rs` checks that
//! both give the same JSON value for random states, metrics and events.
//! Numbers differ only in spelling (`3` for serde's `3.0`).

use crate::core::vecmap::VecMap;

use super::write::{ToJson, Writer};
use crate::core::engine::{Activity, Sharing, StreamStatus};
use crate::core::metrics::{
    EventClass, MessageMetrics, RunMetrics, RuntimeEvent, SpanFields, SpanStatus,
};
use crate::core::state::{Message, RunState, Supervisor, Tool, Worker};

fn activity(a: Activity) -> &'static str {
    match a {
        Activity::Idle => "idle",
        Activity::Streaming => "streaming",
        Activity::Working => "working",
    }
}

fn sharing(s: Sharing) -> &'static str {
    match s {
        Sharing::Solo => "solo",
        Sharing::Leader => "leader",
        Sharing::Follower => "follower",
    }
}

impl ToJson for Tool {
    fn write_json(&self, w: &mut Writer) {
        w.begin_object();
        w.key("toolCallId").str(&self.tool_call_id);
        w.key("name").opt_str(self.name.as_deref());
        w.key("status").str(self.status.as_str());
        w.end_object();
    }
}

impl ToJson for Worker {
    fn write_json(&self, w: &mut Writer) {
        w.begin_object();
        w.key("workerId").str(&self.worker_id);
        w.key("jobId").opt_str(self.job_id.as_deref());
        w.key("jobIds").begin_array();
        for j in &self.job_ids {
            w.str(j);
        }
        w.end_array();
        w.key("name").opt_str(self.name.as_deref());
        w.key("status").str(self.status.as_str());
        w.key("tools").value(self.tools.as_slice());
        w.end_object();
    }
}

impl ToJson for Message {
    fn write_json(&self, w: &mut Writer) {
        w.begin_object();
        w.key("messageId").opt_str(self.message_id.as_deref());
        w.key("clientRequestId")
            .opt_str(self.client_request_id.as_deref());
        w.key("replyTo").opt_str(self.reply_to.as_deref());
        w.key("role").str(self.role.as_str());
        w.key("content").str(&self.content);
        w.key("status").str(self.status.as_str());
        w.end_object();
    }
}

impl ToJson for Supervisor {
    fn write_json(&self, w: &mut Writer) {
        w.begin_object();
        w.key("completed").bool(self.completed);
        w.key("summary").opt_str(self.summary.as_deref());
        w.end_object();
    }
}

impl ToJson for RunState {
    fn write_json(&self, w: &mut Writer) {
        w.begin_object();
        w.key("runId").str(&self.run_id);
        w.key("cursor").u64(self.cursor);
        w.key("status").str(self.status.as_str());
        w.key("workers").value(self.workers.as_slice());
        w.key("messages").value(self.messages.as_slice());
        w.key("supervisor").value(&self.supervisor);
        w.key("cancelRequested").bool(self.cancel_requested);
        w.end_object();
    }
}

impl ToJson for StreamStatus {
    fn write_json(&self, w: &mut Writer) {
        w.begin_object();
        w.key("connection").str(self.connection.as_str());
        w.key("activity").str(activity(self.activity));
        w.key("attempt").u64(u64::from(self.attempt));
        w.key("retryInMs").opt_f64(self.retry_in_ms);
        w.key("lastError").opt_str(self.last_error.as_deref());
        w.key("sharing").str(sharing(self.sharing));
        w.key("cancel");
        match &self.cancel {
            Some(c) => {
                w.begin_object();
                w.key("clientRequestId").str(&c.client_request_id);
                w.key("replyTo").opt_str(c.reply_to.as_deref());
                w.key("state").str(c.state.as_str());
                w.end_object();
            }
            None => {
                w.null();
            }
        }
        w.end_object();
    }
}

fn counts(w: &mut Writer, m: &VecMap<String, u64>) {
    w.begin_object();
    for (k, v) in m {
        w.key(k).u64(*v);
    }
    w.end_object();
}

impl ToJson for MessageMetrics {
    fn write_json(&self, w: &mut Writer) {
        w.begin_object();
        w.key("ttfbMs").opt_f64(self.ttfb_ms);
        w.key("ttftMs").opt_f64(self.ttft_ms);
        w.key("durationMs").opt_f64(self.duration_ms);
        w.key("tokens").u64(self.tokens);
        w.key("fallback").opt_str(self.fallback.as_deref());
        w.end_object();
    }
}

impl ToJson for RunMetrics {
    fn write_json(&self, w: &mut Writer) {
        w.begin_object();
        w.key("reconnects").u64(self.reconnects);
        w.key("eventsApplied").u64(self.events_applied);
        w.key("eventsReplayed").u64(self.events_replayed);
        w.key("duplicatesDropped").u64(self.duplicates_dropped);
        w.key("outOfOrder").u64(self.out_of_order);
        w.key("protocolErrors").u64(self.protocol_errors);
        w.key("timeToFirstEventMs")
            .opt_f64(self.time_to_first_event_ms);
        w.key("toolCalls").u64(self.tool_calls);
        w.key("toolErrors").u64(self.tool_errors);
        w.key("terminations");
        counts(w, &self.terminations);
        w.key("messages").begin_object();
        for (k, m) in &self.messages {
            w.key(k).value(m);
        }
        w.end_object();
        w.key("protocolErrorsByKind");
        counts(w, &self.protocol_errors_by_kind);
        w.key("gapsSkipped").u64(self.gaps_skipped);
        w.key("unknownEvents").u64(self.unknown_events);
        w.key("channelErrors").u64(self.channel_errors);
        w.end_object();
    }
}

fn event_class(k: EventClass) -> &'static str {
    match k {
        EventClass::Counter => "counter",
        EventClass::Gauge => "gauge",
        EventClass::Histogram => "histogram",
        EventClass::Span => "span",
    }
}

fn span_status(s: SpanStatus) -> &'static str {
    match s {
        SpanStatus::Ok => "ok",
        SpanStatus::Error => "error",
        SpanStatus::Canceled => "canceled",
    }
}

/// The members of a span (no braces: a `RuntimeEvent` flattens them).
fn span_members(s: &SpanFields, w: &mut Writer) {
    w.key("spanId").str(&s.span_id);
    w.key("traceId").str(&s.trace_id);
    w.key("op").str(s.op);
    w.key("start").f64(s.start);
    w.key("durationMs").f64(s.duration_ms);
    w.key("status").str(span_status(s.status));
    if let Some(k) = s.error_kind {
        w.key("errorKind").str(k);
    }
    if let Some(e) = &s.error {
        w.key("error").str(e);
    }
    if let Some(a) = s.attempt {
        w.key("attempt").u64(a);
    }
    if let Some(n) = s.events {
        w.key("events").u64(n);
    }
    if let Some(x) = s.ttfb_ms {
        w.key("ttfbMs").f64(x);
    }
    if let Some(x) = s.ttft_ms {
        w.key("ttftMs").f64(x);
    }
    if let Some(c) = &s.client_request_id {
        w.key("clientRequestId").str(c);
    }
}

impl ToJson for SpanFields {
    fn write_json(&self, w: &mut Writer) {
        w.begin_object();
        span_members(self, w);
        w.end_object();
    }
}

impl ToJson for RuntimeEvent {
    fn write_json(&self, w: &mut Writer) {
        w.begin_object();
        w.key("kind").str(event_class(self.kind));
        w.key("name").str(self.name);
        w.key("value").f64(self.value);
        w.key("ts").f64(self.ts);
        if !self.attrs.is_empty() {
            w.key("attrs").begin_object();
            for (k, v) in &self.attrs {
                w.key(k).str(v);
            }
            w.end_object();
        }
        if let Some(s) = &self.span {
            span_members(s, w);
        }
        w.end_object();
    }
}
