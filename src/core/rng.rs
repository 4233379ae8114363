//! A small deterministic PRNG (xoshiro128++ seeded through splitmix64).
//!
//! The core never draws randomness from the environment: the shell seeds this
//! generator once (from `crypto.getRandomValues`), tests seed it with constants,
//! so every jitter and every request id is reproducible in tests.

/// Deterministic random source for jitter, sampling and request ids.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 2],
}

impl Rng {
    /// A generator from a 128-bit seed.
    pub fn new(seed: [u64; 2]) -> Self {
        let mut sm = seed[0] ^ seed[1].rotate_left(32);
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let a = next() ^ seed[1];
        let b = next();
        Self { s: [a | 1, b] }
    }

    /// The next 64 random bits (xorshift128+).
    pub fn next_u64(&mut self) -> u64 {
        let [mut s1, s0] = self.s;
        let result = s0.wrapping_add(s1);
        s1 ^= s1 << 23;
        self.s = [s0, s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26)];
        result
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A random (version 4) UUID string, used as `client_request_id`.
    pub fn uuid_v4(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        let a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
        let b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
        let mut s = String::with_capacity(36);
        let hex = crate::core::json::write::push_hex;
        hex(&mut s, a >> 32, 8);
        s.push('-');
        hex(&mut s, a >> 16, 4);
        s.push('-');
        hex(&mut s, a, 4);
        s.push('-');
        hex(&mut s, b >> 48, 4);
        s.push('-');
        hex(&mut s, b, 12);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape_and_determinism() {
        let mut a = Rng::new([1, 2]);
        let mut b = Rng::new([1, 2]);
        let u = a.uuid_v4();
        assert_eq!(u, b.uuid_v4());
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(a.uuid_v4(), u);
    }

    #[test]
    fn floats_in_unit_interval() {
        let mut r = Rng::new([7, 0]);
        for _ in 0..10_000 {
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
