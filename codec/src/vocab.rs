//! The status vocabulary of PROTOCOL.md §4 and §6, shared by the envelope
//! decoder (`envelope.rs`) and the run state (`state.rs`, which re-exports it).
//!
//! It depends on nothing else in the crate, so both sides can use it without
//! importing each other. Wire names are snake_case; the JS API uses the same
//! strings.

#[cfg(not(target_arch = "wasm32"))]
use serde::{Deserialize, Serialize};

/// Run lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "snake_case"))]
#[allow(missing_docs)]
pub enum RunStatus {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// Worker status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "snake_case"))]
#[allow(missing_docs)]
pub enum WorkerStatus {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Never reported a final status, and reconciliation could not tell.
    Unknown,
}

impl WorkerStatus {
    /// True for statuses a worker never leaves.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }
}

/// Outcome of a terminal worker / run.
pub type Outcome = WorkerStatus;

/// Tool call status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "snake_case"))]
#[allow(missing_docs)]
pub enum ToolStatus {
    #[default]
    Running,
    Ok,
    Error,
    /// Never reported completion, and reconciliation could not tell.
    Unknown,
}

/// Message status: the wire's three, plus the outbox states of an optimistic user message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "snake_case"))]
pub enum MessageStatus {
    /// Optimistic, waiting to be sent (offline, or backing off before a retry).
    Queued,
    /// Optimistic, a send request is in flight.
    Sending,
    /// Accepted by the server, echo not yet seen.
    Sent,
    /// Assistant message receiving tokens.
    #[default]
    Streaming,
    /// Final.
    Completed,
    /// Final, failed (a send that could not be delivered, or `message.failed`).
    Failed,
}

/// Who wrote a chat message (PROTOCOL §4 `message.created`, §6 `role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "snake_case"))]
#[allow(missing_docs)]
pub enum MessageRole {
    User,
    Assistant,
    System,
    Tool,
}

impl MessageRole {
    /// The wire / JS name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::System => "system",
            Self::Tool => "tool",
        }
    }

    /// The role named `s`; `None` outside the protocol's four.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::User, Self::Assistant, Self::System, Self::Tool]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl RunStatus {
    /// The wire / JS name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl WorkerStatus {
    /// The wire / JS name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Unknown => "unknown",
        }
    }
}

impl ToolStatus {
    /// The wire / JS name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Unknown => "unknown",
        }
    }
}

impl MessageStatus {
    /// The wire / JS name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Streaming => "streaming",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}
