//! JSON without serde: the scanner and writer of `runstream-codec`
//! ([`runstream_codec::json`], re-exported here under the same names), and the
//! two codecs built on them that know the run state: [`state`] (the §6 state,
//! for snapshots and storage) and [`js`] (the state as the JS API's objects).

pub use runstream_codec::json::*;

pub mod js;
pub mod state;
