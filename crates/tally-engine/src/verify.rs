//! `tally verify`: checks every record of a data directory and every ledger invariant.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use tally_core::{InvariantViolation, Ledger, ReplayError};
use tally_log::{verify_dir_with, FsStorage, SnapshotStore, VerifyReport};

use crate::replay::replay_batch;
use crate::EngineError;

/// Bytes of a log record besides its body (length, checksum and batch header), as counted for
/// progress: an estimate, so that a progress bar moves with the bytes read.
const RECORD_OVERHEAD_BYTES: u64 = 32;

/// The size of the files in `dir`; 0 if it cannot be listed (verification then says why).
fn files_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.metadata().ok())
                .filter(|metadata| metadata.is_file())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}

/// What verification of a data directory found.
#[derive(Debug)]
pub struct DataDirReport {
    /// The data directory.
    pub dir: PathBuf,
    /// Record-level findings of the log: CRCs, lengths, positions, torn tails.
    pub log: VerifyReport,
    /// Events replayed through the ledger rules.
    pub events: u64,
    /// The first event the ledger rules refuse, if any.
    pub replay_error: Option<ReplayError>,
    /// The first broken invariant after replay, if any.
    pub invariant_error: Option<InvariantViolation>,
    /// How the newest snapshot compares with the replayed state.
    pub snapshot: SnapshotCheck,
    /// Accounts, external accounts included.
    pub accounts: usize,
    /// Ledgers.
    pub ledgers: usize,
    /// Remembered transfer ids.
    pub transfer_ids: usize,
}

/// How the newest snapshot compares with the state replayed from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotCheck {
    /// There is no snapshot.
    None,
    /// The snapshot equals the replayed state at its position.
    Matches {
        /// Its position.
        position: u64,
    },
    /// The snapshot disagrees with the log; a restart would serve the wrong state.
    Differs {
        /// Its position.
        position: u64,
    },
    /// The snapshot does not decode or lies beyond the valid log; a restart replays the log instead.
    Unusable {
        /// Why.
        reason: String,
    },
}

impl DataDirReport {
    /// Whether a server would start on this directory and serve a correct state.
    pub fn is_ok(&self) -> bool {
        !self.log.has_corruption()
            && self.replay_error.is_none()
            && self.invariant_error.is_none()
            && !matches!(self.snapshot, SnapshotCheck::Differs { .. })
    }
}

/// Checks `dir` without changing it: every log record, every event against the ledger rules,
/// the invariants of the final state, and the newest snapshot against the replayed state.
pub fn verify_data_dir(dir: &Path) -> Result<DataDirReport, EngineError> {
    verify_data_dir_reporting(dir, &mut |_, _| {})
}

/// [`verify_data_dir`], calling `progress(done, total)` as it goes: bytes of log records checked
/// (counted from their bodies and a fixed overhead, so approximate until the end) and the size
/// of the log's files.
pub fn verify_data_dir_reporting(
    dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<DataDirReport, EngineError> {
    let log_bytes = files_bytes(&dir.join("log"));
    let mut checked_bytes: u64 = 0;
    progress(0, log_bytes);
    let snapshots_dir = dir.join("snapshots");
    let snapshot = if snapshots_dir.is_dir() {
        SnapshotStore::open(&snapshots_dir)?.latest()?
    } else {
        None
    };
    let mut snapshot =
        snapshot.map(|(position, bytes)| (position, Ledger::decode_snapshot(&bytes)));
    let mut snapshot_check = SnapshotCheck::None;
    let mut compare =
        |ledger: &Ledger,
         snapshot: &mut Option<(u64, Result<Ledger, tally_core::SnapshotError>)>| {
            if let Some((position, decoded)) =
                snapshot.take_if(|(position, _)| *position == ledger.next_position())
            {
                snapshot_check = match decoded {
                    Ok(state) if &state == ledger => SnapshotCheck::Matches { position },
                    Ok(_) => SnapshotCheck::Differs { position },
                    Err(error) => SnapshotCheck::Unusable {
                        reason: error.to_string(),
                    },
                };
            }
        };
    let mut ledger = Ledger::new();
    let mut replay_error = None;
    compare(&ledger, &mut snapshot);
    let log = verify_dir_with(&FsStorage, &dir.join("log"), |batch| {
        checked_bytes += batch.body.len() as u64 + RECORD_OVERHEAD_BYTES;
        progress(checked_bytes.min(log_bytes), log_bytes);
        match replay_batch(&mut ledger, batch) {
            Ok(()) => {
                compare(&ledger, &mut snapshot);
                ControlFlow::Continue(())
            }
            Err(error) => {
                replay_error = Some(error);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some((position, _)) = snapshot {
        snapshot_check = SnapshotCheck::Unusable { reason: format!("snapshot at position {position} does not fall on a batch boundary of the valid log") };
    }
    progress(log_bytes, log_bytes);
    let invariant_error = if replay_error.is_none() {
        ledger.check_invariants().err()
    } else {
        None
    };
    Ok(DataDirReport {
        dir: dir.to_path_buf(),
        log,
        events: ledger.next_position(),
        replay_error,
        invariant_error,
        snapshot: snapshot_check,
        accounts: ledger.account_count(),
        ledgers: ledger.ledgers().len(),
        transfer_ids: ledger.decided_count(),
    })
}
