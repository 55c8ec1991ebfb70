//! Tests of the ledger state machine through a tiny command language, so that tests do not pin
//! the API: one command per line, batches separated by `tick N` lines that set the clock.
//!
//! ```text
//! open a USD            # account a in ledger USD
//! open o USD overdraft  # may go below zero
//! deposit d1 a 100
//! withdraw w1 a 30
//! transfer t1 a b 10
//! pending p1 a b 10 [timeout_s]
//! post x1 p1 [amount]
//! void v1 p1
//! linked transfer t1 a b 10, transfer t2 b c 5
//! tick 5                # start a new batch at 5 seconds
//! ```

use proptest::prelude::*;
use tally_core::{Command, Event, Id, Ledger, Reply};

fn id(text: &str) -> Id {
    Id::new(text).unwrap()
}

fn parse(line: &str) -> Command {
    tally_core::script::parse(line).unwrap()
}

fn describe(ledger: &Ledger, reply: &Reply) -> String {
    match reply {
        Reply::Account { index, created } => format!(
            "account {} {}",
            ledger.account(*index).id.as_ref().unwrap(),
            if *created { "created" } else { "exists" }
        ),
        Reply::Transfer(transfer) => format!(
            "{} {} @{} amount {}{}",
            transfer.kind.name(),
            if transfer.created {
                "created"
            } else {
                "duplicate"
            },
            transfer.position,
            transfer.amount,
            match transfer.kind {
                tally_core::TransferKind::Pending { expires_at_ns } if expires_at_ns != 0 =>
                    format!(" expires {}s", expires_at_ns / 1_000_000_000),
                _ => String::new(),
            }
        ),
        Reply::Rejected {
            code,
            position,
            created,
        } => format!(
            "rejected {} @{position}{}",
            code.as_str(),
            if *created { "" } else { " (again)" }
        ),
        Reply::Conflict => "conflict".to_string(),
        Reply::Revoked { created } => format!("revoked{}", if *created { "" } else { " (again)" }),
        Reply::Campaign { index, created } => {
            let campaign = &ledger.campaigns()[*index as usize];
            format!(
                "campaign {} {}{}",
                campaign.definition.id,
                campaign.state.name(),
                if *created { "" } else { " (again)" }
            )
        }
        Reply::Claim { order_id, created } => {
            let claim = ledger.claim(order_id).unwrap();
            format!(
                "claim {order_id} {} day {} attempts {}{}{}",
                claim.state.name(),
                claim.day,
                claim.attempts,
                if claim.attempts_ended > 0 {
                    format!(
                        " ended {} read_timeouts {}",
                        claim.attempts_ended, claim.read_timeouts
                    )
                } else {
                    String::new()
                },
                if *created { "" } else { " (again)" }
            )
        }
        Reply::Refused(code) => format!("refused {}", code.as_str()),
    }
}

/// Runs a script and returns the replies, then the balances, checking invariants, replay and
/// snapshot round trip along the way.
fn run(script: &str) -> String {
    let mut ledger = Ledger::new();
    let mut batches: Vec<(u64, u64, Vec<Event>)> = Vec::new();
    let mut out = String::new();
    let mut clock_s = 1;
    let mut events = Vec::new();
    let mut first_position = 0;
    ledger.begin_batch(clock_s * 1_000_000_000, &mut events);
    for line in script
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
    {
        if let Some(seconds) = line.strip_prefix("tick ") {
            batches.push((
                first_position,
                clock_s * 1_000_000_000,
                std::mem::take(&mut events),
            ));
            first_position = ledger.next_position();
            clock_s = seconds.parse().unwrap();
            ledger.begin_batch(clock_s * 1_000_000_000, &mut events);
            for event in &events {
                if let Event::Expired { pending } = event {
                    out.push_str(&format!("{line}: expired @{pending}\n"));
                }
            }
            continue;
        }
        let command = parse(line);
        command.validate().unwrap();
        let mut replies = Vec::new();
        ledger.execute(&command, &mut events, &mut replies);
        let described: Vec<String> = replies
            .iter()
            .map(|reply| describe(&ledger, reply))
            .collect();
        out.push_str(&format!("{line}: {}\n", described.join(", ")));
        ledger.check_invariants().unwrap();
    }
    batches.push((first_position, clock_s * 1_000_000_000, events));
    assert_replays(&ledger, &batches);
    for account in (0..ledger.account_count()).map(|index| ledger.account(index as u32)) {
        let name = account.id.as_ref().map_or_else(
            || format!("@{}", ledger.ledger(account.ledger).code),
            |id| id.to_string(),
        );
        let b = account.balances;
        out.push_str(&format!(
            "{name}: balance {} pending -{} +{}\n",
            b.balance(),
            b.debits_pending,
            b.credits_pending
        ));
    }
    out
}

