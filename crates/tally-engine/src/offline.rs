//! Threads for offline work (snapshots, verification, replays): started at idle CPU priority so
//! that they only use time the online path leaves unused.

use std::thread::JoinHandle;

/// Spawns `work` on a named thread that asks the kernel for `SCHED_IDLE` first.
pub fn spawn_offline<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    let name = name.to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            lower_priority(&name);
            work()
        })
}

/// Moves the calling thread to `SCHED_IDLE`, or failing that to nice 19.
pub fn lower_priority(name: &str) {
    // SAFETY: plain syscalls on the calling thread with a valid, initialised parameter.
    let idle = unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
    };
    if idle {
        tracing::debug!(thread = name, "offline thread runs at SCHED_IDLE");
        return;
    }
    // SAFETY: as above; gettid has no preconditions.
    let niced =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) == 0 };
    tracing::warn!(
        thread = name,
        niced,
        "SCHED_IDLE refused; offline thread runs at nice 19 instead"
    );
}
