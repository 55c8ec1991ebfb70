//! Yield points: where an offline thread lets a waiting online thread have its core.
//!
//! Why, when the kernel is meant to do it: on this project's machine (Linux 6.18, `HZ=250`,
//! `preempt=none`, a 2-vCPU virtual machine), a normal thread woken on a core that runs a
//! `SCHED_IDLE` thread often waited for the next scheduler tick, up to 4–5 ms, before it ran.
//! `perf sched timehist` during the co-location benchmark put the rebuild thread in front of
//! 337 of the 420 online wakeups that waited over 1 ms, and an offline job that only spins did
//! the same. Each request crosses several threads (the HTTP worker, the state machine, the log
//! writer), so those waits add up in the online tail. A `sched_yield` hands the core to whatever
//! normal thread is runnable on it at once, and costs about a microsecond when none is; with
//! the spinning job yielding every ~100 µs, the waits it caused all but vanished.
//!
//! Only threads the executor moved to `SCHED_IDLE` (or, for the read model's projector, to
//! nice 19) yield: at normal priority (`--offline-priority normal`) offline work competes as
//! any thread does, which is what that setting is for.

use std::cell::Cell;
use std::time::Instant;

use crate::limits::YIELD_INTERVAL;

thread_local! {
    /// When this thread last yielded; `None` on threads that do not yield (every thread but the
    /// executor's idle ones).
    static LAST_YIELD: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Makes the calling thread yield at its yield points from now on (the executor calls it on each
/// thread it moved to `SCHED_IDLE` or nice 19).
pub(crate) fn enable_for_current_thread() {
    LAST_YIELD.with(|last| last.set(Some(Instant::now())));
}

/// Whether the calling thread yields at its yield points.
pub fn yields_to_online() -> bool {
    LAST_YIELD.with(|last| last.get().is_some())
}

/// A yield point: on an idle-priority offline thread that has worked for [`YIELD_INTERVAL`] since
/// it last yielded, lets any normal thread waiting for this core run first. Offline loops call it
/// once per unit of work (an event folded, a record checked); elsewhere it does nothing.
pub fn yield_point() {
    LAST_YIELD.with(|last| {
        if let Some(since) = last.get() {
            if since.elapsed() >= YIELD_INTERVAL {
                std::thread::yield_now();
                last.set(Some(Instant::now()));
            }
        }
    });
}
