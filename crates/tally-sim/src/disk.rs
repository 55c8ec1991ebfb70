//! The simulated disk: the log's [`MemStorage`] (which knows what was synced) behind a layer
//! that injects, from the run's seed, the faults real disks have.
//!
//! - I/O errors on any operation (`EIO`), and a full disk (`ENOSPC`) on writes; a failing write
//!   may leave a prefix of its bytes, as a real short write does.
//! - Short reads: a read that ends early (`UnexpectedEof`) although the bytes are there.
//! - Slow `fdatasync`: the simulated clock jumps ahead, so clients time out and retry.
//! - Power cuts: from a random operation on, nothing more reaches the disk and every operation
//!   fails; the simulator then crashes the process.
//! - At a crash: bytes written after the last sync are lost, or survive as a torn prefix or as
//!   zeros; and a bit may flip in data that was synced long ago.
//!
//! The faults are drawn from their own random stream, in the order the engine performs
//! operations; the engine runs on the simulator's one thread, so that order, and with it the
//! whole run, follows from the seed.

use std::any::Any;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tally_engine::Clock;
use tally_log::{MemStorage, Storage, StorageFile, Torn};

/// The simulated wall clock, advanced only by the simulator (and by slow syncs).
#[derive(Clone, Debug)]
pub struct SimClock(Arc<AtomicU64>);

impl SimClock {
    /// A clock reading `start_ns`.
    pub fn new(start_ns: u64) -> SimClock {
        SimClock(Arc::new(AtomicU64::new(start_ns)))
    }

    /// Moves the clock forward by `ns`.
    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How often each fault strikes, in parts per million of the operations it applies to.
#[derive(Clone, Copy, Debug)]
pub struct FaultRates {
    /// Any operation fails with `EIO`.
    pub io_error: u32,
    /// A write fails with `ENOSPC`.
    pub disk_full: u32,
    /// A read ends early.
    pub short_read: u32,
    /// An `fdatasync` takes seconds.
    pub slow_sync: u32,
    /// The power goes at this operation.
    pub power_cut: u32,
}

impl FaultRates {
    /// No faults: for the checks the simulator makes itself.
    pub const NONE: FaultRates = FaultRates {
        io_error: 0,
        disk_full: 0,
        short_read: 0,
        slow_sync: 0,
        power_cut: 0,
    };
}

/// The faults a run injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Operations failed with `EIO`.
    pub io_errors: u64,
    /// Writes failed with `ENOSPC`.
    pub disk_full: u64,
    /// Reads cut short.
    pub short_reads: u64,
    /// Slow `fdatasync`s.
    pub slow_syncs: u64,
    /// Power cuts in the middle of an operation.
    pub power_cuts: u64,
    /// Crashes that lost bytes written after the last sync.
    pub lost_unsynced: u64,
    /// Crashes that left a torn prefix or zeros of unsynced bytes.
    pub torn_writes: u64,
    /// Bits flipped in synced data.
    pub bit_flips: u64,
}

impl std::ops::AddAssign for FaultCounts {
    fn add_assign(&mut self, other: FaultCounts) {
        self.io_errors += other.io_errors;
        self.disk_full += other.disk_full;
        self.short_reads += other.short_reads;
        self.slow_syncs += other.slow_syncs;
        self.power_cuts += other.power_cuts;
        self.lost_unsynced += other.lost_unsynced;
        self.torn_writes += other.torn_writes;
        self.bit_flips += other.bit_flips;
    }
}

impl std::fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "faults={} (io_errors={} disk_full={} short_reads={} slow_syncs={} power_cuts={} \
             lost_unsynced={} torn_writes={} bit_flips={})",
            self.total(),
            self.io_errors,
            self.disk_full,
            self.short_reads,
            self.slow_syncs,
            self.power_cuts,
            self.lost_unsynced,
            self.torn_writes,
            self.bit_flips,
        )
    }
}

