//! Incremental `text/event-stream` parser (WHATWG HTML, "interpreting an event stream").
//!
//! Fed arbitrary byte chunks: a chunk may end in the middle of a line, between
//! the CR and LF of a CRLF pair, or inside a multi-byte UTF-8 character. The
//! parser produces the same events a browser's native `EventSource` would
//! dispatch for the same bytes:
//!
//! - a leading UTF-8 BOM is stripped once, at the very start of the stream;
//! - lines end with CRLF, LF or CR; a CR that ends one chunk and an LF that
//!   starts the next non-empty chunk are one line end (CRLF), so LF CR or CR CR
//!   are two line ends (a blank line);
//! - lines starting with `:` are comments (reported as [`SseItem::Comment`], for liveness);
//! - `event`, `data` (joined with LF), `id` (ignored if it contains NUL, persists
//!   across events, empty resets) and `retry` (ASCII digits only) are honoured;
//!   every other field is ignored;
//! - an event is dispatched on a blank line, never at end of stream.
//!
//! Bytes are decoded as UTF-8 with U+FFFD for invalid sequences, line by line
//! (CR and LF can never be part of a multi-byte sequence, so per-line decoding
//! equals whole-stream decoding).
//!
//! Buffers are bounded by `max_event_bytes` (at least 16): the bytes of the
//! current line (any line, comments included) plus the event's decoded data and
//! type never exceed it. An event that would grow past it is reported once as
//! [`SseItem::TooLarge`], as soon as the bound is crossed (even mid-line), and
//! discarded: its buffers are cleared and every line up to and including the
//! blank line that ends it is ignored (`id` and `retry` too; lines before the
//! crossing have already taken effect). The next event is parsed normally.
//! Which events are discarded does not depend on how the bytes are chunked;
//! only the count carried by `TooLarge` does.

/// One event dispatched by the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type (`event:` field), `"message"` when none was given.
    pub event_type: String,
    /// The data buffer, lines joined with LF, final LF removed.
    pub data: String,
    /// The last event ID string in force when this event was dispatched.
    pub last_event_id: String,
}

/// What the parser reports while consuming bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A complete event.
    Event(SseEvent),
    /// A valid `retry:` field: the server's reconnection time in ms (saturating).
    Retry(u64),
    /// A comment line (`: hb` heartbeats); carries no data.
    Comment,
    /// An event was discarded because it exceeded `max_event_bytes` (bytes seen
    /// when the bound was crossed, so it depends on where chunks ended).
    TooLarge(usize),
}

/// An event as [`SseParser::feed_ref`] reports it: borrowed from the
/// parser's buffers, valid for the duration of the callback (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEventRef<'a> {
    /// The event type (`event:` field), `"message"` when none was given.
    pub event_type: &'a str,
    /// The data buffer, lines joined with LF, final LF removed.
    pub data: &'a str,
    /// The last event ID string in force when this event was dispatched.
    pub last_event_id: &'a str,
}

/// [`SseItem`] with the event borrowed ([`SseParser::feed_ref`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseItemRef<'a> {
    /// A complete event.
    Event(SseEventRef<'a>),
    /// See [`SseItem::Retry`].
    Retry(u64),
    /// See [`SseItem::Comment`].
    Comment,
    /// See [`SseItem::TooLarge`].
    TooLarge(usize),
}

impl SseItemRef<'_> {
    /// The owned item.
    pub fn to_owned_item(self) -> SseItem {
        match self {
            Self::Event(e) => SseItem::Event(SseEvent {
                event_type: e.event_type.to_owned(),
                data: e.data.to_owned(),
                last_event_id: e.last_event_id.to_owned(),
            }),
            Self::Retry(ms) => SseItem::Retry(ms),
            Self::Comment => SseItem::Comment,
            Self::TooLarge(n) => SseItem::TooLarge(n),
        }
    }
}

