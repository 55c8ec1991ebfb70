//! Snapshots: the engine's state at a log position, so that restart replays only the
//! log after it. Independent of [`SegmentedLog`](crate::SegmentedLog): written by
//! offline threads, read at startup.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::error::LogError;
use crate::format::{self, SNAPSHOT_HEADER_SIZE};
use crate::limits::{SNAPSHOTS_KEPT, SNAPSHOT_BODY_BYTES_MAX};
use crate::storage::{FsStorage, Storage};

const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".tsnap";
const TEMP_SUFFIX: &str = ".tmp";

/// One snapshot, read back from its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The log position the state is at: every event before it is applied.
    pub position: u64,
    /// When the snapshot file was written (its modification time).
    pub written_at: SystemTime,
    /// The encoded state.
    pub body: Vec<u8>,
}

/// The snapshot files of one directory. `Sync`: [`SnapshotStore::write`] may run on any
/// thread, concurrently with the log's appender and with other calls.
#[derive(Debug)]
pub struct SnapshotStore {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    /// Serializes writes so that two concurrent writers never prune each other's files.
    write_lock: Mutex<()>,
}

impl SnapshotStore {
    /// Opens (creating if needed) the snapshot directory `dir` on the real filesystem.
    pub fn open(dir: &Path) -> Result<SnapshotStore, LogError> {
        SnapshotStore::open_in(Arc::new(FsStorage), dir)
    }

    /// Opens (creating if needed) the snapshot directory `dir` on `storage`, removing
    /// temporary files left by writes a crash interrupted.
    pub fn open_in(storage: Arc<dyn Storage>, dir: &Path) -> Result<SnapshotStore, LogError> {
        storage
            .create_dir_all(dir)
            .map_err(LogError::io("create directory", dir))?;
        let names = storage
            .list(dir)
            .map_err(LogError::io("list directory", dir))?;
        for name in names.iter().filter(|name| parse_temp_name(name).is_some()) {
            let path = dir.join(name);
            storage
                .remove(&path)
                .map_err(LogError::io("remove", &path))?;
            tracing::debug!(path = %path.display(), "removed an interrupted snapshot write");
        }
        Ok(SnapshotStore {
            storage,
            dir: dir.to_path_buf(),
            write_lock: Mutex::new(()),
        })
    }

