//! The publish API's batch check (SERVER.md §1), written once for both
//! servers: the gateway (`server/src/publish.rs`) and the TypeScript kit
//! (its wasm, `kit/reducer`) call [`check_batch`], so their answers are the
//! same word for word. On the codec's [`Scanner`] (no serde): the body is read
//! once, its canonical text (keys sorted, compact: what the idempotency digest
//! is taken of) is written on the way, and each event is validated with
//! [`decode_envelope`], the rules the client reads events with.

use std::borrow::Cow;

use crate::envelope::{decode_envelope, KNOWN_TYPES};
use crate::json::write::push_str;
use crate::json::{JsonError, Scanner, Token};

/// Most events in one publish batch.
pub const MAX_BATCH: usize = 1000;

/// What the body must look like (the start of every shape error).
const SHAPE: &str = "expected {\"events\": [{type, payload}, ...]}: ";

/// Why a publish body was refused (each is a `400`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Not JSON (answered as plain text).
    Syntax(String),
    /// JSON, but not a valid batch: the `{"error": …}` message, naming `events[i]`.
    Invalid(String),
}

/// One event of a checked batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEvent {
    /// Its PROTOCOL §4 type.
    pub ty: String,
    /// Its payload object, as canonical JSON text.
    pub payload: String,
}

/// A batch that passed [`check_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The body's canonical JSON text (keys sorted, compact).
    pub canonical: String,
    /// Its events, in order.
    pub events: Vec<BatchEvent>,
}

/// Validates a publish body `{"events":[{type, payload}, …]}` for run
/// `run_id`: JSON, then its shape (every event an object of exactly `type`,
/// a string, and `payload`), then at least one and at most [`MAX_BATCH`]
/// events, then each event in order: a §4 type (not `snapshot`; not
/// `run.cancel_requested` unless `cancel_allowed`, which the publish API never
/// is: a cancel goes through the cancel route), a payload object of its
/// schema, and nothing after `run.completed`.
pub fn check_batch(run_id: &str, body: &str, cancel_allowed: bool) -> Result<Batch, BatchError> {
    let mut s = Scanner::new(body);
    let mut canonical = String::with_capacity(body.len());
    canon(&mut s, &mut canonical).map_err(syntax)?;
    s.end().map_err(syntax)?;
    let events = shape(&canonical).map_err(|m| BatchError::Invalid(format!("{SHAPE}{m}")))?;
    let invalid = BatchError::Invalid;
    if events.is_empty() {
        return Err(invalid("events must not be empty".to_owned()));
    }
    if events.len() > MAX_BATCH {
        return Err(invalid(format!("at most {MAX_BATCH} events per batch")));
    }
    let n = events.len();
    for (i, e) in events.iter().enumerate() {
        check_event(run_id, i, e, cancel_allowed).map_err(invalid)?;
        if e.ty == "run.completed" && i + 1 < n {
            return Err(invalid(format!(
                "events[{}]: comes after run.completed in the same batch",
                i + 1
            )));
        }
    }
    Ok(Batch { canonical, events })
}

fn syntax(e: JsonError) -> BatchError {
    BatchError::Syntax(format!(
        "Failed to parse the request body as JSON: {} at byte {}",
        e.message(),
        e.at
    ))
}