/// Replaying the events and decoding a snapshot both reproduce the live state exactly.
fn assert_replays(ledger: &Ledger, batches: &[(u64, u64, Vec<Event>)]) {
    let mut replayed = Ledger::new();
    for (first_position, timestamp, events) in
        batches.iter().filter(|(_, _, events)| !events.is_empty())
    {
        replayed
            .begin_replayed_batch(*first_position, *timestamp)
            .unwrap();
        let body = tally_core::encode_events(events);
        for event in tally_core::decode_events(&body, events.len() as u32).unwrap() {
            replayed.apply_checked(&event).unwrap();
        }
    }
    assert_eq!(&replayed, ledger, "replay must equal live state");
    let decoded = Ledger::decode_snapshot(&ledger.encode_snapshot()).unwrap();
    assert_eq!(
        &decoded, ledger,
        "snapshot round trip must equal live state"
    );
}

#[track_caller]
fn check(script: &str, expected: &str) {
    let actual = run(script);
    let expected: String = expected
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(actual, expected, "\nactual:\n{actual}");
}

#[test]
fn deposits_withdrawals_and_transfers_keep_every_ledger_at_zero() {
    check(
        "open a USD
         open b USD
         deposit d1 a 100
         withdraw w1 a 30
         transfer t1 a b 50
         transfer t2 a b 50",
        "open a USD: account a created
         open b USD: account b created
         deposit d1 a 100: deposit created @2 amount 100
         withdraw w1 a 30: withdrawal created @3 amount 30
         transfer t1 a b 50: transfer created @4 amount 50
         transfer t2 a b 50: rejected insufficient_funds @5
         @USD: balance -70 pending -0 +0
         a: balance 20 pending -0 +0
         b: balance 50 pending -0 +0",
    );
}

#[test]
fn overdraft_and_ledger_mismatch() {
    check(
        "open o USD overdraft
         open a USD
         open e EUR
         transfer t1 o a 10
         transfer t2 a e 5
         transfer t3 a ghost 5",
        "open o USD overdraft: account o created
         open a USD: account a created
         open e EUR: account e created
         transfer t1 o a 10: transfer created @3 amount 10
         transfer t2 a e 5: rejected ledger_mismatch @4
         transfer t3 a ghost 5: rejected not_found @5
         @USD: balance 0 pending -0 +0
         o: balance -10 pending -0 +0
         a: balance 10 pending -0 +0
         @EUR: balance 0 pending -0 +0
         e: balance 0 pending -0 +0",
    );
}

#[test]
fn the_same_id_answers_the_same_and_a_different_body_conflicts() {
    check(
        "open a USD
         open b USD
         open a USD overdraft
         deposit d1 a 100
         deposit d1 a 100
         deposit d1 a 101
         transfer t1 a b 500
         tick 2
         deposit d2 a 1000
         transfer t1 a b 500
         open a USD",
        "open a USD: account a created
         open b USD: account b created
         open a USD overdraft: conflict
         deposit d1 a 100: deposit created @2 amount 100
         deposit d1 a 100: deposit duplicate @2 amount 100
         deposit d1 a 101: conflict
         transfer t1 a b 500: rejected insufficient_funds @3
         deposit d2 a 1000: deposit created @4 amount 1000
         transfer t1 a b 500: rejected insufficient_funds @3 (again)
         open a USD: account a exists
         @USD: balance -1100 pending -0 +0
         a: balance 1100 pending -0 +0
         b: balance 0 pending -0 +0",
    );
}

#[test]
fn two_phase_transfers_reserve_then_post_or_void_once() {
    check(
        "open a USD
         open b USD
         deposit d1 a 100
         pending p1 a b 60
         transfer t1 a b 50
         post x1 p1 40
         post x2 p1
         pending p2 a b 30
         void v1 p2
         void v1 p2
         post x3 t1
         post x4 nope
         pending p3 a b 30
         post x5 p3 31",
        "open a USD: account a created
         open b USD: account b created
         deposit d1 a 100: deposit created @2 amount 100
         pending p1 a b 60: pending created @3 amount 60
         transfer t1 a b 50: rejected insufficient_funds @4
         post x1 p1 40: post created @5 amount 40
         post x2 p1: rejected already_resolved @6
         pending p2 a b 30: pending created @7 amount 30
         void v1 p2: void created @8 amount 30
         void v1 p2: void duplicate @8 amount 30
         post x3 t1: rejected not_found @9
         post x4 nope: rejected not_found @10
         pending p3 a b 30: pending created @11 amount 30
         post x5 p3 31: rejected exceeds_pending_amount @12
         @USD: balance -100 pending -0 +0
         a: balance 60 pending -30 +0
         b: balance 40 pending -0 +30",
    );
}

