//! How offline threads are kept from taking CPU time the online path wants.
//!
//! Two mechanisms, the second on top of the first where the machine allows it:
//!
//! - `SCHED_IDLE` on every offline thread: the kernel runs it only when no normal thread of the
//!   same CPU wants to run (it keeps a tiny weight, so a thread starved for long still creeps
//!   forward). Always allowed to an unprivileged thread, and irreversible for it.
//! - A child cpu cgroup with `cpu.idle = 1` holding those threads: the whole group then counts as
//!   idle against its siblings, which makes it yield to the rest of the machine too, not only to
//!   threads that share its cgroup. It needs a writable cpu controller: cgroup v2 (the group is
//!   made `threaded`, so that single threads of this process can move into it) or cgroup v1 with
//!   `cpu.idle` (Linux 5.15 and later). Tally detects what is possible and falls back quietly.
//!
//! The cgroup is named `tally-offline-<pid>` next to the process's own cgroup; it is removed when
//! the executor goes, and a later start removes those of processes that are gone (a SIGKILL leaves
//! an empty one behind).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The scheduling priority asked for offline threads (`tally serve --offline-priority`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Offline threads run like any other thread: for comparison in benchmarks.
    Normal,
    /// Offline threads run at `SCHED_IDLE`, in an idle cgroup where possible (the default).
    Idle,
}

/// The isolation of offline threads actually in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// None: offline threads compete with the online path as equals.
    None,
    /// Offline threads run at `SCHED_IDLE`.
    SchedIdle,
    /// Offline threads run at `SCHED_IDLE` inside a child cpu cgroup with `cpu.idle = 1`.
    SchedIdleIdleCgroup,
}

impl Isolation {
    /// The name shown in logs and as the `mode` label of `tally_offline_isolation`.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::None => "none",
            Isolation::SchedIdle => "sched_idle",
            Isolation::SchedIdleIdleCgroup => "sched_idle+idle_cgroup",
        }
    }

    /// Every value, for metrics that show each with 0 or 1.
    pub const ALL: [Isolation; 3] = [
        Isolation::None,
        Isolation::SchedIdle,
        Isolation::SchedIdleIdleCgroup,
    ];
}

/// The scheduling policy of the calling thread (`SCHED_OTHER`, `SCHED_IDLE`, ...), read back
/// from the kernel.
pub fn current_thread_policy() -> i32 {
    // SAFETY: pid 0 names the calling thread; no memory is passed.
    unsafe { libc::sched_getscheduler(0) }
}

/// Moves the calling thread to `SCHED_IDLE`.
pub(crate) fn set_sched_idle() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread and `param` outlives the call.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lowers the calling thread to nice 19: the priority of a follower (a thread requests wait
/// for), and the fallback where `SCHED_IDLE` is refused.
pub(crate) fn set_nice_19() -> io::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: a plain syscall on the calling thread's own id.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A child cpu cgroup with `cpu.idle = 1` that offline threads move into.
#[derive(Debug)]
pub(crate) struct IdleCgroup {
    dir: PathBuf,
    /// The file a thread writes its id into to join: `cgroup.threads` (v2) or `tasks` (v1).
    join_file: PathBuf,
    /// The same file of the parent, to leave.
    leave_file: PathBuf,
}

/// Prefix of the cgroups Tally creates; the process id and the executor's number in the process
/// follow (`tally-offline-<pid>-<n>`), so that two executors of one process never share one.
const CGROUP_PREFIX: &str = "tally-offline-";

/// Numbers the cgroups of this process.
static CGROUP_COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl IdleCgroup {
    /// Creates the idle cgroup of this process, or says why it cannot.
    pub(crate) fn create() -> Result<IdleCgroup, String> {
        let membership = fs::read_to_string("/proc/self/cgroup")
            .map_err(|error| format!("cannot read /proc/self/cgroup: {error}"))?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|error| format!("cannot read /proc/self/mountinfo: {error}"))?;
        let mut reasons = Vec::new();
        if let Some(parent) = v2_cpu_dir(&membership, &mountinfo) {
            match IdleCgroup::create_v2(&parent) {
                Ok(cgroup) => return Ok(cgroup),
                Err(reason) => reasons.push(format!("cgroup v2 at {}: {reason}", parent.display())),
            }
        }
        if let Some(parent) = v1_cpu_dir(&membership, &mountinfo) {
            match IdleCgroup::create_v1(&parent) {
                Ok(cgroup) => return Ok(cgroup),
                Err(reason) => reasons.push(format!("cgroup v1 at {}: {reason}", parent.display())),
            }
        }
        if reasons.is_empty() {
            reasons.push("no cpu cgroup controller is mounted for this process".into());
        }
        Err(reasons.join("; "))
    }

    fn create_v2(parent: &Path) -> Result<IdleCgroup, String> {
        let controllers = read(&parent.join("cgroup.controllers"))?;
        if !controllers.split_whitespace().any(|name| name == "cpu") {
            return Err("the cpu controller is not available to this cgroup".into());
        }
        let dir = make_child(parent)?;
        let made = (|| {
            // Threaded first: only a threaded cgroup takes single threads of a process whose
            // other threads stay in the parent.
            write(&dir.join("cgroup.type"), "threaded")?;
            let enabled = read(&parent.join("cgroup.subtree_control"))?;
            if !enabled.split_whitespace().any(|name| name == "cpu") {
                write(&parent.join("cgroup.subtree_control"), "+cpu")?;
            }
            write(&dir.join("cpu.idle"), "1")
        })();
        finish_child(dir, made, "cgroup.threads")
    }

    fn create_v1(parent: &Path) -> Result<IdleCgroup, String> {
        if !parent.join("cpu.idle").exists() {
            return Err("this kernel's cgroup v1 cpu controller has no cpu.idle (Linux 5.15 and later have it)".into());
        }
        let dir = make_child(parent)?;
        let made = write(&dir.join("cpu.idle"), "1");
        finish_child(dir, made, "tasks")
    }

    /// Moves the calling thread into the cgroup.
    pub(crate) fn join_current_thread(&self) -> Result<(), String> {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        write(&self.join_file, &tid.to_string())
    }

    /// The cgroup's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for IdleCgroup {
    fn drop(&mut self) {
        // The last offline thread to end may be the one dropping it: it leaves first.
        let name = self
            .dir
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("");
        let inside = fs::read_to_string("/proc/thread-self/cgroup").is_ok_and(|cgroups| {
            cgroups
                .lines()
                .any(|line| line.ends_with(&format!("/{name}")))
        });
        if inside {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let _ = write(&self.leave_file, &tid.to_string());
        }
        // Fails while a thread is still inside; a later start sweeps it up then.
        if let Err(error) = fs::remove_dir(&self.dir) {
            tracing::debug!(dir = %self.dir.display(), %error, "idle cgroup left for a later start to remove");
        }
    }
}

