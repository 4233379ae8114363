//! Differential fuzzing of the SSE parser: any chunking of the same bytes gives
//! the same items, nothing panics, and buffers stay within their bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runstream::core::sse::{SseItem, SseParser};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else { return };
    let mut whole = Vec::new();
    let mut p = SseParser::new(4096);
    p.feed(bytes, &mut |i| whole.push(i));
    let mut parts = Vec::new();
    let mut q = SseParser::new(4096);
    let step = usize::from(cut % 17) + 1;
    for chunk in bytes.chunks(step) {
        q.feed(chunk, &mut |i| parts.push(i));
        assert!(q.buffered_bytes() <= 4096 + 16);
    }
    // A too-large report may differ in the byte count seen so far; everything else is identical.
    let norm = |v: Vec<SseItem>| -> Vec<SseItem> {
        v.into_iter()
            .map(|i| match i {
                SseItem::TooLarge(_) => SseItem::TooLarge(0),
                other => other,
            })
            .collect()
    };
    assert_eq!(norm(whole), norm(parts));
});
