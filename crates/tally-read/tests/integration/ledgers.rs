//! Ledger totals and daily summaries: the counting rule, reopening, rebuilding, the format bump.

use redb::{ReadableDatabase, TableDefinition};
use tally_read::{DailyPage, Day, DaySummary, LedgerTotals, ProjectorStatus, ReadError, ReadModel};

use crate::support::*;

/// Nanoseconds in a UTC day.
const DAY_NS: u64 = 86_400 * 1_000_000_000;

fn day(text: &str) -> Day {
    Day::parse(text).unwrap()
}

fn summary(date: &str, transfers: u64, volume: u128) -> DaySummary {
    DaySummary {
        day: day(date),
        transfers,
        volume,
    }
}

/// Every day of `ledger` with a row, read page by page with `limit`; checks that pages chain.
fn all_days(model: &ReadModel, ledger: &str, limit: u32) -> Vec<DaySummary> {
    let mut days = Vec::new();
    let mut from = None;
    loop {
        let page = model
            .ledger_days(ledger, from, None, limit)
            .unwrap()
            .expect("the ledger exists");
        assert!(page.days.len() <= limit as usize);
        if let Some(next) = page.next {
            assert_eq!(
                page.days.len(),
                limit as usize,
                "only a full page has a next"
            );
            assert!(page.days.last().unwrap().day < next);
        }
        days.extend(page.days);
        match page.next {
            Some(next) => from = Some(next),
            None => return days,
        }
    }
}

/// The totals and every day of each ledger, for comparing two read models.
fn ledger_dump(model: &ReadModel, ledgers: &[&str]) -> String {
    let mut out = String::new();
    for ledger in ledgers {
        let totals = model.ledger_totals(ledger).unwrap();
        let days = totals.as_ref().map(|_| all_days(model, ledger, 2));
        out.push_str(&format!("{ledger}: {totals:?} {days:?}\n"));
    }
    out
}

/// Two ledgers over two UTC days, with every kind of event: deposits, withdrawals, transfers,
/// a refused withdrawal, and pending transfers that are posted in part, voided, expired and left
/// open.
fn two_days() -> Sim {
    let mut sim = Sim::new();
    // 1970-01-01, from 00:00:01.
    sim.batch(&[
        open("a", "USD"),
        open("b", "USD"),
        open("c", "USD"),
        open("e", "EUR"),
    ]);
    sim.batch(&[
        deposit("d1", "a", 100),
        deposit("d2", "b", 50),
        withdraw("w1", "b", 20),
        transfer("t1", "a", "b", 30),
        deposit("de", "e", 7),
        // Refused (insufficient funds): counts nowhere.
        withdraw("w2", "a", 1_000),
    ]);
    sim.batch(&[
        pending("p1", "a", "b", 40, 0),
        pending("p2", "a", "b", 10, 0),
        pending("p3", "b", "a", 5, 1),
    ]);
    sim
}

/// The second day of [`two_days`]: p3 expires at the batch's start, p1 is posted in part, p2
/// voided, p4 left open.
fn second_day(sim: &mut Sim) {
    sim.batch_after(
        DAY_NS,
        &[
            post("x1", "p1", Some(25)),
            void("v1", "p2"),
            transfer("t2", "b", "c", 5),
            pending("p4", "a", "c", 3, 0),
        ],
    );
}

fn usd_after_day_one() -> LedgerTotals {
    LedgerTotals {
        ledger: "USD".into(),
        accounts: 3,
        transfers: 4,
        volume: 200,
        deposited: 150,
        withdrawn: 20,
        pending: 3,
        pending_amount: 55,
    }
}

fn usd_after_day_two() -> LedgerTotals {
    LedgerTotals {
        // The partial post counts once with the 25 it posted; the void and the expiry do not.
        transfers: 6,
        volume: 230,
        pending: 1,
        pending_amount: 3,
        ..usd_after_day_one()
    }
}

