//! The status file: availability buckets and incidents, persisted so a restart does not reset
//! them.
//!
//! One small file (about 60 KiB), rewritten whole every few seconds through a temporary file
//! and a rename, so it is always either the old or the new version; a crash loses at most the
//! counts since the last save. It ends with a CRC32C of everything before it. A file that fails
//! to decode stops the server with its path and the offset at which decoding failed: it holds
//! only statistics, so the message says the operator may move it away to start afresh.
//!
//! Layout (little-endian): magic `TALLYST` + format version (1 byte), `saved_at` (u64 Unix
//! seconds), minute and hour bucket counts (u32 each), the buckets (`index` u64, `succeeded`
//! u64, `failed` u64, `observed_minutes` u32), the incident count (u32), each incident
//! (`at` u64, `from` u8 (0 none, 1 healthy, 2 degraded, 3 down), `to` u8, name length u16 and
//! UTF-8 bytes, reason length u16 and UTF-8 bytes), then the CRC32C (u32).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::availability::{Availability, Bucket, HOURS_KEPT, MINUTES_KEPT};
use crate::incidents::{cut, Incidents, INCIDENTS_KEPT, NAME_BYTES_MAX, REASON_BYTES_MAX};
use crate::report::{rfc3339, Health, Incident};

/// The file's name inside the data directory.
pub const STATUS_FILE_NAME: &str = "status.dat";

const MAGIC: &[u8; 7] = b"TALLYST";
const FORMAT_VERSION: u8 = 1;
const HEADER_BYTES: usize = 8 + 8 + 4 + 4;
const BUCKET_BYTES: usize = 8 + 8 + 8 + 4;
const INCIDENT_BYTES_MAX: usize = 8 + 1 + 1 + 2 + NAME_BYTES_MAX + 2 + REASON_BYTES_MAX;
/// No valid status file is larger; a larger one is refused before it is read whole.
pub const FILE_BYTES_MAX: usize = HEADER_BYTES
    + (MINUTES_KEPT + HOURS_KEPT) * BUCKET_BYTES
    + 4
    + INCIDENTS_KEPT * INCIDENT_BYTES_MAX
    + 4;

/// What the status file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    /// When it was written, in Unix seconds.
    pub saved_at_unix: u64,
    /// The availability buckets.
    pub availability: Availability,
    /// Recent incidents.
    pub incidents: Incidents,
}

/// Why the status file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file does not decode.
    #[error("status file {path} is corrupt at byte offset {offset}: {what}. It holds only availability figures and incidents: move it away to start them afresh")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The first byte that does not decode.
        offset: usize,
        /// What is wrong there.
        what: String,
    },
    /// Reading or writing failed.
    #[error("cannot {action} status file {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Reads the status file of a data directory; `None` if there is none yet.
pub fn load(data_dir: &Path) -> Result<Option<Saved>, StoreError> {
    let path = data_dir.join(STATUS_FILE_NAME);
    let io = |action, source| StoreError::Io {
        action,
        path: path.clone(),
        source,
    };
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io("read", error)),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|(offset, what)| StoreError::Corrupt { path, offset, what })
}

/// Writes the status file of a data directory atomically (temporary file, fdatasync, rename,
/// directory sync).
pub fn save(data_dir: &Path, saved: &Saved) -> Result<(), StoreError> {
    let path = data_dir.join(STATUS_FILE_NAME);
    let temporary = data_dir.join(format!("{STATUS_FILE_NAME}.tmp"));
    let io = |action, source| StoreError::Io {
        action,
        path: path.clone(),
        source,
    };
    let bytes = encode(saved);
    let mut file = File::create(&temporary).map_err(|error| io("create", error))?;
    file.write_all(&bytes).map_err(|error| io("write", error))?;
    file.sync_data().map_err(|error| io("sync", error))?;
    std::fs::rename(&temporary, &path).map_err(|error| io("rename", error))?;
    File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| io("sync the directory of", error))
}