/// Creates `tally-offline-<pid>` under `parent`, after removing those of processes that are gone.
fn make_child(parent: &Path) -> Result<PathBuf, String> {
    sweep_stale(parent);
    let number = CGROUP_COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = parent.join(format!("{CGROUP_PREFIX}{}-{number}", std::process::id()));
    fs::create_dir(&dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    Ok(dir)
}

/// Keeps the cgroup if it was set up, removes it otherwise.
fn finish_child(dir: PathBuf, made: Result<(), String>, join: &str) -> Result<IdleCgroup, String> {
    match made {
        Ok(()) => Ok(IdleCgroup {
            join_file: dir.join(join),
            leave_file: dir.parent().unwrap_or(&dir).join(join),
            dir,
        }),
        Err(reason) => {
            let _ = fs::remove_dir(&dir);
            Err(reason)
        }
    }
}

/// Removes the empty cgroups of earlier Tally processes that no longer run.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(CGROUP_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            // Only an empty cgroup can be removed, so a live one is never touched.
            let _ = fs::remove_dir(entry.path());
        }
    }
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value)
        .map_err(|error| format!("cannot write {value:?} to {}: {error}", path.display()))
}

/// One line of `/proc/self/mountinfo`: its root within the filesystem, its mount point, its
/// filesystem type and its super options.
struct Mount<'a> {
    root: &'a str,
    point: &'a str,
    fstype: &'a str,
    options: &'a str,
}

fn mounts(mountinfo: &str) -> impl Iterator<Item = Mount<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let mut after = after.split(' ');
        Some(Mount {
            root: fields.get(3)?,
            point: fields.get(4)?,
            fstype: after.next()?,
            options: after.nth(1).unwrap_or(""),
        })
    })
}

/// The directory of the process's cgroup in the unified (v2) hierarchy.
fn v2_cpu_dir(membership: &str, mountinfo: &str) -> Option<PathBuf> {
    let path = membership
        .lines()
        .find_map(|line| line.strip_prefix("0::"))?;
    let mount = mounts(mountinfo).find(|mount| mount.fstype == "cgroup2")?;
    Some(join_mount(mount.point, mount.root, path))
}

/// The directory of the process's cgroup in the v1 hierarchy that holds the cpu controller.
fn v1_cpu_dir(membership: &str, mountinfo: &str) -> Option<PathBuf> {
    let path = membership.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|name| name == "cpu")
            .then_some(path)
    })?;
    let mount = mounts(mountinfo).find(|mount| {
        mount.fstype == "cgroup" && mount.options.split(',').any(|option| option == "cpu")
    })?;
    Some(join_mount(mount.point, mount.root, path))
}

/// The directory of cgroup `path` under a mount of the hierarchy at `point` whose root is `root`.
fn join_mount(point: &str, root: &str, path: &str) -> PathBuf {
    let relative = path.strip_prefix(root).unwrap_or(path);
    let mut dir = PathBuf::from(point);
    dir.extend(relative.split('/').filter(|part| !part.is_empty()));
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
40 30 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_v1_cpu_hierarchy_and_not_cpuacct() {
        let membership = "2:cpuacct:/other\n1:cpu:/svc/a\n0::/svc\n";
        assert_eq!(
            v1_cpu_dir(membership, MOUNTINFO),
            Some(PathBuf::from("/sys/fs/cgroup/cpu/svc/a"))
        );
        assert_eq!(
            v2_cpu_dir(membership, MOUNTINFO),
            Some(PathBuf::from("/sys/fs/cgroup/unified/svc"))
        );
    }

    #[test]
    fn a_combined_v1_controller_and_a_namespaced_root_are_understood() {
        let mountinfo =
            "31 30 0:27 /outer /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let membership = "1:cpu,cpuacct:/outer/inner\n";
        assert_eq!(
            v1_cpu_dir(membership, mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/inner"))
        );
        assert_eq!(v2_cpu_dir(membership, mountinfo), None);
    }

    #[test]
    fn isolation_names_are_the_documented_ones() {
        let names: Vec<&str> = Isolation::ALL.iter().map(|i| i.as_str()).collect();
        assert_eq!(names, ["none", "sched_idle", "sched_idle+idle_cgroup"]);
    }
}
