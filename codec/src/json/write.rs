//! The writer: JSON text without `core::fmt`.
//!
//! - Strings are escaped exactly as serde_json escapes them (RFC 8259 §7):
//!   `"` and `\` with a backslash, U+0008/0009/000A/000C/000D as `\b \t \n
//!   \f \r`, the other controls below U+0020 as `\u00XX` (lowercase hex);
//!   everything else, `/` and non-ASCII included, as is.
//! - Integers are written digit by digit ([`push_u64`], [`push_i64`]).
//! - An `f64` that is an integer of magnitude ≤ 2^53 is written as an integer
//!   (`3.0` → `3`, where serde_json writes `3.0`; `-0.0` → `0`). Any other
//!   finite value is rounded from its exact decimal expansion (computed with
//!   a small big integer) to 15 significant digits when those give the value
//!   back (checked exactly), to 17 otherwise; trailing zeros are dropped:
//!   `12.5` → `12.5`, `0.1` → `0.1`, `1.0/3.0` → `0.33333333333333331`.
//!   Seventeen digits always identify the `f64`, so a correctly rounding
//!   reader (JS `JSON.parse`, Rust `str::parse`) gets the same value back;
//!   serde_json's default reader may be one ULP off (it is not correctly
//!   rounded). The output is not always the shortest (ryu's, which needs
//!   ~10 KB of tables): 16-digit values are written with 17.
//!   Non-finite values are written `null`, as serde_json does.
//!
//! A [`Writer`] places commas itself; the caller opens and closes
//! containers and writes keys before values. Output grows with what is
//! written and nothing else.

/// Appends the decimal digits of `n`.
pub fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    for &d in buf.get(i..).unwrap_or(&[]) {
        out.push(char::from(d));
    }
}

/// Appends the low `digits` hex digits of `n` (lowercase, zero-padded):
/// `{:0width$x}` without `core::fmt`.
pub fn push_hex(out: &mut String, n: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits.min(16)).rev() {
        let d = ((n >> (4 * i)) & 15) as usize;
        out.push(char::from(HEX.get(d).copied().unwrap_or(b'0')));
    }
}

/// `before`, `n` in decimal, `after`: `concat_u64("HTTP ", 404, "")`.
pub fn concat_u64(before: &str, n: u64, after: &str) -> String {
    let mut s = String::with_capacity(before.len() + 20 + after.len());
    s.push_str(before);
    push_u64(&mut s, n);
    s.push_str(after);
    s
}

/// Appends `n` in decimal, with a `-` if negative.
pub fn push_i64(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    push_u64(out, n.unsigned_abs());
}

/// 2^53: integers up to this magnitude are exact in an `f64`.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// Appends `x` as a JSON number (see the module docs), `null` if not finite.
pub fn push_f64(out: &mut String, x: f64) {
    if !x.is_finite() {
        out.push_str("null");
        return;
    }
    if x.fract() == 0.0 && x.abs() <= EXACT_INT {
        push_i64(out, x as i64);
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    let (exact, exact_point) = exact_decimal(x.abs());
    // Fifteen digits when they give `x` back (checked exactly: a 15-digit
    // significand scaled by at most 10^22 is one correctly rounded
    // operation), seventeen otherwise.
    let (mut digits, mut point) = round_to(&exact, exact_point, 15);
    if !short_is_exact(&digits, point, x.abs()) {
        (digits, point) = round_to(&exact, exact_point, 17);
    }
    while digits.len() > 1 && digits.last() == Some(&b'0') {
        digits.pop();
    }
    let n = digits.len() as i32;
    let ascii = |d: &[u8], out: &mut String| d.iter().for_each(|&c| out.push(char::from(c)));
    if (-5..=21).contains(&point) {
        if point <= 0 {
            out.push_str("0.");
            (0..-point).for_each(|_| out.push('0'));
            ascii(&digits, out);
        } else if point >= n {
            ascii(&digits, out);
            (0..point - n).for_each(|_| out.push('0'));
        } else {
            let (int, frac) = digits.split_at(point as usize);
            ascii(int, out);
            out.push('.');
            ascii(frac, out);
        }
    } else {
        let (first, rest) = digits.split_at(1);
        ascii(first, out);
        if !rest.is_empty() {
            out.push('.');
            ascii(rest, out);
        }
        out.push('e');
        push_i64(out, i64::from(point - 1));
    }
}

/// `digits × 10^point` rounded (half up) to at most `n` significant digits.
fn round_to(digits: &[u8], mut point: i32, n: usize) -> (Vec<u8>, i32) {
    let mut out: Vec<u8> = digits.iter().copied().take(n).collect();
    if digits.get(n).is_some_and(|&d| d >= b'5') {
        let mut i = out.len();
        loop {
            if i == 0 {
                out.insert(0, b'1');
                out.truncate(n);
                point += 1;
                break;
            }
            i -= 1;
            match out.get_mut(i) {
                Some(d) if *d == b'9' => *d = b'0',
                Some(d) => {
                    *d += 1;
                    break;
                }
                None => break,
            }
        }
    }
    (out, point)
}

/// Whether `0.DIGITS × 10^point` (at most 15 digits) is exactly `x`, by a
/// single correctly rounded `f64` operation; false when that needs a power
/// of ten beyond 10^22.
fn short_is_exact(digits: &[u8], point: i32, x: f64) -> bool {
    let s = digits
        .iter()
        .fold(0u64, |a, &d| a * 10 + u64::from(d - b'0'));
    let e = point - digits.len() as i32;
    if e.abs() > 22 {
        return false;
    }
    let p = 10f64.powi(e.abs());
    let y = if e >= 0 { s as f64 * p } else { s as f64 / p };
    y == x
}

/// The exact decimal expansion of a positive finite `x`: its digits (no
/// leading zero) and the position of the decimal point (`x = 0.DIGITS × 10^point`).
fn exact_decimal(x: f64) -> (Vec<u8>, i32) {
    let bits = x.to_bits();
    let exp_bits = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1 << 52) - 1);
    let (m, e) = if exp_bits == 0 {
        (frac, -1074)
    } else {
        (frac | (1 << 52), exp_bits - 1075)
    };
    // x = m · 2^e = N / 10^scale with N an integer.
    let mut big = vec![m as u32, (m >> 32) as u32];
    let scale = if e >= 0 {
        mul_pow(&mut big, 2, e as u32);
        0
    } else {
        mul_pow(&mut big, 5, (-e) as u32);
        -e
    };
    let digits = to_decimal(big);
    let point = digits.len() as i32 - scale;
    (digits, point)
}