/// The file's bytes.
pub fn encode(saved: &Saved) -> Vec<u8> {
    let (minutes, hours) = saved.availability.buckets();
    let mut bytes = Vec::with_capacity(FILE_BYTES_MAX);
    bytes.extend_from_slice(MAGIC);
    bytes.push(FORMAT_VERSION);
    bytes.extend_from_slice(&saved.saved_at_unix.to_le_bytes());
    bytes.extend_from_slice(&(minutes.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(hours.len() as u32).to_le_bytes());
    for bucket in minutes.iter().chain(hours) {
        bytes.extend_from_slice(&bucket.index.to_le_bytes());
        bytes.extend_from_slice(&bucket.succeeded.to_le_bytes());
        bytes.extend_from_slice(&bucket.failed.to_le_bytes());
        bytes.extend_from_slice(&bucket.observed_minutes.to_le_bytes());
    }
    let incidents: Vec<&Incident> = saved.incidents.oldest_first().collect();
    bytes.extend_from_slice(&(incidents.len() as u32).to_le_bytes());
    for incident in incidents {
        bytes.extend_from_slice(&incident.at_unix.to_le_bytes());
        bytes.push(health_code(incident.from));
        bytes.push(health_code(Some(incident.to)));
        for text in [
            cut(&incident.dependency, NAME_BYTES_MAX),
            cut(&incident.reason, REASON_BYTES_MAX),
        ] {
            bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
            bytes.extend_from_slice(text.as_bytes());
        }
    }
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    debug_assert!(bytes.len() <= FILE_BYTES_MAX);
    bytes
}

/// Decodes the file's bytes, or says at which offset and why it does not decode.
pub fn decode(bytes: &[u8]) -> Result<Saved, (usize, String)> {
    if bytes.len() > FILE_BYTES_MAX {
        return Err((
            FILE_BYTES_MAX,
            format!(
                "the file is {} bytes, more than a status file can be ({FILE_BYTES_MAX})",
                bytes.len()
            ),
        ));
    }
    if bytes.len() < HEADER_BYTES + 4 {
        return Err((
            bytes.len(),
            format!(
                "the file ends after {} bytes, inside its header",
                bytes.len()
            ),
        ));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err((0, "not a Tally status file (wrong magic bytes)".into()));
    }
    if bytes[MAGIC.len()] != FORMAT_VERSION {
        return Err((
            MAGIC.len(),
            format!(
                "format version {} is not the supported version {FORMAT_VERSION}",
                bytes[MAGIC.len()]
            ),
        ));
    }
    let body_end = bytes.len() - 4;
    let stored = u32::from_le_bytes(bytes[body_end..].try_into().expect("four bytes"));
    let computed = crc32c::crc32c(&bytes[..body_end]);
    if stored != computed {
        return Err((
            body_end,
            format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x} over bytes 0..{body_end}"),
        ));
    }
    let mut reader = Reader {
        bytes: &bytes[..body_end],
        offset: MAGIC.len() + 1,
    };
    let saved_at_unix = reader.u64()?;
    let minute_count = reader.u32()? as usize;
    let hour_count = reader.u32()? as usize;
    if (minute_count, hour_count) != (MINUTES_KEPT, HOURS_KEPT) {
        return Err((
            MAGIC.len() + 9,
            format!("{minute_count} minute and {hour_count} hour buckets, expected {MINUTES_KEPT} and {HOURS_KEPT}"),
        ));
    }
    let mut buckets = Vec::with_capacity(MINUTES_KEPT + HOURS_KEPT);
    for _ in 0..MINUTES_KEPT + HOURS_KEPT {
        buckets.push(Bucket {
            index: reader.u64()?,
            succeeded: reader.u64()?,
            failed: reader.u64()?,
            observed_minutes: reader.u32()?,
        });
    }
    let hours = buckets.split_off(MINUTES_KEPT);
    let availability =
        Availability::from_buckets(buckets, hours).expect("ring lengths checked above");
    let incident_count_offset = reader.offset;
    let incident_count = reader.u32()? as usize;
    if incident_count > INCIDENTS_KEPT {
        return Err((
            incident_count_offset,
            format!("{incident_count} incidents, more than the {INCIDENTS_KEPT} kept"),
        ));
    }
    let mut recent = Vec::with_capacity(incident_count);
    for _ in 0..incident_count {
        let at_unix = reader.u64()?;
        let from = reader.health()?;
        let to_offset = reader.offset;
        let to = reader
            .health()?
            .ok_or((to_offset, "an incident without a new health".to_string()))?;
        let dependency = reader.text(NAME_BYTES_MAX)?;
        let reason = reader.text(REASON_BYTES_MAX)?;
        recent.push(Incident {
            at_unix,
            at: rfc3339(at_unix),
            dependency,
            from,
            to,
            reason,
        });
    }
    if reader.offset != body_end {
        return Err((
            reader.offset,
            format!("{} bytes after the last incident", body_end - reader.offset),
        ));
    }
    Ok(Saved {
        saved_at_unix,
        availability,
        incidents: Incidents::from_recent(recent),
    })
}

