//! The helper layer of the engine tests, so that the tests do not pin the API.
//!
//! Commands come from a one-line language (as in `tally-core/tests/ledger.rs`), answers and
//! accounts are rendered as short text, engines open through one function, and [`Throttled`]
//! wraps the in-memory storage to slow every fdatasync down or hold it until released.
//!
//! ```text
//! open a USD            # account a in ledger USD
//! open o USD overdraft  # may go below zero
//! deposit d1 a 100
//! withdraw w1 a 30
//! transfer t1 a b 10
//! pending p1 a b 10 [timeout_s]
//! post x1 p1 [amount]
//! void v1 p1
//! linked transfer t1 a b 10, transfer t2 b c 5
//! ```

use std::any::Any;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use tally_core::{Command, Id};
use tally_engine::{
    AccountView, Answer, Detail, Engine, EngineConfig, EngineError, EngineHandle, Opened,
};
use tally_log::{MemStorage, Storage, StorageFile};

/// The data directory of engines on in-memory storage.
pub const MEM_DIR: &str = "/mem/data";

/// How long bounded polls wait before failing: generous, as the machine may be busy.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn id(text: &str) -> Id {
    Id::new(text).unwrap()
}

/// One command from one line.
pub fn parse(line: &str) -> Command {
    tally_core::script::parse(line).unwrap()
}

/// The lines of a script without blank lines and `#` comments.
pub fn lines(script: &str) -> impl Iterator<Item = &str> {
    tally_core::script::lines(script)
}

/// One command per line of `script`.
pub fn commands(script: &str) -> Vec<Command> {
    lines(script).map(parse).collect()
}

/// An answer as one short line.
pub fn describe(answer: &Answer) -> String {
    match answer {
        Answer::Account { view, created } => format!(
            "account {} {}",
            view.id.as_str(),
            if *created { "created" } else { "exists" }
        ),
        Answer::Transfer { reply, detail } => {
            let side = |id: &Option<Id>| id.as_ref().map_or("ext", Id::as_str).to_string();
            let accounts = detail.as_ref().map_or(String::new(), |detail| {
                format!(
                    " {} {}->{}",
                    detail.ledger.as_str(),
                    side(&detail.from),
                    side(&detail.to)
                )
            });
            format!(
                "{} {} @{} amount {}{accounts}",
                reply.kind.name(),
                if reply.created {
                    "created"
                } else {
                    "duplicate"
                },
                reply.position,
                reply.amount,
            )
        }
        Answer::Rejected {
            code,
            position,
            created,
        } => format!(
            "rejected {} @{position}{}",
            code.as_str(),
            if *created { "" } else { " (again)" }
        ),
        Answer::Conflict => "conflict".to_string(),
        Answer::Invalid(invalid) => format!("invalid: {invalid}"),
        Answer::Revoked { created } => format!("revoked{}", if *created { "" } else { " (again)" }),
        Answer::Campaign { view, created } => format!(
            "campaign {} {}{}",
            view.definition.id,
            view.state.name(),
            if *created { "" } else { " (again)" }
        ),
        Answer::Claim { view, created } => format!(
            "claim {} {} attempts {}{}",
            view.order_id,
            view.state.name(),
            view.attempts,
            if *created { "" } else { " (again)" }
        ),
        Answer::Refused(code) => format!("refused {}", code.as_str()),
    }
}

/// The answers of one request, joined.
pub fn describe_all(answers: &Result<Vec<Answer>, EngineError>) -> String {
    match answers {
        Ok(answers) => answers.iter().map(describe).collect::<Vec<_>>().join(", "),
        Err(error) => format!("error: {error}"),
    }
}

/// Executes each line of `script` as its own request, in order, and renders `line: answers`.
pub async fn run(handle: &EngineHandle, script: &str) -> String {
    let mut out = String::new();
    for line in lines(script) {
        let answers = handle.execute(vec![parse(line)], Detail::Full).await;
        out.push_str(&format!("{line}: {}\n", describe_all(&answers)));
    }
    out
}

/// Executes all of `script` as one request and returns the answers; panics on an engine error.
pub async fn execute(handle: &EngineHandle, script: &str) -> Vec<Answer> {
    handle
        .execute(commands(script), Detail::Full)
        .await
        .unwrap_or_else(|error| panic!("executing {script:?}: {error}"))
}

/// The views of `ids`, for comparing states across restarts.
pub async fn views(handle: &EngineHandle, ids: &[String]) -> Vec<Option<AccountView>> {
    let mut views = Vec::with_capacity(ids.len());
    for account in ids {
        views.push(handle.account(id(account)).await.unwrap());
    }
    views
}

