//! The pull parser: one pass over a `&str`, the caller asks for what it
//! expects next ([`Scanner::object`], [`Scanner::key`], [`Scanner::string`],
//! [`Scanner::skip`], ...). See the module docs of [`super`] for the rules.

use std::borrow::Cow;

use super::error::{JsonError, JsonErrorCode};
use super::number::{self, Number};
use super::MAX_DEPTH;

/// The high bit of each of the eight bytes of `x` that is `"`, `\\` or below
/// 0x20 (little-endian: byte `k` is bits `8k..8k+8`). A set bit may be
/// spurious only above a genuine one, so the lowest set bit is exact.
#[inline(always)]
fn special_mask(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = zero(x ^ (ONES * u64::from(b'"')));
    let backslash = zero(x ^ (ONES * u64::from(b'\\')));
    let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    quote | backslash | control
}

/// The type of the next value, as its first byte tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// `null`
    Null,
    /// `true` or `false`
    Bool,
    /// `-` or a digit
    Number,
    /// `"`
    String,
    /// `[`
    Array,
    /// `{`
    Object,
}

/// A single-pass JSON scanner over a borrowed text.
#[derive(Debug, Clone)]
pub struct Scanner<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
    /// True right after `{` or `[`: the next member needs no comma.
    first: bool,
    /// Bit `d` set: the container open at depth `d + 1` is an object
    /// (`MAX_DEPTH` < 128 bits).
    kinds: u128,
}

