//! Fuzzes envelope decoding and the whole engine with arbitrary frames: no
//! panics, and a rejected frame never changes what was applied.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runstream::core::engine::{Config, Engine};
use runstream::core::envelope::decode_envelope;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = decode_envelope(&text, "run_1");
    let mut e = Engine::new(Config::new("run_1"), [1, 2], None);
    e.start(0.0);
    while e.poll_action().is_some() {}
    e.handle_response(1.0, 1, 200, None, true);
    e.handle_bytes(2.0, 1, data);
    let before = e.state().clone();
    let mut framed = b"data: ".to_vec();
    framed.extend_from_slice(data);
    framed.extend_from_slice(b"\n\n");
    e.handle_bytes(3.0, 1, &framed);
    e.handle_ws_text(4.0, 1, &text);
    if e.metrics().protocol_errors > 0 && e.cursor() == before.cursor {
        assert_eq!(e.state(), &before);
    }
    e.handle_timeout(1e9);
});
