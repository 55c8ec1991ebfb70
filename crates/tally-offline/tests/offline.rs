//! The offline executor on the real kernel: policies read back, the idle cgroup joined, the
//! starvation guard under a CPU hog, and the figures `/metrics` shows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_offline::limits::{GUARD_BOUND_DEFAULT, SHORT_SLICE, WATCHDOG_TICK};
use tally_offline::{
    current_thread_policy, current_thread_slice, Isolation, JobState, OfflineConfig,
    OfflineExecutor, Priority, UnitJob,
};

/// The cgroup line of the calling thread.
fn thread_cgroups() -> String {
    std::fs::read_to_string("/proc/thread-self/cgroup").unwrap()
}

/// The nice value of the calling thread, read back from the kernel.
fn current_thread_nice() -> i32 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: a plain syscall on the calling thread's own id.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) }
}

#[test]
fn offline_threads_run_at_sched_idle() {
    let offline = OfflineExecutor::new(OfflineConfig::with_priority(Priority::Idle));
    let isolation = offline.isolation();
    assert_ne!(
        isolation,
        Isolation::None,
        "SCHED_IDLE is always allowed on Linux"
    );
    let job = offline
        .spawn_job("probe", "units", |_| {
            tally_offline::yield_point();
            Ok((
                current_thread_policy(),
                thread_cgroups(),
                tally_offline::yields_to_online(),
            ))
        })
        .unwrap();
    let (policy, cgroups, yields) = job.join().unwrap();
    assert_eq!(
        policy,
        libc::SCHED_IDLE,
        "the policy read back from the kernel"
    );
    assert!(yields, "an idle offline thread yields at its yield points");
    assert!(!tally_offline::yields_to_online());
    let in_idle_cgroup = cgroups.contains(&format!("tally-offline-{}-", std::process::id()));
    assert_eq!(
        in_idle_cgroup,
        isolation == Isolation::SchedIdleIdleCgroup,
        "isolation {isolation:?}, cgroups of the offline thread:\n{cgroups}"
    );
    // The thread that created the executor is untouched.
    assert_eq!(current_thread_policy(), libc::SCHED_OTHER);
    assert!(!thread_cgroups().contains("tally-offline-"));

    let service = offline
        .spawn_thread("tally-test-service", current_thread_policy)
        .unwrap();
    assert_eq!(service.join().unwrap(), libc::SCHED_IDLE);

    // A follower (a thread requests wait for) runs at nice 19, never in the idle cgroup, and
    // yields too.
    let follower = offline
        .spawn_follower("tally-test-follower", || {
            (
                current_thread_policy(),
                current_thread_nice(),
                thread_cgroups(),
                tally_offline::yields_to_online(),
            )
        })
        .unwrap();
    let (policy, nice, cgroups, yields) = follower.join().unwrap();
    assert_eq!(policy, libc::SCHED_OTHER);
    assert_eq!(nice, 19);
    assert!(yields, "a follower yields at its yield points");
    assert!(!cgroups.contains("tally-offline-"), "{cgroups}");
}

/// Whether this kernel gives a `SCHED_OTHER` thread a scheduler slice of its own (Linux 6.12
/// and later).
fn kernel_has_custom_slices() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    version >= (6, 12)
}

#[test]
fn threads_requests_wait_for_run_in_short_slices_and_idle_ones_do_not() {
    let expected = kernel_has_custom_slices().then_some(SHORT_SLICE);
    // An online thread keeps its nice value and policy and gets the slice, read back.
    let online = std::thread::spawn(|| {
        // SAFETY: gettid has no preconditions; setpriority is a plain syscall on this thread.
        let tid = unsafe { libc::gettid() };
        assert_eq!(
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 5) },
            0
        );
        let granted = tally_offline::request_short_slice();
        (
            granted,
            current_thread_slice().unwrap(),
            current_thread_nice(),
            current_thread_policy(),
        )
    });
    let (granted, read_back, nice, policy) = online.join().unwrap();
    assert_eq!(granted, expected);
    if expected.is_some() {
        assert_eq!(read_back, expected, "the slice read back from the kernel");
    }
    assert_eq!((nice, policy), (5, libc::SCHED_OTHER));
    assert_eq!(tally_offline::short_slice_in_force(), expected);
    // A thread that has not asked runs with the kernel's default slice.
    assert_ne!(current_thread_slice().unwrap(), Some(SHORT_SLICE));

    // Followers ask for it at either priority; a SCHED_IDLE job cannot have one.
    for priority in [Priority::Idle, Priority::Normal] {
        let offline = OfflineExecutor::new(OfflineConfig::with_priority(priority));
        let follower = offline
            .spawn_follower("tally-test-follower", || current_thread_slice().unwrap())
            .unwrap();
        let slice = follower.join().unwrap();
        assert_eq!(
            slice == Some(SHORT_SLICE),
            expected.is_some(),
            "{priority:?}: {slice:?}"
        );
    }
    let offline = OfflineExecutor::new(OfflineConfig::with_priority(Priority::Idle));
    let job = offline
        .spawn_job("probe", "units", |_| {
            Ok((
                tally_offline::request_short_slice(),
                current_thread_slice().unwrap(),
                current_thread_policy(),
            ))
        })
        .unwrap();
    let (granted, slice, policy) = job.join().unwrap();
    assert_eq!((granted, policy), (None, libc::SCHED_IDLE));
    assert_ne!(
        slice,
        Some(SHORT_SLICE),
        "an idle thread keeps the default slice"
    );
}