#[test]
fn pending_transfers_expire_at_their_timeout() {
    check(
        "open a USD
         open b USD
         deposit d1 a 100
         pending p1 a b 60 10
         tick 5
         post x1 p1 1
         pending p2 a b 39 10
         tick 16
         post x2 p2",
        "open a USD: account a created
         open b USD: account b created
         deposit d1 a 100: deposit created @2 amount 100
         pending p1 a b 60 10: pending created @3 amount 60 expires 11s
         post x1 p1 1: post created @4 amount 1
         pending p2 a b 39 10: pending created @5 amount 39 expires 15s
         tick 16: expired @5
         post x2 p2: rejected already_resolved @7
         @USD: balance -100 pending -0 +0
         a: balance 99 pending -0 +0
         b: balance 1 pending -0 +0",
    );
}

#[test]
fn linked_chains_apply_all_or_nothing() {
    check(
        "open a USD
         open b USD
         open c USD
         deposit d1 a 10
         linked transfer t1 a b 10, transfer t2 b c 10
         linked transfer t3 a b 5, transfer t4 b c 100, transfer t5 a c 1
         linked transfer t1 a b 10, transfer t6 c a 10
         linked transfer t3 a b 5",
        "open a USD: account a created
         open b USD: account b created
         open c USD: account c created
         deposit d1 a 10: deposit created @3 amount 10
         linked transfer t1 a b 10, transfer t2 b c 10: transfer created @4 amount 10, transfer created @5 amount 10
         linked transfer t3 a b 5, transfer t4 b c 100, transfer t5 a c 1: rejected insufficient_funds @6, rejected linked_failed @7, rejected linked_failed @8
         linked transfer t1 a b 10, transfer t6 c a 10: transfer duplicate @4 amount 10, transfer created @9 amount 10
         linked transfer t3 a b 5: rejected insufficient_funds @6 (again)
         @USD: balance -10 pending -0 +0
         a: balance 10 pending -0 +0
         b: balance 0 pending -0 +0
         c: balance 0 pending -0 +0",
    );
}

#[test]
fn a_failed_chain_leaves_no_trace_of_its_pending_transfers() {
    check(
        "open a USD
         open b USD
         deposit d1 a 10
         linked pending p1 a b 5 100, post x1 p1, transfer t1 a b 100",
        "open a USD: account a created
         open b USD: account b created
         deposit d1 a 10: deposit created @2 amount 10
         linked pending p1 a b 5 100, post x1 p1, transfer t1 a b 100: rejected linked_failed @3, rejected linked_failed @4, rejected insufficient_funds @5
         @USD: balance -10 pending -0 +0
         a: balance 10 pending -0 +0
         b: balance 0 pending -0 +0",
    );
}

#[test]
fn replay_refuses_events_that_break_the_rules() {
    let mut ledger = Ledger::new();
    let mut events = Vec::new();
    let mut replies = Vec::new();
    ledger.begin_batch(1, &mut events);
    for line in ["open a USD", "open b USD", "deposit d1 a 5"] {
        ledger.execute(&parse(line), &mut events, &mut replies);
    }
    let mut replayed = Ledger::new();
    replayed.begin_replayed_batch(0, 1).unwrap();
    for event in &events {
        replayed.apply_checked(event).unwrap();
    }
    let overdraw = Event::Transfer(tally_core::TransferEvent {
        id: id("evil"),
        body_hash: 0,
        kind: tally_core::TransferKind::Transfer,
        debit: 1,
        credit: 2,
        amount: 6,
    });
    let error = replayed.apply_checked(&overdraw).unwrap_err();
    assert!(error.reason.contains("insufficient_funds"), "{error}");
    let twice = events[2].clone();
    assert!(replayed
        .apply_checked(&twice)
        .unwrap_err()
        .reason
        .contains("recorded twice"));
    assert!(
        replayed.begin_replayed_batch(99, 2).is_err(),
        "a position gap is refused"
    );
}

