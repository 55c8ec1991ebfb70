//! Read-only verification of a log directory, for `tally verify`.

use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::error::LogError;
use crate::format::SEGMENT_HEADER_SIZE;
use crate::log::{list_segments, SegmentMeta};
use crate::scan::{self, ReadWindow};
use crate::storage::{FsStorage, Storage, StorageFile};
use crate::Batch;

/// What [`verify_dir`] found. It never modifies the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// The log directory.
    pub dir: PathBuf,
    /// Every segment file, ascending.
    pub segments: Vec<SegmentSummary>,
    /// Valid batches before the first problem: what a server would replay (counted even after
    /// the visitor stopped).
    pub batch_count: u64,
    /// Position after the last of those batches: where the log would continue.
    pub next_position: u64,
    /// Everything wrong, in file order.
    pub problems: Vec<Problem>,
    /// Whether the visitor asked to stop before the end of the valid batches.
    pub visit_stopped: bool,
}

/// One segment file as verification saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    /// The segment file.
    pub path: PathBuf,
    /// The position its name and header give.
    pub first_position: u64,
    /// Valid records from its start up to its first problem (or its end).
    pub record_count: u64,
    /// The file's length (for the last segment, with the zeros kept ahead of its records).
    pub bytes: u64,
}

/// One thing wrong with a log directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The segment file.
    pub path: PathBuf,
    /// Byte offset in that file.
    pub offset: u64,
    /// Whether opening the log repairs it or refuses.
    pub kind: ProblemKind,
    /// What is wrong.
    pub reason: String,
}

/// The consequence of a [`Problem`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// An unacknowledged write cut short by a crash at the end of the log; opening the log
    /// truncates these bytes.
    TornTail {
        /// Bytes that would be cut.
        bytes: u64,
    },
    /// The last segment was cut short while being created; opening the log removes it.
    IncompleteSegment,
    /// Acknowledged data is damaged or missing; the log refuses to open, or a read of this
    /// record fails.
    Corruption,
}

impl VerifyReport {
    /// Whether nothing at all is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Whether any problem is corruption (as opposed to crash leftovers that opening repairs).
    pub fn has_corruption(&self) -> bool {
        self.problems
            .iter()
            .any(|problem| problem.kind == ProblemKind::Corruption)
    }
}