#[test]
fn normal_priority_leaves_offline_threads_alone() {
    let offline = OfflineExecutor::new(OfflineConfig::with_priority(Priority::Normal));
    assert_eq!(offline.isolation(), Isolation::None);
    let job = offline
        .spawn_job("probe", "units", |_| {
            Ok((
                current_thread_policy(),
                thread_cgroups(),
                tally_offline::yields_to_online(),
            ))
        })
        .unwrap();
    let (policy, cgroups, yields) = job.join().unwrap();
    assert_eq!(policy, libc::SCHED_OTHER);
    assert!(
        !yields,
        "offline work at normal priority competes as any thread"
    );
    assert!(!cgroups.contains("tally-offline-"), "{cgroups}");
    let follower = offline
        .spawn_follower("tally-test-follower", current_thread_nice)
        .unwrap();
    assert_eq!(follower.join().unwrap(), 0, "a follower at normal priority");
}

#[test]
fn an_idle_job_yields_on_its_timer_where_it_has_no_yield_points() {
    /// Spins without a yield point until the timer made this thread yield `wanted` times or
    /// `limit` passed (an idle thread may wait long for a core on a busy machine); returns the
    /// timer's yields.
    fn spin_for_timer_yields(wanted: u64, limit: Duration) -> u64 {
        let start = Instant::now();
        while tally_offline::timer_yields() < wanted && start.elapsed() < limit {
            std::hint::spin_loop();
        }
        tally_offline::timer_yields()
    }

    let offline = OfflineExecutor::new(OfflineConfig::with_priority(Priority::Idle));
    let job = offline
        .spawn_job("spin", "iterations", |_| {
            Ok(spin_for_timer_yields(8, Duration::from_secs(30)))
        })
        .unwrap();
    assert!(
        job.join().unwrap() >= 8,
        "the timer makes an idle job yield"
    );

    // A blocking system call the signal interrupts restarts: the job never sees it.
    let (mut writer, reader) = std::os::unix::net::UnixStream::pair().unwrap();
    let job = offline
        .spawn_job("read", "bytes", move |_| {
            let mut byte = [0u8; 1];
            // SAFETY: a read into a live one-byte buffer from a descriptor `reader` keeps open.
            let read = unsafe {
                libc::read(
                    std::os::fd::AsRawFd::as_raw_fd(&reader),
                    byte.as_mut_ptr().cast(),
                    1,
                )
            };
            let error = std::io::Error::last_os_error();
            Ok((
                read,
                byte[0],
                error.raw_os_error(),
                tally_offline::timer_yields(),
            ))
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    std::io::Write::write_all(&mut writer, &[42]).unwrap();
    let (read, byte, errno, yields) = job.join().unwrap();
    assert_eq!(
        (read, byte),
        (1, 42),
        "errno {errno:?} after {yields} timer yields"
    );

    // Long-lived offline services and normal-priority jobs run no timer.
    let service = offline
        .spawn_thread("tally-test-service", || {
            spin_for_timer_yields(1, Duration::from_millis(50))
        })
        .unwrap();
    assert_eq!(service.join().unwrap(), 0);
    let normal = OfflineExecutor::new(OfflineConfig::with_priority(Priority::Normal));
    let job = normal
        .spawn_job("spin", "iterations", |_| {
            Ok(spin_for_timer_yields(1, Duration::from_millis(50)))
        })
        .unwrap();
    assert_eq!(
        job.join().unwrap(),
        0,
        "normal priority competes as any thread"
    );
}

/// Threads that spin at normal priority on every core until dropped.
struct CpuHog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHog {
    fn start() -> CpuHog {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let spinning = Arc::new(AtomicU64::new(0));
        let threads = (0..2 * cores)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let spinning = Arc::clone(&spinning);
                std::thread::spawn(move || {
                    spinning.fetch_add(1, Ordering::SeqCst);
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        while spinning.load(Ordering::SeqCst) < 2 * cores as u64 {
            std::thread::yield_now();
        }
        CpuHog { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
    }
}

/// Nanoseconds of CPU the calling thread has used.
fn thread_cpu_ns() -> u64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) },
        0
    );
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

/// Units that each need `cpu` of CPU time (not wall time), and record who committed work.
struct Burn {
    units: u64,
    cpu: Duration,
    runs_at_idle: AtomicU64,
    runs_at_normal: AtomicU64,
}

impl UnitJob for Burn {
    fn units(&self) -> u64 {
        self.units
    }

    fn run(&self, _index: u64) -> Result<(), String> {
        let start = thread_cpu_ns();
        while thread_cpu_ns() - start < self.cpu.as_nanos() as u64 {
            std::hint::spin_loop();
        }
        if current_thread_policy() == libc::SCHED_IDLE {
            self.runs_at_idle.fetch_add(1, Ordering::Relaxed);
        } else {
            self.runs_at_normal.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// A pin that records when it is released.
struct Pin(Arc<Mutex<Option<Instant>>>);

impl Drop for Pin {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(Instant::now());
    }
}

#[test]
fn the_guard_hands_a_pinned_job_over_under_a_cpu_hog_on_every_core() {
    let offline = OfflineExecutor::new(OfflineConfig::with_priority(Priority::Idle));
    assert_ne!(offline.isolation(), Isolation::None);
    let hog = CpuHog::start();
    let job = Arc::new(Burn {
        units: 40,
        cpu: Duration::from_millis(5),
        runs_at_idle: AtomicU64::new(0),
        runs_at_normal: AtomicU64::new(0),
    });
    let released = Arc::new(Mutex::new(None));
    let handle = offline
        .spawn_units(
            "burn",
            Arc::clone(&job) as Arc<dyn UnitJob>,
            Some(Box::new(Pin(Arc::clone(&released)))),
        )
        .unwrap();
    handle.wait().unwrap();
    drop(hog);

    assert_eq!(offline.boosts(), 1);
    let stalled = handle.handed_over_after().expect("handed over");
    assert!(
        stalled >= GUARD_BOUND_DEFAULT,
        "handed over after {stalled:?}"
    );
    // The watchdog looks every tick; under the hog it may wait for a time slice or two as well.
    // Generous slack: this checks that the guard acts at the bound, not how fast the machine is.
    assert!(
        stalled <= GUARD_BOUND_DEFAULT + 4 * WATCHDOG_TICK + Duration::from_millis(300),
        "handed over only after {stalled:?}"
    );
    assert!(job.runs_at_normal.load(Ordering::Relaxed) > 0);
    let status = handle.status();
    assert_eq!(status.state, JobState::Done);
    assert_eq!((status.done, status.total), (40, 40));
    // The watchdog releases the pin within a tick or so of the end.
    let deadline = Instant::now() + Duration::from_secs(5);
    while released.lock().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the pin was never released");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Units that block on the offline thread until told to go on, and run at once elsewhere.
struct StuckWhenIdle {
    units: u64,
    go: Arc<AtomicBool>,
}

impl UnitJob for StuckWhenIdle {
    fn units(&self) -> u64 {
        self.units
    }

    fn run(&self, _index: u64) -> Result<(), String> {
        while current_thread_policy() == libc::SCHED_IDLE && !self.go.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

#[test]
fn a_stalled_job_with_a_pin_is_handed_over_and_one_without_is_left_alone() {
    let offline = OfflineExecutor::new(OfflineConfig {
        priority: Priority::Idle,
        guard_bound: Duration::from_millis(200),
    });
    let go = Arc::new(AtomicBool::new(false));
    let unpinned = offline
        .spawn_units(
            "unpinned",
            Arc::new(StuckWhenIdle {
                units: 3,
                go: Arc::clone(&go),
            }),
            None,
        )
        .unwrap();
    let pinned = offline
        .spawn_units(
            "pinned",
            Arc::new(StuckWhenIdle {
                units: 3,
                go: Arc::clone(&go),
            }),
            Some(Box::new(())),
        )
        .unwrap();
    pinned.wait().unwrap();
    assert!(pinned.handed_over_after().is_some());
    assert_eq!(offline.boosts(), 1);
    // Well past the bound, the unpinned job still waits for its own thread.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(unpinned.status().state, JobState::Running);
    assert_eq!(unpinned.status().done, 0);
    go.store(true, Ordering::Relaxed);
    unpinned.wait().unwrap();
    assert_eq!(unpinned.handed_over_after(), None);
    assert_eq!(offline.boosts(), 1);
}

#[test]
fn jobs_report_progress_and_failures_in_metrics() {
    let offline = OfflineExecutor::new(OfflineConfig::with_priority(Priority::Idle));
    let done = offline
        .spawn_job("verify", "bytes", |progress| {
            progress.set_total(1000);
            progress.add(600);
            progress.add(400);
            Ok(())
        })
        .unwrap();
    done.join().unwrap();
    let failed = offline
        .spawn_job(
            "read_model_rebuild",
            "events",
            |progress| -> Result<(), String> {
                progress.set_total(10);
                progress.set_done(3);
                Err("the disk is full".into())
            },
        )
        .unwrap();
    assert_eq!(failed.join(), Err("the disk is full".to_string()));

    let jobs = offline.jobs();
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        (jobs[0].name, jobs[0].state, jobs[0].done, jobs[0].total),
        ("verify", JobState::Done, 1000, 1000)
    );
    assert_eq!(
        (jobs[1].name, jobs[1].state, jobs[1].done),
        ("read_model_rebuild", JobState::Failed, 3)
    );

    let mut registry = prometheus_client::registry::Registry::default();
    offline.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let mode = offline.isolation().as_str();
    for line in [
        format!("tally_offline_isolation{{mode=\"{mode}\"}} 1"),
        "tally_offline_boosts_total 0".to_string(),
        "tally_offline_job_units_done{name=\"verify\",id=\"1\",unit=\"bytes\"} 1000".to_string(),
        "tally_offline_job_units_expected{name=\"read_model_rebuild\",id=\"2\",unit=\"events\"} 10".to_string(),
        "tally_offline_job_state{name=\"read_model_rebuild\",id=\"2\",unit=\"events\",state=\"failed\"} 1".to_string(),
        "tally_offline_job_state{name=\"verify\",id=\"1\",unit=\"bytes\",state=\"running\"} 0".to_string(),
    ] {
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
}

#[test]
fn finished_jobs_are_forgotten_beyond_the_limit() {
    let offline = OfflineExecutor::new(OfflineConfig::with_priority(Priority::Normal));
    for _ in 0..3 * tally_offline::limits::JOBS_FINISHED_KEPT {
        offline
            .spawn_job("tiny", "units", |_| Ok(()))
            .unwrap()
            .join()
            .unwrap();
    }
    let jobs = offline.jobs();
    assert!(
        jobs.len() <= tally_offline::limits::JOBS_FINISHED_KEPT + 1,
        "{}",
        jobs.len()
    );
    assert!(jobs.iter().all(|job| job.state == JobState::Done));
}

/// Sets the calling thread's CPU affinity to `cpus`.
fn pin_current_thread(cpus: &[usize]) {
    // SAFETY: a zeroed cpu set is valid; CPU_SET writes within it; the call reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Two threads requests wait for are made to queue on the first core (pinned there, then given
/// every core back, which leaves them there) while an idle job runs on the second core: the idle
/// job moves one of them to its core. The kernel's load balancer may spread them first, so the
/// test tries a few times and asks for one handover; with a single core there is nothing to
/// hand over, and none happens.
#[test]
fn an_idle_job_hands_its_core_to_an_online_thread_waiting_on_another() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let all: Vec<usize> = (0..cores).collect();
    let offline = OfflineExecutor::new(OfflineConfig::with_priority(Priority::Idle));
    let stop = Arc::new(AtomicBool::new(false));
    let job = {
        let stop = Arc::clone(&stop);
        offline
            .spawn_job("spinner", "loops", move |_| {
                pin_current_thread(&[cores - 1]);
                while !stop.load(Ordering::Relaxed) {
                    tally_offline::yield_point();
                }
                Ok(())
            })
            .unwrap()
    };
    let before = tally_offline::handovers();
    let mut handed_over = false;
    for _attempt in 0..20 {
        let queued = Arc::new(AtomicBool::new(false));
        let spinners: Vec<_> = (0..2)
            .map(|_| {
                let (queued, all) = (Arc::clone(&queued), all.clone());
                std::thread::spawn(move || {
                    tally_offline::online_thread_started();
                    pin_current_thread(&[0]);
                    pin_current_thread(&all);
                    let until = Instant::now() + Duration::from_millis(300);
                    while Instant::now() < until && !queued.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until && tally_offline::handovers() == before {
            std::thread::sleep(Duration::from_millis(1));
        }
        queued.store(true, Ordering::Relaxed);
        for spinner in spinners {
            spinner.join().unwrap();
        }
        if tally_offline::handovers() > before {
            handed_over = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    job.join().unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    offline.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let shown = format!(
        "tally_offline_handovers_total {}",
        tally_offline::handovers()
    );
    assert!(text.contains(&shown), "no {shown} in\n{text}");
    if cores < 2 {
        assert!(!handed_over, "one core: nothing to hand over");
    } else {
        assert!(
            handed_over,
            "an idle job on core {} never moved a waiting online thread to it",
            cores - 1
        );
    }
}
