//! What every recovered ledger must do, however it was recovered: serve more commands.

use tally_core::limits::{EXPIRATIONS_PER_BATCH_MAX, POSITION_MAX, TIMESTAMP_NS_MAX};
use tally_core::{script, AccountIndex, Event, Ledger};

/// Events the two batches of [`keep_working`] record at most: one per command or chained
/// transfer of the first, and the expirations each batch may start with.
const EVENTS_MAX: u64 = 32 + 2 * EXPIRATIONS_PER_BATCH_MAX as u64;

/// Accounts looked at for a pair to transfer between: enough to find one in any small state,
/// few enough to keep each fuzz run fast.
const ACCOUNTS_SCANNED_MAX: usize = 64;

/// Drives `recovered` as the engine would after a restart: a batch of commands touching its
/// accounts, then a later batch that expires what timed out. Checks every invariant after each
/// command, and that replaying the events produced on a copy of `recovered` yields exactly the
/// live state (what the log would hold must rebuild what was served).
pub(crate) fn keep_working(recovered: &Ledger) {
    // Positions end at 2^56 (`POSITION_MAX`), millennia of traffic away: a state that close to the
    // end has no room for these events, and running out there is the documented limit.
    if recovered.next_position() > POSITION_MAX - EVENTS_MAX {
        return;
    }
    let mut live = recovered.clone();
    let (from, to, mut commands) = match account_pair(&live) {
        Some((from, to, ledger)) => (from, to, vec![format!("open fz-new {ledger}")]),
        None => {
            let opens = vec!["open fz-a FZ".to_string(), "open fz-b FZ".to_string()];
            ("fz-a".to_string(), "fz-b".to_string(), opens)
        }
    };
    commands.extend([
        format!("deposit fz-d1 {from} 7"),
        format!("deposit fz-d1 {from} 7"),
        format!("deposit fz-d1 {from} 8"),
        format!("withdraw fz-w1 {from} 3"),
        format!("transfer fz-t1 {from} {to} 2"),
        format!("pending fz-p1 {from} {to} 2 1"),
        format!("pending fz-p2 {from} {to} 2"),
        "post fz-x1 fz-p2 1".to_string(),
        format!("pending fz-p3 {from} {to} 1"),
        "void fz-v1 fz-p3".to_string(),
        format!("linked transfer fz-l1 {from} {to} 1, transfer fz-l2 {to} {from} 1"),
    ]);
    // The engine's clock: the next batch is at least one nanosecond after the last one. A log
    // whose last batch is at the timestamp limit leaves no room: the engine fails rather than
    // stamp a batch replay would refuse.
    let Some(first) = live
        .last_timestamp_ns()
        .checked_add(1)
        .filter(|first| *first <= TIMESTAMP_NS_MAX)
    else {
        return;
    };
    let mut batches = vec![run_batch(&mut live, first, &commands)];
    // The engine wakes for the next expiry; when there is none, this batch is empty. An expiry
    // past the timestamp limit (a timeout set near the year 2262) never comes: no clock reaches
    // it, and the engine stamps no batch there.
    let expiry = live.next_expiry_ns().unwrap_or(first).max(first);
    if let Some(second) = expiry
        .checked_add(1)
        .filter(|second| *second <= TIMESTAMP_NS_MAX)
    {
        batches.push(run_batch(&mut live, second, &[]));
    }

    let mut replayed = recovered.clone();
    for (first_position, timestamp_ns, events) in batches {
        // The engine writes no record for a batch without events.
        if events.is_empty() {
            continue;
        }
        replayed
            .begin_replayed_batch(first_position, timestamp_ns)
            .expect("a batch the ledger produced starts where the ledger is");
        for event in &events {
            replayed
                .apply_checked(event)
                .unwrap_or_else(|error| panic!("an event the ledger produced replays: {error}"));
        }
        replayed
            .end_replayed_batch()
            .expect("a batch the ledger produced is whole");
    }
    assert_eq!(replayed, live, "replay equals the state that was served");
}

/// Runs one batch at `timestamp_ns`; returns its first position, timestamp and events.
fn run_batch(live: &mut Ledger, timestamp_ns: u64, lines: &[String]) -> (u64, u64, Vec<Event>) {
    let first_position = live.next_position();
    let (mut events, mut replies) = (Vec::new(), Vec::new());
    live.begin_batch(timestamp_ns, &mut events);
    check(live, "starting a batch");
    for line in lines {
        let command = script::parse(line).expect("the harness writes valid commands");
        live.execute(&command, &mut events, &mut replies);
        check(live, line);
    }
    (first_position, timestamp_ns, events)
}

#[track_caller]
fn check(ledger: &Ledger, after: &str) {
    if let Err(violation) = ledger.check_invariants() {
        panic!("after {after}: {violation}");
    }
}

/// Two accounts of one ledger to move value between, and that ledger's code.
fn account_pair(ledger: &Ledger) -> Option<(String, String, String)> {
    let count = ledger.account_count().min(ACCOUNTS_SCANNED_MAX);
    let named: Vec<(&str, u32)> = (0..count as AccountIndex)
        .map(|index| ledger.account(index))
        .filter_map(|account| Some((account.id.as_ref()?.as_str(), account.ledger)))
        .collect();
    let code = |index: u32| ledger.ledger(index).code.to_string();
    for (position, &(from, from_ledger)) in named.iter().enumerate() {
        if let Some(&(to, _)) = named[position + 1..]
            .iter()
            .find(|(_, to_ledger)| *to_ledger == from_ledger)
        {
            return Some((from.to_string(), to.to_string(), code(from_ledger)));
        }
    }
    None
}
