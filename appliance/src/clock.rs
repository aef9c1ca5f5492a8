//! The one place that reads the clocks, so the rest takes time as input.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Monotonic now, for ages and deadlines.
#[allow(clippy::disallowed_methods, reason = "this is the clock module")]
pub fn now() -> Instant {
    Instant::now()
}

/// Wall-clock seconds since the Unix epoch, for stored times.
#[allow(clippy::disallowed_methods, reason = "this is the clock module")]
pub fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// Wall-clock milliseconds since the Unix epoch.
#[allow(clippy::disallowed_methods, reason = "this is the clock module")]
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
