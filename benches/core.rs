#![allow(clippy::indexing_slicing, clippy::unwrap_used)]
//! The core's per-event cost, natively: SSE bytes of a 100k-event chat run →
//! applied, deduplicated state. `cargo bench --bench core`.
use std::time::Instant;

use runstream::core::engine::{Action, Config, Engine};
use runstream::core::envelope::decode_envelope;

fn log(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |id: u64, ty: &str, payload: String| {
        let env = format!(
            r#"{{"event_id":{id},"run_id":"run_b","type":"{ty}","timestamp":"2026-11-22T12:00:00.000Z","payload":{payload}}}"#
        );
        out.extend_from_slice(format!("id: {id}\nevent: {ty}\ndata: {env}\n\n").as_bytes());
    };
    push(1, "run.started", "{}".into());
    push(
        2,
        "message.created",
        r#"{"message_id":"m1","role":"assistant"}"#.into(),
    );
    for i in 0..n {
        push(
            i + 3,
            "message.delta",
            format!(r#"{{"message_id":"m1","delta":"t{} "}}"#, i % 1000),
        );
    }
    push(n + 3, "run.completed", r#"{"status":"succeeded"}"#.into());
    out
}

fn main() {
    let n: u64 = std::env::var("RUNSTREAM_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // RUNSTREAM_BENCH_ONLY=decode: decoding alone; =engine: the engine path alone.
    let only = std::env::var("RUNSTREAM_BENCH_ONLY").unwrap_or_default();
    if only == "decode" {
        decode_only(n);
        return;
    }
    let bytes = log(n);
    let mut rates = Vec::new();
    for _ in 0..7 {
        let mut e = Engine::new(Config::new("run_b"), [1, 2], None);
        e.start(0.0);
        while e.poll_action().is_some() {}
        e.handle_response(0.0, 1, 200, None, true);
        let t0 = Instant::now();
        for (i, chunk) in bytes.chunks(64 * 1024).enumerate() {
            e.handle_bytes(i as f64, 1, chunk);
            while let Some(a) = e.poll_action() {
                if matches!(a, Action::RequestFrame) {
                    e.flush(i as f64);
                }
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        assert_eq!(e.cursor(), n + 3);
        rates.push((n + 3) as f64 / dt);
    }
    rates.sort_by(f64::total_cmp);
    let med = rates[rates.len() / 2];
    if only != "engine" {
        decode_only(n);
    }
    println!(
        "core: {} events ({} MB of SSE) → applied state: median {:.0} events/s ({:.2} µs/event) over 7 runs",
        n + 3,
        bytes.len() / 1_000_000,
        med,
        1e6 / med
    );
}

/// Envelope decoding alone (`decode_envelope` on the JSON texts of a delta
/// run, one with an escaped delta in eight), median of 7 runs.
fn decode_only(n: u64) {
    let texts: Vec<String> = (0..n)
        .map(|i| {
            let delta = if i % 8 == 0 { "t\\\"q\\\" \\u00e9" } else { "tok " };
            format!(
                r#"{{"event_id":{},"run_id":"run_b","type":"message.delta","timestamp":"2026-11-22T12:00:00.000Z","payload":{{"message_id":"m1","delta":"{delta}"}}}}"#,
                i + 1
            )
        })
        .collect();
    let mut rates = Vec::new();
    for _ in 0..7 {
        let t0 = Instant::now();
        let mut ok = 0u64;
        for t in &texts {
            ok += u64::from(decode_envelope(t, "run_b").is_ok());
        }
        let dt = t0.elapsed().as_secs_f64();
        assert_eq!(ok, n);
        rates.push(n as f64 / dt);
    }
    rates.sort_by(f64::total_cmp);
    let med = rates[rates.len() / 2];
    println!(
        "decode: {n} message.delta envelopes → decode_envelope: median {:.0} envelopes/s ({:.3} µs/envelope) over 7 runs",
        med,
        1e6 / med
    );
}
