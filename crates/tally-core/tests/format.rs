//! The event encoding is persisted: these bytes were written by format version 1 (and, for
//! the campaign events, by the release that added them) and must decode to the same events in
//! every later release. Never edit the expected bytes; add a new
//! version instead.

use tally_core::{
    decode_events, encode_events, Event, Id, LedgerCode, RejectCode, TransferEvent, TransferKind,
};

fn events() -> Vec<Event> {
    let id = |text: &str| Id::new(text).unwrap();
    let transfer = |name: &str, kind, amount| {
        Event::Transfer(TransferEvent {
            id: id(name),
            body_hash: 0x0102_0304_0506_0708,
            kind,
            debit: 1,
            credit: 300,
            amount,
        })
    };
    vec![
        Event::AccountCreated {
            id: id("alice"),
            ledger: LedgerCode::new("USD").unwrap(),
            allow_overdraft: true,
        },
        transfer("d1", TransferKind::Deposit, 1),
        transfer("w1", TransferKind::Withdrawal, 127),
        transfer("t1", TransferKind::Transfer, 128),
        transfer(
            "p1",
            TransferKind::Pending {
                expires_at_ns: 1_000_000_000,
            },
            300,
        ),
        transfer("x1", TransferKind::Post { pending: 4 }, 5),
        transfer("v1", TransferKind::Void { pending: 4 }, 6),
        Event::Rejected {
            id: id("r1"),
            body_hash: u64::MAX,
            code: RejectCode::LinkedFailed,
        },
        Event::Expired { pending: 4 },
    ]
}

const VERSION_1: &str = "0105616c69636503555344010202643108070605040302010101ac02010202773108070605040302010201ac027f0202743108070605040302010301ac0280010202703108070605040302010401ac02ac028094ebdc030202783108070605040302010501ac0205040202763108070605040302010601ac02060403027231ffffffffffffffff080404";

#[test]
fn version_1_event_bytes_still_decode() {
    let bytes: Vec<u8> = (0..VERSION_1.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&VERSION_1[index..index + 2], 16).unwrap())
        .collect();
    assert_eq!(decode_events(&bytes, 9).unwrap(), events());
    assert_eq!(
        encode_events(&events()),
        bytes,
        "the encoder must still write version 1"
    );
}

fn campaign_events() -> Vec<Event> {
    let id = |text: &str| Id::new(text).unwrap();
    vec![
        Event::CampaignDefined(Box::new(tally_core::CampaignDefinition {
            id: id("spring"),
            gift_ledger: LedgerCode::new("GIFT").unwrap(),
            inventory: 300,
            per_user_limit: 3,
            daily_limit: 200,
            starts_at_ns: 1_000,
            ends_at_ns: 2_000_000,
            verification_account: id("ver"),
            offsets: vec![
                tally_core::OffsetChange {
                    from_ns: 1_000,
                    offset_seconds: 3600,
                },
                tally_core::OffsetChange {
                    from_ns: 5_000,
                    offset_seconds: -18_000,
                },
            ],
            spec: b"{}".to_vec(),
        })),
        Event::CampaignPublished {
            campaign: id("spring"),
        },
        Event::ClaimRecorded {
            order_id: id("o1"),
            campaign: 2,
            pending: 300,
        },
        Event::ClaimSettled {
            order_id: id("o1"),
            outcome: tally_core::ClaimState::Voided,
        },
        Event::ClaimAttempted {
            order_id: id("o1"),
            attempt: 129,
        },
    ]
}

/// Tags 6–10, added for campaigns: pinned from their first release on.
const CAMPAIGN_EVENTS: &str = "0606737072696e670447494654ac0203c801e80780897a0376657202e807a03888279f9902027b7d0706737072696e6708026f3102ac0209026f31020a026f318101";

#[test]
fn campaign_event_bytes_still_decode() {
    let bytes: Vec<u8> = (0..CAMPAIGN_EVENTS.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&CAMPAIGN_EVENTS[index..index + 2], 16).unwrap())
        .collect();
    assert_eq!(decode_events(&bytes, 5).unwrap(), campaign_events());
    assert_eq!(encode_events(&campaign_events()), bytes);
}

/// Tag 11, added for the delivery worker's durable retry queue: pinned from its first release.
const ATTEMPT_ENDED_EVENT: &str = "0b026f31810103";

#[test]
fn attempt_ended_event_bytes_still_decode() {
    let event = Event::ClaimAttemptEnded {
        order_id: Id::new("o1").unwrap(),
        attempt: 129,
        read_timeouts: 3,
    };
    let bytes: Vec<u8> = (0..ATTEMPT_ENDED_EVENT.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&ATTEMPT_ENDED_EVENT[index..index + 2], 16).unwrap())
        .collect();
    assert_eq!(decode_events(&bytes, 1).unwrap(), vec![event.clone()]);
    assert_eq!(encode_events(&[event]), bytes);
}
