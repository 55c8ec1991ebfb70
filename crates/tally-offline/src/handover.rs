//! Core handover: an idle-priority thread that finds a thread requests wait for queued on
//! another core moves it onto its own core, where it preempts the idle thread at once.
//!
//! Why, when the kernel places woken threads itself: it puts a woken thread on the core it last
//! ran on or on the waker's, and looks further for an idle core only while the cache domain's
//! recent utilization is low (`SIS_UTIL`). A `SCHED_IDLE` thread's utilization counts there, so
//! with offline work on every core the look is skipped, and a woken online thread queues behind
//! another online thread on one core while the other core runs only work it could have
//! preempted. The periodic load balancer moves it milliseconds later at best, and leaves a
//! thread that ran recently where it is (cache-hot). `perf sched` of the co-location benchmark on
//! 2026-12-04 saw exactly that: during online waits of over 1 ms the other core ran the rebuild
//! for two thirds of the time. An unprivileged process cannot change where the kernel places
//! its threads, but it may change their CPU affinity: narrowing a queued thread's affinity to
//! one core moves it there at once, and widening it back right after leaves it there.
//!
//! How it is cheap enough to do every 100 µs: the threads requests wait for register as they
//! start (`register_current_thread`, with a `/proc/thread-self/stat` opened once, which gives
//! a thread's state and core). An idle thread, at its yield points and yield timer signals,
//! first reads the number of runnable threads from `/proc/loadavg` (one `pread`); only when
//! that number less the idle threads alive fills every core, so that one of the others must be
//! waiting, does it read the registered threads' state (a `pread` each) and look for a core with
//! two of them runnable. Everything `hand_over` does is a system call on a file descriptor opened
//! before, so the yield timer's signal handler may call it.
//!
//! Measured (README, "Core handover"): with the disk out of it, idle work's cost to the online
//! p99 fell from 1.54× to 1.24×, and the rebuild took about 20% longer, the time the online
//! threads took back.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::limits::ONLINE_THREADS_MAX;

/// The registered threads: each slot packs a thread id (high 32 bits) and the descriptor of its
/// `/proc/thread-self/stat` (low 32 bits); `EMPTY` when free. Packed so that a reader sees the
/// pair a thread registered, never one thread's id with another's descriptor.
static ONLINE: [AtomicU64; ONLINE_THREADS_MAX] =
    [const { AtomicU64::new(EMPTY) }; ONLINE_THREADS_MAX];
const EMPTY: u64 = u64::MAX;

/// Idle-priority threads alive (they count as runnable in `/proc/loadavg` while they work).
/// One that sleeps (the snapshotter between snapshots) is subtracted all the same, which makes
/// the first check stricter than "the non-idle runnable threads fill every core". Counting only
/// the runnable ones (each idle thread's `stat` read too), together with moving a registered
/// thread queued behind any other on a 2-core machine, was tried on 2026-12-04: no gain in the
/// online p99 (3.26 against 3.22 ms at the median of four rounds) and a rebuild 14% slower, so
/// the cheaper count stays.
static IDLE_THREADS: AtomicI32 = AtomicI32::new(0);

/// Online threads moved to an idle thread's core since the process started.
static HANDOVERS: AtomicU64 = AtomicU64::new(0);

/// What an idle thread reads; opened once by the first thread that goes idle.
struct Probe {
    /// `/proc/loadavg`, or -1 when it cannot be opened (no handover then).
    loadavg: libc::c_int,
    /// Cores this process may run on.
    cpus: i32,
}

static PROBE: OnceLock<Probe> = OnceLock::new();

thread_local! {
    /// This thread's registration, dropped (and the slot freed) when the thread ends.
    static REGISTRATION: Registration = const { Registration { slot: Cell::new(None) } };
    /// Set on threads the executor moved to `SCHED_IDLE`: only they hand their core over.
    static IDLE: IdleThread = const { IdleThread { idle: Cell::new(false) } };
}