impl Problem {
    /// What the problem means for the server, in one sentence without a final period.
    pub fn meaning(&self) -> String {
        match self.kind {
            ProblemKind::TornTail { bytes } => format!(
                "torn tail: a write interrupted by a crash, never acknowledged; opening the log cuts these {bytes} byte(s)"
            ),
            ProblemKind::IncompleteSegment => "incomplete segment: a crash interrupted its creation before any \
                record went into it; opening the log removes it"
                .to_owned(),
            ProblemKind::Corruption => "corruption: acknowledged data is damaged or missing; the server refuses to \
                open the log, or fails when it reads this record"
                .to_owned(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at byte offset {}: {} ({})",
            self.path.display(),
            self.offset,
            self.reason,
            self.meaning()
        )
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match (self.is_ok(), self.has_corruption()) {
            (true, _) => "ok",
            (false, false) => "repairable",
            (false, true) => "CORRUPT",
        };
        write!(
            f,
            "log {}: {verdict}; {} segment(s), {} valid batch(es), next position {}",
            self.dir.display(),
            self.segments.len(),
            self.batch_count,
            self.next_position
        )?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

/// Checks every record of every segment in `dir` on the real filesystem, without modifying
/// anything. See [`verify_dir_with`].
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, LogError> {
    verify_dir_with(&FsStorage, dir, |_| ControlFlow::Continue(()))
}

/// Checks every record of every segment in `dir` on `storage`: segment headers, lengths,
/// CRCs, position continuity within and across segments, and that no valid data follows a
/// bad record. Calls `visit` with each valid batch, in order, up to the first problem (what a
/// server would replay), so the caller can check its own invariants; `visit` may stop early.
///
/// Problems in the data are reported in the [`VerifyReport`]; `Err` is only for I/O errors.
pub fn verify_dir_with(
    storage: &dyn Storage,
    dir: &Path,
    mut visit: impl FnMut(&Batch) -> ControlFlow<()>,
) -> Result<VerifyReport, LogError> {
    let segments = list_segments(storage, dir)?;
    let mut verifier = Verifier {
        report: VerifyReport {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            batch_count: 0,
            next_position: 0,
            problems: Vec::new(),
            visit_stopped: false,
        },
        visit: &mut visit,
        window: ReadWindow::default(),
        expected_position: Some(0),
    };
    for (index, segment) in segments.iter().enumerate() {
        verifier.segment(storage, segment, index + 1 == segments.len())?;
    }
    Ok(verifier.report)
}

struct Verifier<'a> {
    report: VerifyReport,
    visit: &'a mut dyn FnMut(&Batch) -> ControlFlow<()>,
    window: ReadWindow,
    /// Where the next segment must start; `None` once a problem made it unknowable.
    expected_position: Option<u64>,
}

impl Verifier<'_> {
    fn segment(
        &mut self,
        storage: &dyn Storage,
        segment: &SegmentMeta,
        is_last: bool,
    ) -> Result<(), LogError> {
        let path = &segment.path;
        let file = storage
            .open_read(path)
            .map_err(LogError::io("open", path))?;
        let file_len = file.len().map_err(LogError::io("stat", path))?;
        self.report.segments.push(SegmentSummary {
            path: path.clone(),
            first_position: segment.first_position,
            record_count: 0,
            bytes: file_len,
        });
        let header = scan::check_segment_header(&*file, file_len, segment.first_position);
        if let Err(reason) = header.map_err(LogError::io("read", path))? {
            let kind = if is_last && file_len <= SEGMENT_HEADER_SIZE {
                ProblemKind::IncompleteSegment
            } else {
                ProblemKind::Corruption
            };
            self.problem(path, 0, kind, reason.to_owned());
            self.expected_position = None;
            return Ok(());
        }
        match self.expected_position {
            Some(expected) if expected != segment.first_position => {
                let reason = if self.report.segments.len() == 1 {
                    format!(
                        "the oldest segment starts at position {}, not 0",
                        segment.first_position
                    )
                } else {
                    format!(
                        "the segment starts at position {} but the previous one ends at position {expected}",
                        segment.first_position
                    )
                };
                self.problem(path, 0, ProblemKind::Corruption, reason);
            }
            _ => {}
        }
        self.records(&*file, segment, file_len, is_last)
    }

    /// Checks the records of one segment, after its header.
    fn records(
        &mut self,
        file: &dyn StorageFile,
        segment: &SegmentMeta,
        file_len: u64,
        is_last: bool,
    ) -> Result<(), LogError> {
        let path = &segment.path;
        let key = segment.first_position;
        let mut offset = SEGMENT_HEADER_SIZE;
        let mut position = segment.first_position;
        while offset < file_len {
            let read = scan::read_record(&mut self.window, key, file, offset, file_len);
            let reason = match read.map_err(LogError::io("read", path))? {
                Ok(batch) if batch.header.first_position == position => {
                    self.valid(&batch);
                    offset += crate::format::RECORD_HEADER_SIZE + u64::from(crate::format::payload_length(batch.body.len()));
                    position += u64::from(batch.header.event_count);
                    self.report.segments.last_mut().expect("pushed by segment()").record_count += 1;
                    continue;
                }
                Ok(batch) => format!(
                    "position discontinuity: expected a batch starting at position {position}, found {}",
                    batch.header.first_position
                ),
                Err(reason) => reason.to_owned(),
            };
            // The zeros the writer keeps ahead of its records end the last segment's records.
            if is_last
                && scan::is_zero_fill(&mut self.window, key, file, offset, file_len)
                    .map_err(LogError::io("read", path))?
            {
                break;
            }
            let found =
                scan::find_valid_record(&mut self.window, key, file, offset, file_len, position)
                    .map_err(LogError::io("read", path))?;
            match found {
                None if is_last => self.problem(
                    path,
                    offset,
                    ProblemKind::TornTail {
                        bytes: file_len - offset,
                    },
                    reason,
                ),
                None => self.problem(
                    path,
                    offset,
                    ProblemKind::Corruption,
                    format!("{reason} in a sealed segment"),
                ),
                Some(valid_offset) => self.problem(
                    path,
                    offset,
                    ProblemKind::Corruption,
                    scan::not_torn_reason(&reason, valid_offset),
                ),
            }
            self.expected_position = None;
            return Ok(());
        }
        self.expected_position = Some(position);
        Ok(())
    }

    /// Counts and visits a valid batch if no problem came before it.
    fn valid(&mut self, batch: &Batch) {
        if !self.report.problems.is_empty() {
            return;
        }
        assert_eq!(batch.header.first_position, self.report.next_position);
        self.report.batch_count += 1;
        self.report.next_position += u64::from(batch.header.event_count);
        if !self.report.visit_stopped && (self.visit)(batch).is_break() {
            self.report.visit_stopped = true;
        }
    }

    fn problem(&mut self, path: &Path, offset: u64, kind: ProblemKind, reason: String) {
        self.report.problems.push(Problem {
            path: path.to_path_buf(),
            offset,
            kind,
            reason,
        });
    }
}
