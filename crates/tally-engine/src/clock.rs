//! Where the engine reads the time: batch timestamps and pending-transfer expiry.
//!
//! Production uses the system clock; the deterministic simulation (`tally-sim`) supplies a clock
//! it advances itself, so that a seed decides every timestamp and every expiry.

use std::fmt::Debug;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in nanoseconds since the Unix epoch.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Now, in nanoseconds since the Unix epoch. The engine tolerates a clock that stands still
    /// or steps back: batch timestamps are forced to increase.
    fn now_ns(&self) -> u64;
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| {
                u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
            })
    }
}
