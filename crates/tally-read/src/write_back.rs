//! A redb storage backend that writes its own pages back to the disk, a little at a time, on the
//! writing thread: for the rebuild's file and the live read model's.
//!
//! Why: the read model shares one thing with the online path that no CPU priority orders, the
//! disk.
//! The log's `fdatasync` ends with a cache flush of the device, and that flush waits for every
//! write already sent to it. Left to themselves, the rebuild's writes reach the device in bursts
//! of hundreds of megabytes: the kernel's flusher sends the pages of its unsynced commits up to
//! 30 s later, and its final durable commit first copies everything redb kept in its write
//! buffer (up to half of its cache) into the page cache and then syncs the whole file at once.
//! Either way the log's next `fdatasync` queues behind the burst, and the online tail latency
//! jumps (`tally bench-offline --timeline` showed the worst half-second of a rebuild at its final
//! commit). The live read model does the same on a smaller scale: its durable commit, once a
//! second, sends the second's pages (some 10 MB at 4,000 transfers a second) at once, and the
//! requests of the next group commits wait behind them.
//!
//! So every write is remembered by the piece of the file it touched ([`WRITE_BACK_CHUNK_BYTES`] for
//! the live model, [`REBUILD_WRITE_BACK_CHUNK_BYTES`] for a rebuild), and before any sync (and, for
//! a rebuild, once [`WRITE_BACK_PENDING_BYTES_MAX`] have been written) the touched pieces are
//! written back in file order, in ranges that each hold about a piece's worth of what was written,
//! each range waited for before the next is sent (`sync_file_range`). The log's `fdatasync` then
//! waits behind at most one range. Ranges, not pieces: redb's pages land all over the file, so a
//! piece often holds one 4 KiB page, and a call per piece made the write-back a stream of
//! single-page writes, each waited for (the final commit of a two-million-event rebuild took 11 s).
//! Small ranges, though, for the same reason: the pages of a range mostly go to the device as one
//! request each (a rebuild of two million events sent 187,000 write requests of about 4 KiB each),
//! and the log's next write may queue behind all of a range's requests: 60 or so at 256 KiB per
//! range, which cost the online p99 about 15% on this project's virtual disk (the requests' summed
//! time in flight fell from 173 s to 32 s at 32 KiB, for the same requests and bytes). A rebuild's
//! ranges are that small; the live model's stay larger, since queries wait for the durable commit
//! they come before. The writing thread pays for the waiting in time, which is what an
//! idle-priority job should pay with. The writes themselves go to the disk as best-effort I/O, like
//! the log's: `SCHED_IDLE` does not lower a thread's I/O class under `mq-deadline`, and an explicit
//! idle class was tried and not kept (README, "The idle I/O class, tried and not kept"). The sync
//! that follows finds little left to write.
//!
//! Written here rather than found in a crate: it is a thin wrapper over redb's own
//! [`FileBackend`], which does the reading, writing and locking.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::backends::FileBackend;
use redb::{BackendError, DatabaseError, StorageBackend};

use crate::limits::{
    REBUILD_WRITE_BACK_CHUNK_BYTES, WRITE_BACK_CHUNK_BYTES, WRITE_BACK_PENDING_BYTES_MAX,
};

/// redb's file backend, plus write-back of what it wrote in small pieces (see the module docs).
#[derive(Debug)]
pub(crate) struct WriteBackFile {
    inner: FileBackend,
    /// A second handle on the same file for `sync_file_range`: write-back works on the file.
    file: File,
    path: PathBuf,
    at: WriteBackAt,
    pending: Mutex<Pending>,
}

/// When a [`WriteBackFile`] writes back what was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteBackAt {
    /// Before every sync, and as soon as [`WRITE_BACK_PENDING_BYTES_MAX`] have been written:
    /// for a rebuild, which writes its whole file and has no readers. That write-back runs
    /// inside redb's `write`, while redb holds its write buffer's locks, so anyone else waiting
    /// for those locks would wait for the disk too.
    SyncOrPendingMax,
    /// Before every sync only, which redb calls with no lock held: for the live read model,
    /// whose queries take the write buffer's locks. Its writes between syncs are bounded by what
    /// one [`DURABLE_COMMIT_INTERVAL`](crate::limits::DURABLE_COMMIT_INTERVAL) of projection
    /// touches.
    Sync,
}

impl WriteBackAt {
    /// The size of the pieces writes are tracked by, and about what one range written back holds.
    fn chunk_bytes(self) -> u64 {
        match self {
            WriteBackAt::SyncOrPendingMax => REBUILD_WRITE_BACK_CHUNK_BYTES,
            WriteBackAt::Sync => WRITE_BACK_CHUNK_BYTES,
        }
    }
}

/// The pieces of the file written since the last write-back.
#[derive(Debug, Default)]
struct Pending {
    /// Bytes written to each touched piece ([`WriteBackAt::chunk_bytes`]), by its index.
    chunks: BTreeMap<u64, u64>,
    /// Bytes written since the last write-back (a piece written twice counts twice).
    bytes: u64,
}

