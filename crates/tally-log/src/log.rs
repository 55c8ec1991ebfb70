//! The embedded segmented log: the writer, recovery on open, and the durable
//! view shared with readers.
//!
//! The writer keeps zeros ahead of the records of the active segment (the zero fill), so
//! that most appends write inside the file instead of growing it. An fdatasync that changes
//! no file size writes the data and flushes the device's cache; one that grows the file must
//! also make the new size durable: on ext4 without a journal one more synchronous write (the
//! inode's block), with one a journal commit, which in `data=ordered` mode first writes out
//! other files' newly allocated data, such as a read model rebuild's. Recovery reads zeros
//! after the last record as the end of the log, and a segment loses its zero fill when it is
//! sealed, so sealed segments end with their last record.

use std::any::Any;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::LogError;
use crate::format::{self, SEGMENT_HEADER_SIZE};
use crate::limits::{
    BATCH_BODY_BYTES_MAX, SEGMENT_BYTES_MAX_DEFAULT, SEGMENT_BYTES_MAX_MAX, SEGMENT_BYTES_MAX_MIN,
    SEGMENT_ZERO_FILL_BYTES,
};
use crate::reader::SegmentReader;
use crate::scan::{self, ReadWindow};
use crate::storage::{FsStorage, Storage, StorageFile};
use crate::{Appended, Batch, EventLog, LogReader};

/// Name of the lock file that keeps a second writer out of a log directory.
const LOCK_FILE_NAME: &str = "LOCK";

/// Options of a [`SegmentedLog`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// A new segment is started before a record that would take the current one past this
    /// size. Rolls happen only at record boundaries, so a segment holding a single record
    /// larger than this exceeds it. Between
    /// [`SEGMENT_BYTES_MAX_MIN`](crate::limits::SEGMENT_BYTES_MAX_MIN) and
    /// [`SEGMENT_BYTES_MAX_MAX`](crate::limits::SEGMENT_BYTES_MAX_MAX).
    pub segment_bytes_max: u64,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
        }
    }
}

/// What [`SegmentedLog::open`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The log directory.
    pub dir: PathBuf,
    /// Whether the directory held no log and an empty one was created.
    pub created: bool,
    /// Segment files after recovery.
    pub segment_count: u64,
    /// Where the next batch goes; every position below it is in the log.
    pub next_position: u64,
    /// Repairs made to the last segment, in order. Empty after a clean shutdown.
    pub repairs: Vec<Repair>,
}

/// One change recovery made to the files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    /// The end of the last segment held a record that was never completely written (so never
    /// acknowledged); the file was truncated to the last valid record.
    TruncatedTornTail {
        /// The segment file.
        path: PathBuf,
        /// Its new length: the offset where the invalid bytes started.
        offset: u64,
        /// Bytes cut off.
        bytes_truncated: u64,
        /// What was wrong with the first cut record.
        reason: String,
    },
    /// The last segment file was cut short while being created, before any record went into
    /// it; it was removed.
    RemovedIncompleteSegment {
        /// The segment file.
        path: PathBuf,
        /// Its length before removal.
        bytes: u64,
    },
}

/// The embedded [`EventLog`]: segment files in one directory, written by one thread, read by
/// any number of [`LogReader`]s.
#[derive(Debug)]
pub struct SegmentedLog {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    options: LogOptions,
    active: ActiveSegment,
    next_position: u64,
    /// Total length of the sealed segments; with the active segment's end, the log's size.
    sealed_bytes: u64,
    /// Set when a write or fdatasync failed: what is durable is then unknown, so no further
    /// append may claim durability. See PostgreSQL's fsync-failure lesson.
    poisoned: bool,
    shared: Arc<Shared>,
    notify: watch::Sender<u64>,
    /// Held for the log's lifetime; dropping it lets another writer in.
    _lock: Box<dyn Any + Send + Sync>,
}

#[derive(Debug)]
struct ActiveSegment {
    first_position: u64,
    path: PathBuf,
    file: Box<dyn StorageFile>,
    /// Offset just past the last durable record.
    end_offset: u64,
    /// The file's length: every byte from `end_offset` to here is zero (the zero fill).
    file_len: u64,
}

/// The state the writer publishes to readers after each durable change.
#[derive(Debug)]
pub(crate) struct Shared {
    view: Mutex<View>,
}

