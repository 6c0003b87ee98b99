//! Wall-clock access for everything time-dependent in the control plane (OTP expiry,
//! token expiry, room expiry), behind a trait so tests move time forward without sleeping.

use std::sync::Arc;

use parking_lot::Mutex;
use time::{Duration, OffsetDateTime};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to; clones share the same time.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<Mutex<OffsetDateTime>>,
}

impl ManualClock {
    /// Starts at the current real time (truncated to whole milliseconds so stores that
    /// keep millisecond precision round-trip timestamps exactly).
    pub fn new() -> Self {
        let now = OffsetDateTime::now_utc();
        let ms = now.unix_timestamp_nanos() / 1_000_000 * 1_000_000;
        let now = OffsetDateTime::from_unix_timestamp_nanos(ms).unwrap_or(now);
        Self::starting_at(now)
    }

    pub fn starting_at(t: OffsetDateTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(t)),
        }
    }

    pub fn advance(&self, by: Duration) {
        *self.now.lock() += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock()
    }
}