#[test]
fn garbage_snapshots_are_refused_without_panicking() {
    let ledger = {
        let mut ledger = Ledger::new();
        let (mut events, mut replies) = (Vec::new(), Vec::new());
        ledger.begin_batch(1, &mut events);
        for line in [
            "open a USD",
            "open b USD",
            "deposit d1 a 5",
            "pending p1 a b 2 60",
        ] {
            ledger.execute(&parse(line), &mut events, &mut replies);
        }
        ledger
    };
    let bytes = ledger.encode_snapshot();
    for cut in 0..bytes.len() {
        assert!(
            Ledger::decode_snapshot(&bytes[..cut]).is_err(),
            "truncated at {cut}"
        );
    }
    let mut flipped = bytes.clone();
    let balance_offset = bytes.len() / 2;
    flipped[balance_offset] ^= 0x40;
    let _ = Ledger::decode_snapshot(&flipped);
}

/// A snapshot whose numbers the ledger cannot go on from is refused, however valid its structure:
/// found by the `snapshot` fuzz target, where a decoded state with `next_position` at the position
/// limit made the next command panic.
#[test]
fn snapshots_beyond_the_position_or_time_limits_are_refused() {
    let mut ledger = Ledger::new();
    let (mut events, mut replies) = (Vec::new(), Vec::new());
    ledger.begin_batch(1, &mut events);
    for line in [
        "open a USD",
        "open b USD",
        "deposit d1 a 5",
        "pending p1 a b 2",
    ] {
        ledger.execute(&parse(line), &mut events, &mut replies);
    }
    let bytes = ledger.encode_snapshot();
    assert_eq!(Ledger::decode_snapshot(&bytes).unwrap(), ledger);
    // Body layout: u32 version, u64 next_position, u64 count, (u64 first_position, u64 timestamp).
    let patched = |offset: usize, value: u64| {
        let mut bytes = bytes.clone();
        bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
        Ledger::decode_snapshot(&bytes)
    };
    for next_position in [tally_core::limits::POSITION_MAX, u64::MAX] {
        let error = patched(4, next_position).unwrap_err();
        assert_eq!(
            error.reason,
            "next position at or beyond the position limit"
        );
    }
    // The pending transfer p1 was recorded at position 3: a next position of 3 puts it in the future.
    let error = patched(4, 3).unwrap_err();
    assert!(error.reason.contains("beyond the next position"), "{error}");
    let error = patched(20, 1).unwrap_err();
    assert_eq!(error.reason, "batch times do not start at position 0");
    let error = patched(28, tally_core::limits::TIMESTAMP_NS_MAX + 1).unwrap_err();
    assert_eq!(
        error.reason,
        "batch time beyond the next position or the time limit"
    );
    assert!(patched(28, tally_core::limits::TIMESTAMP_NS_MAX).is_ok());
    // Then one ledger (`USD`) and the accounts, the ledger's external account first: flags, ledger
    // index, four amounts, then the version at 60 + 1 + 4 + 32. Found by the same fuzz target, a
    // version of u64::MAX overflowed at the account's next change.
    let error = patched(97, u64::MAX).unwrap_err();
    assert_eq!(error.reason, "account version beyond the next position");
}

/// A log batch stamped past the time limit is refused on replay: the engine, which stamps each
/// batch at least one nanosecond after the last, could not go on from it.
#[test]
fn replay_refuses_timestamps_beyond_the_limit() {
    let mut ledger = Ledger::new();
    let error = ledger
        .begin_replayed_batch(0, tally_core::limits::TIMESTAMP_NS_MAX + 1)
        .unwrap_err();
    assert!(error.reason.contains("beyond the limit"), "{error}");
    ledger
        .begin_replayed_batch(0, tally_core::limits::TIMESTAMP_NS_MAX)
        .unwrap();
}