/// What is durable, captured at one moment.
#[derive(Clone, Debug)]
pub(crate) struct View {
    /// Every segment, ascending; the last one is the active segment.
    pub(crate) segments: Arc<Vec<SegmentMeta>>,
    pub(crate) next_position: u64,
    /// Offset just past the last durable record of the last segment.
    pub(crate) tail_end_offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    pub(crate) first_position: u64,
    pub(crate) path: PathBuf,
}

impl Shared {
    pub(crate) fn view(&self) -> View {
        // The view is replaced whole under the lock, so a poisoned lock still holds a consistent value.
        self.view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Changes the view in place; readers see either the old or the new view, never a mix.
    fn update(&self, change: impl FnOnce(&mut View)) {
        change(
            &mut self
                .view
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }
}

impl SegmentedLog {
    /// Opens (creating if needed) the log in `dir` on the real filesystem, repairing a torn
    /// tail. See [`SegmentedLog::open_in`].
    pub fn open(
        dir: &Path,
        options: LogOptions,
    ) -> Result<(SegmentedLog, RecoveryReport), LogError> {
        SegmentedLog::open_in(Arc::new(FsStorage), dir, options)
    }

    /// Opens (creating if needed) the log in `dir` on `storage`.
    ///
    /// Only the last segment is scanned, so restart time does not grow with history; sealed
    /// segments get their header checked here and their records checked when read. A torn
    /// tail is cut off and reported; any other invalid data is [`LogError::Corrupt`].
    pub fn open_in(
        storage: Arc<dyn Storage>,
        dir: &Path,
        options: LogOptions,
    ) -> Result<(SegmentedLog, RecoveryReport), LogError> {
        check_options(&options)?;
        storage
            .create_dir_all(dir)
            .map_err(LogError::io("create directory", dir))?;
        if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            // The log directory itself must survive a crash once anything in it is acknowledged.
            storage
                .sync_dir(parent)
                .map_err(LogError::io("fsync directory", parent))?;
        }
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = storage
            .lock_exclusive(&lock_path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::WouldBlock => LogError::Locked {
                    dir: dir.to_path_buf(),
                },
                _ => LogError::Io {
                    op: "lock",
                    path: lock_path.clone(),
                    source,
                },
            })?;

        let mut segments = list_segments(&*storage, dir)?;
        let mut report = RecoveryReport {
            dir: dir.to_path_buf(),
            created: segments.is_empty(),
            segment_count: 0,
            next_position: 0,
            repairs: Vec::new(),
        };
        if let Some(first) = segments.first().filter(|first| first.first_position != 0) {
            return Err(LogError::corrupt(
                &first.path,
                0,
                format!(
                    "the oldest segment starts at position {}, not 0, so older segments are missing",
                    first.first_position
                ),
            ));
        }
        let mut sealed_bytes = 0;
        for sealed in segments.iter().rev().skip(1) {
            sealed_bytes += check_sealed_header(&*storage, sealed)?;
        }
        let (active, next_position) =
            recover_tail(&*storage, dir, &mut segments, &mut report.repairs)?;
        // What recovery accepted must be durable before anything built on it is acknowledged.
        // An earlier process may have died after writing a record or creating a segment but
        // before its fdatasync or directory fsync succeeded, with the machine still up: the
        // bytes and the entry are then visible here, yet a power loss would still take them.
        // (Found by the deterministic simulation; see crates/tally-sim.)
        active
            .file
            .sync_data()
            .map_err(LogError::io("fdatasync", &active.path))?;
        storage
            .sync_dir(dir)
            .map_err(LogError::io("fsync directory", dir))?;
        report.segment_count = segments.len() as u64;
        report.next_position = next_position;
        assert_eq!(
            segments.last().map(|last| last.first_position),
            Some(active.first_position)
        );
        assert!(active.end_offset >= SEGMENT_HEADER_SIZE);

        let view = View {
            segments: Arc::new(segments),
            next_position,
            tail_end_offset: active.end_offset,
        };
        let (notify, _) = watch::channel(next_position);
        let log = SegmentedLog {
            storage,
            dir: dir.to_path_buf(),
            options,
            active,
            next_position,
            sealed_bytes,
            poisoned: false,
            shared: Arc::new(Shared {
                view: Mutex::new(view),
            }),
            notify,
            _lock: lock,
        };
        tracing::info!(%report, "opened log");
        Ok((log, report))
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_batch(&self, batch: &Batch) -> Result<u64, LogError> {
        let header = &batch.header;
        if header.first_position != self.next_position {
            return Err(LogError::PositionConflict {
                expected: self.next_position,
                found: header.first_position,
            });
        }
        let invalid = |reason| LogError::InvalidBatch {
            first_position: header.first_position,
            reason,
        };
        if header.event_count == 0 {
            return Err(invalid("event count is zero"));
        }
        if batch.body.len() > BATCH_BODY_BYTES_MAX as usize {
            return Err(invalid("body is over BATCH_BODY_BYTES_MAX"));
        }
        header
            .first_position
            .checked_add(u64::from(header.event_count))
            .ok_or_else(|| invalid("positions overflow u64"))
    }

    /// Writes and syncs one record; returns how long the sync took. On error the caller
    /// poisons the log.
    fn write_record(&mut self, record: &[u8]) -> Result<Duration, LogError> {
        let record_size = record.len() as u64;
        let segment_used = self.active.end_offset > SEGMENT_HEADER_SIZE;
        if segment_used && self.active.end_offset + record_size > self.options.segment_bytes_max {
            self.roll()?;
        }
        let active = &mut self.active;
        let record_end = active.end_offset + record_size;
        active
            .file
            .write_all_at(record, active.end_offset)
            .map_err(LogError::io("write", &active.path))?;
        if record_end > active.file_len {
            // This record grows the file, so its sync makes a new size durable anyway: let the
            // zeros for the appends after it ride along. None past the segment's size, where it
            // rolls.
            let fill_end = (record_end + SEGMENT_ZERO_FILL_BYTES)
                .min(self.options.segment_bytes_max)
                .max(record_end);
            write_zeros(&*active.file, record_end, fill_end)
                .map_err(LogError::io("write", &active.path))?;
            active.file_len = fill_end;
        }
        assert!(active.file_len >= record_end);
        let sync_started = Instant::now();
        active
            .file
            .sync_data()
            .map_err(LogError::io("fdatasync", &active.path))?;
        let sync = sync_started.elapsed();
        active.end_offset += record_size;
        Ok(sync)
    }

    /// Seals the active segment and starts a new one at the next position. The new segment's
    /// header and directory entry are durable before any record goes into it, so a crash can
    /// only leave it header-less when it is empty.
    fn roll(&mut self) -> Result<(), LogError> {
        // Readers take a sealed segment's length as the end of its records, and recovery
        // accepts a zero fill only in the last segment.
        let sealed = &mut self.active;
        if sealed.file_len > sealed.end_offset {
            sealed
                .file
                .set_len(sealed.end_offset)
                .map_err(LogError::io("truncate", &sealed.path))?;
            sealed
                .file
                .sync_data()
                .map_err(LogError::io("fdatasync", &sealed.path))?;
            sealed.file_len = sealed.end_offset;
        }
        let active = create_segment(&*self.storage, &self.dir, self.next_position)?;
        tracing::debug!(path = %active.path.display(), "rolled to a new log segment");
        self.sealed_bytes += self.active.end_offset;
        self.active = active;
        let segment = SegmentMeta {
            first_position: self.active.first_position,
            path: self.active.path.clone(),
        };
        let tail_end_offset = self.active.end_offset;
        self.shared.update(|view| {
            Arc::make_mut(&mut view.segments).push(segment);
            view.tail_end_offset = tail_end_offset;
        });
        Ok(())
    }
}

impl EventLog for SegmentedLog {
    fn append(&mut self, batch: &Batch) -> Result<Appended, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        let next_position = self.check_batch(batch)?;
        let record = format::encode_record(batch);
        // Pair assertion with the read side: the bytes about to be written decode to this batch.
        assert_eq!(
            format::verify_record(&record).map(|prefix| prefix.header),
            Ok(batch.header)
        );

