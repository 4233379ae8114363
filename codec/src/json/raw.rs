//! [`RawJson`]: one JSON value kept as its text, for what a decoder hands on
//! without reading (a WebSocket `event`'s envelope, a snapshot's `state`, a
//! ping's `t`).
//!
//! In the wasm build it is a boxed `str`. In native builds (the server, the
//! tests) it wraps a serde_json `RawValue`, so that a server forwarding log
//! entries moves them into frames without copying or re-validating.

#[cfg(not(target_arch = "wasm32"))]
use serde_json::value::RawValue;

/// One JSON value as its text. Built by a decoder from text it scanned, or
/// by a writer: it is valid JSON by construction.
#[derive(Debug, Clone)]
pub struct RawJson(
    #[cfg(target_arch = "wasm32")] Box<str>,
    #[cfg(not(target_arch = "wasm32"))] Box<RawValue>,
);

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        #[cfg(target_arch = "wasm32")]
        return &self.0;
        #[cfg(not(target_arch = "wasm32"))]
        return self.0.get();
    }

    /// Text the caller has checked is one JSON value.
    pub fn from_checked(text: &str) -> Self {
        #[cfg(target_arch = "wasm32")]
        return Self(text.into());
        #[cfg(not(target_arch = "wasm32"))]
        return Self(
            RawValue::from_string(text.to_owned()).unwrap_or_else(|_| RawValue::NULL.to_owned()),
        );
    }

    /// A number, spelled as the writer spells it (an integral value as an integer).
    pub fn number(x: f64) -> Self {
        let mut s = String::new();
        super::write::push_f64(&mut s, x);
        Self::from_checked(&s)
    }

    /// The value if it is an integer that fits `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        super::Scanner::new(self.get()).number().ok()?.as_u64()
    }
}

impl From<u64> for RawJson {
    fn from(n: u64) -> Self {
        let mut s = String::new();
        super::write::push_u64(&mut s, n);
        Self::from_checked(&s)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    //! serde for the server and the tests: the text travels as a `RawValue`.
    use super::{RawJson, RawValue};

    impl From<Box<RawValue>> for RawJson {
        fn from(raw: Box<RawValue>) -> Self {
            Self(raw)
        }
    }

    impl RawJson {
        /// The text of a parsed value.
        pub fn from_value(v: &serde_json::Value) -> Self {
            Self(serde_json::value::to_raw_value(v).unwrap_or_else(|_| RawValue::NULL.to_owned()))
        }

        /// The value, parsed.
        pub fn to_value(&self) -> serde_json::Value {
            serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
        }
    }

    impl serde::Serialize for RawJson {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            self.0.serialize(s)
        }
    }

    impl<'de> serde::Deserialize<'de> for RawJson {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Box::<RawValue>::deserialize(d).map(Self)
        }
    }
}

/// serde for a [`RawJson`] number inside an internally tagged enum (serde
/// buffers those, and a `RawValue` cannot come out of a buffer).
#[cfg(not(target_arch = "wasm32"))]
pub mod number_serde {
    use super::RawJson;

    /// Writes the number's text.
    pub fn serialize<S: serde::Serializer>(v: &RawJson, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(v, s)
    }

    /// Reads any JSON number.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RawJson, D::Error> {
        let n = <serde_json::Number as serde::Deserialize>::deserialize(d)?;
        Ok(RawJson::from_value(&serde_json::Value::Number(n)))
    }
}