#[test]
fn an_attempt_ends_once_in_order_and_read_timeouts_only_grow() {
    check(
        "
        campaign spring GIFT 4 2 3 10 100000 ver
        claim v1 spring ver
        ended v1 1 0
        attempt v1 1
        ended v1 1 1
        ended v1 1 1
        ended v1 1 2
        attempt v1 2
        ended v1 2 0
        ended v1 2 1
        attempt v1 3
        settle v1 unknown
        ended v1 3 2
        settle v1 delivered
        ended v1 3 3
        ",
        "
        campaign spring GIFT 4 2 3 10 100000 ver: campaign spring draft
        claim v1 spring ver: claim v1 pending_delivery day 0 attempts 0
        ended v1 1 0: refused attempt_out_of_order
        attempt v1 1: claim v1 pending_delivery day 0 attempts 1
        ended v1 1 1: claim v1 pending_delivery day 0 attempts 1 ended 1 read_timeouts 1
        ended v1 1 1: claim v1 pending_delivery day 0 attempts 1 ended 1 read_timeouts 1 (again)
        ended v1 1 2: refused attempt_out_of_order
        attempt v1 2: claim v1 pending_delivery day 0 attempts 2 ended 1 read_timeouts 1
        ended v1 2 0: refused attempt_out_of_order
        ended v1 2 1: claim v1 pending_delivery day 0 attempts 2 ended 2 read_timeouts 1
        attempt v1 3: claim v1 pending_delivery day 0 attempts 3 ended 2 read_timeouts 1
        settle v1 unknown: claim v1 unknown_needs_reconciliation day 0 attempts 3 ended 2 read_timeouts 1
        ended v1 3 2: claim v1 unknown_needs_reconciliation day 0 attempts 3 ended 3 read_timeouts 2
        settle v1 delivered: claim v1 delivered day 0 attempts 3 ended 3 read_timeouts 2
        ended v1 3 3: refused claim_already_settled
        @GIFT: balance -4 pending -0 +0
        tally:pool:spring: balance 3 pending -0 +0
        ver: balance 1 pending -0 +0
        ",
    );
}

#[test]
fn campaigns_hold_their_window_and_limits_and_settle_claims_through_transfers() {
    check(
        "
        campaign spring GIFT 4 2 3 10 100000 ver
        campaign spring GIFT 4 2 3 10 100000 ver
        campaign spring GIFT 5 2 3 10 100000 ver
        open eve EUR
        claim o1 spring alice
        publish spring
        claim v1 spring ver
        attempt v1 1
        attempt v1 1
        attempt v1 3
        settle v1 delivered
        settle v1 voided
        attempt v1 2
        publish spring
        publish spring
        claim o1 spring alice
        tick 20
        claim o1 spring alice
        claim o1 spring alice
        claim o1 spring bob
        claim o2 spring alice
        claim o3 spring alice
        claim o4 spring bob
        claim o9 spring eve
        settle o2 voided
        claim o4 spring bob
        tick 86400
        claim o5 spring bob
        claim o6 spring carol
        settle o1 unknown
        settle o1 unknown
        settle o1 delivered
        tick 100000
        claim o7 spring carol
        claim o8 autumn alice
        settle zz delivered
        ",
        "
        campaign spring GIFT 4 2 3 10 100000 ver: campaign spring draft
        campaign spring GIFT 4 2 3 10 100000 ver: campaign spring draft (again)
        campaign spring GIFT 5 2 3 10 100000 ver: conflict
        open eve EUR: account eve created
        claim o1 spring alice: refused campaign_not_live
        publish spring: refused campaign_not_verified
        claim v1 spring ver: claim v1 pending_delivery day 0 attempts 0
        attempt v1 1: claim v1 pending_delivery day 0 attempts 1
        attempt v1 1: claim v1 pending_delivery day 0 attempts 1 (again)
        attempt v1 3: refused attempt_out_of_order
        settle v1 delivered: claim v1 delivered day 0 attempts 1
        settle v1 voided: refused claim_already_settled
        attempt v1 2: refused claim_already_settled
        publish spring: campaign spring live
        publish spring: campaign spring live (again)
        claim o1 spring alice: refused campaign_not_started
        claim o1 spring alice: claim o1 pending_delivery day 0 attempts 0
        claim o1 spring alice: claim o1 pending_delivery day 0 attempts 0 (again)
        claim o1 spring bob: conflict
        claim o2 spring alice: claim o2 pending_delivery day 0 attempts 0
        claim o3 spring alice: refused per_user_limit_reached
        claim o4 spring bob: refused daily_limit_reached
        claim o9 spring eve: refused ledger_mismatch
        settle o2 voided: claim o2 voided day 0 attempts 0
        claim o4 spring bob: claim o4 pending_delivery day 0 attempts 0
        claim o5 spring bob: claim o5 pending_delivery day 1 attempts 0
        claim o6 spring carol: refused inventory_exhausted
        settle o1 unknown: claim o1 unknown_needs_reconciliation day 0 attempts 0
        settle o1 unknown: claim o1 unknown_needs_reconciliation day 0 attempts 0 (again)
        settle o1 delivered: claim o1 delivered day 0 attempts 0
        claim o7 spring carol: refused campaign_ended
        claim o8 autumn alice: refused campaign_not_found
        settle zz delivered: refused claim_not_found
        @GIFT: balance -4 pending -0 +0
        tally:pool:spring: balance 2 pending -2 +0
        @EUR: balance 0 pending -0 +0
        eve: balance 0 pending -0 +0
        ver: balance 1 pending -0 +0
        alice: balance 1 pending -0 +0
        bob: balance 0 pending -0 +2
        ",
    );
}