    /// Writes the snapshot of the state at `position` durably and returns its path: temporary
    /// file, fdatasync, rename, directory fsync. Then keeps only the newest
    /// [`SNAPSHOTS_KEPT`] valid snapshots.
    pub fn write(&self, position: u64, bytes: &[u8]) -> Result<PathBuf, LogError> {
        if bytes.len() as u64 > SNAPSHOT_BODY_BYTES_MAX {
            return Err(LogError::SnapshotTooLarge {
                position,
                bytes: bytes.len() as u64,
                limit: SNAPSHOT_BODY_BYTES_MAX,
            });
        }
        // A panic in another write leaves nothing half-done in memory, so a poisoned lock is usable.
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = self.dir.join(snapshot_file_name(position));
        let temp = self
            .dir
            .join(format!("{}{TEMP_SUFFIX}", snapshot_file_name(position)));
        let storage = &*self.storage;
        match storage.remove(&temp) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(LogError::io("remove", &temp)(error));
            }
            _ => {}
        }
        let file = storage
            .create_new(&temp)
            .map_err(LogError::io("create", &temp))?;
        let header = format::encode_snapshot_header(position, bytes);
        file.write_all_at(&header, 0)
            .map_err(LogError::io("write", &temp))?;
        file.write_all_at(bytes, SNAPSHOT_HEADER_SIZE)
            .map_err(LogError::io("write", &temp))?;
        file.sync_data().map_err(LogError::io("fdatasync", &temp))?;
        drop(file);
        // The rename publishes a complete, durable file; the directory fsync makes the rename durable.
        storage
            .rename(&temp, &path)
            .map_err(LogError::io("rename", &temp))?;
        storage
            .sync_dir(&self.dir)
            .map_err(LogError::io("fsync directory", &self.dir))?;
        self.prune()?;
        Ok(path)
    }

    /// The newest snapshot whose header and CRC are valid, as `(position, body)`. A damaged
    /// snapshot is skipped with a warning naming its file; the log still holds everything
    /// after the older snapshot.
    pub fn latest(&self) -> Result<Option<(u64, Vec<u8>)>, LogError> {
        Ok(self
            .newest()?
            .map(|snapshot| (snapshot.position, snapshot.body)))
    }

    /// [`SnapshotStore::latest`], with when the snapshot was written.
    pub fn newest(&self) -> Result<Option<Snapshot>, LogError> {
        for (position, path) in self.list_newest_first()? {
            match self.load(position, &path)? {
                Ok(snapshot) => return Ok(Some(snapshot)),
                Err(reason) => {
                    tracing::warn!(path = %path.display(), reason, "skipping corrupt snapshot")
                }
            }
        }
        Ok(None)
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn list_newest_first(&self) -> Result<Vec<(u64, PathBuf)>, LogError> {
        let names = self
            .storage
            .list(&self.dir)
            .map_err(LogError::io("list directory", &self.dir))?;
        let mut snapshots: Vec<(u64, PathBuf)> = names
            .iter()
            .filter_map(|name| Some((parse_snapshot_name(name)?, self.dir.join(name))))
            .collect();
        snapshots.sort_by_key(|&(position, _)| std::cmp::Reverse(position));
        Ok(snapshots)
    }

    /// Reads one snapshot; the inner error says why it is invalid.
    fn load(&self, position: u64, path: &Path) -> Result<Result<Snapshot, &'static str>, LogError> {
        let file = match self.storage.open_read(path) {
            Ok(file) => file,
            // Pruned by a concurrent write since the listing: not a failure.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err("removed while reading"))
            }
            Err(error) => return Err(LogError::io("open", path)(error)),
        };
        let file_len = file.len().map_err(LogError::io("stat", path))?;
        if file_len < SNAPSHOT_HEADER_SIZE {
            return Ok(Err("file is shorter than a snapshot header"));
        }
        let mut header = [0u8; SNAPSHOT_HEADER_SIZE as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(LogError::io("read", path))?;
        let header = match format::decode_snapshot_header(&header) {
            Ok(header) => header,
            Err(reason) => return Ok(Err(reason)),
        };
        if header.position != position {
            return Ok(Err("snapshot header position does not match the file name"));
        }
        // Checked against the real file size before allocating, so a damaged length never
        // causes a huge allocation.
        if header.body_len != file_len - SNAPSHOT_HEADER_SIZE
            || header.body_len > SNAPSHOT_BODY_BYTES_MAX
        {
            return Ok(Err("snapshot body length does not match the file size"));
        }
        let mut body = vec![0u8; header.body_len as usize];
        file.read_exact_at(&mut body, SNAPSHOT_HEADER_SIZE)
            .map_err(LogError::io("read", path))?;
        if crc32c::crc32c(&body) != header.body_crc {
            return Ok(Err("snapshot body crc mismatch"));
        }
        // Files are never modified after the rename that publishes them, so the mtime is when
        // the snapshot was written.
        let written_at = file.modified().map_err(LogError::io("stat", path))?;
        Ok(Ok(Snapshot {
            position,
            written_at,
            body,
        }))
    }

    /// Removes every snapshot older than the [`SNAPSHOTS_KEPT`]-th newest valid one. Invalid
    /// snapshots newer than that are left for `tally verify` to show.
    fn prune(&self) -> Result<(), LogError> {
        let snapshots = self.list_newest_first()?;
        let mut valid_count = 0;
        let mut cut = snapshots.len();
        for (index, (position, path)) in snapshots.iter().enumerate() {
            if self.load(*position, path)?.is_ok() {
                valid_count += 1;
            }
            if valid_count == SNAPSHOTS_KEPT {
                cut = index + 1;
                break;
            }
        }
        for (_, path) in &snapshots[cut..] {
            self.storage
                .remove(path)
                .map_err(LogError::io("remove", path))?;
        }
        if cut < snapshots.len() {
            self.storage
                .sync_dir(&self.dir)
                .map_err(LogError::io("fsync directory", &self.dir))?;
        }
        Ok(())
    }
}

fn snapshot_file_name(position: u64) -> String {
    format!(
        "{SNAPSHOT_PREFIX}{}{SNAPSHOT_SUFFIX}",
        format::padded_position(position)
    )
}

fn parse_snapshot_name(name: &str) -> Option<u64> {
    format::parse_padded_position(
        name.strip_prefix(SNAPSHOT_PREFIX)?
            .strip_suffix(SNAPSHOT_SUFFIX)?,
    )
}

fn parse_temp_name(name: &str) -> Option<u64> {
    parse_snapshot_name(name.strip_suffix(TEMP_SUFFIX)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            snapshot_file_name(12),
            "snapshot-00000000000000000012.tsnap"
        );
        assert_eq!(
            parse_snapshot_name("snapshot-00000000000000000012.tsnap"),
            Some(12)
        );
        assert_eq!(
            parse_snapshot_name("snapshot-00000000000000000012.tsnap.tmp"),
            None
        );
        assert_eq!(
            parse_temp_name("snapshot-00000000000000000012.tsnap.tmp"),
            Some(12)
        );
    }
}