fn health_code(health: Option<Health>) -> u8 {
    match health {
        None => 0,
        Some(Health::Healthy) => 1,
        Some(Health::Degraded) => 2,
        Some(Health::Down) => 3,
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], (usize, String)> {
        let end = self
            .offset
            .checked_add(count)
            .filter(|end| *end <= self.bytes.len())
            .ok_or((
                self.offset,
                format!("the file ends inside a field of {count} bytes"),
            ))?;
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64, (usize, String)> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("eight bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, (usize, String)> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("four bytes"),
        ))
    }

    fn health(&mut self) -> Result<Option<Health>, (usize, String)> {
        let offset = self.offset;
        match self.take(1)?[0] {
            0 => Ok(None),
            1 => Ok(Some(Health::Healthy)),
            2 => Ok(Some(Health::Degraded)),
            3 => Ok(Some(Health::Down)),
            other => Err((offset, format!("health code {other} is not 0 to 3"))),
        }
    }

    fn text(&mut self, bytes_max: usize) -> Result<String, (usize, String)> {
        let offset = self.offset;
        let length = u16::from_le_bytes(self.take(2)?.try_into().expect("two bytes")) as usize;
        if length > bytes_max {
            return Err((
                offset,
                format!("a text of {length} bytes, more than the {bytes_max} allowed"),
            ));
        }
        let text_offset = self.offset;
        String::from_utf8(self.take(length)?.to_vec())
            .map_err(|_| (text_offset, "text that is not UTF-8".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::availability::Outcome;

    fn sample() -> Saved {
        let mut availability = Availability::new();
        for second in 0..500 {
            let outcome = if second % 7 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            availability.record(1_790_000_000 + second * 11, outcome);
        }
        let mut incidents = Incidents::new();
        incidents.note(1_790_000_000, "tally", Health::Healthy, "started");
        incidents.note(1_790_000_100, "disk", Health::Down, "full");
        Saved {
            saved_at_unix: 1_790_005_000,
            availability,
            incidents,
        }
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let saved = sample();
        save(dir.path(), &saved).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(saved));
    }

    #[test]
    fn every_flipped_byte_is_caught_with_its_offset() {
        let bytes = encode(&sample());
        // Flipping any byte must be refused; checking every 97th keeps the test fast.
        for position in (0..bytes.len()).step_by(97) {
            let mut corrupt = bytes.clone();
            corrupt[position] ^= 0x20;
            let (offset, what) = decode(&corrupt).expect_err("a flipped byte must not decode");
            assert!(offset <= bytes.len(), "{offset} {what}");
        }
    }

    #[test]
    fn truncation_is_refused() {
        let bytes = encode(&sample());
        for length in [0, 5, HEADER_BYTES, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..length]).is_err());
        }
    }

    #[test]
    fn the_error_names_the_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &sample()).unwrap();
        let path = dir.path().join(STATUS_FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let message = load(dir.path()).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("offset"), "{message}");
        assert!(message.contains("checksum mismatch"), "{message}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2_000)) {
            let _ = decode(&bytes);
        }
    }
}
