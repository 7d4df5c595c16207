//! The node's notion of time: a monotonic clock counted from a per-process epoch.
//! Wall-clock time is never used (it can jump, which would break the lease).

use crate::types::Time;
use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Monotonic time since this process's epoch (the first call). This is the `now`
/// the driver passes to the core, and the clock the handle compares lease ends
/// against.
pub fn now() -> Time {
    EPOCH.get_or_init(Instant::now).elapsed()
}
