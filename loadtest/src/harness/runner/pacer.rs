//! Paces joins: a token bucket of one, so joins start at most `rate` per second
//! however long each takes.

use parking_lot::Mutex;
use std::time::Duration;

/// Token bucket of one: joins start at most `rate` per second, however slow they are.
pub(super) struct Pacer {
    next: Mutex<tokio::time::Instant>,
    interval: Duration,
}

impl Pacer {
    /// Nonsense rates (zero, negative, NaN) fall back to one join per second rather
    /// than panicking; `Scenario::validate` refuses them before a run anyway.
    pub(super) fn new(rate: f64) -> Self {
        let interval =
            Duration::try_from_secs_f64(1.0 / rate).unwrap_or_else(|_| Duration::from_secs(1));
        Self {
            next: Mutex::new(tokio::time::Instant::now()),
            interval: if interval.is_zero() {
                Duration::from_secs(1)
            } else {
                interval
            },
        }
    }

    pub(super) async fn wait(&self) {
        let at = {
            let mut next = self.next.lock();
            let now = tokio::time::Instant::now();
            let at = (*next).max(now);
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pacer_spaces_joins_at_the_rate() {
        let p = Pacer::new(50.0);
        let t0 = tokio::time::Instant::now();
        for _ in 0..5 {
            p.wait().await;
        }
        // The first join is immediate, the next four 20 ms apart; timers never fire
        // early, and the upper bound only guards against a busy machine's worst case.
        let e = t0.elapsed();
        assert!(
            e >= Duration::from_millis(80) && e < Duration::from_secs(2),
            "{e:?}"
        );
        for rate in [0.0, -3.0, f64::NAN, f64::INFINITY] {
            assert_eq!(Pacer::new(rate).interval, Duration::from_secs(1), "{rate}");
        }
    }
}
