//! JSON numbers (RFC 8259 §6): grammar, integer classification and the
//! decimal → `f64` conversion, without `core::num::dec2flt` (its tables of
//! powers of five weigh ~10 KB in a wasm).
//!
//! The classification is serde_json's (1.0, default features): a number
//! written as an integer that fits `u64` is [`Number::U64`]; a negative one
//! that fits `i64` is [`Number::I64`]; everything else (a fraction, an
//! exponent, `-0`, an integer beyond 64 bits) is [`Number::F64`].
//!
//! The conversion follows serde_json's digit folding step by step (the first
//! 19–20 significant digits into a `u64`, later integer digits as powers of
//! ten, later fraction digits ignored), then scales by the correctly rounded
//! power of ten, as serde_json does: the result is bit-identical to
//! serde_json's (`tests/json.rs`), which is exact for every integer below
//! 2^53 and every decimal of ≤ 15 significant digits with an exponent of
//! magnitude ≤ 22, and otherwise within a few ULP (serde_json without its
//! `float_roundtrip` feature is not correctly rounded either). serde_json
//! keeps a 309-entry table of powers; powers beyond 10^22 are computed here
//! with a small big integer instead (rare: slower, but no table). A
//! magnitude that becomes infinite is
//! [`NumberOutOfRange`](super::JsonErrorCode::NumberOutOfRange), as in serde_json.

use super::error::{JsonError, JsonErrorCode};

/// A parsed number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// A non-negative integer that fits `u64`.
    U64(u64),
    /// A negative integer that fits `i64`.
    I64(i64),
    /// Any other number.
    F64(f64),
}

impl Number {
    /// The value as `f64` (integers above 2^53 round).
    pub fn as_f64(self) -> f64 {
        match self {
            Self::U64(n) => n as f64,
            Self::I64(n) => n as f64,
            Self::F64(f) => f,
        }
    }

    /// The value when it is a non-negative integer written as one.
    pub fn as_u64(self) -> Option<u64> {
        match self {
            Self::U64(n) => Some(n),
            _ => None,
        }
    }
}

/// 10^e correctly rounded, for 0 ≤ e ≤ 308 (serde_json's table entries):
/// exact by `powi` up to 10^22, from a big integer above.
fn pow10(e: i32) -> f64 {
    if e <= 22 {
        return 10f64.powi(e);
    }
    let mut big = vec![1u32];
    super::write::mul_pow(&mut big, 10, e.unsigned_abs());
    while big.last() == Some(&0) {
        big.pop();
    }
    let bits = big.len() as i32 * 32 - big.last().map_or(32, |l| l.leading_zeros() as i32);
    // The top 64 bits, and whether any bit below them is set (sticky): the
    // u64 → f64 conversion then rounds to nearest-even exactly once.
    let shift = bits - 64;
    let bit = |i: i32| -> u64 {
        let limb = big.get((i / 32) as usize).copied().unwrap_or(0);
        u64::from((limb >> (i % 32)) & 1)
    };
    let mut top = 0u64;
    for i in (shift..bits).rev() {
        top = (top << 1) | bit(i);
    }
    let sticky = (0..shift).any(|i| bit(i) == 1);
    (top | u64::from(sticky)) as f64 * 2f64.powi(shift)
}

fn overflows(s: u64, digit: u64) -> bool {
    s >= u64::MAX / 10 && (s > u64::MAX / 10 || digit > u64::MAX % 10)
}

