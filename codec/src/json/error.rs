//! Why a JSON text was rejected: a code and a byte offset, no text.
//!
//! Nothing here formats: the wasm carries no `core::fmt` for errors. A message
//! is made at the edge from [`JsonError::kind`] (stable codes) and
//! [`JsonError::message`] (static English text), and the offset is written
//! with [`push_u64`](super::write::push_u64) where a caller wants it.

/// What was wrong, at which byte of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    /// The rule that was broken.
    pub code: JsonErrorCode,
    /// Byte offset in the input where it was detected.
    pub at: usize,
}

/// The rules of RFC 8259 (and this crate's bounds) a text can break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonErrorCode {
    /// The text ended inside a value (or was empty).
    Eof,
    /// A byte that cannot start or continue a value here (a missing `,` `:`
    /// `}` `]`, a trailing comma, a bare word, a BOM...).
    Unexpected,
    /// An unescaped control character (U+0000–U+001F) inside a string.
    ControlInString,
    /// A `\` escape other than `\" \\ \/ \b \f \n \r \t \uXXXX`.
    BadEscape,
    /// A `\uD800`–`\uDFFF` escape that is not part of a surrogate pair.
    LoneSurrogate,
    /// A number that does not follow the RFC 8259 grammar.
    BadNumber,
    /// A number whose magnitude is beyond `f64` (it would be infinite).
    NumberOutOfRange,
    /// Arrays and objects nested deeper than [`MAX_DEPTH`](super::MAX_DEPTH).
    TooDeep,
    /// Something other than whitespace after the value.
    Trailing,
    /// Valid JSON, but not the type the caller asked for.
    WrongType,
}

impl JsonError {
    pub(crate) fn new(code: JsonErrorCode, at: usize) -> Self {
        Self { code, at }
    }

    /// A stable, short name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self.code {
            JsonErrorCode::Eof => "eof",
            JsonErrorCode::Unexpected => "unexpected",
            JsonErrorCode::ControlInString => "control_in_string",
            JsonErrorCode::BadEscape => "bad_escape",
            JsonErrorCode::LoneSurrogate => "lone_surrogate",
            JsonErrorCode::BadNumber => "bad_number",
            JsonErrorCode::NumberOutOfRange => "number_out_of_range",
            JsonErrorCode::TooDeep => "too_deep",
            JsonErrorCode::Trailing => "trailing_characters",
            JsonErrorCode::WrongType => "wrong_type",
        }
    }

    /// What was wrong, in words (static: no formatting).
    pub fn message(&self) -> &'static str {
        match self.code {
            JsonErrorCode::Eof => "unexpected end of input",
            JsonErrorCode::Unexpected => "unexpected character",
            JsonErrorCode::ControlInString => "control character in string",
            JsonErrorCode::BadEscape => "invalid escape",
            JsonErrorCode::LoneSurrogate => "lone surrogate in \\u escape",
            JsonErrorCode::BadNumber => "invalid number",
            JsonErrorCode::NumberOutOfRange => "number out of range",
            JsonErrorCode::TooDeep => "nesting too deep",
            JsonErrorCode::Trailing => "trailing characters",
            JsonErrorCode::WrongType => "wrong type",
        }
    }

    /// `message at byte N`, built without `core::fmt`.
    pub fn describe(&self) -> String {
        let mut s = String::from(self.message());
        s.push_str(" at byte ");
        super::write::push_u64(&mut s, self.at as u64);
        s
    }
}
