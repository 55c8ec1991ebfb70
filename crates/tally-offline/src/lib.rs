//! Offline work of Tally, isolated from the online path.
//!
//! Offline work is everything that does not answer a request: snapshots, `tally verify`, the
//! read model's projection and rebuilds, replays. It runs on threads started by an
//! [`OfflineExecutor`], which move themselves to `SCHED_IDLE` as they start and, where the
//! machine allows it, into a child cpu cgroup with `cpu.idle = 1` (cgroup v2, or v1 on kernels
//! that have `cpu.idle`). [`OfflineExecutor::isolation`] says which of [`Isolation::None`],
//! [`Isolation::SchedIdle`] and [`Isolation::SchedIdleIdleCgroup`] is in force.
//!
//! ```no_run
//! use tally_offline::{OfflineConfig, OfflineExecutor};
//!
//! let offline = OfflineExecutor::new(OfflineConfig::default());
//! println!("offline isolation: {}", offline.isolation().as_str());
//! let job = offline
//!     .spawn_job("checksum", "bytes", |progress| {
//!         progress.set_total(1 << 20);
//!         progress.add(1 << 20);
//!         Ok(42)
//!     })
//!     .expect("a thread");
//! assert_eq!(job.join(), Ok(42));
//! ```
//!
//! Key design choice: no priority inversion by construction. Offline threads read immutable
//! data (sealed log records, snapshot files) and hand results over by value; they never take a
//! lock that a normal-priority thread waits for: progress is atomics, and the job table is only
//! locked by normal threads. Where a job must hold something that matters to others (a *pin*),
//! it is split into idempotent units, and the starvation guard ([`OfflineExecutor::spawn_units`])
//! hands the remaining units to a normal-priority thread when no unit finished for a bound.
//! Handing over is the only way: an unprivileged thread cannot leave `SCHED_IDLE`.
//!
//! Offline loops also call [`yield_point`] once per unit of work: on some kernels a woken
//! normal thread waits for the next scheduler tick before it preempts an idle one, and an idle
//! thread that yields every [`limits::YIELD_INTERVAL`] takes that wait away. Jobs also run a
//! timer that makes their thread yield every [`limits::YIELD_TIMER_INTERVAL`], for the
//! stretches no yield point reaches (code of other crates, the kernel's page faults).
//!
//! The other side of the same bargain: every thread requests wait for, online or a follower
//! such as the projector, calls [`online_thread_started`] as it starts, so that the kernel runs
//! it in 100 µs slices and no such thread holds a core for long while another waits, and so
//! that an idle thread that finds it waiting on another core moves it to its own
//! ([`handovers`] counts how often). And the process backs its memory with small pages only
//! ([`turn_off_huge_pages`]), since the kernel zeroes a huge page inside one page fault that it
//! does not interrupt, for milliseconds, whichever thread touched it first.
#![deny(missing_docs)]

mod courtesy;
mod executor;
mod guard;
mod handover;
mod huge_pages;
mod isolation;
pub mod limits;
mod metrics;
mod progress;
mod slice;

pub use courtesy::{timer_yields, yield_point, yields_to_online};
pub use executor::{Job, OfflineConfig, OfflineExecutor};
pub use guard::{UnitJob, UnitJobHandle};
pub use handover::handovers;
pub use huge_pages::{huge_pages_off, turn_off_huge_pages};
pub use isolation::{current_thread_policy, Isolation, Priority};
pub use progress::{JobState, JobStatus, Progress};
pub use slice::{
    current_thread_slice, online_thread_started, request_short_slice, short_slice_in_force,
};