/// Writes the next value canonically: objects with their keys sorted (byte
/// order) and each key once (the last occurrence, as a JSON map keeps it),
/// no whitespace, strings escaped as serde_json does, numbers as written (in
/// this canonical text, the idempotency digest's input: the stored payloads are
/// re-parsed by each server, which may normalise numbers). Nesting is bounded by the scanner ([`crate::json::MAX_DEPTH`]).
fn canon(s: &mut Scanner<'_>, out: &mut String) -> Result<(), JsonError> {
    match s.peek()? {
        Token::Null => {
            s.null()?;
            out.push_str("null");
        }
        Token::Bool => out.push_str(if s.bool()? { "true" } else { "false" }),
        // As written (validated), in the canonical text.
        Token::Number => out.push_str(s.raw()?),
        Token::String => push_str(out, &s.string()?),
        Token::Array => {
            s.array()?;
            out.push('[');
            let mut first = true;
            while s.item()? {
                if !first {
                    out.push(',');
                }
                first = false;
                canon(s, out)?;
            }
            out.push(']');
        }
        Token::Object => {
            s.object()?;
            let mut members: Vec<(Cow<'_, str>, String)> = Vec::new();
            while let Some(k) = s.key()? {
                let mut v = String::new();
                canon(s, &mut v)?;
                members.push((k, v));
            }
            // O(n log n) in the members: sorted by key, stable, so of each run of
            // equal keys the last one written is the last of its run and is kept.
            members.sort_by(|a, b| a.0.cmp(&b.0));
            out.push('{');
            let mut first = true;
            for (i, (k, v)) in members.iter().enumerate() {
                if members.get(i + 1).is_some_and(|next| next.0 == *k) {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                push_str(out, k);
                out.push(':');
                out.push_str(v);
            }
            out.push('}');
        }
    }
    Ok(())
}

/// The events of a canonical body, or what is wrong with its shape.
fn shape(canonical: &str) -> Result<Vec<BatchEvent>, String> {
    let wrong = |_: JsonError| "the body is not of this shape".to_owned();
    let mut s = Scanner::new(canonical);
    if s.peek().map_err(wrong)? != Token::Object {
        return Err("the body must be an object".to_owned());
    }
    s.object().map_err(wrong)?;
    let mut events = None;
    while let Some(k) = s.key().map_err(wrong)? {
        if k != "events" {
            return Err(format!("unknown field `{k}`, expected `events`"));
        }
        if s.peek().map_err(wrong)? != Token::Array {
            return Err("events must be an array".to_owned());
        }
        s.array().map_err(wrong)?;
        let mut list = Vec::new();
        while s.item().map_err(wrong)? {
            list.push(event(&mut s, list.len())?);
        }
        events = Some(list);
    }
    events.ok_or_else(|| "missing field `events`".to_owned())
}

/// Event `i` of the array (its shape only: an object of `type` and `payload`).
fn event(s: &mut Scanner<'_>, i: usize) -> Result<BatchEvent, String> {
    let wrong = |_: JsonError| "the body is not of this shape".to_owned();
    if s.peek().map_err(wrong)? != Token::Object {
        return Err(format!("events[{i}] must be an object"));
    }
    s.object().map_err(wrong)?;
    let (mut ty, mut payload) = (None, None);
    while let Some(k) = s.key().map_err(wrong)? {
        match k.as_ref() {
            "type" => {
                if s.peek().map_err(wrong)? != Token::String {
                    return Err(format!("events[{i}]: type must be a string"));
                }
                ty = Some(s.string().map_err(wrong)?.into_owned());
            }
            "payload" => payload = Some(s.raw().map_err(wrong)?.to_owned()),
            _ => {
                return Err(format!(
                    "events[{i}]: unknown field `{k}`, expected `type` or `payload`"
                ))
            }
        }
    }
    match (ty, payload) {
        (Some(ty), Some(payload)) => Ok(BatchEvent { ty, payload }),
        (None, _) => Err(format!("events[{i}]: missing field `type`")),
        (_, None) => Err(format!("events[{i}]: missing field `payload`")),
    }
}

/// Checks event `i` with the codec the client validates with: a §4 type, a
/// payload object of its schema.
fn check_event(run_id: &str, i: usize, e: &BatchEvent, cancel_allowed: bool) -> Result<(), String> {
    if e.ty == "run.cancel_requested" && !cancel_allowed {
        // One request per target (PROTOCOL §8) is kept by the cancel route alone.
        return Err(format!(
            "events[{i}]: run.cancel_requested is appended by POST /api/runs/{{run_id}}/cancel"
        ));
    }
    if e.ty == "snapshot" || !KNOWN_TYPES.contains(&e.ty.as_str()) {
        return Err(format!(
            "events[{i}]: type {:?} is not an event type of PROTOCOL §4",
            e.ty
        ));
    }
    if !e.payload.starts_with('{') {
        return Err(format!("events[{i}]: payload must be an object"));
    }
    // The envelope as a server would store it (keys sorted, as written before this was shared).
    let mut env = String::with_capacity(e.payload.len() + run_id.len() + e.ty.len() + 80);
    env.push_str("{\"event_id\":1,\"payload\":");
    env.push_str(&e.payload);
    env.push_str(",\"run_id\":");
    push_str(&mut env, run_id);
    env.push_str(",\"timestamp\":\"2026-01-01T00:00:00Z\",\"type\":");
    push_str(&mut env, &e.ty);
    env.push('}');
    decode_envelope(&env, run_id)
        .map(|_| ())
        .map_err(|err| format!("events[{i}] ({}): {err}", e.ty))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(body: &str) -> String {
        match check_batch("r", body, false) {
            Err(BatchError::Invalid(m)) => m,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_valid_batch_and_its_canonical_text() {
        let b = check_batch(
            "r",
            r#" {"events":[{"type":"run.started","payload":{"title":"t","a":[1, -2, 1.5, true, null]}}]} "#,
            false,
        )
        .unwrap();
        assert_eq!(
            b.canonical,
            r#"{"events":[{"payload":{"a":[1,-2,1.5,true,null],"title":"t"},"type":"run.started"}]}"#
        );
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.events[0].ty, "run.started");
        assert_eq!(
            b.events[0].payload,
            r#"{"a":[1,-2,1.5,true,null],"title":"t"}"#
        );
        // Key order and whitespace do not change the canonical text; the last duplicate wins.
        let again = check_batch(
            "r",
            r#"{"events":[{"payload":{"title":"x","a":[1,-2,1.5,true,null],"title":"t"},"type":"run.started"}]}"#,
            false,
        )
        .unwrap();
        assert_eq!(again.canonical, b.canonical);
    }

    #[test]
    fn of_many_duplicate_keys_the_last_of_each_is_kept() {
        // 3 × 20,000 members, each key written three times, interleaved: the last value of
        // each key stays, once, in key order (was a linear search per member).
        let mut payload = String::from("{");
        for round in 0..3 {
            for k in 0..20_000 {
                if payload.len() > 1 {
                    payload.push(',');
                }
                payload.push_str(&format!("\"k{k:05}\":{round}"));
            }
        }
        payload.push('}');
        let body = format!(r#"{{"events":[{{"type":"run.started","payload":{payload}}}]}}"#);
        let b = check_batch("r", &body, false).unwrap();
        let expected: Vec<String> = (0..20_000).map(|k| format!("\"k{k:05}\":2")).collect();
        assert_eq!(b.events[0].payload, format!("{{{}}}", expected.join(",")));
    }

    #[test]
    fn every_kind_of_refusal() {
        assert!(
            matches!(check_batch("r", "{not json", false), Err(BatchError::Syntax(m)) if m.starts_with("Failed to parse the request body as JSON: "))
        );
        assert!(matches!(
            check_batch("r", "{} x", false),
            Err(BatchError::Syntax(_))
        ));
        for (body, msg) in [
            ("[]", "the body must be an object"),
            ("{}", "missing field `events`"),
            (
                r#"{"events":[],"x":1}"#,
                "unknown field `x`, expected `events`",
            ),
            (r#"{"events":{}}"#, "events must be an array"),
            (r#"{"events":[1]}"#, "events[0] must be an object"),
            (
                r#"{"events":[{"type":1,"payload":{}}]}"#,
                "events[0]: type must be a string",
            ),
            (
                r#"{"events":[{"type":"run.started"}]}"#,
                "events[0]: missing field `payload`",
            ),
            (
                r#"{"events":[{"payload":{}}]}"#,
                "events[0]: missing field `type`",
            ),
            (
                r#"{"events":[{"type":"run.started","payload":{},"x":1}]}"#,
                "events[0]: unknown field `x`, expected `type` or `payload`",
            ),
        ] {
            assert_eq!(invalid(body), format!("{SHAPE}{msg}"), "{body}");
        }
        assert_eq!(invalid(r#"{"events":[]}"#), "events must not be empty");
        assert_eq!(
            invalid(r#"{"events":[{"type":"nope","payload":{}}]}"#),
            "events[0]: type \"nope\" is not an event type of PROTOCOL §4"
        );
        assert_eq!(
            invalid(r#"{"events":[{"type":"run.started","payload":[]}]}"#),
            "events[0]: payload must be an object"
        );
        assert!(invalid(
            r#"{"events":[{"type":"run.started","payload":{}},{"type":"tool.started","payload":{}}]}"#
        )
        .starts_with("events[1] (tool.started): "));
        assert_eq!(
            invalid(
                r#"{"events":[{"type":"run.completed","payload":{"status":"succeeded"}},{"type":"run.started","payload":{}}]}"#
            ),
            "events[1]: comes after run.completed in the same batch"
        );
        let cancel = r#"{"events":[{"type":"run.cancel_requested","payload":{}}]}"#;
        assert!(check_batch("r", cancel, false).is_err());
        assert!(check_batch("r", cancel, true).is_ok());
        let many = format!(
            "{{\"events\":[{}]}}",
            vec![r#"{"type":"run.started","payload":{}}"#; MAX_BATCH + 1].join(",")
        );
        assert_eq!(
            invalid(&many),
            format!("at most {MAX_BATCH} events per batch")
        );
    }

    /// The canonical text is serde_json's (sorted keys, compact, its string escapes), so a
    /// digest taken before this check was shared matches; numbers are kept as written,
    /// where serde_json normalized them (`1e300` → `1e+300`, `1.50` → `1.5`).
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn the_canonical_text_is_serde_jsons_but_numbers_are_as_written() {
        let payloads = [
            r#"{"title":"a\"b\\c\n\u0001\u00e9\u2028 é 😀","z":null,"a":true}"#,
            r#"{"worker_id":"w","job_id":"j","n":[0,-1,18446744073709551615,-9223372036854775808,1.5,1.0,-2.25e-7]}"#,
            r#"{"b":{"y":[{"q":1,"p":[]}],"x":{}},"a":"\/"}"#,
            r#"{"k":1,"k":2}"#,
        ];
        for p in payloads {
            let body = format!(r#"{{"events":[{{"type":"run.started","payload":{p}}}]}}"#);
            let ours = check_batch("r", &body, false).unwrap().canonical;
            let theirs = serde_json::from_str::<serde_json::Value>(&body)
                .unwrap()
                .to_string();
            assert_eq!(ours, theirs, "{p}");
        }
        let exact = r#"{"events":[{"type":"run.started","payload":{"x":1e300,"y":1.50}}]}"#;
        assert_eq!(
            check_batch("r", exact, false).unwrap().canonical,
            r#"{"events":[{"payload":{"x":1e300,"y":1.50},"type":"run.started"}]}"#
        );
        assert!(matches!(
            check_batch(
                "r",
                r#"{"events":[{"type":"run.started","payload":{"x":1e400}}]}"#,
                false
            ),
            Err(BatchError::Syntax(_))
        ));
    }
}