/// `big *= base^exp` (base 2, 5 or 10), in steps that fit a `u32` multiplier.
pub(crate) fn mul_pow(big: &mut Vec<u32>, base: u32, mut exp: u32) {
    let step = match base {
        2 => 31,
        5 => 13,
        _ => 9,
    };
    while exp > 0 {
        let k = exp.min(step);
        mul_small(big, base.pow(k));
        exp -= k;
    }
}

fn mul_small(big: &mut Vec<u32>, k: u32) {
    let mut carry = 0u64;
    for limb in big.iter_mut() {
        let v = u64::from(*limb) * u64::from(k) + carry;
        *limb = v as u32;
        carry = v >> 32;
    }
    if carry > 0 {
        big.push(carry as u32);
    }
}

/// Decimal digits of a big integer (little-endian `u32` limbs), most significant first.
fn to_decimal(mut big: Vec<u32>) -> Vec<u8> {
    let mut chunks = Vec::new();
    loop {
        while big.last() == Some(&0) {
            big.pop();
        }
        if big.is_empty() {
            break;
        }
        let mut rem = 0u64;
        for limb in big.iter_mut().rev() {
            let v = (rem << 32) | u64::from(*limb);
            *limb = (v / 1_000_000_000) as u32;
            rem = v % 1_000_000_000;
        }
        chunks.push(rem as u32);
    }
    let mut out = Vec::with_capacity(chunks.len() * 9);
    for (i, &c) in chunks.iter().rev().enumerate() {
        let mut nine = [b'0'; 9];
        let mut c = c;
        for slot in nine.iter_mut().rev() {
            *slot = b'0' + (c % 10) as u8;
            c /= 10;
        }
        if i == 0 {
            let lead = nine.iter().position(|&d| d != b'0').unwrap_or(8);
            out.extend_from_slice(nine.get(lead..).unwrap_or(&[]));
        } else {
            out.extend_from_slice(&nine);
        }
    }
    out
}

/// Appends `s` as a JSON string (quotes included), escaped as serde_json does.
pub fn push_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(s.get(run..i).unwrap_or(""));
        run = i + 1;
        if esc.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(
                HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'),
            ));
            out.push(char::from(
                HEX.get(usize::from(b & 15)).copied().unwrap_or(b'0'),
            ));
        } else {
            out.push_str(esc);
        }
    }
    out.push_str(s.get(run..).unwrap_or(""));
    out.push('"');
}

/// A value the [`Writer`] can write (a hand-written `Serialize`).
pub trait ToJson {
    /// Writes `self` as one JSON value.
    fn write_json(&self, w: &mut Writer);
}

/// The JSON text of `v`.
pub fn to_string<T: ToJson + ?Sized>(v: &T) -> String {
    let mut w = Writer::new();
    v.write_json(&mut w);
    w.finish()
}

