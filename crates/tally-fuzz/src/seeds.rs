//! The seed corpus: real records, snapshots and request bodies, made by the code that makes them
//! in production, so that the fuzzer starts from inputs that pass every check and mutates
//! from there.

use std::path::Path;
use std::sync::Arc;

use tally_core::{encode_events, script, Command, Id, Ledger};
use tally_log::{
    Batch, BatchHeader, EventLog, LogOptions, MemStorage, SegmentedLog, SnapshotStore,
};

use crate::{http_body, log_record, snapshot, Reached};

/// One fuzz target: its name (the directory of its corpus and its name in `fuzz/`), the
/// function that runs an input, and the functions that make and compare its seeds.
pub struct Target {
    /// The target's name.
    pub name: &'static str,
    /// Runs one input.
    pub run: fn(&[u8]) -> Reached,
    /// The seeds, as `(file name, bytes)`.
    pub seeds: fn() -> Vec<(String, Vec<u8>)>,
    /// Whether two seeds mean the same input, where the encoding is not unique.
    pub same: fn(&[u8], &[u8]) -> bool,
}

/// Every fuzz target.
pub const TARGETS: [Target; 3] = [
    Target {
        name: "log_record",
        run: log_record::run,
        seeds: log_record_seeds,
        same: same_bytes,
    },
    Target {
        name: "snapshot",
        run: snapshot::run,
        seeds: snapshot_seeds,
        same: same_snapshot,
    },
    Target {
        name: "http_body",
        run: http_body::run,
        seeds: http_body_seeds,
        same: same_bytes,
    },
];

fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a == b
}

/// Snapshots of one state differ in bytes from process to process (the ledger's hash maps are
/// seeded at random, and a snapshot lists them in their order), so they are compared by header
/// and by the state they decode to.
fn same_snapshot(a: &[u8], b: &[u8]) -> bool {
    // The flags byte and the 40-byte header, before the body.
    const PREFIX: usize = 1 + 40;
    let decode = |seed: &[u8]| Ledger::decode_snapshot(seed.get(PREFIX..)?).ok();
    // Magic, version, position and body length; the CRCs depend on the order.
    let header = |seed: &[u8]| seed.get(..1 + 32).map(<[u8]>::to_vec);
    header(a).is_some() && header(a) == header(b) && decode(a).is_some() && decode(a) == decode(b)
}

/// Batches of a history that uses every kind of event: accounts in two ledgers, deposits,
/// withdrawals, transfers, refusals, two-phase transfers resolved every way (post, void, expiry),
/// a linked chain, a token revocation, and a campaign with claims settled every way.
const HISTORY: [(u64, &[&str]); 4] = [
    (
        1_000_000_000,
        &[
            "open a USD",
            "open b USD",
            "open o USD overdraft",
            "open e EUR",
            "deposit d1 a 100",
            "withdraw w1 a 30",
            "transfer t1 a b 10",
            "transfer t2 a e 1",
            "withdraw w2 b 1000",
        ],
    ),
    (
        2_000_000_000,
        &[
            "pending p1 a b 5 1",
            "pending p2 a b 5",
            "post x1 p2 3",
            "pending p3 a b 2",
            "void v1 p3",
            "linked transfer l1 a b 1, transfer l2 b o 1",
            "revoke tok-1",
        ],
    ),
    // Later than p1's timeout: the batch starts by expiring it.
    (4_000_000_000, &["deposit d2 e 5"]),
    // A campaign: defined, verified, published, claimed and settled every way.
    (
        5_000_000_000,
        &[
            "campaign spring GIFT 10 2 5 0 100000 ver 3600",
            "claim o0 spring ver",
            "attempt o0 1",
            "settle o0 delivered",
            "publish spring",
            "claim o1 spring a2",
            "claim o2 spring a2",
            "settle o1 voided",
            "settle o2 unknown",
        ],
    ),
];

/// The ledger after [`HISTORY`], and its batches as the engine would append them.
fn history() -> (Ledger, Vec<Batch>) {
    let mut ledger = Ledger::new();
    let mut batches = Vec::new();
    for (timestamp_ns, lines) in HISTORY {
        let first_position = ledger.next_position();
        let (mut events, mut replies) = (Vec::new(), Vec::new());
        ledger.begin_batch(timestamp_ns, &mut events);
        for line in lines {
            let command = match line.strip_prefix("revoke ") {
                Some(token_id) => Command::RevokeToken {
                    token_id: Id::new(token_id).expect("a valid token id"),
                },
                None => script::parse(line).expect("a valid command"),
            };
            ledger.execute(&command, &mut events, &mut replies);
        }
        batches.push(Batch {
            header: BatchHeader {
                first_position,
                event_count: events.len() as u32,
                timestamp_ns,
            },
            body: encode_events(&events),
        });
    }
    (ledger, batches)
}