impl WriteBackFile {
    /// Opens (creating it if missing) the file at `path` as [`redb::Builder::create`] does,
    /// refusing it with [`DatabaseError::DatabaseAlreadyOpen`] as redb does while another
    /// database holds it.
    pub(crate) fn create(path: &Path, at: WriteBackAt) -> Result<WriteBackFile, DatabaseError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let write_back = file.try_clone()?;
        let inner = FileBackend::new(file)?;
        Ok(WriteBackFile {
            inner,
            file: write_back,
            path: path.to_path_buf(),
            at,
            pending: Mutex::new(Pending::default()),
        })
    }

    /// Writes back every piece written since the last write-back, in file order, in ranges of
    /// about a piece written, one at a time.
    fn write_back_pending(&self) -> io::Result<()> {
        let chunks = {
            let mut pending = self.pending.lock().expect("write-back state poisoned");
            pending.bytes = 0;
            std::mem::take(&mut pending.chunks)
        };
        for range in ranges(&chunks, self.at.chunk_bytes()) {
            self.write_back(range)?;
        }
        Ok(())
    }

    /// Writes the dirty pages of the byte range `[start, end)` to the disk and waits for them.
    fn write_back(&self, (start, end): (u64, u64)) -> io::Result<()> {
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: a plain syscall on a descriptor `self.file` keeps open.
        let result = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                start as libc::off64_t,
                (end - start) as libc::off64_t,
                flags,
            )
        };
        if result != 0 {
            let error = io::Error::last_os_error();
            return Err(io::Error::new(
                error.kind(),
                format!(
                    "write back {} from offset {start} to {end}: {error}",
                    self.path.display()
                ),
            ));
        }
        tally_offline::yield_point();
        Ok(())
    }
}

/// Groups the touched pieces `chunks` (index to bytes written) of `chunk_bytes` each, in file
/// order, into byte ranges that each hold at most a piece's worth written, or one piece written
/// more.
fn ranges(chunks: &BTreeMap<u64, u64>, chunk_bytes: u64) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut written = 0;
    for (&chunk, &bytes) in chunks {
        let (start, end) = (chunk * chunk_bytes, (chunk + 1) * chunk_bytes);
        match ranges.last_mut() {
            Some(range) if written + bytes <= chunk_bytes => {
                range.1 = end;
                written += bytes;
            }
            _ => {
                ranges.push((start, end));
                written = bytes;
            }
        }
    }
    ranges
}

