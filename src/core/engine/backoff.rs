//! The one backoff formula, used by the stream's reconnects and by chat sends.
//!
//! Full jitter (API.md `backoff`): attempt `n ≥ 1` waits a uniform random
//! fraction of `min(initial · multiplier^(n−1), max)`. Attempt 0 is the first
//! reconnect after a healthy connection: it goes at once (0–100 ms of jitter,
//! so that many clients dropped together do not reconnect in the same
//! millisecond). The server's `retry:` is a floor, clamped to `max`; a
//! `Retry-After` is a floor too, clamped to [`MAX_RETRY_AFTER_MS`].

use super::config::{Backoff, Ms, MAX_RETRY_AFTER_MS};

/// Jitter window of the immediate first reconnect after a healthy connection.
pub const IMMEDIATE_JITTER_MS: Ms = 100.0;

/// The wait before attempt `attempt` (0 = first after a healthy connection).
///
/// `jitter` is a uniform draw in `[0, 1)`; `floor` is the server's `retry:`
/// (stream only); `retry_after` the `Retry-After` of the failed response.
/// Always finite and ≥ 0, whatever the policy's values.
pub fn delay(
    policy: &Backoff,
    attempt: u32,
    jitter: f64,
    floor: Option<Ms>,
    retry_after: Option<Ms>,
) -> Ms {
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let max = finite_non_negative(policy.max_ms);
    let floor = floor.map(|f| finite_non_negative(f).min(max));
    let base = if attempt == 0 {
        floor.unwrap_or(jitter * IMMEDIATE_JITTER_MS)
    } else {
        let exp = attempt.saturating_sub(1).min(30) as i32;
        let growth = if policy.multiplier.is_finite() {
            policy.multiplier.max(1.0)
        } else {
            1.0
        };
        let cap = (finite_non_negative(policy.initial_ms) * growth.powi(exp)).min(max);
        (jitter * finite_non_negative(cap)).max(floor.unwrap_or(0.0))
    };
    match retry_after {
        Some(ra) => base.max(finite_non_negative(ra).min(MAX_RETRY_AFTER_MS)),
        None => base,
    }
}

/// The largest wait attempt `attempt` can draw (its jitter at 1): what "the
/// backoff allowed" means for the error-loop guard.
pub fn ceiling(policy: &Backoff, attempt: u32, floor: Option<Ms>) -> Ms {
    delay(policy, attempt, 1.0, floor, None)
}

fn finite_non_negative(x: Ms) -> Ms {
    if x.is_finite() {
        x.max(0.0)
    } else {
        0.0
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> Backoff {
        Backoff::default()
    }

    #[test]
    fn first_after_healthy_goes_at_once_or_at_the_servers_retry() {
        assert!(delay(&policy(), 0, 0.99, None, None) < IMMEDIATE_JITTER_MS);
        assert_eq!(delay(&policy(), 0, 0.5, Some(3000.0), None), 3000.0);
        // retry: is clamped to max.
        assert_eq!(delay(&policy(), 0, 0.5, Some(1e9), None), 20_000.0);
    }

    #[test]
    fn grows_from_the_second_failure_and_is_capped() {
        let p = policy();
        assert_eq!(ceiling(&p, 1, None), 500.0);
        assert_eq!(ceiling(&p, 2, None), 1000.0);
        assert_eq!(ceiling(&p, 3, None), 2000.0);
        assert_eq!(ceiling(&p, 10, None), 20_000.0);
        assert_eq!(ceiling(&p, u32::MAX, None), 20_000.0);
    }

    #[test]
    fn retry_after_is_a_floor_clamped_to_five_minutes() {
        assert_eq!(delay(&policy(), 1, 0.0, None, Some(120_000.0)), 120_000.0);
        assert_eq!(
            delay(&policy(), 1, 0.0, None, Some(1e12)),
            MAX_RETRY_AFTER_MS
        );
    }

    #[test]
    fn a_multiplier_below_one_does_not_shrink_the_wait() {
        let p = Backoff {
            multiplier: 0.1,
            ..policy()
        };
        assert_eq!(ceiling(&p, 5, None), 500.0);
    }

    proptest! {
        #[test]
        fn always_finite_bounded_and_honours_floors(
            initial in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -1e6f64..1e7],
            max in prop_oneof![Just(f64::NAN), -1e6f64..1e7],
            multiplier in prop_oneof![Just(f64::NAN), -5f64..10.0],
            attempt in 0u32..100,
            jitter in prop_oneof![Just(f64::NAN), -1f64..2.0],
            floor in proptest::option::of(-1e6f64..1e9),
            retry_after in proptest::option::of(-1e6f64..1e12),
        ) {
            let p = Backoff { initial_ms: initial, max_ms: max, multiplier };
            let d = delay(&p, attempt, jitter, floor, retry_after);
            prop_assert!(d.is_finite() && d >= 0.0);
            let maxv = if max.is_finite() { max.max(0.0) } else { 0.0 };
            prop_assert!(d <= maxv.max(IMMEDIATE_JITTER_MS).max(retry_after.map_or(0.0, |r| r.clamp(0.0, MAX_RETRY_AFTER_MS))));
            if let Some(ra) = retry_after {
                prop_assert!(d >= ra.clamp(0.0, MAX_RETRY_AFTER_MS));
            }
            if let Some(f) = floor {
                prop_assert!(d >= f.clamp(0.0, maxv));
            }
            prop_assert!(d <= ceiling(&p, attempt, floor).max(retry_after.map_or(0.0, |r| r.clamp(0.0, MAX_RETRY_AFTER_MS))));
        }

        #[test]
        fn the_ceiling_never_shrinks_with_the_attempt(attempt in 1u32..60, mult in 1f64..4.0) {
            let p = Backoff { multiplier: mult, ..Backoff::default() };
            prop_assert!(ceiling(&p, attempt + 1, None) >= ceiling(&p, attempt, None));
        }
    }
}
