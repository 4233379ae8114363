//! The shell's errors, and the one place they become JS `Error`s.

use wasm_bindgen::JsValue;

use crate::core::engine::EngineError;

/// Errors thrown to JS callers. Messages never contain header values or tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebError {
    /// An option has the wrong type or value.
    #[error("option `{0}` must be {1}")]
    InvalidOption(&'static str, &'static str),
    /// The `headers` option threw, rejected, or returned a non-object.
    #[error("the `headers` option failed (threw, rejected or returned a non-object)")]
    HeadersFailed,
    /// A call the engine refused.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The stream is being used re-entrantly from inside its own callback in a way that cannot be served.
    #[error("runstream is busy (re-entrant call)")]
    Busy,
}

impl WebError {
    /// The stable `name` of the thrown `Error`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::InvalidOption(..) => "RunStreamOptionError",
            Self::HeadersFailed => "RunStreamHeadersError",
            Self::Engine(EngineError::OutboxFull(_)) => "RunStreamOutboxFullError",
            Self::Engine(EngineError::NoSendTarget) => "RunStreamNoSendTargetError",
            Self::Engine(EngineError::Closed) => "RunStreamClosedError",
            Self::Engine(EngineError::EmptyMessage) => "RunStreamEmptyMessageError",
            Self::Busy => "RunStreamBusyError",
        }
    }
}

impl From<WebError> for JsValue {
    fn from(e: WebError) -> Self {
        let err = js_sys::Error::new(&e.to_string());
        err.set_name(e.name());
        err.into()
    }
}