impl StorageBackend for WriteBackFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.write_back_pending()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.inner.write(offset, data)?;
        if data.is_empty() {
            return Ok(());
        }
        let full = {
            let mut pending = self.pending.lock().expect("write-back state poisoned");
            let chunk_bytes = self.at.chunk_bytes();
            let first = offset / chunk_bytes;
            let last = (offset + data.len() as u64 - 1) / chunk_bytes;
            for chunk in first..=last {
                let start = (chunk * chunk_bytes).max(offset);
                let end = ((chunk + 1) * chunk_bytes).min(offset + data.len() as u64);
                *pending.chunks.entry(chunk).or_default() += end - start;
            }
            pending.bytes += data.len() as u64;
            self.at == WriteBackAt::SyncOrPendingMax
                && pending.bytes >= WRITE_BACK_PENDING_BYTES_MAX
        };
        if full {
            self.write_back_pending()?;
        }
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

    use super::*;

    fn pending(file: &WriteBackFile) -> (Vec<u64>, u64) {
        let pending = file.pending.lock().unwrap();
        (pending.chunks.keys().copied().collect(), pending.bytes)
    }

    #[test]
    fn the_pieces_a_write_touches_wait_for_the_next_sync() {
        for at in [WriteBackAt::SyncOrPendingMax, WriteBackAt::Sync] {
            let dir = tempfile::tempdir().unwrap();
            let file = WriteBackFile::create(&dir.path().join("read.redb"), at).unwrap();
            let piece = at.chunk_bytes();
            file.set_len(4 * piece).unwrap();

            // Across the boundary of pieces 0 and 1, then inside piece 3.
            file.write(piece - 100, &[7; 4096]).unwrap();
            file.write(3 * piece, &[8; 10]).unwrap();
            assert_eq!(pending(&file), (vec![0, 1, 3], 4106), "{at:?}");

            file.sync_data().unwrap();
            assert_eq!(pending(&file), (vec![], 0));
            let mut back = [0; 4096];
            file.read(piece - 100, &mut back).unwrap();
            assert_eq!(back, [7; 4096]);
        }
    }

    #[test]
    fn a_rebuild_writes_back_eight_pages_at_a_time_and_the_live_model_more() {
        assert_eq!(WriteBackAt::SyncOrPendingMax.chunk_bytes(), 8 * 4096);
        assert!(WriteBackAt::Sync.chunk_bytes() > WriteBackAt::SyncOrPendingMax.chunk_bytes());
        // redb's pages scattered one per 100 KiB, as a rebuild's commits leave them: a range
        // holds at most eight of them, so at most about eight requests go to the device at once.
        let dir = tempfile::tempdir().unwrap();
        let file =
            WriteBackFile::create(&dir.path().join("read.redb"), WriteBackAt::SyncOrPendingMax)
                .unwrap();
        let spacing = 100 * 1024;
        file.set_len(64 * spacing).unwrap();
        for page in 0..64 {
            file.write(page * spacing, &[9; 4096]).unwrap();
        }
        let chunks = file.pending.lock().unwrap().chunks.clone();
        let ranges = ranges(&chunks, WriteBackAt::SyncOrPendingMax.chunk_bytes());
        assert_eq!(ranges.len(), 8);
        for (start, end) in ranges {
            let pages = (0..64).filter(|page| (start..end).contains(&(page * spacing)));
            assert_eq!(pages.count(), 8, "range {start}..{end}");
        }
    }

    #[test]
    fn pieces_are_written_back_in_ranges_of_about_a_piece_written() {
        for piece in [REBUILD_WRITE_BACK_CHUNK_BYTES, WRITE_BACK_CHUNK_BYTES] {
            let page = 4096;
            // One page in each of many pieces: ranges span many pieces, each holding a piece's
            // worth.
            let scattered: BTreeMap<u64, u64> =
                (0..(2 * piece / page)).map(|i| (3 * i, page)).collect();
            let per_range = piece / page;
            assert_eq!(
                ranges(&scattered, piece),
                vec![
                    (0, (3 * (per_range - 1) + 1) * piece),
                    (3 * per_range * piece, (3 * (2 * per_range - 1) + 1) * piece),
                ]
            );
            // Full pieces, and one written twice over: one range each.
            let full = BTreeMap::from([(0, piece), (1, 2 * piece), (5, piece)]);
            assert_eq!(
                ranges(&full, piece),
                vec![(0, piece), (piece, 2 * piece), (5 * piece, 6 * piece)]
            );
            assert_eq!(ranges(&BTreeMap::new(), piece), vec![]);
        }
    }

    #[test]
    fn writing_the_pending_bound_writes_back_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file =
            WriteBackFile::create(&dir.path().join("read.redb"), WriteBackAt::SyncOrPendingMax)
                .unwrap();
        let piece = vec![1; 64 * 1024];
        let pieces = WRITE_BACK_PENDING_BYTES_MAX / piece.len() as u64;
        file.set_len(pieces * piece.len() as u64).unwrap();

        for index in 0..pieces - 1 {
            file.write(index * piece.len() as u64, &piece).unwrap();
        }
        let (chunks, bytes) = pending(&file);
        assert_eq!(bytes, WRITE_BACK_PENDING_BYTES_MAX - piece.len() as u64);
        assert!(!chunks.is_empty());

        file.write((pieces - 1) * piece.len() as u64, &piece)
            .unwrap();
        assert_eq!(
            pending(&file),
            (vec![], 0),
            "the bound triggers a write-back"
        );
    }

    #[test]
    fn the_live_model_s_file_writes_back_only_before_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let file = WriteBackFile::create(&dir.path().join("read.redb"), WriteBackAt::Sync).unwrap();
        let piece = vec![1; 64 * 1024];
        let pieces = 2 * WRITE_BACK_PENDING_BYTES_MAX / piece.len() as u64;
        file.set_len(pieces * piece.len() as u64).unwrap();

        for index in 0..pieces {
            file.write(index * piece.len() as u64, &piece).unwrap();
        }
        let (chunks, bytes) = pending(&file);
        assert_eq!(
            bytes,
            2 * WRITE_BACK_PENDING_BYTES_MAX,
            "no write-back inside redb's write, past the rebuild's bound too"
        );
        assert_eq!(
            chunks.len() as u64,
            2 * WRITE_BACK_PENDING_BYTES_MAX / WRITE_BACK_CHUNK_BYTES
        );

        file.sync_data().unwrap();
        assert_eq!(pending(&file), (vec![], 0));
    }

    #[test]
    fn a_file_another_database_holds_is_refused_as_redb_refuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read.redb");
        let _held = redb::Database::create(&path).unwrap();
        let opened = WriteBackFile::create(&path, WriteBackAt::Sync)
            .and_then(|backend| redb::Database::builder().create_with_backend(backend));
        assert!(
            matches!(opened, Err(DatabaseError::DatabaseAlreadyOpen)),
            "{opened:?}"
        );
    }

    #[test]
    fn redb_s_own_file_backend_opens_what_it_wrote() {
        const TABLE: TableDefinition<u64, u64> = TableDefinition::new("numbers");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read.redb");
        let db = redb::Database::builder()
            .create_with_backend(WriteBackFile::create(&path, WriteBackAt::Sync).unwrap())
            .unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(TABLE).unwrap();
            for number in 0..100_000 {
                table.insert(number, number * 2).unwrap();
            }
        }
        txn.commit().unwrap();
        drop(db);

        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(TABLE).unwrap();
        assert_eq!(table.len().unwrap(), 100_000);
        assert_eq!(table.get(99_999).unwrap().unwrap().value(), 199_998);
    }
}
