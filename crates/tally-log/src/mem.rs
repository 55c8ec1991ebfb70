//! An in-memory [`Storage`] for crash tests and simulation.
//!
//! It keeps, per file, the bytes written so far and the bytes the last
//! `sync_data` made durable, and per directory the entries the last `sync_dir`
//! made durable. [`MemStorage::crash_image`] returns the disk a crash would
//! leave behind: only what was synced, plus optionally a torn piece of what was
//! not. [`MemStorage::fail_after`] injects an I/O error on a countdown.

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::storage::{Storage, StorageFile};

/// What a crash leaves of the bytes appended to a file after its last sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Torn {
    /// Nothing unsynced survives.
    Nothing,
    /// The first `n` unsynced bytes survive (a write cut short).
    Prefix(u64),
    /// The file grows by `n` zero bytes (the size reached the disk, the data did not).
    Zeros(u64),
}

/// In-memory storage. Cloning shares the same files.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
}

#[derive(Debug, Default)]
struct MemState {
    /// Directory entries as the running process sees them: path to inode.
    entries: BTreeMap<PathBuf, u64>,
    /// Directory entries as of each directory's last `sync_dir`.
    entries_durable: BTreeMap<PathBuf, u64>,
    inodes: BTreeMap<u64, Inode>,
    inode_next: u64,
    locks: HashSet<PathBuf>,
    /// Operations left before the injected failure; `None` when no failure is armed.
    fail_countdown: Option<u64>,
    /// Operations performed so far (all trait methods), so a simulator can pick a countdown.
    op_count: u64,
}

#[derive(Debug, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// When the contents last changed, as a file system's mtime.
    modified: SystemTime,
}

impl MemStorage {
    /// An empty storage.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Arms a failure: the next `ops` operations succeed, the one after fails with an I/O
    /// error (without effect), and then the countdown is disarmed.
    pub fn fail_after(&self, ops: u64) {
        self.lock().fail_countdown = Some(ops);
    }

    /// Operations performed so far through the [`Storage`] and [`StorageFile`] traits.
    pub fn op_count(&self) -> u64 {
        self.lock().op_count
    }

    /// The disk as a crash right now would leave it, as a new, independent storage: only
    /// synced directory entries, each file holding its synced bytes plus what `torn` says
    /// survives of the bytes written after the last sync, from the first byte that differs
    /// (an append, or a write over zeros kept ahead of it). Locks are not carried over.
    pub fn crash_image(&self, torn: Torn) -> MemStorage {
        let state = self.lock();
        let mut image = MemState {
            inode_next: state.inode_next,
            ..MemState::default()
        };
        for (path, &inode_id) in &state.entries_durable {
            let inode = &state.inodes[&inode_id];
            let mut data = inode.durable.clone();
            // Torn pieces only make sense for writes that leave the file at least as long.
            if inode.data.len() >= data.len() {
                let from = first_difference(&data, &inode.data);
                let unsynced = &inode.data[from..];
                let (survives, zeros) = match torn {
                    Torn::Nothing => (0, false),
                    Torn::Prefix(n) => (clamp(n, unsynced.len()), false),
                    Torn::Zeros(n) => (clamp(n, unsynced.len()), true),
                };
                let end = from + survives;
                if end > data.len() {
                    data.resize(end, 0);
                }
                if !zeros {
                    data[from..end].copy_from_slice(&unsynced[..survives]);
                }
                // Zeros: the size reached the disk, the data did not. Over bytes that were
                // already durable, the old bytes stay.
            }
            image.inodes.insert(
                inode_id,
                Inode {
                    durable: data.clone(),
                    data,
                    modified: inode.modified,
                },
            );
            image.entries.insert(path.clone(), inode_id);
            image.entries_durable.insert(path.clone(), inode_id);
        }
        MemStorage {
            state: Arc::new(Mutex::new(image)),
        }
    }