fn log_record_seeds() -> Vec<(String, Vec<u8>)> {
    let (_, batches) = history();
    let storage = MemStorage::new();
    let dir = Path::new("/log");
    let (mut log, _) = SegmentedLog::open_in(Arc::new(storage.clone()), dir, LogOptions::default())
        .expect("open an empty log");
    for batch in &batches {
        log.append(batch).expect("append to an in-memory log");
    }
    let segment = storage
        .file_bytes(&dir.join(format!("{:020}.tlog", 0)))
        .expect("the log wrote segment 0");
    // The records, without the segment header the harness writes itself or the zeros the log
    // keeps after them.
    let records = &segment[32..log.size_bytes() as usize];
    let torn = &records[..records.len() - 3];
    // With CRCs rewritten, a mutation of a record's content reaches the decoders.
    let fix = log_record::FIX_CRCS;
    vec![
        ("seed-history".into(), [&[fix], records].concat()),
        (
            "seed-history-split".into(),
            [&[fix | log_record::SPLIT], records].concat(),
        ),
        ("seed-torn-tail".into(), [&[fix], torn].concat()),
    ]
}

fn snapshot_seeds() -> Vec<(String, Vec<u8>)> {
    let (ledger, _) = history();
    let file = |ledger: &Ledger| {
        let storage = MemStorage::new();
        let store = SnapshotStore::open_in(Arc::new(storage.clone()), Path::new("/snapshots"))
            .expect("open an in-memory snapshot store");
        let path = store
            .write(ledger.next_position(), &ledger.encode_snapshot())
            .expect("write an in-memory snapshot");
        storage.file_bytes(&path).expect("the snapshot was written")
    };
    // With the header rewritten, a mutation of the body reaches the decoder.
    let fix = snapshot::FIX_HEADER;
    vec![
        ("seed-history".into(), [&[fix], &file(&ledger)[..]].concat()),
        (
            "seed-empty".into(),
            [&[fix], &file(&Ledger::new())[..]].concat(),
        ),
    ]
}

/// One valid body per route, as the README's examples write them, against the accounts and
/// pending transfers the target's fixture holds.
fn http_body_seeds() -> Vec<(String, Vec<u8>)> {
    let bodies: [(&str, &str, &str); 9] = [
        (
            "accounts",
            "/v1/accounts",
            r#"{"id":"n1","ledger":"USD","allow_overdraft":false}"#,
        ),
        (
            "deposits",
            "/v1/deposits",
            r#"{"id":"sd1","account":"a","amount":100}"#,
        ),
        (
            "withdrawals",
            "/v1/withdrawals",
            r#"{"id":"sw1","account":"a","amount":1}"#,
        ),
        (
            "transfers",
            "/v1/transfers",
            r#"{"id":"st1","from":"a","to":"b","amount":30}"#,
        ),
        (
            "transfers-pending",
            "/v1/transfers",
            r#"{"id":"sp1","from":"a","to":"b","amount":20,"pending":true,"timeout_s":60}"#,
        ),
        (
            "batch",
            "/v1/transfers/batch",
            r#"{"transfers":[{"id":"sb1","from":"a","to":"b","amount":1},{"id":"sb2","from":"b","to":"a","amount":1,"pending":true}],"atomic":true}"#,
        ),
        (
            "post",
            "/v1/transfers/{id}/post",
            "p1\n{\"id\":\"sx1\",\"amount\":5}",
        ),
        ("void", "/v1/transfers/{id}/void", "p2\n{\"id\":\"sv1\"}"),
        ("revocations", "/v1/revocations", r#"{"token_id":"tok-1"}"#),
    ];
    bodies
        .into_iter()
        .map(|(name, route, body)| {
            let selector = http_body::ROUTES
                .iter()
                .position(|known| *known == route)
                .expect("a known route") as u8;
            (
                format!("seed-{name}"),
                [&[selector], body.as_bytes()].concat(),
            )
        })
        .collect()
}