#[test]
fn the_local_day_follows_the_campaigns_utc_offsets() {
    let definition = tally_core::CampaignDefinition {
        id: id("c"),
        gift_ledger: tally_core::LedgerCode::new("GIFT").unwrap(),
        inventory: 1,
        per_user_limit: 1,
        daily_limit: 1,
        starts_at_ns: 0,
        ends_at_ns: 10 * 86_400 * 1_000_000_000,
        verification_account: id("v"),
        // UTC+1, then UTC+2 from the start of day 3 (UTC).
        offsets: vec![
            tally_core::OffsetChange {
                from_ns: 0,
                offset_seconds: 3600,
            },
            tally_core::OffsetChange {
                from_ns: 3 * 86_400 * 1_000_000_000,
                offset_seconds: 7200,
            },
        ],
        spec: Vec::new(),
    };
    definition.validate().unwrap();
    let at = |seconds: u64| definition.local_day(seconds * 1_000_000_000);
    assert_eq!(at(0), 0);
    assert_eq!(at(86_400 - 3601), 0, "22:59:59 UTC is 23:59:59 local");
    assert_eq!(at(86_400 - 3600), 1, "23:00 UTC is local midnight");
    assert_eq!(at(3 * 86_400 - 3601), 2);
    assert_eq!(at(3 * 86_400 - 3600), 3, "still UTC+1 before the change");
    assert_eq!(at(4 * 86_400 - 7200), 4, "UTC+2 after it");
    assert_eq!(at(4 * 86_400 - 7201), 3);
    assert_eq!(at(100 * 86_400), 10, "clamped into the window");

    let mut broken = definition.clone();
    broken.offsets[1].from_ns = 0;
    assert!(broken.validate().is_err(), "offsets must increase");
    let mut broken = definition.clone();
    broken.offsets[0].from_ns = 1;
    assert!(
        broken.validate().is_err(),
        "the first offset applies from starts_at"
    );
    let mut broken = definition;
    broken.id = id(&"c".repeat(tally_core::limits::CAMPAIGN_ID_BYTES_MAX + 1));
    assert!(broken.validate().is_err(), "the pool id would be too long");
}

#[test]
fn clients_cannot_name_the_ledgers_own_ids() {
    for line in [
        "open tally:pool:x GIFT",
        "deposit d tally:pool:spring 5",
        "withdraw tally:w a 5",
        "transfer t tally:pool:spring a 1",
        "void v tally:claim:0123",
        "claim o spring tally:pool:spring",
    ] {
        let error = parse(line).validate().unwrap_err();
        assert!(
            matches!(error, tally_core::InvalidCommand::Reserved(_)),
            "{line}: {error}"
        );
    }
}