impl FaultCounts {
    /// All faults together.
    pub fn total(&self) -> u64 {
        self.io_errors
            + self.disk_full
            + self.short_reads
            + self.slow_syncs
            + self.power_cuts
            + self.lost_unsynced
            + self.torn_writes
            + self.bit_flips
    }
}

/// A bit flipped in synced data, so that the simulator can undo it, as an operator restoring the
/// file from a copy would.
#[derive(Clone, Debug)]
pub struct BitFlip {
    /// The file.
    pub path: PathBuf,
    /// The byte.
    pub offset: u64,
    /// The flipped bit's mask.
    pub mask: u8,
}

#[derive(Debug)]
struct FaultState {
    rng: ChaCha8Rng,
    rates: FaultRates,
    counts: FaultCounts,
    /// Set by a power cut: every operation fails until the simulator crashes the process.
    powered_off: bool,
    /// The byte ranges of each write, per file, so that a bit flip can avoid the last record.
    /// Writes of only zeros (the log's zero fill ahead of its records) are not records.
    extents: BTreeMap<PathBuf, Vec<Extent>>,
    /// Per file, the bytes that were synced when the machine last crashed: what a bit flip may hit.
    synced: BTreeMap<PathBuf, u64>,
}

/// The byte range `[start, end)` of one write, and whether a sync of its file followed it.
#[derive(Clone, Copy, Debug)]
struct Extent {
    start: u64,
    end: u64,
    synced: bool,
}

/// The simulated disk. Cloning shares it.
#[derive(Clone, Debug)]
pub struct SimDisk {
    mem: MemStorage,
    faults: Arc<Mutex<FaultState>>,
    clock: SimClock,
}

impl SimDisk {
    /// An empty disk whose faults come from `rng` at `rates`.
    pub fn new(rng: ChaCha8Rng, rates: FaultRates, clock: SimClock) -> SimDisk {
        SimDisk {
            mem: MemStorage::new(),
            faults: Arc::new(Mutex::new(FaultState {
                rng,
                rates,
                counts: FaultCounts::default(),
                powered_off: false,
                extents: BTreeMap::new(),
                synced: BTreeMap::new(),
            })),
            clock,
        }
    }

    /// Sets the fault rates; returns the previous ones.
    pub fn set_rates(&self, rates: FaultRates) -> FaultRates {
        std::mem::replace(&mut self.lock().rates, rates)
    }

