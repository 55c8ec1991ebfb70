//! Target `snapshot`: snapshot files as a restart meets them.
//!
//! Input: one flags byte, then a snapshot file (a 40-byte header and the body, see
//! `docs/format.md`), stored in memory under the name its header's position gives. Flag
//! [`FIX_HEADER`] rewrites the header's body length and both CRCs, so that mutations of the body
//! reach the snapshot decoder instead of stopping at a checksum.
//!
//! The file goes through `SnapshotStore::latest` (header, length and CRC checks) and its body
//! through `Ledger::decode_snapshot`. Promises checked: no panic and no allocation beyond what
//! the bytes justify; a state the decoder accepts keeps every invariant, encodes to a snapshot
//! that decodes to the same state, and keeps working.

use std::path::Path;
use std::sync::Arc;

use tally_core::Ledger;
use tally_log::{MemStorage, SnapshotStore};

use crate::ledger_check::keep_working;
use crate::Reached;

/// Flag: recompute the header's body length and CRCs.
pub const FIX_HEADER: u8 = 1;

/// Bytes in a snapshot header (format version 1).
const HEADER_BYTES: usize = 40;

/// Runs one input; panics if the snapshot store or decoder breaks a promise.
pub fn run(data: &[u8]) -> Reached {
    let Some((&flags, file)) = data.split_first() else {
        return Reached::Refused;
    };
    let mut file = file.to_vec();
    if flags & FIX_HEADER != 0 && file.len() >= HEADER_BYTES {
        fix_header(&mut file);
    }
    let position = file.get(16..24).map_or(0, |bytes| {
        u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
    });
    let storage = MemStorage::new();
    let dir = Path::new("/snapshots");
    storage.set_file_bytes(&dir.join(format!("snapshot-{position:020}.tsnap")), file);
    let store =
        SnapshotStore::open_in(Arc::new(storage), dir).expect("in-memory storage does not fail");
    let Some((_, body)) = store.latest().expect("in-memory storage does not fail") else {
        return Reached::Refused;
    };
    let Ok(ledger) = Ledger::decode_snapshot(&body) else {
        return Reached::Refused;
    };
    if let Err(violation) = ledger.check_invariants() {
        panic!("the decoder accepted a state that breaks an invariant: {violation}");
    }
    let again = Ledger::decode_snapshot(&ledger.encode_snapshot()).unwrap_or_else(|error| {
        panic!("a decoded state encodes to a snapshot that does not decode: {error}")
    });
    assert_eq!(again, ledger, "a decoded state survives another round trip");
    keep_working(&ledger);
    Reached::Accepted
}

fn fix_header(file: &mut [u8]) {
    let (header, body) = file.split_at_mut(HEADER_BYTES);
    header[24..32].copy_from_slice(&(body.len() as u64).to_le_bytes());
    header[32..36].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let crc = crc32c::crc32c(&header[0..36]);
    header[36..40].copy_from_slice(&crc.to_le_bytes());
}
