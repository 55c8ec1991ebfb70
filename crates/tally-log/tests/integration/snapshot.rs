//! Snapshot store: atomic writes, newest valid snapshot wins, two kept.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tally_log::{MemStorage, SnapshotStore, Storage, Torn};

fn snapshot_dir() -> PathBuf {
    PathBuf::from("/data/snapshots")
}

fn open(storage: &MemStorage) -> SnapshotStore {
    SnapshotStore::open_in(Arc::new(storage.clone()), &snapshot_dir()).unwrap()
}

fn names(storage: &MemStorage) -> Vec<String> {
    let mut names = storage.list(&snapshot_dir()).unwrap();
    names.sort();
    names
}

#[test]
fn empty_store_has_no_snapshot() {
    assert_eq!(open(&MemStorage::new()).latest().unwrap(), None);
}

#[test]
fn latest_returns_the_newest_and_two_are_kept() {
    let storage = MemStorage::new();
    let store = open(&storage);
    let path = store.write(10, b"ten").unwrap();
    assert_eq!(
        path,
        snapshot_dir().join("snapshot-00000000000000000010.tsnap")
    );
    store.write(20, b"twenty").unwrap();
    store.write(30, b"thirty").unwrap();
    assert_eq!(store.latest().unwrap(), Some((30, b"thirty".to_vec())));
    assert_eq!(
        names(&storage),
        [
            "snapshot-00000000000000000020.tsnap",
            "snapshot-00000000000000000030.tsnap"
        ]
    );
    // An empty body is a valid snapshot too.
    store.write(40, b"").unwrap();
    assert_eq!(store.latest().unwrap(), Some((40, Vec::new())));
}

/// `newest` is `latest` with the time the snapshot was written, which survives a reopen.
#[test]
fn newest_says_when_the_snapshot_was_written() {
    let storage = MemStorage::new();
    let store = open(&storage);
    let before = SystemTime::now();
    store.write(10, b"ten").unwrap();
    let after = SystemTime::now();
    let newest = store.newest().unwrap().unwrap();
    assert_eq!((newest.position, newest.body.as_slice()), (10, &b"ten"[..]));
    assert!(
        before <= newest.written_at && newest.written_at <= after,
        "{newest:?}"
    );
    assert_eq!(open(&storage).newest().unwrap(), Some(newest));
}

#[test]
fn corrupt_newest_snapshot_falls_back_to_the_older_one() {
    let storage = MemStorage::new();
    let store = open(&storage);
    store.write(10, b"ten").unwrap();
    let newest = store.write(20, b"twenty").unwrap();
    let header_bit = 17;
    let body_bit = 41;
    for offset in [header_bit, body_bit] {
        let mut bytes = storage.file_bytes(&newest).unwrap();
        bytes[offset] ^= 1;
        storage.set_file_bytes(&newest, bytes.clone());
        assert_eq!(
            store.latest().unwrap(),
            Some((10, b"ten".to_vec())),
            "offset {offset}"
        );
        bytes[offset] ^= 1;
        storage.set_file_bytes(&newest, bytes);
    }
    storage.set_file_bytes(&newest, b"short".to_vec());
    assert_eq!(store.latest().unwrap(), Some((10, b"ten".to_vec())));
    // A damaged snapshot does not count as one of the two kept: the valid older one stays.
    store.write(30, b"thirty").unwrap();
    assert_eq!(
        names(&storage),
        [
            "snapshot-00000000000000000010.tsnap",
            "snapshot-00000000000000000020.tsnap",
            "snapshot-00000000000000000030.tsnap"
        ]
    );
}

#[test]
fn snapshot_is_durable_when_write_returns_and_interrupted_writes_are_cleaned_up() {
    let storage = MemStorage::new();
    let store = open(&storage);
    store.write(10, b"ten").unwrap();
    let image = storage.crash_image(Torn::Nothing);
    assert_eq!(open(&image).latest().unwrap(), Some((10, b"ten".to_vec())));

    // Fail the fdatasync (operation 4): the temporary file stays behind, the old snapshot is still the latest.
    storage.fail_after(4);
    assert!(store.write(20, b"twenty").is_err());
    assert!(names(&storage).iter().any(|name| name.ends_with(".tmp")));
    let reopened = open(&storage);
    assert_eq!(names(&storage), ["snapshot-00000000000000000010.tsnap"]);
    assert_eq!(reopened.latest().unwrap(), Some((10, b"ten".to_vec())));
}

#[test]
fn writes_from_another_thread() {
    let storage = MemStorage::new();
    let store = Arc::new(open(&storage));
    let threads: Vec<_> = (1..=4u64)
        .map(|i| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || store.write(i * 10, &[i as u8; 100]).unwrap())
        })
        .collect();
    threads.into_iter().for_each(|t| {
        t.join().unwrap();
    });
    assert_eq!(store.latest().unwrap(), Some((40, vec![4; 100])));
    assert_eq!(names(&storage).len(), 2);
}
