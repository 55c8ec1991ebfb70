//! Yield points and the yield timer: how an offline thread lets a waiting online thread have
//! its core.
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
//! Two ways to yield, because one does not reach everywhere:
//!
//! - **Yield points.** Offline loops call [`yield_point`] once per unit of work (an event
//!   folded, a record checked); it yields when [`YIELD_INTERVAL`] has passed since the last
//!   yield. Cheap and exact, but only where Tally's own loops run.
//! - **The yield timer.** Between two units a job can spend milliseconds where no yield point
//!   can be put: redb committing, a hash map of millions of ids growing, the kernel zeroing the
//!   fresh huge pages a big allocation touches. Tracing the co-location benchmark on 2026-12-03
//!   (`perf record` of every wakeup, and the offline thread's stack when it left the core) found
//!   the verify and the rebuild in front of most online wakeups that waited over 1 ms, in such
//!   stretches and mostly until the tick: the online thread had been woken while
//!   another normal thread ran, so nothing preempted anyone, and when that thread slept the
//!   scheduler picked the idle one (under EEVDF a runnable idle entity becomes eligible as the
//!   busy one uses up its lag) and nothing looked again until the tick. So each job on an idle
//!   thread also runs a timer that sends its thread a signal every [`YIELD_TIMER_INTERVAL`],
//!   and the handler yields: the kernel delivers it as soon as the thread is back in user
//!   space, which a page fault is within microseconds. Go's runtime preempts goroutines with a
//!   signal too, the same one (`SIGURG`, which little else uses and whose default is to ignore).
//!   In that benchmark the timer took idle-priority work's cost to the online p99 from 1.37×
//!   to 1.19× (README, "A yield timer"), not all the way: a yield hands the core over only when
//!   the scheduler finds the waiting thread eligible. The timer is per job, not per thread: a long-lived offline service (the snapshotter, the
//!   projector) sleeps most of the time, and a timer would wake it for nothing.
//!
//! Only threads the executor moved to `SCHED_IDLE` (or, for the read model's projector, to
//! nice 19) yield: at normal priority (`--offline-priority normal`) offline work competes as
//! any thread does, which is what that setting is for.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Instant;

use crate::limits::{YIELD_INTERVAL, YIELD_TIMER_INTERVAL};

thread_local! {
    /// When this thread last yielded; `None` on threads that do not yield (every thread but the
    /// executor's idle ones).
    static LAST_YIELD: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Yields this thread made in the timer's signal handler. Constant-initialized and without
    /// a destructor, so the handler may touch it.
    static TIMER_YIELDS: Cell<u64> = const { Cell::new(0) };
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
                crate::handover::hand_over();
                std::thread::yield_now();
                last.set(Some(Instant::now()));
            }
        }
    });
}

/// How many times the yield timer made the calling thread yield.
pub fn timer_yields() -> u64 {
    TIMER_YIELDS.with(Cell::get)
}

/// The signal the yield timer sends.
const YIELD_SIGNAL: libc::c_int = libc::SIGURG;

/// A timer that makes the calling thread yield every [`YIELD_TIMER_INTERVAL`] until dropped
/// (see the module docs). It belongs to the thread that started it.
pub(crate) struct YieldTimer {
    timer: libc::timer_t,
}

impl YieldTimer {
    /// Starts the timer for the calling thread when it yields to online threads; `None` when it
    /// does not, or when the timer cannot be had (said once in the log: the job then yields at
    /// its yield points only).
    pub(crate) fn start() -> Option<YieldTimer> {
        if !yields_to_online() {
            return None;
        }
        match install_handler().and_then(|()| YieldTimer::create()) {
            Ok(timer) => Some(timer),
            Err(reason) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::warn!(%reason, "no yield timer: offline jobs yield at their yield points only");
                });
                None
            }
        }
    }

    fn create() -> Result<YieldTimer, String> {
        // SAFETY: a zeroed `sigevent` is valid; the fields set are the ones SIGEV_THREAD_ID reads.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = YIELD_SIGNAL;
        // SAFETY: gettid has no preconditions.
        event.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: both pointers are valid for the call; the timer is deleted in `drop`.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) } != 0 {
            return Err(format!("timer_create: {}", std::io::Error::last_os_error()));
        }
        let timer = YieldTimer { timer };
        let interval = libc::timespec {
            tv_sec: 0,
            tv_nsec: YIELD_TIMER_INTERVAL.as_nanos() as libc::c_long,
        };
        let period = libc::itimerspec {
            it_interval: interval,
            it_value: interval,
        };
        // SAFETY: `timer` is a live timer of this process and `period` a valid setting.
        if unsafe { libc::timer_settime(timer.timer, 0, &period, std::ptr::null_mut()) } != 0 {
            return Err(format!(
                "timer_settime: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(timer)
    }
}

impl Drop for YieldTimer {
    fn drop(&mut self) {
        // SAFETY: the timer was created by `create` and is deleted once, here; a signal it sent
        // before may still arrive, and the handler stays installed for it.
        unsafe { libc::timer_delete(self.timer) };
    }
}

/// Installs the handler of [`YIELD_SIGNAL`] once per process, unless something else of the
/// process handles that signal already, which it is then left to.
fn install_handler() -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            // SAFETY: sigaction with a null new action only reads the current one.
            let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
            if unsafe { libc::sigaction(YIELD_SIGNAL, std::ptr::null(), &mut current) } != 0 {
                return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
            }
            if current.sa_sigaction != libc::SIG_DFL && current.sa_sigaction != libc::SIG_IGN {
                return Err("SIGURG has a handler of something else in this process".into());
            }
            // SAFETY: a zeroed sigaction with a handler, flags and an emptied mask is valid;
            // the handler is async-signal-safe (see `yield_on_signal`).
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = yield_on_signal as extern "C" fn(libc::c_int) as usize;
            // Interrupted system calls restart, so the signal is invisible to the job.
            action.sa_flags = libc::SA_RESTART;
            unsafe { libc::sigemptyset(&mut action.sa_mask) };
            if unsafe { libc::sigaction(YIELD_SIGNAL, &action, std::ptr::null_mut()) } != 0 {
                return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
            }
            Ok(())
        })
        .clone()
}

/// The yield timer's signal handler: a yield, and a count. Async-signal-safe: `sched_yield` is a
/// bare system call (errno kept as the interrupted code left it), and the count is a plain
/// thread-local.
extern "C" fn yield_on_signal(_: libc::c_int) {
    // SAFETY: errno is the calling thread's own; read and restored around the call.
    unsafe {
        let errno = *libc::__errno_location();
        crate::handover::hand_over();
        libc::sched_yield();
        *libc::__errno_location() = errno;
    }
    TIMER_YIELDS.with(|yields| yields.set(yields.get() + 1));
}