struct Registration {
    slot: Cell<Option<usize>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(index) = self.slot.get() {
            let packed = ONLINE[index].swap(EMPTY, Ordering::AcqRel);
            // An idle thread that loaded the slot just before may still read the descriptor
            // after this close, or after its number was reused; it then reads a file whose
            // contents do not name this thread's id, and skips it (`hand_over`).
            // SAFETY: the descriptor was opened by `register_current_thread` and is closed once.
            unsafe { libc::close(packed as u32 as libc::c_int) };
        }
    }
}

struct IdleThread {
    idle: Cell<bool>,
}

impl Drop for IdleThread {
    fn drop(&mut self) {
        if self.idle.get() {
            IDLE_THREADS.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Registers the calling thread as one requests wait for, so that idle threads may hand it their
/// core. Without a free slot (more than [`ONLINE_THREADS_MAX`] such threads) or a readable
/// `/proc`, the thread is simply not handed cores.
pub(crate) fn register_current_thread() {
    if REGISTRATION.with(|registration| registration.slot.get().is_some()) {
        return;
    }
    // SAFETY: a constant, NUL-terminated path; the descriptor is closed by `Registration`.
    let fd = unsafe {
        libc::open(
            c"/proc/thread-self/stat".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return;
    }
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let packed = (u64::from(tid as u32) << 32) | u64::from(fd as u32);
    for (index, slot) in ONLINE.iter().enumerate() {
        if slot
            .compare_exchange(EMPTY, packed, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            REGISTRATION.with(|registration| registration.slot.set(Some(index)));
            return;
        }
    }
    // SAFETY: opened above and not stored anywhere.
    unsafe { libc::close(fd) };
}

/// Makes the calling thread, just moved to `SCHED_IDLE`, hand its core to waiting online threads
/// at its yield points and yield timer signals.
pub(crate) fn enable_for_current_thread() {
    PROBE.get_or_init(|| {
        // SAFETY: a constant, NUL-terminated path; the descriptor lives as long as the process.
        let loadavg =
            unsafe { libc::open(c"/proc/loadavg".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        Probe {
            loadavg,
            cpus: std::thread::available_parallelism().map_or(1, |cpus| cpus.get() as i32),
        }
    });
    IDLE.with(|thread| {
        if !thread.idle.replace(true) {
            IDLE_THREADS.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Online threads moved to an idle thread's core since the process started.
pub fn handovers() -> u64 {
    HANDOVERS.load(Ordering::Relaxed)
}

/// On an idle thread: when a registered thread waits on another core behind a second one, moves
/// it to this core; the caller yields right after (a yield point, the timer's handler), which
/// hands it the core. Async-signal-safe (system calls on descriptors opened before, a stack
/// buffer, atomics); errno is the caller's to keep.
pub(crate) fn hand_over() {
    // `try_with`: a signal may arrive while the thread's locals are being destroyed.
    if !IDLE.try_with(|thread| thread.idle.get()).unwrap_or(false) {
        return;
    }
    let Some(probe) = PROBE.get() else { return };
    if probe.loadavg < 0 || probe.cpus < 2 {
        return;
    }
    let mut buffer = [0u8; 512];
    let Some(runnable) = read(probe.loadavg, &mut buffer).and_then(runnable_threads) else {
        return;
    };
    if runnable - IDLE_THREADS.load(Ordering::Relaxed) < probe.cpus {
        return;
    }
    // SAFETY: sched_getcpu has no preconditions.
    let this_cpu = unsafe { libc::sched_getcpu() };
    if this_cpu < 0 {
        return;
    }
    let Some(waiting) = waiting_thread(this_cpu as usize, &mut buffer) else {
        return;
    };
    if move_to(waiting, this_cpu as usize) {
        HANDOVERS.fetch_add(1, Ordering::Relaxed);
    }
}

/// A registered thread runnable on a core other than `this_cpu` that holds two or more of them
/// (so at least one waits), if any.
fn waiting_thread(this_cpu: usize, buffer: &mut [u8]) -> Option<libc::pid_t> {
    const CORES: usize = 256;
    let mut runnable_on = [0u8; CORES];
    let mut last_on = [0 as libc::pid_t; CORES];
    for slot in &ONLINE {
        let packed = slot.load(Ordering::Acquire);
        if packed == EMPTY {
            continue;
        }
        let (tid, fd) = ((packed >> 32) as libc::pid_t, packed as u32 as libc::c_int);
        let Some((stat_tid, state, cpu)) = read(fd, buffer).and_then(parse_stat) else {
            continue;
        };
        if stat_tid == tid && state == b'R' && cpu < CORES {
            runnable_on[cpu] = runnable_on[cpu].saturating_add(1);
            last_on[cpu] = tid;
        }
    }
    (0..CORES).find_map(|cpu| (cpu != this_cpu && runnable_on[cpu] >= 2).then_some(last_on[cpu]))
}

/// Moves `tid` to `cpu` by narrowing its affinity to that core, then gives it back its own
/// affinity (which leaves it there). `false` when it may not run there or is gone.
fn move_to(tid: libc::pid_t, cpu: usize) -> bool {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: zeroed cpu sets are valid; each call gets a set of `size` bytes it may write or read.
    unsafe {
        let mut own: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid, size, &mut own) != 0 || !libc::CPU_ISSET(cpu, &own) {
            return false;
        }
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        if libc::sched_setaffinity(tid, size, &one) != 0 {
            return false;
        }
        libc::sched_setaffinity(tid, size, &own);
    }
    true
}

/// `pread` of a whole small proc file from its start.
fn read(fd: libc::c_int, buffer: &mut [u8]) -> Option<&[u8]> {
    // SAFETY: the buffer is valid for `buffer.len()` bytes.
    let read = unsafe { libc::pread(fd, buffer.as_mut_ptr().cast(), buffer.len(), 0) };
    (read > 0).then(|| &buffer[..read as usize])
}

/// The runnable threads in `/proc/loadavg` ("0.91 0.93 0.80 3/150 1234": the 3).
fn runnable_threads(loadavg: &[u8]) -> Option<i32> {
    let field = loadavg.split(|&byte| byte == b' ').nth(3)?;
    let runnable = field.split(|&byte| byte == b'/').next()?;
    decimal(runnable).map(|runnable| runnable as i32)
}

/// A thread's id, state and last core from its `stat` ("tid (comm) S ... ", the core being the
/// 39th field; the name may hold spaces and parentheses, so fields count from the last ')').
fn parse_stat(stat: &[u8]) -> Option<(libc::pid_t, u8, usize)> {
    let name_end = stat.iter().rposition(|&byte| byte == b')')?;
    let tid_end = stat.iter().position(|&byte| byte == b' ')?;
    let tid = decimal(&stat[..tid_end])? as libc::pid_t;
    let mut fields = stat[name_end + 1..]
        .split(|&byte| byte == b' ')
        .filter(|field| !field.is_empty());
    let state = *fields.next()?.first()?;
    let cpu = decimal(fields.nth(35)?)?;
    Some((tid, state, cpu as usize))
}

/// A non-empty run of ASCII digits as a number.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    digits.iter().try_fold(0u64, |number, &byte| {
        byte.is_ascii_digit()
            .then(|| number * 10 + u64::from(byte - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_id_state_and_core_even_with_odd_names() {
        let fields_after_state: Vec<String> = (4..=52).map(|field| field.to_string()).collect();
        let line = format!("4242 (a) b) (c) R {}\n", fields_after_state.join(" "));
        assert_eq!(parse_stat(line.as_bytes()), Some((4242, b'R', 39)));
        assert_eq!(parse_stat(b"4242 (cut) R 1 2"), None);
        assert_eq!(parse_stat(b"no stat at all"), None);
    }

    #[test]
    fn loadavg_gives_the_runnable_threads() {
        assert_eq!(runnable_threads(b"0.91 0.93 0.80 3/150 1234\n"), Some(3));
        assert_eq!(runnable_threads(b"0.91 0.93"), None);
        assert_eq!(runnable_threads(b"0.91 0.93 0.80 x/150 1"), None);
    }
}
