//! The shell's errors, and the one place they become JS `Error`s.

use wasm_bindgen::JsValue;

use crate::core::engine::EngineError;

/// Errors thrown to JS callers. Messages never contain header values or tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebError {
    /// An option has the wrong type or value.
    InvalidOption(&'static str, &'static str),
    /// The `headers` option threw, rejected, or returned a non-object.
    HeadersFailed,
    /// A call the engine refused.
    Engine(EngineError),
    /// The stream is being used re-entrantly from inside its own callback in a way that cannot be served.
    Busy,
}

impl From<EngineError> for WebError {
    fn from(e: EngineError) -> Self {
        Self::Engine(e)
    }
}

impl std::fmt::Display for WebError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for WebError {}

impl WebError {
    /// The error's text, made without `core::fmt` (its `Display` is this
    /// text). Never contains header values or tokens.
    pub fn message(&self) -> String {
        match self {
            Self::InvalidOption(name, rule) => ["option `", name, "` must be ", rule].concat(),
            Self::HeadersFailed => {
                "the `headers` option failed (threw, rejected or returned a non-object)".to_owned()
            }
            Self::Engine(e) => e.message(),
            Self::Busy => "runstream is busy (re-entrant call)".to_owned(),
        }
    }

    /// The stable `name` of the thrown `Error`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::InvalidOption(..) => "RunStreamOptionError",
            Self::HeadersFailed => "RunStreamHeadersError",
            Self::Engine(EngineError::OutboxFull(_)) => "RunStreamOutboxFullError",
            Self::Engine(EngineError::NoSendTarget) => "RunStreamNoSendTargetError",
            Self::Engine(EngineError::NoCancelTarget) => "RunStreamNoCancelTargetError",
            Self::Engine(EngineError::Closed) => "RunStreamClosedError",
            Self::Engine(EngineError::EmptyMessage) => "RunStreamEmptyMessageError",
            Self::Busy => "RunStreamBusyError",
        }
    }
}

impl From<WebError> for JsValue {
    fn from(e: WebError) -> Self {
        let err = js_sys::Error::new(&e.message());
        err.set_name(e.name());
        err.into()
    }
}