    /// The faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.lock().counts
    }

    /// Whether a power cut happened since the last crash.
    pub fn powered_off(&self) -> bool {
        self.lock().powered_off
    }

    /// Crashes the machine: the disk keeps only what was synced, plus what `torn` says of the
    /// bytes written after. Writes by the old process can no longer reach it.
    pub fn crash(&mut self, torn: Torn) {
        let image = self.mem.crash_image(torn);
        let mut faults = self.lock();
        let mut lost = false;
        faults.synced.clear();
        for path in image.paths() {
            lost |= self.mem.file_bytes(&path) != image.file_bytes(&path);
            let synced = self.mem.synced_len(&path).unwrap_or(0);
            faults.synced.insert(path, synced);
        }
        if lost {
            match torn {
                Torn::Nothing => faults.counts.lost_unsynced += 1,
                Torn::Prefix(_) | Torn::Zeros(_) => faults.counts.torn_writes += 1,
            }
        }
        faults.powered_off = false;
        let FaultState {
            extents, synced, ..
        } = &mut *faults;
        extents.retain(|path, _| synced.contains_key(path));
        for (path, extents) in extents.iter_mut() {
            // Only synced writes count: a torn piece after them is not a record that was written.
            extents.retain(|extent| extent.synced);
            truncate(extents, synced[path]);
        }
        drop(faults);
        self.mem = image;
    }

    /// Flips one bit in synced data that a crash cannot have damaged: anywhere in a snapshot or a
    /// log segment except the last record of the newest segment. That record alone is allowed to
    /// be torn, so damage to it is indistinguishable from a torn write on a single copy (see
    /// `docs/format.md`, "Assumptions about the media"). Returns the flip, if there was a byte
    /// to flip.
    pub fn flip_bit(&self, rng: &mut ChaCha8Rng) -> Option<BitFlip> {
        let faults = self.lock();
        let newest_segment = faults
            .synced
            .keys()
            .filter(|path| path.extension().is_some_and(|ext| ext == "tlog"))
            .max()
            .cloned();
        let mut ranges = Vec::new();
        for (path, &len) in &faults.synced {
            let is_data = path
                .extension()
                .is_some_and(|ext| ext == "tlog" || ext == "tsnap");
            if !is_data || len == 0 {
                continue;
            }
            let path = path.clone();
            let end = if Some(&path) == newest_segment.as_ref() {
                let last_record_start = faults
                    .extents
                    .get(&path)
                    .and_then(|extents| {
                        extents
                            .iter()
                            .filter(|extent| extent.end <= len)
                            .max_by_key(|extent| extent.end)
                    })
                    .map_or(0, |extent| extent.start);
                last_record_start
            } else {
                len
            };
            if end > 0 {
                ranges.push((path, end));
            }
        }
        drop(faults);
        let total: u64 = ranges.iter().map(|(_, end)| end).sum();
        if total == 0 {
            return None;
        }
        let mut pick = rng.random_range(0..total);
        let (path, end) = ranges
            .into_iter()
            .find(|(_, end)| {
                let found = pick < *end;
                if !found {
                    pick -= end;
                }
                found
            })
            .expect("pick is below the total");
        debug_assert!(pick < end);
        let flip = BitFlip {
            path,
            offset: pick,
            mask: 1 << rng.random_range(0..8u32),
        };
        self.apply_flip(&flip);
        self.lock().counts.bit_flips += 1;
        Some(flip)
    }

    /// Flips `flip`'s bit (again): undoes a flip, if the file still holds that byte.
    pub fn apply_flip(&self, flip: &BitFlip) {
        if let Some(mut bytes) = self.mem.file_bytes(&flip.path) {
            if let Some(byte) = bytes.get_mut(flip.offset as usize) {
                *byte ^= flip.mask;
                self.mem.set_file_bytes(&flip.path, bytes);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.faults
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Decides whether the operation about to run fails, and how.
    fn fault(&self, op: Op) -> Result<(), Injected> {
        let mut state = self.lock();
        if state.powered_off {
            return Err(Injected::PoweredOff);
        }
        let rates = state.rates;
        let roll = |state: &mut FaultState, rate: u32| {
            rate > 0 && state.rng.random_range(0..1_000_000u32) < rate
        };
        if roll(&mut state, rates.power_cut) {
            state.powered_off = true;
            state.counts.power_cuts += 1;
            return Err(Injected::PoweredOff);
        }
        if roll(&mut state, rates.io_error) {
            state.counts.io_errors += 1;
            return Err(Injected::Error(io::Error::other("injected EIO")));
        }
        match op {
            Op::Write if roll(&mut state, rates.disk_full) => {
                state.counts.disk_full += 1;
                Err(Injected::Error(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "injected ENOSPC",
                )))
            }
            Op::Read if roll(&mut state, rates.short_read) => {
                state.counts.short_reads += 1;
                Err(Injected::Error(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "injected short read",
                )))
            }
            Op::Sync if roll(&mut state, rates.slow_sync) => {
                state.counts.slow_syncs += 1;
                let delay_ns = state.rng.random_range(500_000_000..5_000_000_000u64);
                drop(state);
                self.clock.advance(delay_ns);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A prefix length for a write that fails part-way.
    fn partial(&self, len: usize) -> usize {
        let mut state = self.lock();
        if len == 0 || state.rng.random_bool(0.5) {
            0
        } else {
            state.rng.random_range(0..len)
        }
    }

    fn record_extent(&self, path: &Path, start: u64, end: u64) {
        self.lock()
            .extents
            .entry(path.to_path_buf())
            .or_default()
            .push(Extent {
                start,
                end,
                synced: false,
            });
    }

    fn sync_extents(&self, path: &Path) {
        if let Some(extents) = self.lock().extents.get_mut(path) {
            // Extents are recorded in write order, so the unsynced ones are the newest: stop at
            // the first one an earlier sync covered, rather than walk the file's whole history.
            for extent in extents.iter_mut().rev().take_while(|extent| !extent.synced) {
                extent.synced = true;
            }
        }
    }

    fn truncate_extents(&self, path: &Path, len: u64) {
        if let Some(extents) = self.lock().extents.get_mut(path) {
            truncate(extents, len);
        }
    }

    fn wrap(&self, path: &Path, file: Box<dyn StorageFile>) -> Box<dyn StorageFile> {
        Box::new(SimFile {
            disk: self.clone(),
            path: path.to_path_buf(),
            file,
        })
    }
}

/// Cuts `extents` at a file length of `len`.
fn truncate(extents: &mut Vec<Extent>, len: u64) {
    extents.retain(|extent| extent.start < len);
    for extent in extents.iter_mut() {
        extent.end = extent.end.min(len);
    }
}

#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
    Sync,
    Other,
}

enum Injected {
    PoweredOff,
    Error(io::Error),
}

impl From<Injected> for io::Error {
    fn from(injected: Injected) -> io::Error {
        match injected {
            Injected::PoweredOff => io::Error::other("injected power cut: the disk is gone"),
            Injected::Error(error) => error,
        }
    }
}

impl Storage for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.fault(Op::Other)?;
        self.mem.create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.fault(Op::Read)?;
        self.mem.list(dir)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.fault(Op::Other)?;
        Ok(self.wrap(path, self.mem.open_read(path)?))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.fault(Op::Other)?;
        Ok(self.wrap(path, self.mem.open_write(path)?))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.fault(Op::Other)?;
        let file = self.mem.create_new(path)?;
        self.lock().extents.remove(path);
        Ok(self.wrap(path, file))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.fault(Op::Other)?;
        self.mem.remove(path)?;
        self.lock().extents.remove(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.fault(Op::Other)?;
        self.mem.rename(from, to)?;
        let mut state = self.lock();
        let moved = state.extents.remove(from);
        match moved {
            Some(extents) => state.extents.insert(to.to_path_buf(), extents),
            None => state.extents.remove(to),
        };
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.fault(Op::Sync)?;
        self.mem.sync_dir(dir)
    }

    fn lock_exclusive(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        self.mem.lock_exclusive(path)
    }
}

#[derive(Debug)]
struct SimFile {
    disk: SimDisk,
    path: PathBuf,
    file: Box<dyn StorageFile>,
}

impl StorageFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.disk.fault(Op::Read)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if let Err(injected) = self.disk.fault(Op::Write) {
            if matches!(injected, Injected::Error(_)) {
                // A real write that fails may have written part of its bytes.
                let written = self.disk.partial(buf.len());
                self.file.write_all_at(&buf[..written], offset)?;
            }
            return Err(injected.into());
        }
        self.file.write_all_at(buf, offset)?;
        if buf.iter().any(|&byte| byte != 0) {
            self.disk
                .record_extent(&self.path, offset, offset + buf.len() as u64);
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.disk.fault(Op::Sync)?;
        self.file.sync_data()?;
        self.disk.sync_extents(&self.path);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.disk.fault(Op::Other)?;
        self.file.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.disk.fault(Op::Write)?;
        self.file.set_len(len)?;
        self.disk.truncate_extents(&self.path, len);
        Ok(())
    }

    fn modified(&self) -> io::Result<SystemTime> {
        self.file.modified()
    }
}