/// Bytes as UTF-8 with U+FFFD for invalid sequences: borrowed when valid
/// (the validator's ASCII fast path), the lossy decoder only otherwise.
#[inline]
fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The offset of the first CR or LF in `bytes`: eight bytes at a time
/// while none is one (SWAR), then byte by byte.
#[inline]
fn line_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut words = bytes.chunks_exact(8);
    let mut i = 0;
    for word in words.by_ref() {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let x = u64::from_le_bytes(w);
        if zero(x ^ (ONES * u64::from(b'\n'))) | zero(x ^ (ONES * u64::from(b'\r'))) != 0 {
            break;
        }
        i += 8;
    }
    let rest = bytes.get(i..).unwrap_or(&[]);
    rest.iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map(|p| p + i)
}

/// Incremental SSE parser. See the module docs for the exact rules.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the current, unterminated line (bounded by `max_event_bytes`).
    line: Vec<u8>,
    /// Data buffer of the current event.
    data: String,
    /// Event type buffer of the current event.
    event_type: String,
    /// Last event ID buffer (persists across events).
    last_event_id: String,
    /// True when the last non-empty chunk ended with CR: a leading LF in the next one belongs to it.
    pending_cr: bool,
    /// Number of BOM bytes matched so far at stream start; `None` once past the start.
    bom: Option<usize>,
    /// Discarding the current event because it grew too large (bytes discarded so far).
    discarding: Option<usize>,
    /// While discarding: the current line already had bytes (so its end is not a blank line).
    discard_partial: bool,
    max_event_bytes: usize,
}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

