//! Property tests of the SSE parser: chunking is invisible, and (unbounded) it
//! agrees with a direct transcription of the WHATWG event-stream rules.
#![cfg(not(target_arch = "wasm32"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use runstream::core::sse::{SseEvent, SseItem, SseParser};

/// Byte strings that exercise the parser: field names, every line end, BOM
/// bytes, NUL, invalid UTF-8 and plain text, plus arbitrary bytes.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"data".to_vec()),
        Just(b"event: ".to_vec()),
        Just(b"id: ".to_vec()),
        Just(b"retry: ".to_vec()),
        Just(b": ".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(vec![0xEF, 0xBB, 0xBF]),
        Just(vec![0xEF]),
        Just(vec![0xFF]),
        Just(vec![0]),
        "[a-z0-9 :]{0,12}".prop_map(String::into_bytes),
        "[0-9]{1,4}".prop_map(String::into_bytes),
        "[x]{0,80}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    prop_oneof![
        proptest::collection::vec(piece, 0..60).prop_map(|v| v.concat()),
        proptest::collection::vec(any::<u8>(), 0..300),
    ]
}

/// Feeds `bytes` cut at `cuts` (positions, any order, repeats give empty chunks),
/// with an empty chunk before and after; checks the buffer bound after each feed.
fn feed_cut(max: usize, bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<SseItem> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    let mut p = SseParser::new(max);
    let mut items = Vec::new();
    p.feed(&[], &mut |i| items.push(i));
    let mut from = 0;
    for to in at {
        p.feed(&bytes[from..to], &mut |i| items.push(i));
        assert!(p.buffered_bytes() <= max.max(16));
        from = to;
    }
    items
}

/// `TooLarge` carries the bytes seen when the bound was crossed, which depends on
/// where the chunks end; every other item must be identical.
fn normalized(items: Vec<SseItem>) -> Vec<SseItem> {
    items
        .into_iter()
        .map(|i| match i {
            SseItem::TooLarge(_) => SseItem::TooLarge(0),
            other => other,
        })
        .collect()
}

/// The WHATWG rules, written as directly as possible over the whole input.
fn reference(bytes: &[u8]) -> Vec<SseItem> {
    let bytes = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                lines.push(&bytes[start..i]);
                i += 2;
                start = i;
            }
            b'\r' | b'\n' => {
                lines.push(&bytes[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    // An unterminated last line is never interpreted.
    let (mut data, mut event_type, mut id) = (String::new(), String::new(), String::new());
    let mut items = Vec::new();
    for line in lines {
        let line = String::from_utf8_lossy(line);
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                let t = if event_type.is_empty() {
                    "message".to_owned()
                } else {
                    event_type.clone()
                };
                items.push(SseItem::Event(SseEvent {
                    event_type: t,
                    data: std::mem::take(&mut data),
                    last_event_id: id.clone(),
                }));
            }
            data.clear();
            event_type.clear();
        } else if line.starts_with(':') {
            items.push(SseItem::Comment);
        } else {
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (&*line, ""),
            };
            match field {
                "event" => event_type = value.to_owned(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" if !value.contains('\0') => id = value.to_owned(),
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    items.push(SseItem::Retry(value.parse().unwrap_or(u64::MAX)));
                }
                _ => {}
            }
        }
    }
    items
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, .. ProptestConfig::default() })]

    /// Any chunking (empty chunks included) gives the items of the whole input,
    /// with a tight bound (discarding often) and with a loose one.
    #[test]
    fn chunking_is_invisible(
        bytes in sse_bytes(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
        max in prop_oneof![16usize..160, Just(1usize << 20)],
    ) {
        let whole = feed_cut(max, &bytes, &[]);
        let parts = feed_cut(max, &bytes, &cuts);
        for item in whole.iter().chain(&parts) {
            if let SseItem::TooLarge(n) = item {
                prop_assert!(*n > max, "TooLarge({}) with bound {}", n, max);
            }
        }
        prop_assert_eq!(normalized(parts), normalized(whole));
    }

    /// Without hitting the bound, the parser follows the WHATWG rules exactly.
    #[test]
    fn unbounded_parser_matches_whatwg_reference(
        bytes in sse_bytes(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        prop_assert_eq!(feed_cut(1 << 20, &bytes, &cuts), reference(&bytes));
    }
}
