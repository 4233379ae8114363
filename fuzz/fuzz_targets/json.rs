//! Fuzzes `core::json` against serde_json: the scanner accepts exactly what
//! serde_json accepts, with bit-identical values; what it accepts, the
//! writer writes back to a text serde_json reads as the same value; and the
//! envelope decoder never panics on it.
#![no_main]

#[path = "../../tests/support/json_diff.rs"]
mod json_diff;

use libfuzzer_sys::fuzz_target;
use runstream::core::envelope::decode_envelope;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    json_diff::check(text);
    if let Ok(v) = json_diff::parse(text) {
        json_diff::check_writer(&v);
    }
    let _ = decode_envelope(text, "run_1");
});
