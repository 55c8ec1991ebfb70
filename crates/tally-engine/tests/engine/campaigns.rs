//! Campaigns through the engine: claims decided on the state thread hold their limits however
//! many clients claim at once, and campaigns and claims survive restarts.

use std::collections::HashMap;

use tally_core::ClaimState;
use tally_engine::{Answer, EngineHandle};
use tally_log::{MemStorage, Torn};

use crate::support::{execute, id, open_mem, run, shutdown};

/// Open for a century from the epoch, so that the system clock is inside the window.
const SETUP: &str = "
    campaign spring GIFT 1000 3 50 0 4000000000 ver
    claim v1 spring ver
    attempt v1 1
    settle v1 delivered
    publish spring
";

async fn claim(handle: &EngineHandle, order: &str, user: &str) -> Answer {
    let mut answers = execute(handle, &format!("claim {order} spring {user}")).await;
    assert_eq!(answers.len(), 1);
    answers.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_hold_under_64_concurrent_claimers() {
    let storage = MemStorage::new();
    let opened = open_mem(&storage);
    let handle = opened.engine.handle();
    let setup = run(&handle, SETUP).await;
    assert!(setup.ends_with("campaign spring live\n"), "{setup}");

    // 64 claimers over 32 users, 8 claims each: 512 tries for 32 × 3 per-user places and 50 a
    // day, so both limits bind.
    let claimers = (0..64).map(|claimer| {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for round in 0..8 {
                let user = format!("u{}", claimer % 32);
                let order = format!("o{claimer}-{round}");
                answers.push((user.clone(), claim(&handle, &order, &user).await));
            }
            answers
        })
    });
    let mut per_user: HashMap<String, u64> = HashMap::new();
    let mut per_day: HashMap<i32, u64> = HashMap::new();
    let mut refusals: HashMap<&'static str, u64> = HashMap::new();
    for claimer in claimers {
        for (user, answer) in claimer.await.unwrap() {
            match answer {
                Answer::Claim { view, created } => {
                    assert!(created);
                    assert_eq!(view.state, ClaimState::PendingDelivery);
                    assert_eq!(view.user.as_str(), user);
                    *per_user.entry(user).or_insert(0) += 1;
                    *per_day.entry(view.day).or_insert(0) += 1;
                }
                Answer::Refused(code) => *refusals.entry(code.as_str()).or_insert(0) += 1,
                other => panic!("unexpected answer {other:?}"),
            }
        }
    }
    assert!(per_user.values().all(|count| *count <= 3), "{per_user:?}");
    // The verification claim counts on its day too.
    let verification_day = handle.claim(id("v1")).await.unwrap().unwrap().day;
    *per_day.entry(verification_day).or_insert(0) += 1;
    assert!(per_day.values().all(|count| *count <= 50), "{per_day:?}");
    let accepted: u64 = per_user.values().sum();
    assert_eq!(accepted + refusals.values().sum::<u64>(), 512);
    assert!(
        refusals
            .keys()
            .all(|code| ["per_user_limit_reached", "daily_limit_reached"].contains(code)),
        "{refusals:?}"
    );
    if per_day.len() == 1 {
        // Not across midnight: the day's limit was reached exactly.
        assert_eq!(accepted + 1, 50);
    }
    let campaign = handle.campaign(id("spring")).await.unwrap().unwrap();
    assert_eq!(campaign.available, 1000 - 1 - accepted as i128);
    shutdown(opened.engine).await.unwrap();
}

const HISTORY: &str = "
    campaign spring GIFT 10 2 5 0 4000000000 ver 7200
    claim v1 spring ver
    attempt v1 1
    settle v1 delivered
    publish spring
    claim o1 spring alice
    claim o2 spring alice
    attempt o1 1
    attempt o1 2
    settle o1 unknown
    settle o2 voided
";

async fn state(handle: &EngineHandle) -> String {
    let mut out = format!("{:?}\n", handle.campaign(id("spring")).await.unwrap());
    for order in ["v1", "o1", "o2", "o3"] {
        out.push_str(&format!("{:?}\n", handle.claim(id(order)).await.unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn campaigns_and_claims_survive_a_restart_from_the_snapshot_and_from_the_log() {
    for crash in [false, true] {
        let storage = MemStorage::new();
        let opened = open_mem(&storage);
        let handle = opened.engine.handle();
        run(&handle, HISTORY).await;
        let before = state(&handle).await;
        assert!(before.contains("state: Live"), "{before}");
        assert!(before.contains("attempts: 2"), "{before}");
        let image = if crash {
            let image = storage.crash_image(Torn::Nothing);
            drop(opened);
            image
        } else {
            shutdown(opened.engine).await.unwrap();
            storage
        };
        let reopened = open_mem(&image);
        assert_eq!(reopened.recovery.snapshot_position.is_none(), crash);
        let handle = reopened.engine.handle();
        assert_eq!(state(&handle).await, before, "crash: {crash}");
        // Retries answer from the recovered state, and the limits go on from it: alice holds one
        // counted claim (o1; o2 was voided), so one more fits and a third does not.
        assert_eq!(
            run(&handle, "claim o1 spring alice\nsettle o2 voided\nclaim o3 spring alice\nclaim o4 spring alice").await,
            "claim o1 spring alice: claim o1 unknown_needs_reconciliation attempts 2 (again)\n\
             settle o2 voided: claim o2 voided attempts 0 (again)\n\
             claim o3 spring alice: claim o3 pending_delivery attempts 0\n\
             claim o4 spring alice: refused per_user_limit_reached\n"
        );
        shutdown(reopened.engine).await.unwrap();
    }
}
