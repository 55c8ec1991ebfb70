//! Replaying log batches into a ledger: shared by recovery, snapshots and verification.

use tally_core::{decode_events, Ledger, ReplayError};
use tally_log::Batch;

/// Applies one batch read from the log, checking positions, encoding and every ledger rule.
pub fn replay_batch(ledger: &mut Ledger, batch: &Batch) -> Result<(), ReplayError> {
    let header = batch.header;
    ledger.begin_replayed_batch(header.first_position, header.timestamp_ns)?;
    let events = decode_events(&batch.body, header.event_count).map_err(|error| ReplayError {
        position: header.first_position + u64::from(error.event_index),
        reason: error.to_string(),
    })?;
    for event in &events {
        ledger.apply_checked(event)?;
        // Verification and snapshots replay on idle-priority threads (a no-op elsewhere).
        tally_offline::yield_point();
    }
    ledger.end_replayed_batch()?;
    assert_eq!(ledger.next_position(), header.end_position());
    Ok(())
}