impl SseParser {
    /// A parser whose single event (and single line) may hold at most `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            data: String::new(),
            event_type: String::new(),
            last_event_id: String::new(),
            pending_cr: false,
            bom: Some(0),
            discarding: None,
            discard_partial: false,
            max_event_bytes: max_event_bytes.max(16),
        }
    }

    /// Starts a new stream (a new connection): clears partial input but keeps
    /// the last event ID, exactly as `EventSource` does across reconnects.
    pub fn reset_stream(&mut self) {
        self.line.clear();
        self.data.clear();
        self.event_type.clear();
        self.pending_cr = false;
        self.bom = Some(0);
        self.discarding = None;
        self.discard_partial = false;
    }

    /// The last event ID string (as a browser would send in `Last-Event-ID`).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Bytes currently held in the parser's buffers.
    pub fn buffered_bytes(&self) -> usize {
        self.line.len() + self.data.len() + self.event_type.len()
    }

    /// Consumes one chunk, calling `out` for every item it completes.
    pub fn feed(&mut self, chunk: &[u8], out: &mut dyn FnMut(SseItem)) {
        self.feed_ref(chunk, &mut |item| out(item.to_owned_item()));
    }

    /// [`Self::feed`] reporting events borrowed from the parser's buffers
    /// (what the engine uses: no allocation per event).
    pub fn feed_ref(&mut self, mut chunk: &[u8], out: &mut dyn FnMut(SseItemRef<'_>)) {
        // Strip a BOM at stream start, even if it is split across chunks.
        while let Some(matched) = self.bom {
            let Some((&b, rest)) = chunk.split_first() else {
                return;
            };
            if BOM.get(matched) == Some(&b) {
                chunk = rest;
                self.bom = if matched + 1 == BOM.len() {
                    None
                } else {
                    Some(matched + 1)
                };
            } else {
                // Not a BOM: replay the bytes that looked like one, then go on.
                self.bom = None;
                let prefix = BOM.get(..matched).unwrap_or(&[]);
                if !prefix.is_empty() {
                    self.feed_lines(prefix, out);
                }
            }
        }
        self.feed_lines(chunk, out);
    }

    fn feed_lines(&mut self, mut chunk: &[u8], out: &mut dyn FnMut(SseItemRef<'_>)) {
        // A CR that ended the previous chunk pairs with an LF at the start of the
        // next non-empty one: an empty chunk must leave it pending.
        if self.pending_cr && !chunk.is_empty() {
            self.pending_cr = false;
            if let Some((&b'\n', rest)) = chunk.split_first() {
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            match line_end(chunk) {
                None => {
                    self.push_partial(chunk, out);
                    return;
                }
                Some(pos) => {
                    let (head, tail) = chunk.split_at(pos);
                    let (&eol, mut rest) = match tail.split_first() {
                        Some(x) => x,
                        None => return,
                    };
                    if eol == b'\r' {
                        match rest.split_first() {
                            Some((&b'\n', r)) => rest = r,
                            Some(_) => {}
                            None => self.pending_cr = true,
                        }
                    }
                    self.end_line(head, out);
                    chunk = rest;
                }
            }
        }
    }

    /// Ends the current line, whose last bytes are `head` (earlier ones are in `self.line`).
    fn end_line(&mut self, head: &[u8], out: &mut dyn FnMut(SseItemRef<'_>)) {
        if self.line.is_empty() {
            self.line_complete(head, out);
        } else {
            // Bounds-checked like any partial line (it may start discarding and clear `line`).
            self.push_partial(head, out);
            let line = std::mem::take(&mut self.line);
            self.line_complete(&line, out);
            self.line = line;
            self.line.clear();
        }
    }

    /// Buffers bytes of a line that has not ended yet.
    fn push_partial(&mut self, bytes: &[u8], out: &mut dyn FnMut(SseItemRef<'_>)) {
        if let Some(n) = self.discarding.as_mut() {
            *n = n.saturating_add(bytes.len());
            self.discard_partial |= !bytes.is_empty();
            return;
        }
        let seen = self.buffered_bytes() + bytes.len();
        if seen > self.max_event_bytes {
            // The line goes on: its end is not the blank line that ends the event.
            self.start_discarding(seen, true, out);
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    /// Drops the current event, reports it once, and skips input up to its blank line.
    ///
    /// `mid_line`: the bound was crossed before the current line ended (so that
    /// line's end is not a blank line); false when crossed by a complete line.
    fn start_discarding(
        &mut self,
        seen: usize,
        mid_line: bool,
        out: &mut dyn FnMut(SseItemRef<'_>),
    ) {
        self.line.clear();
        self.line.shrink_to(4096);
        self.data.clear();
        self.data.shrink_to(4096);
        self.event_type.clear();
        self.discarding = Some(seen);
        self.discard_partial = mid_line;
        out(SseItemRef::TooLarge(seen));
    }

    /// Interprets one complete line (its bytes are not in `self.line`).
    fn line_complete(&mut self, line: &[u8], out: &mut dyn FnMut(SseItemRef<'_>)) {
        if let Some(n) = self.discarding.as_mut() {
            if line.is_empty() && !self.discard_partial {
                self.discarding = None;
            } else {
                *n = n.saturating_add(line.len());
            }
            self.discard_partial = false;
            return;
        }
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        // The same test `push_partial` applies byte by byte, so whether a line
        // crosses the bound does not depend on how it was chunked.
        let seen = self.buffered_bytes() + line.len();
        if seen > self.max_event_bytes {
            self.start_discarding(seen, false, out);
            return;
        }
        if line.first() == Some(&b':') {
            out(SseItemRef::Comment);
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let (f, v) = line.split_at(i);
                let v = v.get(1..).unwrap_or(&[]);
                let v = v.strip_prefix(b" ").unwrap_or(v);
                (f, v)
            }
            None => (line, &[][..]),
        };
        // Decoded text can outgrow its bytes (U+FFFD is 3 bytes), hence the checks below.
        match field {
            b"event" => {
                let value = lossy(value);
                let seen = self.data.len() + value.len();
                if seen > self.max_event_bytes {
                    self.start_discarding(seen, false, out);
                    return;
                }
                self.event_type.clear();
                self.event_type.push_str(&value);
            }
            b"data" => {
                let value = lossy(value);
                let seen = self.data.len() + self.event_type.len() + value.len() + 1;
                if seen > self.max_event_bytes {
                    self.start_discarding(seen, false, out);
                    return;
                }
                self.data.push_str(&value);
                self.data.push('\n');
            }
            b"id" if !value.contains(&0) => {
                self.last_event_id.clear();
                self.last_event_id.push_str(&lossy(value));
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                let ms = value.iter().fold(0u64, |acc, d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                out(SseItemRef::Retry(ms));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut dyn FnMut(SseItemRef<'_>)) {
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        let event_type = if self.event_type.is_empty() {
            "message"
        } else {
            &self.event_type
        };
        out(SseItemRef::Event(SseEventRef {
            event_type,
            data: &self.data,
            last_event_id: &self.last_event_id,
        }));
        self.data.clear();
        self.event_type.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseItem> {
        let mut p = SseParser::new(1 << 20);
        let mut items = Vec::new();
        for c in chunks {
            p.feed(c, &mut |i| items.push(i));
        }
        items
    }

    #[test]
    fn line_end_finds_the_first_cr_or_lf_at_every_offset_and_length() {
        for len in 0..40 {
            for at in 0..=len {
                for eol in [b'\n', b'\r'] {
                    // High bytes and near misses (0x0B, 0x0C, 0x8A) around the line end.
                    let mut v: Vec<u8> = (0..len)
                        .map(|i| [b'a', 0x0B, 0x0C, 0x8A, 0xFF][i % 5])
                        .collect();
                    if at < len {
                        v[at] = eol;
                        if at + 1 < len {
                            v[at + 1] = b'\n' ^ b'\r' ^ eol;
                        }
                    }
                    let want = v.iter().position(|&b| b == b'\n' || b == b'\r');
                    assert_eq!(line_end(&v), want, "len {len} at {at}");
                }
            }
        }
    }

    #[test]
    fn feed_ref_reports_the_events_feed_does_without_owning_them() {
        let input: &[u8] = b"id: 7\nevent: a\ndata: x\ndata: y\n\n: c\nretry: 5\ndata: \xFFz\n\n";
        let mut p = SseParser::new(1 << 20);
        let mut got = Vec::new();
        p.feed_ref(input, &mut |i| got.push(i.to_owned_item()));
        assert_eq!(got, parse_chunks(&[input]));
        assert_eq!(
            events(&got),
            vec![
                ("a".into(), "x\ny".into(), "7".into()),
                ("message".into(), "\u{FFFD}z".into(), "7".into())
            ]
        );
    }

    fn events(items: &[SseItem]) -> Vec<(String, String, String)> {
        items
            .iter()
            .filter_map(|i| match i {
                SseItem::Event(e) => Some((
                    e.event_type.clone(),
                    e.data.clone(),
                    e.last_event_id.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    fn ev(t: &str, d: &str, id: &str) -> (String, String, String) {
        (t.into(), d.into(), id.into())
    }

    #[test]
    fn basic_event_with_id_and_type() {
        let items = parse_chunks(&[b"id: 1\nevent: tool.started\ndata: {\"a\":1}\n\n"]);
        assert_eq!(events(&items), vec![ev("tool.started", "{\"a\":1}", "1")]);
    }

    #[test]
    fn multi_line_data_joined_with_lf_and_trailing_lf_removed() {
        let items = parse_chunks(&[b"data: a\ndata:b\ndata\n\n"]);
        assert_eq!(events(&items), vec![ev("message", "a\nb\n", "")]);
    }

    #[test]
    fn cr_crlf_lf_all_end_lines_even_split_across_chunks() {
        let items = parse_chunks(&[b"data: x\r", b"\ndata: y\r", b"\r", b"data: z\n\n"]);
        assert_eq!(
            events(&items),
            vec![ev("message", "x\ny", ""), ev("message", "z", "")]
        );
    }

    #[test]
    fn bom_stripped_once_even_when_split() {
        let items = parse_chunks(&[
            &[0xEF],
            &[0xBB, 0xBF],
            b"data: a\n\n\xEF\xBB\xBFdata: b\n\n",
        ]);
        // The second BOM is not at stream start: it becomes part of a field name, which is ignored.
        assert_eq!(events(&items), vec![ev("message", "a", "")]);
    }

    #[test]
    fn partial_bom_prefix_is_replayed_as_data() {
        let items = parse_chunks(&[&[0xEF, 0xBB], b"x\n\ndata: ok\n\n"]);
        assert_eq!(events(&items), vec![ev("message", "ok", "")]);
    }

    #[test]
    fn id_persists_and_empty_id_resets_and_nul_is_ignored() {
        let items =
            parse_chunks(&[b"id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 9\0x\ndata: d\n\n"]);
        assert_eq!(
            events(&items),
            vec![
                ev("message", "a", "7"),
                ev("message", "b", "7"),
                ev("message", "c", ""),
                ev("message", "d", ""),
            ]
        );
    }

    #[test]
    fn id_without_data_updates_last_event_id_without_dispatch() {
        let mut p = SseParser::new(1024);
        let mut items = Vec::new();
        p.feed(b"id: 5\n\n", &mut |i| items.push(i));
        assert!(events(&items).is_empty());
        assert_eq!(p.last_event_id(), "5");
    }

    #[test]
    fn retry_digits_only() {
        let items = parse_chunks(&[
            b"retry: 1500\nretry: 1.5\nretry: -1\nretry:\nretry: 99999999999999999999999\n",
        ]);
        let retries: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                SseItem::Retry(v) => Some(*v),
                _ => None,
            })
            .collect();
        assert_eq!(retries, vec![1500, u64::MAX]);
    }

    #[test]
    fn comments_and_unknown_fields() {
        let items = parse_chunks(&[b": hb\nfoo: bar\ndata: x\n\n"]);
        assert_eq!(items.first(), Some(&SseItem::Comment));
        assert_eq!(events(&items), vec![ev("message", "x", "")]);
    }

    #[test]
    fn only_one_leading_space_stripped() {
        let items = parse_chunks(&[b"data:  two\n\n"]);
        assert_eq!(events(&items), vec![ev("message", " two", "")]);
    }

    #[test]
    fn unterminated_final_event_not_dispatched() {
        let items = parse_chunks(&[b"data: a\n\ndata: b\n"]);
        assert_eq!(events(&items), vec![ev("message", "a", "")]);
    }

    #[test]
    fn event_type_reset_after_dispatch_and_after_empty_data() {
        let items = parse_chunks(&[b"event: x\n\ndata: a\n\n"]);
        assert_eq!(events(&items), vec![ev("message", "a", "")]);
    }

    #[test]
    fn utf8_split_across_chunks_and_invalid_bytes_replaced() {
        let s = "data: h\u{e9}llo \u{1F600}\n\n".as_bytes();
        let mut chunks: Vec<&[u8]> = Vec::new();
        for i in 0..s.len() {
            chunks.push(&s[i..i + 1]);
        }
        let items = parse_chunks(&chunks);
        assert_eq!(
            events(&items),
            vec![ev("message", "h\u{e9}llo \u{1F600}", "")]
        );
        let items = parse_chunks(&[b"data: a\xFFb\xE2\x82\n\n"]);
        assert_eq!(
            events(&items),
            vec![ev("message", "a\u{FFFD}b\u{FFFD}", "")]
        );
    }

    #[test]
    fn oversized_event_is_discarded_reported_once_and_parser_recovers() {
        let mut p = SseParser::new(64);
        let mut items = Vec::new();
        let big = vec![b'x'; 1000];
        p.feed(b"data: ", &mut |i| items.push(i));
        for _ in 0..100 {
            p.feed(&big, &mut |i| items.push(i));
        }
        assert!(p.buffered_bytes() <= 64);
        p.feed(b"\ndata: more\n\ndata: ok\n\n", &mut |i| items.push(i));
        let too_large = items
            .iter()
            .filter(|i| matches!(i, SseItem::TooLarge(_)))
            .count();
        assert_eq!(too_large, 1);
        assert_eq!(events(&items), vec![ev("message", "ok", "")]);
    }

    #[test]
    fn many_data_lines_exceeding_bound_are_discarded() {
        let mut p = SseParser::new(64);
        let mut items = Vec::new();
        for _ in 0..100 {
            p.feed(b"data: 0123456789\n", &mut |i| items.push(i));
        }
        p.feed(b"\ndata: ok\n\n", &mut |i| items.push(i));
        assert!(items.iter().any(|i| matches!(i, SseItem::TooLarge(_))));
        assert_eq!(events(&items), vec![ev("message", "ok", "")]);
    }

    /// Feeds `bytes` in pieces of `step` bytes to a parser bounded at `max`.
    fn parse_in_steps(max: usize, bytes: &[u8], step: usize) -> Vec<SseItem> {
        let mut p = SseParser::new(max);
        let mut items = Vec::new();
        for c in bytes.chunks(step) {
            p.feed(c, &mut |i| items.push(i));
            assert!(p.buffered_bytes() <= max);
        }
        items
    }

    /// Exactly one `TooLarge` (reporting more than `max` bytes) followed by one event "ok".
    fn assert_too_large_then_ok(items: &[SseItem], max: usize) {
        assert_eq!(items.len(), 2, "{items:?}");
        assert!(
            matches!(items[0], SseItem::TooLarge(n) if n > max),
            "{items:?}"
        );
        assert_eq!(events(items), vec![ev("message", "ok", "")]);
    }

    #[test]
    fn oversized_complete_line_does_not_swallow_next_event() {
        let mut input = b"data: ".to_vec();
        input.extend_from_slice(&[b'x'; 100]);
        input.extend_from_slice(b"\n\ndata: ok\n\n");
        assert_too_large_then_ok(&parse_in_steps(64, &input, input.len()), 64);
    }

    #[test]
    fn bound_hit_mid_line_split_across_many_chunks() {
        let mut input = b"data: ".to_vec();
        input.extend_from_slice(&[b'x'; 100]);
        input.extend_from_slice(b"\r\n\r\ndata: ok\r\n\r\n");
        for step in 1..=input.len() {
            assert_too_large_then_ok(&parse_in_steps(64, &input, step), 64);
        }
    }

    #[test]
    fn bound_hit_by_many_short_data_lines_discards_up_to_blank_line() {
        // Five lines fit in 64 bytes; the sixth (the event's last) crosses the bound.
        let mut input = b"data: 0123456789\n".repeat(6);
        input.extend_from_slice(b"\ndata: ok\n\n");
        for step in 1..=input.len() {
            assert_too_large_then_ok(&parse_in_steps(64, &input, step), 64);
        }
        // Lines after the one that crossed the bound are discarded too, `id` included.
        let mut input = b"data: 0123456789\n".repeat(6);
        input.extend_from_slice(b"id: 9\ndata: more\n: c\n\ndata: ok\n\n");
        for step in 1..=input.len() {
            assert_too_large_then_ok(&parse_in_steps(64, &input, step), 64);
        }
    }

    #[test]
    fn invalid_utf8_expanding_past_the_bound_is_discarded() {
        // 46 bytes on the wire, but 40 x U+FFFD is 120 bytes of data.
        let mut input = b"data: ".to_vec();
        input.extend_from_slice(&[0xFF; 40]);
        input.extend_from_slice(b"\n\ndata: ok\n\n");
        for step in 1..=input.len() {
            assert_too_large_then_ok(&parse_in_steps(64, &input, step), 64);
        }
    }

    #[test]
    fn empty_chunk_keeps_pending_cr() {
        let items = parse_chunks(&[b"data: a\r", b"", b"\ndata: b\n\n"]);
        assert_eq!(events(&items), vec![ev("message", "a\nb", "")]);
    }

    #[test]
    fn line_ends_cr_lf_crlf_and_split_crlf_at_every_cut() {
        // LF CR is two line ends (a blank line); CR CR too; CRLF is one.
        let input = b"data: a\n\rdata: b\r\rdata: c\r\ndata: d\r\n\r\n";
        let want = vec![
            ev("message", "a", ""),
            ev("message", "b", ""),
            ev("message", "c\nd", ""),
        ];
        assert_eq!(events(&parse_chunks(&[input])), want);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let (a, rest) = input.split_at(i);
                let (b, c) = rest.split_at(j - i);
                // Empty pieces included, on purpose.
                let items = parse_chunks(&[a, b"", b, b"", c]);
                assert_eq!(events(&items), want, "cuts at {i} and {j}");
            }
        }
    }

    #[test]
    fn reset_stream_keeps_last_event_id() {
        let mut p = SseParser::new(1024);
        let mut items = Vec::new();
        p.feed(b"id: 3\ndata: a\n\ndata: partial", &mut |i| items.push(i));
        p.reset_stream();
        p.feed(b"data: b\n\n", &mut |i| items.push(i));
        assert_eq!(
            events(&items),
            vec![ev("message", "a", "3"), ev("message", "b", "3")]
        );
    }
}