/// Builds one JSON text; places the commas.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
    comma: bool,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The text written.
    pub fn finish(self) -> String {
        self.out
    }

    fn sep(&mut self) {
        if self.comma {
            self.out.push(',');
        }
        self.comma = true;
    }

    /// Opens an object.
    pub fn begin_object(&mut self) -> &mut Self {
        self.sep();
        self.out.push('{');
        self.comma = false;
        self
    }

    /// Closes an object.
    pub fn end_object(&mut self) -> &mut Self {
        self.out.push('}');
        self.comma = true;
        self
    }

    /// Opens an array.
    pub fn begin_array(&mut self) -> &mut Self {
        self.sep();
        self.out.push('[');
        self.comma = false;
        self
    }

    /// Closes an array.
    pub fn end_array(&mut self) -> &mut Self {
        self.out.push(']');
        self.comma = true;
        self
    }

    /// Writes a key; the next call writes its value.
    pub fn key(&mut self, k: &str) -> &mut Self {
        self.sep();
        push_str(&mut self.out, k);
        self.out.push(':');
        self.comma = false;
        self
    }

    /// A string value.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.sep();
        push_str(&mut self.out, s);
        self
    }

    /// An unsigned integer value.
    pub fn u64(&mut self, n: u64) -> &mut Self {
        self.sep();
        push_u64(&mut self.out, n);
        self
    }

    /// A signed integer value.
    pub fn i64(&mut self, n: i64) -> &mut Self {
        self.sep();
        push_i64(&mut self.out, n);
        self
    }

    /// A number value (see the module docs).
    pub fn f64(&mut self, x: f64) -> &mut Self {
        self.sep();
        push_f64(&mut self.out, x);
        self
    }

    /// A boolean value.
    pub fn bool(&mut self, b: bool) -> &mut Self {
        self.sep();
        self.out.push_str(if b { "true" } else { "false" });
        self
    }

    /// `null`.
    pub fn null(&mut self) -> &mut Self {
        self.sep();
        self.out.push_str("null");
        self
    }

    /// A value that is already JSON text (not checked).
    pub fn raw(&mut self, json: &str) -> &mut Self {
        self.sep();
        self.out.push_str(json);
        self
    }

    /// A string value, or `null` for `None`.
    pub fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.str(s),
            None => self.null(),
        }
    }

    /// A number value, or `null` for `None`.
    pub fn opt_f64(&mut self, x: Option<f64>) -> &mut Self {
        match x {
            Some(x) => self.f64(x),
            None => self.null(),
        }
    }

    /// Any [`ToJson`] value.
    pub fn value<T: ToJson + ?Sized>(&mut self, v: &T) -> &mut Self {
        v.write_json(self);
        self
    }
}

/// An array of the values' JSON.
impl<T: ToJson> ToJson for [T] {
    fn write_json(&self, w: &mut Writer) {
        w.begin_array();
        self.iter().for_each(|x| x.write_json(w));
        w.end_array();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(x: f64) -> String {
        let mut s = String::new();
        push_f64(&mut s, x);
        s
    }

    #[test]
    fn integers() {
        let mut s = String::new();
        for n in [0u64, 7, 10, 1_732_276_800_123, u64::MAX] {
            s.clear();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        for n in [0i64, -1, -10, i64::MIN, i64::MAX] {
            s.clear();
            push_i64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    #[test]
    fn hex_and_concat() {
        let mut s = String::new();
        push_hex(&mut s, 0xab, 4);
        push_hex(&mut s, u64::MAX, 16);
        assert_eq!(s, format!("{:04x}{:016x}", 0xab, u64::MAX));
        assert_eq!(concat_u64("HTTP ", 404, "!"), "HTTP 404!");
    }

    #[test]
    fn floats() {
        assert_eq!(f(3.0), "3");
        assert_eq!(f(-0.0), "0");
        assert_eq!(f(12.5), "12.5");
        assert_eq!(f(-2.5e-3), "-0.0025");
        assert_eq!(f(0.1), "0.1");
        assert_eq!(f(1.0 / 3.0), "0.33333333333333331");
        assert_eq!(f(1e300), "1.0000000000000001e300");
        assert_eq!(f(5e-324), "4.9406564584124654e-324");
        assert_eq!(f(1234.5678), "1234.5678");
        assert_eq!(f(f64::NAN), "null");
        assert_eq!(f(f64::INFINITY), "null");
        for x in [
            0.1,
            1.0 / 3.0,
            1e-7,
            123456.789,
            f64::MAX,
            f64::MIN_POSITIVE,
            9.5e15,
        ] {
            assert_eq!(f(x).parse::<f64>().unwrap(), x, "{x}");
        }
    }

    #[test]
    fn strings_are_escaped_like_serde_json() {
        let mut s = String::new();
        push_str(&mut s, "a\"b\\c\n\u{1}\u{1f}/é\u{7f}\u{8}\u{c}\r\t");
        assert_eq!(
            s,
            r#""a\"b\\c\n\u0001\u001f/é\u007f\b\f\r\t""#.replace("\\u007f", "\u{7f}")
        );
    }

    #[test]
    fn the_writer_places_commas() {
        let mut w = Writer::new();
        w.begin_object().key("a").u64(1).key("b").begin_array();
        w.str("x")
            .null()
            .bool(true)
            .begin_object()
            .end_object()
            .end_array();
        w.key("c").f64(1.5).end_object();
        assert_eq!(w.finish(), r#"{"a":1,"b":["x",null,true,{}],"c":1.5}"#);
    }
}