#[test]
fn replay_refuses_campaign_events_that_break_the_rules() {
    let mut ledger = Ledger::new();
    let mut events = Vec::new();
    ledger.begin_batch(20_000_000_000, &mut events);
    for line in ["campaign c G 5 1 1 10 1000 v", "claim v1 c v"] {
        ledger.execute(&parse(line), &mut events, &mut Vec::new());
    }
    let settle_first = |events: &[Event]| {
        let mut replayed = Ledger::new();
        replayed.begin_replayed_batch(0, 20_000_000_000).unwrap();
        for event in events {
            replayed.apply_checked(event)?;
        }
        Ok::<_, tally_core::ReplayError>(replayed)
    };
    settle_first(&events).unwrap();
    // A claim's transfer posted without the claim's settlement before it.
    let mut delivered = Vec::new();
    ledger.execute(
        &parse("settle v1 delivered"),
        &mut delivered,
        &mut Vec::new(),
    );
    assert!(matches!(delivered[0], Event::ClaimSettled { .. }));
    let mut forged = events.clone();
    forged.push(delivered[1].clone());
    let error = settle_first(&forged).unwrap_err();
    assert!(
        error.reason.contains("while the claim is pending_delivery"),
        "{error}"
    );
    // A settlement that the batch ends on, without the post the engine writes right after it.
    let mut cut = events.clone();
    cut.push(delivered[0].clone());
    let mut replayed = settle_first(&cut).unwrap();
    let error = replayed.end_replayed_batch().unwrap_err();
    assert!(error.reason.contains("without its transfer"), "{error}");
    assert!(
        replayed
            .begin_replayed_batch(cut.len() as u64, 30_000_000_000)
            .is_err(),
        "the next batch does not forgive it"
    );
    // A settlement followed by something else than its post.
    let mut interrupted = cut.clone();
    interrupted.push(Event::TokenRevoked { token_id: id("t") });
    let error = settle_first(&interrupted).unwrap_err();
    assert!(
        error.reason.contains("not followed by its transfer"),
        "{error}"
    );
    let mut whole = cut.clone();
    whole.push(delivered[1].clone());
    settle_first(&whole).unwrap().end_replayed_batch().unwrap();
    // A second claim of the same user beyond the per-user limit of 1.
    let mut again = events.clone();
    again.push(events[events.len() - 2].clone());
    assert!(settle_first(&again).is_err());
    let Event::ClaimRecorded {
        pending, campaign, ..
    } = events[events.len() - 1].clone()
    else {
        panic!("the claim comes last")
    };
    let mut twice = events.clone();
    twice.push(Event::ClaimRecorded {
        order_id: id("v2"),
        campaign,
        pending,
    });
    let error = settle_first(&twice).unwrap_err();
    assert!(error.reason.contains("fresh reservation"), "{error}");
    // Publishing an unverified campaign.
    let mut early = events[..3].to_vec();
    early.push(Event::CampaignPublished { campaign: id("c") });
    let error = settle_first(&early).unwrap_err();
    assert!(error.reason.contains("not a verified draft"), "{error}");
}

#[test]
fn version_1_snapshots_still_load() {
    let ledger = Ledger::new();
    let mut bytes = ledger.encode_snapshot();
    bytes[..4].copy_from_slice(&1u32.to_le_bytes());
    // Version 1 bodies end before the campaign counts.
    bytes.truncate(bytes.len() - 16);
    assert_eq!(Ledger::decode_snapshot(&bytes).unwrap(), ledger);
}