/// Parses the number starting at `b[start]` (a `-` or a digit). Returns it
/// and the offset just past it.
pub(crate) fn parse(b: &[u8], start: usize) -> Result<(Number, usize), JsonError> {
    let mut p = Parser { b, i: start };
    let positive = if p.peek() == Some(b'-') {
        p.i += 1;
        false
    } else {
        true
    };
    let n = p.integer(positive)?;
    Ok((n, p.i))
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn peek_digit(&self) -> Option<u64> {
        match self.peek() {
            Some(c @ b'0'..=b'9') => Some(u64::from(c - b'0')),
            _ => None,
        }
    }

    fn err(&self, code: JsonErrorCode) -> JsonError {
        JsonError::new(code, self.i)
    }

    /// A digit where one is required: end of input is `Eof`, anything else `BadNumber`.
    fn need_digit(&mut self) -> Result<u64, JsonError> {
        match self.peek() {
            None => Err(self.err(JsonErrorCode::Eof)),
            Some(c @ b'0'..=b'9') => {
                self.i += 1;
                Ok(u64::from(c - b'0'))
            }
            Some(_) => Err(self.err(JsonErrorCode::BadNumber)),
        }
    }

    fn integer(&mut self, positive: bool) -> Result<Number, JsonError> {
        let first = self.need_digit()?;
        let mut s = first;
        if first == 0 {
            if self.peek_digit().is_some() {
                return Err(self.err(JsonErrorCode::BadNumber));
            }
        } else {
            while let Some(d) = self.peek_digit() {
                if overflows(s, d) {
                    return self.long_integer(positive, s).map(Number::F64);
                }
                self.i += 1;
                s = s * 10 + d;
            }
        }
        match self.peek() {
            Some(b'.') => self.decimal(positive, s, 0).map(Number::F64),
            Some(b'e' | b'E') => self.exponent(positive, s, 0).map(Number::F64),
            _ if positive => Ok(Number::U64(s)),
            _ => {
                let neg = (s as i64).wrapping_neg();
                // `-0` and magnitudes beyond i64 are floats (serde_json's rule).
                if neg >= 0 {
                    Ok(Number::F64(-(s as f64)))
                } else {
                    Ok(Number::I64(neg))
                }
            }
        }
    }

    fn long_integer(&mut self, positive: bool, s: u64) -> Result<f64, JsonError> {
        let mut exp: i32 = 0;
        loop {
            match self.peek() {
                Some(b'0'..=b'9') => {
                    self.i += 1;
                    exp = exp.saturating_add(1);
                }
                Some(b'.') => return self.decimal(positive, s, exp),
                Some(b'e' | b'E') => return self.exponent(positive, s, exp),
                _ => return self.scale(positive, s, exp),
            }
        }
    }

    fn decimal(&mut self, positive: bool, mut s: u64, exp_before: i32) -> Result<f64, JsonError> {
        self.i += 1; // '.'
        let mut after: i32 = 0;
        while let Some(d) = self.peek_digit() {
            if overflows(s, d) {
                // Later digits cannot change a u64 significand: skip them.
                while self.peek_digit().is_some() {
                    self.i += 1;
                }
                let exp = exp_before.saturating_add(after);
                return match self.peek() {
                    Some(b'e' | b'E') => self.exponent(positive, s, exp),
                    _ => self.scale(positive, s, exp),
                };
            }
            self.i += 1;
            s = s * 10 + d;
            after -= 1;
        }
        if after == 0 {
            return Err(match self.peek() {
                None => self.err(JsonErrorCode::Eof),
                Some(_) => self.err(JsonErrorCode::BadNumber),
            });
        }
        let exp = exp_before.saturating_add(after);
        match self.peek() {
            Some(b'e' | b'E') => self.exponent(positive, s, exp),
            _ => self.scale(positive, s, exp),
        }
    }

    fn exponent(&mut self, positive: bool, s: u64, start: i32) -> Result<f64, JsonError> {
        self.i += 1; // 'e'
        let positive_exp = match self.peek() {
            Some(b'+') => {
                self.i += 1;
                true
            }
            Some(b'-') => {
                self.i += 1;
                false
            }
            _ => true,
        };
        let mut e = self.need_digit()? as i32;
        while let Some(d) = self.peek_digit() {
            self.i += 1;
            let d = d as i32;
            if e >= i32::MAX / 10 && (e > i32::MAX / 10 || d > i32::MAX % 10) {
                // An exponent beyond i32: infinite (an error) or zero.
                if s != 0 && positive_exp {
                    return Err(self.err(JsonErrorCode::NumberOutOfRange));
                }
                while self.peek_digit().is_some() {
                    self.i += 1;
                }
                return Ok(if positive { 0.0 } else { -0.0 });
            }
            e = e * 10 + d;
        }
        let exp = if positive_exp {
            start.saturating_add(e)
        } else {
            start.saturating_sub(e)
        };
        self.scale(positive, s, exp)
    }

    fn scale(&self, positive: bool, s: u64, mut exp: i32) -> Result<f64, JsonError> {
        let mut f = s as f64;
        loop {
            if exp.unsigned_abs() <= 308 {
                let pow = pow10(exp.abs());
                if exp >= 0 {
                    f *= pow;
                    if f.is_infinite() {
                        return Err(self.err(JsonErrorCode::NumberOutOfRange));
                    }
                } else {
                    f /= pow;
                }
                break;
            }
            if f == 0.0 {
                break;
            }
            if exp >= 0 {
                return Err(self.err(JsonErrorCode::NumberOutOfRange));
            }
            f /= 1e308;
            exp += 308;
        }
        Ok(if positive { f } else { -f })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> Result<Number, JsonErrorCode> {
        match parse(s.as_bytes(), 0) {
            Ok((n, end)) if end == s.len() => Ok(n),
            Ok(_) => Err(JsonErrorCode::Trailing),
            Err(e) => Err(e.code),
        }
    }

    #[test]
    fn classifies_like_serde_json() {
        assert_eq!(num("0"), Ok(Number::U64(0)));
        assert_eq!(num("18446744073709551615"), Ok(Number::U64(u64::MAX)));
        assert_eq!(
            num("18446744073709551616"),
            Ok(Number::F64(18446744073709551616.0))
        );
        assert_eq!(num("-1"), Ok(Number::I64(-1)));
        assert_eq!(num("-9223372036854775808"), Ok(Number::I64(i64::MIN)));
        assert!(matches!(num("-9223372036854775809"), Ok(Number::F64(_))));
        assert!(matches!(num("-0"), Ok(Number::F64(f)) if f == 0.0 && f.is_sign_negative()));
        assert_eq!(num("1.0"), Ok(Number::F64(1.0)));
        assert_eq!(num("1e2"), Ok(Number::F64(100.0)));
        assert_eq!(num("12.5"), Ok(Number::F64(12.5)));
        assert_eq!(num("-2.5E-3"), Ok(Number::F64(-0.0025)));
        assert_eq!(num("1e-400"), Ok(Number::F64(0.0)));
        assert_eq!(num("0e999999999999"), Ok(Number::F64(0.0)));
    }

    #[test]
    fn rejects_what_rfc_8259_rejects() {
        for (s, code) in [
            ("01", JsonErrorCode::BadNumber),
            ("-", JsonErrorCode::Eof),
            ("-a", JsonErrorCode::BadNumber),
            ("1.", JsonErrorCode::Eof),
            ("1.e5", JsonErrorCode::BadNumber),
            ("1e", JsonErrorCode::Eof),
            ("1e+", JsonErrorCode::Eof),
            ("1ex", JsonErrorCode::BadNumber),
            ("1e309", JsonErrorCode::NumberOutOfRange),
            ("1e99999999999", JsonErrorCode::NumberOutOfRange),
        ] {
            assert_eq!(num(s), Err(code), "{s}");
        }
        // `+1`, `.5` and `0x1` are not numbers: the scanner never calls `parse` on them,
        // and a number stops where the grammar stops.
        assert_eq!(num("0x1"), Err(JsonErrorCode::Trailing));
    }

    #[test]
    fn short_decimals_are_exact() {
        for s in [
            "0.1",
            "3.14159",
            "1732276800123.5",
            "123456789012345e-22",
            "5e-324",
        ] {
            let want: f64 = s.parse().unwrap();
            assert_eq!(num(s).map(Number::as_f64), Ok(want), "{s}");
        }
    }
}
