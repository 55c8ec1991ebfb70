//! Small pages only: the process asks the kernel not to back its memory with transparent huge
//! pages.
//!
//! Why: the first touch of a huge page makes the kernel zero 2 MiB inside the page fault, and a
//! kernel that does not preempt in kernel mode (`preempt=none` or `voluntary`; the virtual machines
//! measured here run `none`) switches threads in the middle of that only once something has asked
//! for a reschedule, which no yield point or signal of ours can do from user space. On the
//! project's 2-core Firecracker machine one such fault took 2.5–4 ms, since the host backs the
//! guest's memory on first touch too. mimalloc asks for huge pages for its arenas
//! (`MADV_HUGEPAGE`), so every thread that grew the heap faulted them: a rebuild growing its 1 GiB
//! page cache kept online threads waiting on its core for up to 3.8 ms, and an online thread that
//! grew the heap stalled itself. `perf` of `tally bench-offline` on 2026-12-04 put most of the
//! waits of over 1 ms behind the rebuild in `clear_page_erms` under `do_huge_pmd_anonymous_page`.
//!
//! With small pages a fault zeroes 4 KiB and returns; the same zeroing is spread over many short
//! faults, between which the yield points and the yield timer (`courtesy.rs`) act. What it costs
//! is more TLB misses on large working sets; see the README ("Small pages") for the figures.
//!
//! `PR_SET_THP_DISABLE` covers the whole process (memory mapped before as well as after) and is
//! inherited by child processes; an unprivileged process may set it. mimalloc's `MADV_HUGEPAGE`
//! then has no effect.

use std::io;

/// Asks the kernel to back none of this process's memory with transparent huge pages.
pub fn turn_off_huge_pages() -> io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes a flag and three zero arguments; it touches no memory of
    // ours.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether transparent huge pages are off for this process (read back from the kernel).
pub fn huge_pages_off() -> bool {
    // SAFETY: PR_GET_THP_DISABLE takes four zero arguments and returns the flag.
    unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1 }
}