fn eur() -> LedgerTotals {
    LedgerTotals {
        ledger: "EUR".into(),
        accounts: 1,
        transfers: 1,
        volume: 7,
        deposited: 7,
        withdrawn: 0,
        pending: 0,
        pending_amount: 0,
    }
}

/// The balances of `accounts` in the ledger core sum to what the ledger's totals say was
/// deposited less what was withdrawn.
#[track_caller]
fn assert_balances_sum(sim: &Sim, accounts: &[&str], totals: &LedgerTotals) {
    let sum: i128 = accounts.iter().map(|account| sim.balance(account)).sum();
    let net = i128::try_from(totals.deposited).unwrap() - i128::try_from(totals.withdrawn).unwrap();
    assert_eq!(sum, net, "balances of {accounts:?} against {totals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_and_days_count_what_posted_value() {
    let mut sim = two_days();
    let dir = dir();
    let model = project(&dir.path, &sim.log).await;
    assert_eq!(
        model.ledger_totals("USD").unwrap(),
        Some(usd_after_day_one())
    );
    assert_eq!(model.ledger_totals("EUR").unwrap(), Some(eur()));
    assert_balances_sum(&sim, &["a", "b", "c"], &usd_after_day_one());
    assert_eq!(all_days(&model, "USD", 31), [summary("1970-01-01", 4, 200)]);

    second_day(&mut sim);
    model.wait_for(sim.log.end(), WAIT).await.unwrap();
    let usd = model.ledger_totals("USD").unwrap().unwrap();
    assert_eq!(usd, usd_after_day_two());
    assert_balances_sum(&sim, &["a", "b", "c"], &usd);
    assert_eq!(model.ledger_totals("EUR").unwrap(), Some(eur()));
    assert_balances_sum(&sim, &["e"], &eur());
    let usd_days = [summary("1970-01-01", 4, 200), summary("1970-01-02", 2, 30)];
    assert_eq!(all_days(&model, "USD", 31), usd_days);
    // A ledger with nothing counted on the second day has no row for it.
    assert_eq!(all_days(&model, "EUR", 31), [summary("1970-01-01", 1, 7)]);
    // The days add up to the totals.
    let transfers: u64 = usd_days.iter().map(|day| day.transfers).sum();
    let volume: u128 = usd_days.iter().map(|day| day.volume).sum();
    assert_eq!((transfers, volume), (usd.transfers, usd.volume));
    // The pending transfers agree with the transfer lookups.
    assert_eq!(model.transfer("p1").unwrap().unwrap().status, "posted");
    assert_eq!(model.transfer("p2").unwrap().unwrap().status, "voided");
    assert_eq!(model.transfer("p3").unwrap().unwrap().status, "expired");
    assert_eq!(model.transfer("p4").unwrap().unwrap().status, "pending");

    // Unknown ledgers have neither.
    assert_eq!(model.ledger_totals("GBP").unwrap(), None);
    assert_eq!(model.ledger_days("GBP", None, None, 31).unwrap(), None);
    assert_eq!(model.ledger_totals("usd").unwrap(), None, "codes are exact");
    model.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_page_and_filter_by_date() {
    let mut sim = two_days();
    second_day(&mut sim);
    // A third counted day, after a day without anything.
    sim.batch_after(2 * DAY_NS, &[deposit("d3", "c", 9)]);
    let dir = dir();
    let model = project(&dir.path, &sim.log).await;
    let page = |from: Option<&str>, to: Option<&str>, limit| {
        model
            .ledger_days("USD", from.map(day), to.map(day), limit)
            .unwrap()
            .unwrap()
    };
    let all = [
        summary("1970-01-01", 4, 200),
        summary("1970-01-02", 2, 30),
        summary("1970-01-04", 1, 9),
    ];
    assert_eq!(
        page(None, None, 31),
        DailyPage {
            days: all.to_vec(),
            next: None
        }
    );
    // Pages of one: `next` is the next day with a row, which the page after starts with.
    assert_eq!(
        page(None, None, 1),
        DailyPage {
            days: all[..1].to_vec(),
            next: Some(day("1970-01-02"))
        }
    );
    assert_eq!(
        page(Some("1970-01-02"), None, 1),
        DailyPage {
            days: all[1..2].to_vec(),
            next: Some(day("1970-01-04"))
        }
    );
    assert_eq!(
        page(Some("1970-01-04"), None, 1),
        DailyPage {
            days: all[2..].to_vec(),
            next: None
        }
    );
    for limit in 1..=4 {
        assert_eq!(all_days(&model, "USD", limit), all, "pages of {limit}");
    }
    // Bounds are inclusive, and a full page whose range ends there has no next.
    assert_eq!(
        page(Some("1970-01-02"), Some("1970-01-02"), 1).days,
        &all[1..2]
    );
    assert_eq!(page(Some("1970-01-02"), Some("1970-01-02"), 1).next, None);
    assert_eq!(page(None, Some("1970-01-03"), 31).days, &all[..2]);
    assert_eq!(page(Some("1970-01-03"), None, 31).days, &all[2..]);
    assert_eq!(page(Some("1970-01-03"), Some("1970-01-03"), 31).days, []);
    assert_eq!(page(Some("2026-01-01"), None, 31).days, []);
    // Before 1970 nothing happened, and the range may start there.
    assert_eq!(page(Some("0000-01-01"), None, 31).days, all);
    assert_eq!(page(None, Some("1969-12-31"), 31).days, []);
    assert_eq!(page(Some("1969-01-01"), Some("1969-12-31"), 31).days, []);
    // A range the wrong way round is empty here (the HTTP layer refuses it).
    assert_eq!(page(Some("1970-01-04"), Some("1970-01-01"), 31).days, []);
    // The limit is clamped to 1..=366.
    assert_eq!(page(None, None, 0).days.len(), 1);
    assert_eq!(page(None, None, u32::MAX).days, all);
    model.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_survive_reopening_and_count_nothing_twice() {
    let mut sim = two_days();
    let dir = dir();
    project(&dir.path, &sim.log).await.shutdown();
    let reopened = start(&dir.path, &sim.log);
    assert_eq!(
        reopened.position(),
        sim.log.end(),
        "resumes at the checkpoint"
    );
    assert_eq!(
        reopened.ledger_totals("USD").unwrap(),
        Some(usd_after_day_one())
    );
    assert_eq!(
        all_days(&reopened, "USD", 31),
        [summary("1970-01-01", 4, 200)]
    );
    reopened.shutdown();

    // The second day projected after a restart adds to what was stored.
    second_day(&mut sim);
    let model = project(&dir.path, &sim.log).await;
    assert_eq!(
        model.ledger_totals("USD").unwrap(),
        Some(usd_after_day_two())
    );
    let expected = ledger_dump(&model, &["USD", "EUR"]);
    model.shutdown();

    // Transactions of three events, stopped and resumed over a growing log: the caches are
    // written back at every commit, so the figures are the same.
    let small_dir = self::dir();
    for count in 1..=sim.log.batch_count() {
        let log = sim.log.prefix(count);
        let model = start_small(&small_dir.path, &log);
        model.wait_for(log.end(), WAIT).await.unwrap();
        model.shutdown();
    }
    let model = start_small(&small_dir.path, &sim.log);
    assert_eq!(model.position(), sim.log.end());
    assert_eq!(ledger_dump(&model, &["USD", "EUR"]), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_gives_the_rows_of_the_live_projection() {
    let mut sim = two_days();
    second_day(&mut sim);
    let live_dir = dir();
    let live = project(&live_dir.path, &sim.log).await;
    let expected = ledger_dump(&live, &["USD", "EUR", "GBP"]);
    assert!(expected.contains("pending_amount: 3"), "{expected}");
    live.shutdown();

    let rebuilt_dir = dir();
    let offline = tally_offline::OfflineExecutor::default();
    let progress = offline.track(tally_read::REBUILD_JOB, "events").unwrap();
    let end = tally_read::rebuild(
        &rebuilt_dir.path,
        sim.log.reader(),
        sim.log.end(),
        &progress,
    )
    .unwrap();
    assert_eq!(end, sim.log.end());
    let rebuilt = start(&rebuilt_dir.path, &sim.log);
    assert_eq!(rebuilt.position(), sim.log.end());
    assert_eq!(ledger_dump(&rebuilt, &["USD", "EUR", "GBP"]), expected);
}

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEDGER_TOTALS: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_totals");
const LEDGER_DAYS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("ledger_days");

/// A file of format version 1 (no totals, no days) is rebuilt from the log rather than resumed
/// without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_the_previous_format_is_rebuilt() {
    let mut sim = two_days();
    second_day(&mut sim);
    let dir = dir();
    let model = project(&dir.path, &sim.log).await;
    let expected = ledger_dump(&model, &["USD", "EUR"]);
    model.shutdown();
    {
        let db = redb::Database::open(&dir.path).unwrap();
        let txn = db.begin_write().unwrap();
        assert_eq!(
            txn.open_table(META)
                .unwrap()
                .insert("format_version", 1)
                .unwrap()
                .map(|previous| previous.value()),
            Some(tally_read::limits::STORE_FORMAT_VERSION)
        );
        assert!(txn.delete_table(LEDGER_TOTALS).unwrap());
        assert!(txn.delete_table(LEDGER_DAYS).unwrap());
        txn.commit().unwrap();
    }
    assert_eq!(tally_read::limits::STORE_FORMAT_VERSION, 2);

    let model = project(&dir.path, &sim.log).await;
    assert_eq!(ledger_dump(&model, &["USD", "EUR"]), expected);
    model.shutdown();
    let db = redb::Database::open(&dir.path).unwrap();
    let version = db
        .begin_read()
        .unwrap()
        .open_table(META)
        .unwrap()
        .get("format_version")
        .unwrap()
        .map(|version| version.value());
    assert_eq!(version, Some(2), "the rebuilt file has the new format");
}

/// A damaged row is an error naming its table and key, never a panic or a wrong figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_rows_are_errors_naming_table_and_key() {
    let mut sim = two_days();
    let dir = dir();
    project(&dir.path, &sim.log).await.shutdown();
    {
        let db = redb::Database::open(&dir.path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(LEDGER_TOTALS)
            .unwrap()
            .insert("USD", [0xFF].as_slice())
            .unwrap();
        txn.open_table(LEDGER_DAYS)
            .unwrap()
            .insert(("EUR", 0), [1].as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let model = start(&dir.path, &sim.log);
    let error = model.ledger_totals("USD").unwrap_err();
    assert!(
        matches!(&error, ReadError::Corrupt { table: "ledger_totals", key, .. } if key == "USD"),
        "{error:?}"
    );
    let error = model.ledger_days("EUR", None, None, 31).unwrap_err();
    assert!(
        matches!(&error, ReadError::Corrupt { table: "ledger_days", key, .. } if key == "(EUR, 0)"),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("ledger_days row (EUR, 0) is corrupt"),
        "{error}"
    );
    // The rest of the file still answers.
    assert_eq!(model.ledger_totals("EUR").unwrap(), Some(eur()));
    assert_eq!(model.transfer("d1").unwrap().unwrap().amount, 100);

    // The fold stops at the damaged row rather than counting on from a wrong figure.
    let before = sim.log.end();
    sim.batch(&[deposit("d9", "a", 1)]);
    assert!(model.wait_for(sim.log.end(), WAIT).await.is_err());
    let ProjectorStatus::Failed { position, reason } = model.status() else {
        panic!("{:?}", model.status())
    };
    assert_eq!(position, before);
    assert!(
        reason.contains("ledger_totals row USD is corrupt"),
        "{reason}"
    );
}
