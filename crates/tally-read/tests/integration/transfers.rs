//! Transfer views: every kind, and the status transitions of pending transfers.

use tally_core::{RejectCode, Reply};
use tally_read::TransferView;

use crate::support::*;

fn position_of(reply: &Reply) -> u64 {
    match reply {
        Reply::Transfer(transfer) => transfer.position,
        other => panic!("expected a recorded transfer, found {other:?}"),
    }
}

/// The view every test starts from; the fields that vary are overwritten.
fn view(
    id: &str,
    kind: &'static str,
    from: Option<&str>,
    to: Option<&str>,
    amount: u64,
    position: u64,
    timestamp_ns: u64,
) -> TransferView {
    TransferView {
        id: id.into(),
        kind,
        status: "posted",
        ledger: "USD".into(),
        from: from.map(Into::into),
        to: to.map(Into::into),
        amount,
        position,
        timestamp_ns,
        pending_id: None,
        posted_amount: None,
        expires_at_ns: None,
        resolved_by: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_of_every_kind_and_pending_transitions() {
    let dir = dir();
    let mut sim = Sim::new();
    sim.batch(&[open("alice", "USD"), open("bob", "USD")]);
    let replies = sim.batch(&[
        deposit("d1", "alice", 100),
        withdraw("w1", "alice", 10),
        transfer("t1", "alice", "bob", 20),
        pending("p1", "alice", "bob", 30, 0),
        post("c1", "p1", Some(25)),
        pending("p2", "alice", "bob", 10, 0),
        void("v1", "p2"),
        pending("p3", "alice", "bob", 5, 1),
        withdraw("w2", "bob", 1_000_000),
    ]);
    assert!(matches!(
        replies[8],
        Reply::Rejected {
            code: RejectCode::InsufficientFunds,
            ..
        }
    ));
    let at = sim.timestamp_ns();
    let pos: Vec<u64> = replies[..8].iter().map(position_of).collect();
    let model = project(&dir.path, &sim.log).await;

    assert_eq!(
        model.transfer("d1").unwrap(),
        Some(view("d1", "deposit", None, Some("alice"), 100, pos[0], at))
    );
    assert_eq!(
        model.transfer("w1").unwrap(),
        Some(view(
            "w1",
            "withdrawal",
            Some("alice"),
            None,
            10,
            pos[1],
            at
        ))
    );
    assert_eq!(
        model.transfer("t1").unwrap(),
        Some(view(
            "t1",
            "transfer",
            Some("alice"),
            Some("bob"),
            20,
            pos[2],
            at
        ))
    );
    let p1 = TransferView {
        posted_amount: Some(25),
        resolved_by: Some("c1".into()),
        ..view("p1", "pending", Some("alice"), Some("bob"), 30, pos[3], at)
    };
    assert_eq!(model.transfer("p1").unwrap(), Some(p1));
    let c1 = TransferView {
        pending_id: Some("p1".into()),
        ..view("c1", "post", Some("alice"), Some("bob"), 25, pos[4], at)
    };
    assert_eq!(model.transfer("c1").unwrap(), Some(c1));
    let p2 = TransferView {
        status: "voided",
        resolved_by: Some("v1".into()),
        ..view("p2", "pending", Some("alice"), Some("bob"), 10, pos[5], at)
    };
    assert_eq!(model.transfer("p2").unwrap(), Some(p2));
    let v1 = TransferView {
        pending_id: Some("p2".into()),
        ..view("v1", "void", Some("alice"), Some("bob"), 10, pos[6], at)
    };
    assert_eq!(model.transfer("v1").unwrap(), Some(v1));
    let p3 = TransferView {
        status: "pending",
        expires_at_ns: Some(at + 1_000_000_000),
        ..view("p3", "pending", Some("alice"), Some("bob"), 5, pos[7], at)
    };
    assert_eq!(model.transfer("p3").unwrap(), Some(p3.clone()));
    assert_eq!(
        model.transfer("w2").unwrap(),
        None,
        "a rejected id has no transfer"
    );
    assert_eq!(model.transfer("nope").unwrap(), None);

    // The next batch, two seconds later, expires p3 before anything else.
    sim.batch_after(2_000_000_000, &[]);
    model.wait_for(sim.log.end(), WAIT).await.unwrap();
    assert_eq!(
        model.transfer("p3").unwrap(),
        Some(TransferView {
            status: "expired",
            ..p3
        })
    );
    model.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledgers_and_external_accounts_are_told_apart() {
    let dir = dir();
    let mut sim = Sim::new();
    // Interleaved ledgers make the index assignment non-trivial: USD ext 0, a 1, EUR ext 2, b 3, c 4.
    sim.batch(&[
        open("a", "USD"),
        open("b", "EUR"),
        open("c", "USD"),
        open("d", "EUR"),
    ]);
    sim.batch(&[
        deposit("d1", "b", 7),
        deposit("d2", "c", 9),
        transfer("t1", "c", "a", 4),
        withdraw("w1", "b", 2),
    ]);
    let model = project(&dir.path, &sim.log).await;
    let t1 = model.transfer("t1").unwrap().unwrap();
    assert_eq!(
        (t1.ledger.as_str(), t1.from.as_deref(), t1.to.as_deref()),
        ("USD", Some("c"), Some("a"))
    );
    let w1 = model.transfer("w1").unwrap().unwrap();
    assert_eq!(
        (w1.ledger.as_str(), w1.from.as_deref(), w1.to),
        ("EUR", Some("b"), None)
    );
    let d1 = model.transfer("d1").unwrap().unwrap();
    assert_eq!(
        (d1.ledger.as_str(), d1.from, d1.to.as_deref()),
        ("EUR", None, Some("b"))
    );
    for account in sim.account_ids() {
        let entries = all_history(&model, &account, 1000);
        let projected = entries.last().map_or(0, |entry| entry.balance_after);
        assert_eq!(projected, sim.balance(&account), "balance of {account}");
    }
}