        let sync = match self.write_record(&record) {
            Ok(sync) => sync,
            Err(error) => {
                self.poisoned = true;
                tracing::error!(%error, "log append failed; refusing further appends until reopened");
                return Err(error);
            }
        };
        self.next_position = next_position;
        let (first_position, tail_end_offset) =
            (self.active.first_position, self.active.end_offset);
        self.shared.update(|view| {
            assert_eq!(
                view.segments.last().map(|last| last.first_position),
                Some(first_position)
            );
            assert!(next_position > view.next_position);
            view.next_position = next_position;
            view.tail_end_offset = tail_end_offset;
        });
        // send_replace stores the value even when nobody subscribes yet.
        self.notify.send_replace(self.next_position);
        Ok(Appended { sync })
    }

    fn next_position(&self) -> u64 {
        self.next_position
    }

    fn size_bytes(&self) -> u64 {
        self.sealed_bytes + self.active.end_offset
    }

    fn reader(&self) -> Box<dyn LogReader> {
        Box::new(SegmentReader::new(
            Arc::clone(&self.storage),
            Arc::clone(&self.shared),
        ))
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "log {}: {} segment(s), next position {}",
            self.dir.display(),
            self.segment_count,
            self.next_position
        )?;
        if self.created {
            write!(f, ", created empty")?;
        }
        for repair in &self.repairs {
            write!(f, "; {repair}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repair::TruncatedTornTail {
                path,
                offset,
                bytes_truncated,
                reason,
            } => write!(
                f,
                "truncated {bytes_truncated} byte(s) of torn tail at {} offset {offset} ({reason})",
                path.display()
            ),
            Repair::RemovedIncompleteSegment { path, bytes } => {
                write!(
                    f,
                    "removed incomplete segment {} ({bytes} byte(s))",
                    path.display()
                )
            }
        }
    }
}

