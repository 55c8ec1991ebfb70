//! Commands through the handle: answers and account views.

use tally_engine::{Answer, Detail};
use tally_log::MemStorage;

use crate::support::{accounts, commands, describe_all, open_mem, run, shutdown};

const SCRIPT: &str = "
    open a USD
    open b USD
    open o USD overdraft
    open e EUR
    deposit d1 a 100
    transfer t1 a b 30
    transfer t2 a b 1000       # more than a holds
    transfer t3 a e 1          # across ledgers
    withdraw w1 b 5
    deposit d2 nobody 1
    pending p1 a b 20
    post x1 p1 15
    post x2 p1                 # already posted
    pending p2 a b 10
    void v1 p2
    post x3 t1                 # not a pending transfer
    pending p3 a b 5
    post x4 p3 6               # more than reserved
    linked transfer l1 a b 5, transfer l2 b o 100
    linked transfer l3 a b 5, transfer l4 b o 10
    withdraw w2 o 50           # overdraft allowed
    open a USD                 # the same account again
    open a EUR                 # the same id, another body
    deposit d1 a 100           # a retry
    deposit d1 a 99            # the same id, another body
    transfer t2 a b 1000       # a retry of a refusal
    transfer t9 a a 1          # malformed
";

#[tokio::test(flavor = "multi_thread")]
async fn commands_get_their_answers_and_accounts_reflect_them() {
    let storage = MemStorage::new();
    let opened = open_mem(&storage);
    let handle = opened.engine.handle();
    assert!(handle.is_ready());

    let out = run(&handle, SCRIPT).await;
    assert_eq!(out, EXPECTED_ANSWERS, "\n{out}");
    let out = accounts(&handle, &["a", "b", "o", "e", "nobody"]).await;
    assert_eq!(out, EXPECTED_ACCOUNTS, "\n{out}");
    assert_eq!(
        handle.durable_position(),
        23,
        "duplicates, conflicts and invalid commands record nothing"
    );
    assert_eq!(handle.queued_commands(), 0);
    shutdown(opened.engine).await.unwrap();
}

const EXPECTED_ANSWERS: &str = "\
open a USD: account a created
open b USD: account b created
open o USD overdraft: account o created
open e EUR: account e created
deposit d1 a 100: deposit created @4 amount 100 USD ext->a
transfer t1 a b 30: transfer created @5 amount 30 USD a->b
transfer t2 a b 1000: rejected insufficient_funds @6
transfer t3 a e 1: rejected ledger_mismatch @7
withdraw w1 b 5: withdrawal created @8 amount 5 USD b->ext
deposit d2 nobody 1: rejected not_found @9
pending p1 a b 20: pending created @10 amount 20 USD a->b
post x1 p1 15: post created @11 amount 15 USD a->b
post x2 p1: rejected already_resolved @12
pending p2 a b 10: pending created @13 amount 10 USD a->b
void v1 p2: void created @14 amount 10 USD a->b
post x3 t1: rejected not_pending @15
pending p3 a b 5: pending created @16 amount 5 USD a->b
post x4 p3 6: rejected exceeds_pending_amount @17
linked transfer l1 a b 5, transfer l2 b o 100: rejected linked_failed @18, rejected insufficient_funds @19
linked transfer l3 a b 5, transfer l4 b o 10: transfer created @20 amount 5 USD a->b, transfer created @21 amount 10 USD b->o
withdraw w2 o 50: withdrawal created @22 amount 50 USD o->ext
open a USD: account a exists
open a EUR: conflict
deposit d1 a 100: deposit duplicate @4 amount 100 USD ext->a
deposit d1 a 99: conflict
transfer t2 a b 1000: rejected insufficient_funds @6 (again)
transfer t9 a a 1: invalid: a transfer needs two different accounts, found \"a\" on both sides
";

// `version` counts events that changed the account: a post is one, though it both releases
// the reservation and posts the amount.
const EXPECTED_ACCOUNTS: &str = "\
a: USD balance 50 debits 50 credits 100 pending -5 +0 v9
b: USD balance 35 debits 15 credits 50 pending -0 +5 v10
o: USD balance -40 debits 50 credits 10 pending -0 +0 v3 overdraft
e: EUR balance 0 debits 0 credits 0 pending -0 +0 v1
nobody: none
";

/// One request with many commands answers them in order, one answer per transfer of a chain;
/// compact answers leave the account ids out.
#[tokio::test(flavor = "multi_thread")]
async fn one_request_answers_every_command_in_order() {
    let storage = MemStorage::new();
    let opened = open_mem(&storage);
    let handle = opened.engine.handle();
    let script = "
        open a USD
        open b USD
        deposit d1 a 10
        linked transfer t1 a b 4, transfer t2 b a 1, withdraw w1 a 2
        transfer t3 a b 100
    ";
    let answers = handle.execute(commands(script), Detail::Compact).await;
    assert_eq!(
        describe_all(&answers),
        "account a created, account b created, deposit created @2 amount 10, \
         transfer created @3 amount 4, transfer created @4 amount 1, \
         withdrawal created @5 amount 2, rejected insufficient_funds @6"
    );
    let answers = answers.unwrap();
    assert!(answers.iter().all(|answer| !matches!(
        answer,
        Answer::Transfer {
            detail: Some(_),
            ..
        }
    )));
    assert_eq!(
        accounts(&handle, &["a", "b"]).await,
        "a: USD balance 5 debits 6 credits 11 pending -0 +0 v5\n\
         b: USD balance 3 debits 1 credits 4 pending -0 +0 v3\n"
    );
    shutdown(opened.engine).await.unwrap();
}