fn arb_campaign_line() -> impl Strategy<Value = String> {
    let order = (0..24u8).prop_map(|index| format!("o{index}"));
    let campaign = prop_oneof![Just("c0"), Just("c1")];
    let user = prop_oneof![Just("u0"), Just("u1"), Just("u2"), Just("u3"), Just("ver")];
    let outcome = prop_oneof![Just("delivered"), Just("voided"), Just("unknown")];
    prop_oneof![
        8 => (order.clone(), campaign.clone(), user).prop_map(|(o, c, u)| format!("claim {o} {c} {u}")),
        4 => (order.clone(), outcome).prop_map(|(o, s)| format!("settle {o} {s}")),
        1 => (order, 1..4u32).prop_map(|(o, n)| format!("attempt {o} {n}")),
        1 => campaign.prop_map(|c| format!("publish {c}")),
        2 => (1..40_000u64).prop_map(|step| format!("tick +{step}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// For any interleaving of claims, settlements, publications and days passing, no user
    /// and no local day holds more counted claims than its limit (`run` checks every invariant,
    /// the limits included, after every command), and replay and snapshots equal live state.
    #[test]
    fn claims_never_exceed_the_limits(lines in proptest::collection::vec(arb_campaign_line(), 1..120)) {
        let mut script = String::from(
            "campaign c0 GIFT 6 2 3 10 300000 ver 3600\ncampaign c1 GIFT 3 1 2 0 200000 ver -7200\n\
             claim v0 c0 ver\nsettle v0 delivered\npublish c0\n",
        );
        let mut clock_s = 1;
        for line in &lines {
            match line.strip_prefix("tick +") {
                Some(step) => {
                    clock_s += step.parse::<u64>().unwrap();
                    script.push_str(&format!("tick {clock_s}\n"));
                }
                None => {
                    script.push_str(line);
                    script.push('\n');
                }
            }
        }
        run(&script);
    }
}

// Random command sequences over a small universe of ids, so that repeats, conflicts, overdrafts,
// two-phase resolutions and chains collide often.
fn arb_account() -> impl Strategy<Value = String> {
    (0..6u8).prop_map(|index| format!("a{index}"))
}

fn arb_transfer() -> impl Strategy<Value = String> {
    let transfer_id = (0..40u8).prop_map(|index| format!("t{index}"));
    let value = 1..120u64;
    prop_oneof![
        (transfer_id.clone(), arb_account(), value.clone())
            .prop_map(|(t, a, v)| format!("deposit {t} {a} {v}")),
        (transfer_id.clone(), arb_account(), value.clone())
            .prop_map(|(t, a, v)| format!("withdraw {t} {a} {v}")),
        (
            transfer_id.clone(),
            arb_account(),
            arb_account(),
            value.clone()
        )
            .prop_filter("distinct accounts", |(_, a, b, _)| a != b)
            .prop_map(|(t, a, b, v)| format!("transfer {t} {a} {b} {v}")),
        (
            transfer_id.clone(),
            arb_account(),
            arb_account(),
            value.clone(),
            0..4u32
        )
            .prop_filter("distinct accounts", |(_, a, b, _, _)| a != b)
            .prop_map(|(t, a, b, v, timeout)| format!("pending {t} {a} {b} {v} {timeout}")),
        (
            transfer_id.clone(),
            transfer_id.clone(),
            proptest::option::of(value)
        )
            .prop_map(|(t, p, v)| match v {
                Some(v) => format!("post {t} {p} {v}"),
                None => format!("post {t} {p}"),
            }),
        (transfer_id.clone(), transfer_id).prop_map(|(t, p)| format!("void {t} {p}")),
    ]
}

fn arb_line() -> impl Strategy<Value = String> {
    let ledger = prop_oneof![Just("USD"), Just("EUR")];
    prop_oneof![
        2 => (arb_account(), ledger, any::<bool>())
            .prop_map(|(a, l, overdraft)| format!("open {a} {l}{}", if overdraft { " overdraft" } else { "" })),
        8 => arb_transfer(),
        1 => proptest::collection::vec(arb_transfer(), 1..4).prop_map(|chain| format!("linked {}", chain.join(", "))),
        1 => (1..3u64).prop_map(|step| format!("tick +{step}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every invariant holds after every command, replay and snapshots equal live state, and a
    /// retry of any decided command answers exactly as the first time and changes nothing.
    #[test]
    fn random_commands_keep_every_invariant(lines in proptest::collection::vec(arb_line(), 1..80)) {
        let mut clock_s = 1;
        let mut script = String::new();
        for line in &lines {
            if let Some(step) = line.strip_prefix("tick +") {
                clock_s += step.parse::<u64>().unwrap();
                script.push_str(&format!("tick {clock_s}\n"));
                continue;
            }
            let command = parse(line);
            if command.validate().is_ok() {
                script.push_str(line);
                script.push('\n');
            }
        }
        // `run` checks invariants after every command, then replay and snapshot equality.
        run(&script);

        // Retrying everything afterwards changes nothing and repeats every first answer.
        let mut ledger = Ledger::new();
        let mut events = Vec::new();
        let mut first_answers = Vec::new();
        ledger.begin_batch(1, &mut events);
        let commands: Vec<Command> = script.lines().filter(|line| !line.starts_with("tick")).map(parse).collect();
        for command in &commands {
            let mut replies = Vec::new();
            ledger.execute(command, &mut events, &mut replies);
            first_answers.push(replies);
        }
        let before = ledger.clone();
        let mut retry_events = Vec::new();
        for (command, first) in commands.iter().zip(&first_answers) {
            let mut replies = Vec::new();
            ledger.execute(command, &mut retry_events, &mut replies);
            for (again, first) in replies.iter().zip(first) {
                let same = match (again, first) {
                    (Reply::Transfer(again), Reply::Transfer(first)) => {
                        again.position == first.position && again.amount == first.amount && again.kind == first.kind && again.debit == first.debit
                    }
                    (Reply::Rejected { code, position, .. }, Reply::Rejected { code: first_code, position: first_position, .. }) => {
                        code == first_code && position == first_position
                    }
                    (Reply::Account { index, .. }, Reply::Account { index: first_index, .. }) => index == first_index,
                    // A command that conflicted at first may meet a later command with its id.
                    (_, Reply::Conflict) => true,
                    _ => false,
                };
                prop_assert!(same, "retry of {command:?} answered {again:?}, first {first:?}");
            }
        }
        prop_assert!(retry_events.is_empty(), "retries recorded {retry_events:?}");
        prop_assert_eq!(&ledger, &before);
    }
}
