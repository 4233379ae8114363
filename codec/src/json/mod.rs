//! JSON (RFC 8259) without serde: a single-pass pull parser over `&str`
//! ([`Scanner`]), a writer ([`Writer`]) and a typed error ([`JsonError`]).
//! They carry the wire codecs of the wasm build, so that it holds neither
//! serde nor `core::fmt` number formatting.
//!
//! Rules the scanner follows (RFC 8259, and serde_json where RFC 8259 leaves
//! a choice; `tests/json.rs` checks both against serde_json on random and
//! hostile inputs):
//!
//! - the text is one value surrounded by optional whitespace (space, tab, LF,
//!   CR); anything after it is [`Trailing`](JsonErrorCode::Trailing); a
//!   leading BOM is rejected (RFC 8259 §8.1 lets a parser ignore it; serde_json
//!   rejects it, and so do we);
//! - strings: unescaped control characters (U+0000–U+001F) are rejected; the
//!   escapes are `\" \\ \/ \b \f \n \r \t \uXXXX` (hex in either case); a
//!   `\u` surrogate must be a leading one followed by `\u` and a trailing
//!   one, every lone surrogate is rejected (as serde_json does when it
//!   builds a `String`). A string without escape is borrowed from the input;
//!   one with escapes is unescaped into a new `String`;
//! - numbers follow the grammar of §6 (no `+`, no leading zero, no `.5`/`5.`,
//!   no `NaN`/`Infinity`); their classification and conversion are
//!   documented in [`number`];
//! - duplicate keys are not an error; typed decoders built on the scanner
//!   keep the last occurrence (as serde_json's map does);
//! - nesting is bounded: at most [`MAX_DEPTH`] arrays/objects open at once;
//!   one more is [`TooDeep`](JsonErrorCode::TooDeep) (serde_json's recursion
//!   limit, at the same depth). [`Scanner::skip`] keeps no stack beyond a
//!   128-bit mask, so skipping costs no allocation at any depth;
//! - size: the scanner holds no buffer of its own; the only memory it
//!   allocates is the unescaped copy of a string that has escapes (at most
//!   the input's length). The input's size is bounded by the caller (the
//!   transport's frame bound).
//!
//! Errors are codes with a byte offset; no text is formatted ([`error`]).

pub mod error;
pub mod number;
pub mod raw;
pub mod scan;
pub mod write;

pub use error::{JsonError, JsonErrorCode};
pub use number::Number;
pub use raw::RawJson;
pub use scan::{Field, Scanner, Token};
pub use write::{to_string, ToJson, Writer};

/// Most arrays/objects open at once (serde_json accepts 127, rejects 128).
pub const MAX_DEPTH: usize = 127;

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// Skips a whole document; the error code if it is not JSON.
    fn check(text: &str) -> Result<(), JsonErrorCode> {
        let mut s = Scanner::new(text);
        s.skip().and_then(|()| s.end()).map_err(|e| e.code)
    }

    #[test]
    fn accepts_json() {
        for ok in [
            "null",
            " true ",
            "false",
            "0",
            "-1.5e+3",
            "\"\"",
            "\"\\u00e9\\ud83d\\ude00\\/\"",
            "[]",
            "[1,[2,[3]],{}]",
            "{\"a\":{\"b\":[null]},\"a\":1}",
            "\t\r\n {\"k\" : \"v\" } \n",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_with_a_code() {
        use JsonErrorCode::*;
        for (bad, code) in [
            ("", Eof),
            ("   ", Eof),
            ("\u{feff}{}", Unexpected),
            ("nul", Eof),
            ("nulx", Unexpected),
            ("[1,]", Unexpected),
            ("{\"a\":1,}", Unexpected),
            ("{\"a\" 1}", Unexpected),
            ("{1:2}", Unexpected),
            ("[1 2]", Unexpected),
            ("{\"a\":1", Eof),
            ("\"abc", Eof),
            ("\"a\u{1}b\"", ControlInString),
            ("\"\\x\"", BadEscape),
            ("\"\\u12g4\"", BadEscape),
            ("\"\\ud800\"", LoneSurrogate),
            ("\"\\ud800\\u0041\"", LoneSurrogate),
            ("\"\\udc00\"", LoneSurrogate),
            ("+1", Unexpected),
            ("NaN", Unexpected),
            ("1e400", NumberOutOfRange),
            ("{} {}", Trailing),
            ("1 x", Trailing),
        ] {
            assert_eq!(check(bad), Err(code), "{bad:?}");
        }
    }

    #[test]
    fn depth_is_bounded_at_serde_jsons_limit() {
        let nest = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert_eq!(check(&nest(MAX_DEPTH)), Ok(()));
        assert_eq!(check(&nest(MAX_DEPTH + 1)), Err(JsonErrorCode::TooDeep));
        // Far beyond the bound: an error, not a stack overflow.
        assert_eq!(check(&nest(100_000)), Err(JsonErrorCode::TooDeep));
    }

    #[test]
    fn strings_are_borrowed_unless_escaped() {
        let mut s = Scanner::new(r#"["plain","esc\"aped","\u00e9"]"#);
        s.array().unwrap();
        assert!(s.item().unwrap());
        assert!(matches!(s.string().unwrap(), Cow::Borrowed("plain")));
        assert!(s.item().unwrap());
        assert!(matches!(s.string().unwrap(), Cow::Owned(o) if o == "esc\"aped"));
        assert!(s.item().unwrap());
        assert_eq!(s.string().unwrap(), "é");
        assert!(!s.item().unwrap());
        s.end().unwrap();
    }

    #[test]
    fn pulls_typed_fields_and_skips_the_rest() {
        let text = r#"{"skip":{"deep":[1,{"x":"\n"}]},"n":42,"raw": [1, 2] ,"b":false}"#;
        let mut s = Scanner::new(text);
        s.object().unwrap();
        let mut seen = Vec::new();
        while let Some(k) = s.key().unwrap() {
            match &*k {
                "n" => assert_eq!(s.number().unwrap(), Number::U64(42)),
                "raw" => assert_eq!(s.raw().unwrap(), "[1, 2]"),
                "b" => assert!(!s.bool().unwrap()),
                _ => s.skip().unwrap(),
            }
            seen.push(k.into_owned());
        }
        s.end().unwrap();
        assert_eq!(seen, ["skip", "n", "raw", "b"]);
        // Asking for the wrong type is an error, not a panic.
        let e = Scanner::new("\"x\"").number().unwrap_err();
        assert_eq!((e.code, e.kind()), (JsonErrorCode::WrongType, "wrong_type"));
        assert_eq!(e.describe(), "wrong type at byte 0");
    }
}