    /// The current bytes of a file, or `None` if it does not exist. Not counted as an operation.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let inode = state.entries.get(path)?;
        Some(state.inodes[inode].data.clone())
    }

    /// How many bytes of a file the last `sync_data` made durable, or `None` if its directory
    /// entry is not durable. Not counted as an operation.
    pub fn synced_len(&self, path: &Path) -> Option<u64> {
        let state = self.lock();
        let inode = state.entries_durable.get(path)?;
        Some(state.inodes[inode].durable.len() as u64)
    }

    /// Replaces a file's bytes, durably, creating it if needed: for tests that damage a disk
    /// image. Not counted as an operation.
    pub fn set_file_bytes(&self, path: &Path, bytes: Vec<u8>) {
        let mut state = self.lock();
        let inode_id = match state.entries.get(path) {
            Some(&id) => id,
            None => state.insert_inode(path),
        };
        state.entries_durable.insert(path.to_path_buf(), inode_id);
        let inode = state
            .inodes
            .get_mut(&inode_id)
            .expect("entry points to an inode");
        inode.durable = bytes.clone();
        inode.data = bytes;
        inode.modified = SystemTime::now();
    }

    /// The paths of all files, sorted. Not counted as an operation.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().entries.keys().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        // A panic while holding the lock leaves the state consistent (every mutation is a
        // single step), so a poisoned lock is safe to reuse.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts an operation and fails it if the armed countdown reached zero.
    fn begin(&self) -> io::Result<MutexGuard<'_, MemState>> {
        let mut state = self.lock();
        state.op_count += 1;
        match state.fail_countdown {
            Some(0) => {
                state.fail_countdown = None;
                Err(io::Error::other("injected I/O error"))
            }
            Some(n) => {
                state.fail_countdown = Some(n - 1);
                Ok(state)
            }
            None => Ok(state),
        }
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let state = self.begin()?;
        let inode = *state.entries.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(MemFile {
            storage: self.clone(),
            inode,
        }))
    }
}

impl MemState {
    fn insert_inode(&mut self, path: &Path) -> u64 {
        let id = self.inode_next;
        self.inode_next += 1;
        let inode = Inode {
            data: Vec::new(),
            durable: Vec::new(),
            modified: SystemTime::now(),
        };
        self.inodes.insert(id, inode);
        self.entries.insert(path.to_path_buf(), id);
        id
    }
}

impl Storage for MemStorage {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        // Directories are implied by the paths of their files.
        self.begin().map(drop)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.begin()?;
        let names = state
            .entries
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect();
        Ok(names)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.open(path)
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.open(path)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut state = self.begin()?;
        if state.entries.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let inode = state.insert_inode(path);
        Ok(Box::new(MemFile {
            storage: self.clone(),
            inode,
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.begin()?;
        state
            .entries
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.begin()?;
        let inode = state.entries.remove(from).ok_or_else(|| not_found(from))?;
        state.entries.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.begin()?;
        let state = &mut *state;
        state
            .entries_durable
            .retain(|path, _| path.parent() != Some(dir));
        for (path, &inode) in &state.entries {
            if path.parent() == Some(dir) {
                state.entries_durable.insert(path.clone(), inode);
            }
        }
        Ok(())
    }

    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let mut state = self.begin()?;
        if !state.locks.insert(path.to_path_buf()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked", path.display()),
            ));
        }
        Ok(Box::new(MemLock {
            storage: self.clone(),
            path: path.to_path_buf(),
        }))
    }
}

#[derive(Debug)]
struct MemLock {
    storage: MemStorage,
    path: PathBuf,
}

impl Drop for MemLock {
    fn drop(&mut self) {
        self.storage.lock().locks.remove(&self.path);
    }
}

/// A handle to an inode; like a real file descriptor it keeps working after the file is
/// removed or renamed.
#[derive(Debug)]
struct MemFile {
    storage: MemStorage,
    inode: u64,
}

impl MemFile {
    fn with_inode<T>(&self, f: impl FnOnce(&mut Inode) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.storage.begin()?;
        f(state
            .inodes
            .get_mut(&self.inode)
            .expect("open handle keeps its inode"))
    }
}