impl<'a> Scanner<'a> {
    /// A scanner at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            pos: 0,
            depth: 0,
            first: false,
            kinds: 0,
        }
    }

    /// The current byte offset.
    pub fn pos(&self) -> usize {
        self.pos
    }

    #[inline(always)]
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn err(&self, code: JsonErrorCode) -> JsonError {
        JsonError::new(code, self.pos)
    }

    #[inline(always)]
    fn byte(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    /// Skips RFC 8259 whitespace (space, tab, LF, CR) and returns the next byte.
    #[inline(always)]
    fn ws(&mut self) -> Option<u8> {
        while let Some(b) = self.byte() {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.pos += 1;
        }
        None
    }

    /// The type of the next value (after whitespace), without consuming it.
    #[inline]
    pub fn peek(&mut self) -> Result<Token, JsonError> {
        match self.ws() {
            None => Err(self.err(JsonErrorCode::Eof)),
            Some(b'n') => Ok(Token::Null),
            Some(b't' | b'f') => Ok(Token::Bool),
            Some(b'-' | b'0'..=b'9') => Ok(Token::Number),
            Some(b'"') => Ok(Token::String),
            Some(b'[') => Ok(Token::Array),
            Some(b'{') => Ok(Token::Object),
            Some(_) => Err(self.err(JsonErrorCode::Unexpected)),
        }
    }

    #[inline]
    fn expect(&mut self, want: Token) -> Result<(), JsonError> {
        if self.peek()? == want {
            Ok(())
        } else {
            Err(self.err(JsonErrorCode::WrongType))
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        for &w in word {
            match self.byte() {
                None => return Err(self.err(JsonErrorCode::Eof)),
                Some(b) if b == w => self.pos += 1,
                Some(_) => return Err(self.err(JsonErrorCode::Unexpected)),
            }
        }
        Ok(())
    }

    /// Consumes `null`.
    pub fn null(&mut self) -> Result<(), JsonError> {
        self.expect(Token::Null)?;
        self.literal(b"null")
    }

    /// Consumes `null` if it is next; true if it was.
    pub fn take_null(&mut self) -> Result<bool, JsonError> {
        if self.peek()? == Token::Null {
            self.literal(b"null")?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Consumes `true` or `false`.
    pub fn bool(&mut self) -> Result<bool, JsonError> {
        self.expect(Token::Bool)?;
        if self.byte() == Some(b't') {
            self.literal(b"true").map(|()| true)
        } else {
            self.literal(b"false").map(|()| false)
        }
    }

    /// Consumes a number.
    pub fn number(&mut self) -> Result<Number, JsonError> {
        self.expect(Token::Number)?;
        let (n, end) = number::parse(self.bytes(), self.pos)?;
        self.pos = end;
        Ok(n)
    }

    /// Consumes a string: borrowed from the input when it has no escape,
    /// unescaped into a new `String` when it has one.
    #[inline]
    pub fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.expect(Token::String)?;
        self.string_at(true)
    }

    /// Scans the string at `self.pos` (its opening quote). With `build`
    /// false it only validates (for [`Self::skip`]) and returns `""`.
    /// The escape-free fast path is inlined into its callers; the rest is
    /// [`Self::string_slow`], out of line.
    #[inline(always)]
    fn string_at(&mut self, build: bool) -> Result<Cow<'a, str>, JsonError> {
        let b = self.bytes();
        let start = self.pos + 1;
        // Fast path: a string without escape, scanned over the remaining slice.
        let mut rest = b.get(start..).unwrap_or(&[]);
        // Eight bytes at a time (SWAR) up to the first `"`, `\\` or control.
        loop {
            if let Some((word, tail)) = rest.split_first_chunk::<8>() {
                let m = special_mask(u64::from_le_bytes(*word));
                if m == 0 {
                    rest = tail;
                    continue;
                }
                rest = rest.get((m.trailing_zeros() / 8) as usize..).unwrap_or(&[]);
                break;
            }
            while let Some((&c, tail)) = rest.split_first() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                rest = tail;
            }
            break;
        }
        if rest.first() == Some(&b'"') {
            let i = b.len() - rest.len();
            self.pos = i + 1;
            if !build {
                return Ok(Cow::Borrowed(""));
            }
            // `start` and `i` are next to ASCII quotes: char boundaries.
            return Ok(Cow::Borrowed(self.text.get(start..i).unwrap_or("")));
        }
        // Slow path from the first special byte (the bytes before it are plain).
        self.pos = b.len() - rest.len();
        self.string_slow(start, build)
    }

    /// [`Self::string_at`] from the first special byte (at `self.pos`) of
    /// the string whose text starts at `start`.
    #[inline(never)]
    fn string_slow(&mut self, start: usize, build: bool) -> Result<Cow<'a, str>, JsonError> {
        let b = self.bytes();
        let mut owned: Option<String> = None;
        // Start of the run of plain bytes not yet copied into `owned`.
        let mut run = start;
        loop {
            let Some(&c) = b.get(self.pos) else {
                return Err(self.err(JsonErrorCode::Eof));
            };
            match c {
                b'"' => {
                    let end = self.pos;
                    self.pos += 1;
                    if !build {
                        return Ok(Cow::Borrowed(""));
                    }
                    // `run` and `end` sit next to ASCII bytes: char boundaries.
                    let tail: &str = self.text.get(run..end).unwrap_or_default();
                    return Ok(match owned {
                        Some(mut s) => {
                            s.push_str(tail);
                            Cow::Owned(s)
                        }
                        None => Cow::Borrowed(tail),
                    });
                }
                b'\\' => {
                    if build {
                        let s = owned.get_or_insert_with(String::new);
                        s.push_str(self.text.get(run..self.pos).unwrap_or(""));
                    }
                    self.pos += 1;
                    let ch = self.escape()?;
                    if let (true, Some(s)) = (build, owned.as_mut()) {
                        s.push(ch);
                    }
                    run = self.pos;
                }
                0..=0x1f => return Err(self.err(JsonErrorCode::ControlInString)),
                _ => {
                    // The run of plain bytes, in a tight loop.
                    self.pos += 1;
                    while let Some(&c) = b.get(self.pos) {
                        if c == b'"' || c == b'\\' || c < 0x20 {
                            break;
                        }
                        self.pos += 1;
                    }
                }
            }
        }
    }

    /// Decodes the escape after a `\` (at `self.pos`).
    fn escape(&mut self) -> Result<char, JsonError> {
        let Some(c) = self.byte() else {
            return Err(self.err(JsonErrorCode::Eof));
        };
        self.pos += 1;
        Ok(match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                match hi {
                    0xD800..=0xDBFF => {
                        // A leading surrogate must be followed by `\u` and a trailing one.
                        match (self.byte(), self.bytes().get(self.pos + 1)) {
                            (Some(b'\\'), Some(b'u')) => self.pos += 2,
                            (None, _) | (Some(b'\\'), None) => {
                                return Err(self.err(JsonErrorCode::Eof))
                            }
                            _ => return Err(self.err(JsonErrorCode::LoneSurrogate)),
                        }
                        let lo = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(self.err(JsonErrorCode::LoneSurrogate));
                        }
                        let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        char::from_u32(cp).ok_or_else(|| self.err(JsonErrorCode::LoneSurrogate))?
                    }
                    0xDC00..=0xDFFF => return Err(self.err(JsonErrorCode::LoneSurrogate)),
                    _ => char::from_u32(hi).ok_or_else(|| self.err(JsonErrorCode::BadEscape))?,
                }
            }
            _ => {
                self.pos -= 1;
                return Err(self.err(JsonErrorCode::BadEscape));
            }
        })
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut n = 0u32;
        for _ in 0..4 {
            let d = match self.byte() {
                None => return Err(self.err(JsonErrorCode::Eof)),
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                Some(_) => return Err(self.err(JsonErrorCode::BadEscape)),
            };
            self.pos += 1;
            n = n * 16 + u32::from(d);
        }
        Ok(n)
    }

    fn open(&mut self, want: Token) -> Result<(), JsonError> {
        self.expect(want)?;
        if self.depth >= MAX_DEPTH {
            return Err(self.err(JsonErrorCode::TooDeep));
        }
        let bit = 1u128 << self.depth;
        if want == Token::Object {
            self.kinds |= bit;
        } else {
            self.kinds &= !bit;
        }
        self.depth += 1;
        self.pos += 1;
        self.first = true;
        Ok(())
    }

    /// Consumes `{`; then call [`Self::key`] until it returns `None`.
    pub fn object(&mut self) -> Result<(), JsonError> {
        self.open(Token::Object)
    }

    /// Consumes `[`; then call [`Self::item`] until it returns false.
    pub fn array(&mut self) -> Result<(), JsonError> {
        self.open(Token::Array)
    }

    /// Moves past the separator before the next member of a container
    /// closed by `close`: true if a member follows, false if the container
    /// ended (consumed).
    #[inline]
    fn next_member(&mut self, close: u8) -> Result<bool, JsonError> {
        let first = std::mem::replace(&mut self.first, false);
        match self.ws() {
            None => Err(self.err(JsonErrorCode::Eof)),
            Some(c) if c == close => {
                self.pos += 1;
                self.depth = self.depth.saturating_sub(1);
                Ok(false)
            }
            Some(_) if first => Ok(true),
            Some(b',') => {
                self.pos += 1;
                // A member must follow the comma (no trailing comma).
                match self.ws() {
                    None => Err(self.err(JsonErrorCode::Eof)),
                    Some(c) if c == close => Err(self.err(JsonErrorCode::Unexpected)),
                    Some(_) => Ok(true),
                }
            }
            Some(_) => Err(self.err(JsonErrorCode::Unexpected)),
        }
    }

    /// The next key of the current object and its `:` (the value is next),
    /// or `None` at the closing `}` (consumed).
    pub fn key(&mut self) -> Result<Option<Cow<'a, str>>, JsonError> {
        self.key_inline()
    }

    /// [`Self::key`] with an inlining hint: for the envelope's hot loop only
    /// (every other reader calls the out-of-line one). A hint, not
    /// `inline(always)`: at the codec's `opt-level = 3` forcing it cost 3 KB
    /// gzipped for 3 % fewer instructions.
    #[inline]
    pub fn key_inline(&mut self) -> Result<Option<Cow<'a, str>>, JsonError> {
        if !self.next_member(b'}')? {
            return Ok(None);
        }
        if self.byte() != Some(b'"') {
            return Err(self.err(JsonErrorCode::Unexpected));
        }
        let k = self.string_at(true)?;
        match self.ws() {
            Some(b':') => self.pos += 1,
            None => return Err(self.err(JsonErrorCode::Eof)),
            Some(_) => return Err(self.err(JsonErrorCode::Unexpected)),
        }
        Ok(Some(k))
    }

    /// True if another item of the current array follows, false at the
    /// closing `]` (consumed).
    #[inline]
    pub fn item(&mut self) -> Result<bool, JsonError> {
        self.next_member(b']')
    }

    /// Consumes one value of any type, validating it, allocating nothing.
    pub fn skip(&mut self) -> Result<(), JsonError> {
        let base = self.depth;
        loop {
            // One value (a container only opens).
            match self.peek()? {
                Token::Null => self.literal(b"null")?,
                Token::Bool => {
                    self.bool()?;
                }
                Token::Number => {
                    self.number()?;
                }
                Token::String => {
                    self.string_at(false)?;
                }
                Token::Array => self.array()?,
                Token::Object => self.object()?,
            }
            // Close what ends here; stop once back at the starting depth.
            loop {
                if self.depth == base {
                    return Ok(());
                }
                let in_object = self.innermost_is_object();
                let more = if in_object {
                    self.key()?.is_some()
                } else {
                    self.item()?
                };
                if more {
                    break;
                }
            }
        }
    }

    /// Whether the innermost open container is an object.
    fn innermost_is_object(&self) -> bool {
        self.depth > 0 && (self.kinds >> (self.depth - 1)) & 1 == 1
    }

    /// Consumes one value and returns its text (surrounding whitespace excluded).
    pub fn raw(&mut self) -> Result<&'a str, JsonError> {
        self.ws();
        let start = self.pos;
        self.skip()?;
        Ok(self.text.get(start..self.pos).unwrap_or(""))
    }

    /// Succeeds when only whitespace is left.
    pub fn end(&mut self) -> Result<(), JsonError> {
        match self.ws() {
            None => Ok(()),
            Some(_) => Err(self.err(JsonErrorCode::Trailing)),
        }
    }
}

/// One field as read by the scanner: scalars decoded, containers kept as text.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Field<'a> {
    Absent,
    Null,
    Bool(bool),
    Num(Number),
    Str(Cow<'a, str>),
    /// An array or object, as its JSON text.
    Raw(Token, &'a str),
}

impl<'a> Field<'a> {
    /// Reads the next value.
    pub fn read(s: &mut Scanner<'a>) -> Result<Self, JsonError> {
        Self::read_inline(s)
    }

    /// [`Self::read`] with an inlining hint (the envelope's hot loop).
    #[inline]
    pub fn read_inline(s: &mut Scanner<'a>) -> Result<Self, JsonError> {
        Ok(match s.peek()? {
            Token::Null => {
                s.null()?;
                Self::Null
            }
            Token::Bool => Self::Bool(s.bool()?),
            Token::Number => Self::Num(s.number()?),
            Token::String => Self::Str(s.string()?),
            t @ (Token::Array | Token::Object) => Self::Raw(t, s.raw()?),
        })
    }
}