/// The accounts `ids` as text, one per line.
pub async fn accounts(handle: &EngineHandle, ids: &[&str]) -> String {
    let mut out = String::new();
    for account in ids {
        let line = match handle.account(id(account)).await.unwrap() {
            None => format!("{account}: none"),
            Some(view) => format!(
                "{account}: {} balance {} debits {} credits {} pending -{} +{} v{}{}",
                view.ledger.as_str(),
                view.balance,
                view.debits_posted,
                view.credits_posted,
                view.debits_pending,
                view.credits_pending,
                view.version,
                if view.allow_overdraft {
                    " overdraft"
                } else {
                    ""
                },
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A config for in-memory storage, with periodic snapshots off.
pub fn mem_config() -> EngineConfig {
    EngineConfig {
        snapshot_interval_events: 0,
        ..EngineConfig::new(PathBuf::from(MEM_DIR))
    }
}

/// A config for a real directory, with periodic snapshots off.
pub fn fs_config(dir: &Path) -> EngineConfig {
    EngineConfig {
        snapshot_interval_events: 0,
        ..EngineConfig::new(dir.to_path_buf())
    }
}

/// Serialises opening engines, so that a test can tell which threads its engine started.
static OPENING: Mutex<()> = Mutex::new(());

fn opening() -> MutexGuard<'static, ()> {
    OPENING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Opens an engine on `storage`.
pub fn try_open_in(storage: Arc<dyn Storage>, config: EngineConfig) -> Result<Opened, EngineError> {
    let _opening = opening();
    Engine::open_in(storage, config)
}

/// Opens an engine on `storage`; panics on failure.
pub fn open_in(storage: Arc<dyn Storage>, config: EngineConfig) -> Opened {
    try_open_in(storage, config).unwrap_or_else(|error| panic!("opening the engine: {error}"))
}

/// Opens an engine on in-memory `storage` with [`mem_config`].
pub fn open_mem(storage: &MemStorage) -> Opened {
    open_in(Arc::new(storage.clone()), mem_config())
}

/// Opens an engine on the real filesystem.
pub fn try_open_fs(config: EngineConfig) -> Result<Opened, EngineError> {
    let _opening = opening();
    Engine::open(config)
}

/// Opens an engine on `storage` and returns the thread id of its state thread too.
pub fn open_traced(storage: Arc<dyn Storage>, config: EngineConfig) -> (Opened, u32) {
    let _opening = opening();
    let before = thread_ids("tally-state");
    let opened = Engine::open_in(storage, config).unwrap();
    // A new thread takes its name a moment after it starts.
    let started = Instant::now();
    loop {
        let new: Vec<u32> = thread_ids("tally-state")
            .into_iter()
            .filter(|tid| !before.contains(tid))
            .collect();
        assert!(new.len() <= 1, "one new state thread, found {new:?}");
        if let [tid] = new[..] {
            return (opened, tid);
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the state thread never got its name"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The ids of this process's threads named `name`.
fn thread_ids(name: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = entry.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue; // The thread exited meanwhile.
        };
        if comm.trim_end() == name {
            ids.push(path.file_name().unwrap().to_str().unwrap().parse().unwrap());
        }
    }
    ids
}

/// CPU time a thread of this process used so far, in clock ticks (user plus system).
pub fn thread_cpu_ticks(tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    // The fields after the parenthesised name start with the state (field 3); utime and stime
    // are fields 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Shuts the engine down without blocking the runtime.
pub async fn shutdown(engine: Engine) -> Result<(), EngineError> {
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .unwrap()
}

/// Polls `condition` every few milliseconds until it holds; panics after [`PATIENCE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < PATIENCE,
            "gave up after {PATIENCE:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `future` once: submits a request without waiting for its answer.
pub async fn poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|context| {
        Poll::Ready(match Pin::new(&mut *future).poll(context) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        })
    })
    .await
}

/// Flips every bit of the byte at `offset` of a real file.
pub fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// Where the records of a segment file end: following the length fields from the 32-byte
/// header to the end of the file or to the zeros the log keeps ahead of its records.
pub fn segment_records_end(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let mut offset = 32;
    while offset + 8 <= bytes.len() {
        let length = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        if length == 0 {
            break;
        }
        offset += 8 + length;
    }
    offset as u64
}

/// The files of a real directory whose names end with `suffix`, sorted.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_str().unwrap().ends_with(suffix))
        .collect();
    files.sort();
    files
}

/// The position in a snapshot file name `snapshot-<position>.tsnap`.
pub fn snapshot_position(path: &Path) -> u64 {
    let name = path.file_name().unwrap().to_str().unwrap();
    name.strip_prefix("snapshot-")
        .and_then(|rest| rest.strip_suffix(".tsnap"))
        .unwrap()
        .parse()
        .unwrap()
}

/// In-memory storage whose fdatasyncs can be slowed down or held until released, to make the
/// writer's timing deterministic. Cloning shares the same files and controls.
#[derive(Clone, Debug, Default)]
pub struct Throttled {
    /// The storage underneath, for crash images and injected errors.
    pub inner: MemStorage,
    control: Arc<Control>,
}

#[derive(Debug, Default)]
struct Control {
    state: Mutex<ControlState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct ControlState {
    held: bool,
    waiting: usize,
    delay: Duration,
}

impl Throttled {
    pub fn new() -> Throttled {
        Throttled::default()
    }

    /// Every fdatasync from now on sleeps `delay` first.
    pub fn set_delay(&self, delay: Duration) {
        self.control.lock().delay = delay;
    }

    /// Every fdatasync from now on waits until [`Throttled::release`].
    pub fn hold(&self) {
        self.control.lock().held = true;
    }

    pub fn release(&self) {
        self.control.lock().held = false;
        self.control.changed.notify_all();
    }

    /// fdatasyncs waiting for a release.
    pub fn waiting(&self) -> usize {
        self.control.lock().waiting
    }

    fn wrap(&self, file: Box<dyn StorageFile>) -> Box<dyn StorageFile> {
        Box::new(ThrottledFile {
            inner: file,
            control: Arc::clone(&self.control),
        })
    }
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn before_sync(&self) {
        let mut state = self.lock();
        state.waiting += 1;
        while state.held {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.waiting -= 1;
        let delay = state.delay;
        drop(state);
        std::thread::sleep(delay);
    }
}

impl Storage for Throttled {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(self.wrap(self.inner.open_read(path)?))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(self.wrap(self.inner.open_write(path)?))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(self.wrap(self.inner.create_new(path)?))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }

    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        self.inner.lock_exclusive(path)
    }
}

#[derive(Debug)]
struct ThrottledFile {
    inner: Box<dyn StorageFile>,
    control: Arc<Control>,
}

impl StorageFile for ThrottledFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.control.before_sync();
        self.inner.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn modified(&self) -> io::Result<std::time::SystemTime> {
        self.inner.modified()
    }
}