fn check_options(options: &LogOptions) -> Result<(), LogError> {
    let range = SEGMENT_BYTES_MAX_MIN..=SEGMENT_BYTES_MAX_MAX;
    if !range.contains(&options.segment_bytes_max) {
        return Err(LogError::InvalidOptions {
            reason: format!(
                "segment_bytes_max is {}, must be between {} and {}",
                options.segment_bytes_max, SEGMENT_BYTES_MAX_MIN, SEGMENT_BYTES_MAX_MAX
            ),
        });
    }
    Ok(())
}

/// The segment files of `dir`, ascending by first position.
pub(crate) fn list_segments(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Vec<SegmentMeta>, LogError> {
    let names = storage
        .list(dir)
        .map_err(LogError::io("list directory", dir))?;
    let mut segments = Vec::new();
    for name in names {
        match format::parse_segment_file_name(&name) {
            Some(first_position) => segments.push(SegmentMeta {
                first_position,
                path: dir.join(name),
            }),
            None if name.ends_with(format::SEGMENT_SUFFIX) => {
                tracing::warn!(file = %dir.join(&name).display(), "ignoring a .tlog file whose name is not a position");
            }
            None => {}
        }
    }
    segments.sort_by_key(|segment| segment.first_position);
    Ok(segments)
}

/// Checks a sealed segment's header; returns the segment's length.
fn check_sealed_header(storage: &dyn Storage, segment: &SegmentMeta) -> Result<u64, LogError> {
    let path = &segment.path;
    let file = storage
        .open_read(path)
        .map_err(LogError::io("open", path))?;
    let file_len = file.len().map_err(LogError::io("stat", path))?;
    let checked = scan::check_segment_header(&*file, file_len, segment.first_position);
    checked
        .map_err(LogError::io("read", path))?
        .map_err(|reason| LogError::corrupt(path, 0, reason))?;
    Ok(file_len)
}

/// Finds the durable end of the log in its last segment, cutting a torn tail, and returns the
/// segment ready for appending. Creates the first segment of an empty log.
fn recover_tail(
    storage: &dyn Storage,
    dir: &Path,
    segments: &mut Vec<SegmentMeta>,
    repairs: &mut Vec<Repair>,
) -> Result<(ActiveSegment, u64), LogError> {
    loop {
        let Some(last) = segments.last().cloned() else {
            let active = create_segment(storage, dir, 0)?;
            segments.push(SegmentMeta {
                first_position: 0,
                path: active.path.clone(),
            });
            return Ok((active, 0));
        };
        let path = &last.path;
        let file = storage
            .open_write(path)
            .map_err(LogError::io("open", path))?;
        let file_len = file.len().map_err(LogError::io("stat", path))?;
        match scan::check_segment_header(&*file, file_len, last.first_position)
            .map_err(LogError::io("read", path))?
        {
            Ok(()) => {}
            // The writer makes a new segment's header durable before writing any record to it,
            // so a bad header with nothing after it is a crash during creation.
            Err(_) if file_len <= SEGMENT_HEADER_SIZE => {
                drop(file);
                storage.remove(path).map_err(LogError::io("remove", path))?;
                storage
                    .sync_dir(dir)
                    .map_err(LogError::io("fsync directory", dir))?;
                tracing::warn!(path = %path.display(), bytes = file_len, "removed incomplete log segment");
                repairs.push(Repair::RemovedIncompleteSegment {
                    path: path.clone(),
                    bytes: file_len,
                });
                segments.pop();
                continue;
            }
            Err(reason) => return Err(LogError::corrupt(path, 0, reason)),
        }
        let (end_offset, next_position, file_len) =
            cut_torn_tail(&*file, &last, file_len, repairs)?;
        let active = ActiveSegment {
            first_position: last.first_position,
            path: path.clone(),
            file,
            end_offset,
            file_len,
        };
        return Ok((active, next_position));
    }
}

/// Scans the last segment; keeps the zeros after its last valid record (the zero fill), cuts
/// the bytes there when they are a torn write, refuses to open when valid records follow them.
/// Returns the durable end offset, the next position and the file's length.
fn cut_torn_tail(
    file: &dyn StorageFile,
    segment: &SegmentMeta,
    file_len: u64,
    repairs: &mut Vec<Repair>,
) -> Result<(u64, u64, u64), LogError> {
    let path = &segment.path;
    let mut window = ReadWindow::default();
    let scan = scan::scan_records(&mut window, file, segment.first_position, file_len)
        .map_err(LogError::io("read", path))?;
    let Some(invalid) = scan.invalid else {
        return Ok((scan.end_offset, scan.next_position, file_len));
    };
    assert_eq!(invalid.offset, scan.end_offset);
    let zero_fill = scan::is_zero_fill(
        &mut window,
        segment.first_position,
        file,
        invalid.offset,
        file_len,
    )
    .map_err(LogError::io("read", path))?;
    if zero_fill {
        return Ok((scan.end_offset, scan.next_position, file_len));
    }
    let found = scan::find_valid_record(
        &mut window,
        segment.first_position,
        file,
        invalid.offset,
        file_len,
        scan.next_position,
    )
    .map_err(LogError::io("read", path))?;
    if let Some(valid_offset) = found {
        return Err(LogError::corrupt(
            path,
            invalid.offset,
            scan::not_torn_reason(&invalid.reason, valid_offset),
        ));
    }
    file.set_len(invalid.offset)
        .map_err(LogError::io("truncate", path))?;
    file.sync_data().map_err(LogError::io("fdatasync", path))?;
    let bytes_truncated = file_len - invalid.offset;
    tracing::warn!(
        path = %path.display(),
        offset = invalid.offset,
        bytes_truncated,
        reason = %invalid.reason,
        "truncated torn tail of the log"
    );
    repairs.push(Repair::TruncatedTornTail {
        path: path.clone(),
        offset: invalid.offset,
        bytes_truncated,
        reason: invalid.reason,
    });
    Ok((scan.end_offset, scan.next_position, invalid.offset))
}

/// Creates a segment file holding only its header, durably (file and directory entry).
fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    first_position: u64,
) -> Result<ActiveSegment, LogError> {
    let path = dir.join(format::segment_file_name(first_position));
    let file = storage
        .create_new(&path)
        .map_err(LogError::io("create", &path))?;
    let header = format::encode_segment_header(first_position);
    file.write_all_at(&header, 0)
        .map_err(LogError::io("write", &path))?;
    file.sync_data().map_err(LogError::io("fdatasync", &path))?;
    storage
        .sync_dir(dir)
        .map_err(LogError::io("fsync directory", dir))?;
    Ok(ActiveSegment {
        first_position,
        path,
        file,
        end_offset: SEGMENT_HEADER_SIZE,
        file_len: SEGMENT_HEADER_SIZE,
    })
}

/// Bytes of zeros one write of the zero fill takes from [`ZEROS`].
const ZEROS_WRITE_BYTES: usize = 1024 * 1024;

/// The zeros of the zero fill: a static, so filling allocates nothing.
static ZEROS: [u8; ZEROS_WRITE_BYTES] = [0; ZEROS_WRITE_BYTES];

/// Writes zeros over `[from, to)` of `file`.
fn write_zeros(file: &dyn StorageFile, from: u64, to: u64) -> std::io::Result<()> {
    let mut offset = from;
    while offset < to {
        let len = (to - offset).min(ZEROS_WRITE_BYTES as u64);
        file.write_all_at(&ZEROS[..len as usize], offset)?;
        offset += len;
    }
    Ok(())
}
