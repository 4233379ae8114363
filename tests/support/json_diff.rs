//! The differential oracle of `core::json` against serde_json, shared by
//! `tests/json.rs` and `fuzz/fuzz_targets/json.rs`.
//!
//! `check(text)` parses `text` with both and panics on any disagreement:
//! one accepts and the other rejects, or they yield different values.
//! Numbers must be bit-identical and of the same class (u64 / i64 / f64).
#![allow(dead_code, clippy::panic, clippy::unwrap_used)]

use runstream::core::json::{JsonError, Number, Scanner, Token, Writer};
use serde_json::Value;

/// Builds a serde_json value with the pull API (duplicate keys: last wins).
pub fn scan_value(s: &mut Scanner<'_>) -> Result<Value, JsonError> {
    Ok(match s.peek()? {
        Token::Null => {
            s.null()?;
            Value::Null
        }
        Token::Bool => Value::Bool(s.bool()?),
        Token::Number => match s.number()? {
            Number::U64(n) => Value::from(n),
            Number::I64(n) => Value::from(n),
            Number::F64(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        },
        Token::String => Value::String(s.string()?.into_owned()),
        Token::Array => {
            s.array()?;
            let mut v = Vec::new();
            while s.item()? {
                v.push(scan_value(s)?);
            }
            Value::Array(v)
        }
        Token::Object => {
            s.object()?;
            let mut m = serde_json::Map::new();
            while let Some(k) = s.key()? {
                let v = scan_value(s)?;
                m.insert(k.into_owned(), v);
            }
            Value::Object(m)
        }
    })
}

/// A whole document through the scanner.
pub fn parse(text: &str) -> Result<Value, JsonError> {
    let mut s = Scanner::new(text);
    let v = scan_value(&mut s)?;
    s.end()?;
    Ok(v)
}

/// Same JSON value (floats bit for bit).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x.is_f64() != y.is_f64() {
                return false;
            }
            match (x.as_u64(), y.as_u64(), x.as_i64(), y.as_i64()) {
                (Some(p), Some(q), _, _) => p == q,
                (_, _, Some(p), Some(q)) => p == q,
                _ => {
                    let (p, q) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                    p.to_bits() == q.to_bits()
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((k, p), (l, q))| k == l && same(p, q))
        }
        _ => a == b,
    }
}

/// Panics unless the scanner and serde_json agree on `text`.
pub fn check(text: &str) {
    let ours = parse(text);
    let theirs = serde_json::from_str::<Value>(text);
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => assert!(same(a, b), "{text:?}: {a} vs {b}"),
        (Err(_), Err(_)) => {}
        _ => panic!("{text:?}: scanner {ours:?}, serde_json {theirs:?}"),
    }
}

/// Writes a serde_json value with the writer.
pub fn write_value(w: &mut Writer, v: &Value) {
    match v {
        Value::Null => {
            w.null();
        }
        Value::Bool(b) => {
            w.bool(*b);
        }
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                w.u64(u);
            } else if let Some(i) = n.as_i64() {
                w.i64(i);
            } else {
                w.f64(n.as_f64().unwrap());
            }
        }
        Value::String(s) => {
            w.str(s);
        }
        Value::Array(a) => {
            w.begin_array();
            a.iter().for_each(|x| write_value(w, x));
            w.end_array();
        }
        Value::Object(o) => {
            w.begin_object();
            for (k, x) in o {
                w.key(k);
                write_value(w, x);
            }
            w.end_object();
        }
    }
}

/// Panics unless the writer's text for `v` reads back (with serde_json) as
/// `v` (floats within 1e-15 relative, see `same_written`).
pub fn check_writer(v: &Value) {
    let mut w = Writer::new();
    write_value(&mut w, v);
    let text = w.finish();
    let back: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert!(same_written(v, &back), "{v} → {text} → {back}");
}

fn same_written(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (p, q) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if x.is_f64() {
                // Seventeen digits identify the f64, but serde_json's reader
                // (not correctly rounded) may land a few ULP off; an integral
                // float is written with integer digits and may read back as an
                // integer. Exactness is checked with a correctly rounding
                // reader in `tests/json.rs`.
                return p == q || ((p - q) / q).abs() <= 1e-15;
            }
            same(a, b)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_written(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k, p), (l, q))| k == l && same_written(p, q))
        }
        _ => a == b,
    }
}
