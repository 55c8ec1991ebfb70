//! Every limit of the offline executor in one place, each with the reason it exists.

use std::time::Duration;

/// Default time a job holding a pinned resource may go without finishing a unit before the
/// starvation guard hands the rest of it to a normal-priority thread. Long enough that a job
/// merely sharing the CPU is left alone (a unit should take milliseconds), short enough that a
/// pin does not outlive its purpose by much.
pub const GUARD_BOUND_DEFAULT: Duration = Duration::from_millis(500);

/// Shortest bound that may be configured: below a few watchdog ticks the guard would hand over
/// jobs that are only waiting for their next time slice.
pub const GUARD_BOUND_MIN: Duration = Duration::from_millis(100);

/// How often the watchdog looks at the guarded jobs; a handover happens at most this long after
/// the bound has passed.
pub const WATCHDOG_TICK: Duration = Duration::from_millis(50);

/// Longest an idle-priority offline thread works between two yields (see `courtesy.rs`): how
/// long an online thread waiting for its core may wait for it, instead of up to a scheduler
/// tick. A yield with nobody waiting costs about a microsecond, so 1% at most.
pub const YIELD_INTERVAL: Duration = Duration::from_micros(100);

/// Period of the yield timer of an offline job (see `courtesy.rs`): the longest an online thread
/// waits for the core while the job is in a stretch without yield points, instead of up to a
/// scheduler tick. Shorter costs the job more than it saves: each expiry is a timer interrupt
/// and a signal, dearer than a yield point in a virtual machine (at 100 µs a rebuild took 1.7×
/// as long).
pub const YIELD_TIMER_INTERVAL: Duration = Duration::from_micros(250);

/// The scheduler slice that threads requests wait for ask the kernel for (see `slice.rs`): the
/// shortest Linux takes (`sched_attr.sched_runtime` is clamped to 0.1–100 ms). It bounds how
/// much of one of them another woken one waits behind, where the default is 0.7 ms × (1 +
/// log2 CPUs). Costs nothing measurable: `tally bench` throughput, batched and single-request,
/// was the same with it.
pub const SHORT_SLICE: Duration = Duration::from_micros(100);

/// Threads requests wait for that idle threads may hand their core to (see `handover.rs`): the
/// tokio workers and blocking threads, the engine's two, the followers. Each holds an open
/// `/proc/thread-self/stat`; threads beyond it are not handed cores. An idle thread reads each
/// registered one's file when one may be waiting, so it is also what bounds that cost.
pub const ONLINE_THREADS_MAX: usize = 64;

/// Offline jobs running at once in one executor. Each is a thread; more than this is a bug in
/// the caller (jobs are few and long), and refused rather than left to exhaust threads.
pub const JOBS_RUNNING_MAX: usize = 32;

/// Finished jobs kept for `/metrics` and the status page, newest first; older ones are
/// forgotten so that the number of series stays bounded.
pub const JOBS_FINISHED_KEPT: usize = 8;

/// Units of one unit job: each has a completion flag in memory.
pub const JOB_UNITS_MAX: u64 = 1 << 20;

/// How often a caller waiting for a unit job looks at it. Waiting takes no lock that an idle
/// thread could hold, so it polls.
pub const JOB_WAIT_POLL: Duration = Duration::from_millis(5);

const _: () = assert!(
    YIELD_TIMER_INTERVAL.as_nanos() >= YIELD_INTERVAL.as_nanos()
        && YIELD_TIMER_INTERVAL.as_nanos() < 1_000_000_000
);
const _: () = assert!(SHORT_SLICE.as_micros() >= 100 && SHORT_SLICE.as_micros() <= 100_000);
const _: () = assert!(GUARD_BOUND_MIN.as_millis() >= 2 * WATCHDOG_TICK.as_millis());
const _: () = assert!(GUARD_BOUND_DEFAULT.as_millis() >= GUARD_BOUND_MIN.as_millis());
