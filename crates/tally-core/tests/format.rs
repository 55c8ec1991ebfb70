//! The event encoding is persisted: these bytes were written by format version 1 and must
//! decode to the same events in every later release. Never edit the expected bytes; add a new
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
