//! Short scheduler slices for the threads requests wait for.
//!
//! Why: Linux's fair scheduler (EEVDF, from 6.6) lets the thread it picks run until that
//! thread's slice is used up, unless a woken thread has an earlier deadline; a thread's
//! deadline is its virtual start plus its slice. The default slice grows with the number of
//! CPUs (0.7 ms × (1 + log2 CPUs): 1.4 ms on the project's 2-core machine), and a thread of low
//! weight that was owed time (the read model's projector at nice 19, an offline job at
//! `SCHED_IDLE`) collects it in slices that long. `perf sched` during the co-location benchmark
//! showed online threads woken behind such runs of the projector and of other online threads
//! for 2–5 ms.
//!
//! Linux 6.12 lets a `SCHED_OTHER` thread ask for its own slice (`sched_attr.sched_runtime`,
//! 0.1–100 ms), which is how the kernel is told that a thread wants short waits rather than
//! long runs: every thread requests wait for (the HTTP workers, the state machine, the log
//! writer, the projector) asks for [`SHORT_SLICE`], the shortest the kernel takes. Their runs
//! are cut into 100 µs pieces with a deadline each, so one woken behind another gets the core
//! sooner. Measured with `tally bench-offline` on 2026-12-04 (2 cores, medians of six
//! interleaved rounds): the online p99 fell from 3.73 to 3.00 ms alone and from 4.88 to 4.61 ms
//! with idle-priority offline work, with no change to batched or single-request throughput
//! (`tally bench`). It does not close the gap between the two (README, "Short slices").
//!
//! `SCHED_IDLE` threads cannot have a slice of their own (the kernel keeps the default for
//! them); they yield on a timer instead (`courtesy.rs`). Older kernels take the request and
//! ignore it, which reading the slice back shows: the threads then run as before, and the log
//! and `/metrics` say so.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::Duration;

use crate::limits::SHORT_SLICE;

/// The slice the kernel gave the last thread that asked, in nanoseconds; 0 until one asked,
/// and when the kernel does not give threads slices of their own.
static SLICE_IN_FORCE_NANOS: AtomicU64 = AtomicU64::new(0);

/// `struct sched_attr` of `sched_setattr(2)`, which the libc crate does not define. The first
/// 48 bytes are the original layout (`SCHED_ATTR_SIZE_VER0`), which every kernel with the call
/// accepts.
#[repr(C)]
#[derive(Debug, Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

const SCHED_ATTR_SIZE: u32 = std::mem::size_of::<SchedAttr>() as u32;
const _: () = assert!(SCHED_ATTR_SIZE == 48);

fn get_attr() -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: pid 0 names the calling thread; `attr` is SCHED_ATTR_SIZE bytes and outlives the
    // call, which writes at most that many.
    let result = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            SCHED_ATTR_SIZE,
            0,
        )
    };
    if result == 0 {
        Ok(attr)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The scheduler slice the calling thread runs with, as the kernel reports it (Linux 6.12 and
/// later report it for every thread of the fair scheduler, `SCHED_IDLE` too); `None` where it
/// reports none.
pub fn current_thread_slice() -> io::Result<Option<Duration>> {
    let attr = get_attr()?;
    Ok((attr.runtime > 0).then(|| Duration::from_nanos(attr.runtime)))
}

/// The slice threads requests wait for run with: [`SHORT_SLICE`] once one has asked on a kernel
/// that gives threads slices of their own, `None` otherwise.
pub fn short_slice_in_force() -> Option<Duration> {
    match SLICE_IN_FORCE_NANOS.load(Ordering::Relaxed) {
        0 => None,
        nanos => Some(Duration::from_nanos(nanos)),
    }
}

/// Asks the kernel to run the calling thread, a thread requests wait for, in slices of
/// [`SHORT_SLICE`] (see the module docs), keeping its policy and nice value. Returns the slice
/// in force; `None` where the thread is not `SCHED_OTHER`, or the kernel refuses or ignores it
/// (said once in the log: the thread then runs with the default slice, as before).
pub fn request_short_slice() -> Option<Duration> {
    match set_slice(SHORT_SLICE) {
        Ok(slice) => {
            if let Some(slice) = slice {
                SLICE_IN_FORCE_NANOS.store(slice.as_nanos() as u64, Ordering::Relaxed);
            }
            static SAID: Once = Once::new();
            SAID.call_once(|| match slice {
                Some(slice) => tracing::info!(
                    slice_us = slice.as_micros() as u64,
                    "threads requests wait for run in short scheduler slices"
                ),
                None => tracing::info!(
                    "this kernel gives threads no scheduler slice of their own (Linux 6.12 and later do): threads requests wait for run with the default slice"
                ),
            });
            slice
        }
        Err(error) => {
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                tracing::warn!(%error, "sched_setattr refused: threads requests wait for run with the default scheduler slice");
            });
            None
        }
    }
}

/// Asks for `slice`; returns it when the kernel reads it back, `None` when it keeps another.
fn set_slice(slice: Duration) -> io::Result<Option<Duration>> {
    let mut attr = get_attr()?;
    if attr.policy != libc::SCHED_OTHER as u32 {
        return Ok(None);
    }
    attr.size = SCHED_ATTR_SIZE;
    attr.runtime = slice.as_nanos() as u64;
    // SAFETY: pid 0 names the calling thread; `attr` is SCHED_ATTR_SIZE bytes and outlives the
    // call, which only reads it.
    let result = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(current_thread_slice()?.filter(|granted| *granted == slice))
}

/// Called first by every thread requests wait for (the tokio workers, the engine's state and
/// writer threads, followers): asks for short slices ([`request_short_slice`]) and registers the
/// thread so that idle threads may hand it their core when it waits for one (`handover.rs`).
pub fn online_thread_started() {
    request_short_slice();
    crate::handover::register_current_thread();
}
