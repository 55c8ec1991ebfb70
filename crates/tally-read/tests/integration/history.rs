//! Account history: entries, balances, and pagination.

use tally_core::Command;

use crate::support::*;

/// The history of `account`, one entry per line: `position kind transfer_id side amount balance`.
fn render(model: &tally_read::ReadModel, account: &str) -> String {
    all_history(model, account, 1000)
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {} {} {}\n",
                e.position, e.kind, e.transfer_id, e.side, e.amount, e.balance_after
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_event_appears_with_its_balance() {
    let dir = dir();
    let mut sim = Sim::new();
    sim.batch(&[open("alice", "USD"), open("bob", "USD")]);
    sim.batch(&[
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
    sim.batch_after(2_000_000_000, &[]);
    let model = project(&dir.path, &sim.log).await;
    let alice = "\
2 deposit d1 credit 100 100
3 withdrawal w1 debit 10 90
4 transfer t1 debit 20 70
5 pending p1 debit 30 70
6 post c1 debit 25 45
7 pending p2 debit 10 45
8 void v1 debit 10 45
9 pending p3 debit 5 45
11 expire p3 debit 5 45
";
    assert_eq!(render(&model, "alice"), alice);
    let bob = "\
4 transfer t1 credit 20 20
5 pending p1 credit 30 20
6 post c1 credit 25 45
7 pending p2 credit 10 45
8 void v1 credit 10 45
9 pending p3 credit 5 45
11 expire p3 credit 5 45
";
    assert_eq!(render(&model, "bob"), bob);
    assert_eq!(sim.balance("alice"), 45);
    assert_eq!(sim.balance("bob"), 45);
    let first = model.history("alice", None, 1).unwrap().unwrap();
    assert_eq!(
        first.entries[0].timestamp_ns,
        sim.timestamp_ns() - 2_000_000_000
    );
    assert_eq!(
        model.history("nobody", None, 10).unwrap(),
        None,
        "unknown accounts have no history"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_follow_the_cursor_to_the_end() {
    let dir = dir();
    let mut sim = Sim::new();
    sim.batch(&[
        open("alice", "USD"),
        open("bob", "USD"),
        open("idle", "USD"),
    ]);
    let deposits: Vec<Command> = (0..1003)
        .map(|i| deposit(&format!("d{i}"), "alice", i + 1))
        .collect();
    sim.batch(&deposits);
    let transfers: Vec<Command> = (0..10)
        .map(|i| transfer(&format!("t{i}"), "alice", "bob", 1))
        .collect();
    sim.batch(&transfers);
    let model = project(&dir.path, &sim.log).await;

    let whole = all_history(&model, "alice", 1000);
    assert_eq!(whole.len(), 1013);
    assert!(whole
        .windows(2)
        .all(|pair| pair[0].position < pair[1].position));
    assert_eq!(whole.last().unwrap().balance_after, sim.balance("alice"));
    for limit in [1, 7, 1013] {
        assert_eq!(all_history(&model, "alice", limit), whole, "limit {limit}");
    }

    let capped = model.history("alice", None, u32::MAX).unwrap().unwrap();
    assert_eq!(
        capped.entries.len(),
        tally_read::limits::HISTORY_PAGE_ENTRIES_MAX as usize
    );
    assert_eq!(capped.next, Some(capped.entries.last().unwrap().position));
    let zero = model.history("alice", None, 0).unwrap().unwrap();
    assert_eq!(zero.entries.len(), 1, "a limit of 0 is raised to 1");

    // `after` is a position: entries strictly after it, whether or not it is one of the account's.
    let middle = whole[500].position;
    let page = model.history("alice", Some(middle), 2).unwrap().unwrap();
    assert_eq!(page.entries, whole[501..503].to_vec());
    assert_eq!(page.next, Some(whole[502].position));
    let last = model
        .history("alice", Some(whole[1011].position), 5)
        .unwrap()
        .unwrap();
    assert_eq!((last.entries.len(), last.next), (1, None));
    let past = model.history("alice", Some(u64::MAX), 5).unwrap().unwrap();
    assert_eq!((past.entries.len(), past.next), (0, None));
    let idle = model.history("idle", None, 5).unwrap().unwrap();
    assert_eq!((idle.entries.len(), idle.next), (0, None));
    assert_eq!(all_history(&model, "bob", 3).len(), 10);
}