impl StorageFile for MemFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with_inode(|inode| {
            let start = usize::try_from(offset).map_err(|_| eof())?;
            let end = start.checked_add(buf.len()).ok_or_else(eof)?;
            buf.copy_from_slice(inode.data.get(start..end).ok_or_else(eof)?);
            Ok(())
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with_inode(|inode| {
            let start = usize::try_from(offset).map_err(io::Error::other)?;
            let end = start + buf.len();
            if inode.data.len() < end {
                inode.data.resize(end, 0);
            }
            inode.data[start..end].copy_from_slice(buf);
            inode.modified = SystemTime::now();
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with_inode(|inode| {
            inode.durable = inode.data.clone();
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with_inode(|inode| Ok(inode.data.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with_inode(|inode| {
            inode
                .data
                .resize(usize::try_from(len).map_err(io::Error::other)?, 0);
            inode.modified = SystemTime::now();
            Ok(())
        })
    }

    fn modified(&self) -> io::Result<SystemTime> {
        self.with_inode(|inode| Ok(inode.modified))
    }
}

/// Where `new` first differs from `old` (`new` at least as long); `new.len()` when it does not.
fn first_difference(old: &[u8], new: &[u8]) -> usize {
    old.iter()
        .zip(new)
        .position(|(old, new)| old != new)
        .unwrap_or(old.len())
        .min(new.len())
}

fn clamp(n: u64, len: usize) -> usize {
    usize::try_from(n).map_or(len, |n| n.min(len))
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/mem")
    }

    #[test]
    fn crash_keeps_exactly_the_synced_bytes() {
        let storage = MemStorage::new();
        let path = dir().join("a");
        let file = storage.create_new(&path).unwrap();
        file.write_all_at(b"hello", 0).unwrap();
        file.sync_data().unwrap();
        storage.sync_dir(&dir()).unwrap();
        file.write_all_at(b" world", 5).unwrap();

        assert_eq!(
            storage
                .crash_image(Torn::Nothing)
                .file_bytes(&path)
                .unwrap(),
            b"hello"
        );
        assert_eq!(
            storage
                .crash_image(Torn::Prefix(3))
                .file_bytes(&path)
                .unwrap(),
            b"hello wo"
        );
        assert_eq!(
            storage
                .crash_image(Torn::Prefix(100))
                .file_bytes(&path)
                .unwrap(),
            b"hello world"
        );
        assert_eq!(
            storage
                .crash_image(Torn::Zeros(2))
                .file_bytes(&path)
                .unwrap(),
            b"hello\0\0"
        );
        // The running storage is unaffected by taking an image.
        assert_eq!(storage.file_bytes(&path).unwrap(), b"hello world");
    }

    #[test]
    fn crash_tears_a_write_over_synced_zeros_like_an_append() {
        let storage = MemStorage::new();
        let path = dir().join("a");
        let file = storage.create_new(&path).unwrap();
        file.write_all_at(b"ab\0\0\0\0\0\0", 0).unwrap();
        file.sync_data().unwrap();
        storage.sync_dir(&dir()).unwrap();
        file.write_all_at(b"cde", 2).unwrap();

        let image = |torn| storage.crash_image(torn).file_bytes(&path).unwrap();
        assert_eq!(image(Torn::Nothing), b"ab\0\0\0\0\0\0");
        assert_eq!(image(Torn::Prefix(2)), b"abcd\0\0\0\0");
        assert_eq!(image(Torn::Prefix(100)), b"abcde\0\0\0");
        // The data never reached the disk: the zeros that were there stay.
        assert_eq!(image(Torn::Zeros(3)), b"ab\0\0\0\0\0\0");
    }

    #[test]
    fn crash_forgets_entries_whose_directory_was_not_synced() {
        let storage = MemStorage::new();
        let path = dir().join("a");
        let file = storage.create_new(&path).unwrap();
        file.write_all_at(b"data", 0).unwrap();
        file.sync_data().unwrap();
        assert!(storage
            .crash_image(Torn::Nothing)
            .file_bytes(&path)
            .is_none());

        storage.sync_dir(&dir()).unwrap();
        let renamed = dir().join("b");
        storage.rename(&path, &renamed).unwrap();
        let image = storage.crash_image(Torn::Nothing);
        assert_eq!(image.file_bytes(&path).unwrap(), b"data");
        assert!(image.file_bytes(&renamed).is_none());

        storage.sync_dir(&dir()).unwrap();
        let image = storage.crash_image(Torn::Nothing);
        assert!(image.file_bytes(&path).is_none());
        assert_eq!(image.file_bytes(&renamed).unwrap(), b"data");
    }

    #[test]
    fn unsynced_truncation_is_undone_by_a_crash() {
        let storage = MemStorage::new();
        let path = dir().join("a");
        let file = storage.create_new(&path).unwrap();
        storage.sync_dir(&dir()).unwrap();
        file.write_all_at(b"abcdef", 0).unwrap();
        file.sync_data().unwrap();
        file.set_len(2).unwrap();
        assert_eq!(
            storage
                .crash_image(Torn::Prefix(9))
                .file_bytes(&path)
                .unwrap(),
            b"abcdef"
        );
        file.sync_data().unwrap();
        assert_eq!(
            storage
                .crash_image(Torn::Nothing)
                .file_bytes(&path)
                .unwrap(),
            b"ab"
        );
    }

    #[test]
    fn injected_failure_fires_once_after_the_countdown() {
        let storage = MemStorage::new();
        let file = storage.create_new(&dir().join("a")).unwrap();
        storage.fail_after(1);
        file.write_all_at(b"x", 0).unwrap();
        let error = file.sync_data().unwrap_err();
        assert_eq!(error.to_string(), "injected I/O error");
        // The failed sync made nothing durable.
        storage.sync_dir(&dir()).unwrap();
        assert_eq!(
            storage
                .crash_image(Torn::Nothing)
                .file_bytes(&dir().join("a"))
                .unwrap(),
            b""
        );
        file.sync_data().unwrap();
    }

    #[test]
    fn lock_is_exclusive_until_dropped() {
        let storage = MemStorage::new();
        let path = dir().join("LOCK");
        let guard = storage.lock_exclusive(&path).unwrap();
        assert_eq!(
            storage.lock_exclusive(&path).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(guard);
        storage.lock_exclusive(&path).unwrap();
    }
}
