//! Memory benchmark: heap bytes per account and per remembered transfer id of the ledger state.
//!
//! ```text
//! cargo run --release -p tally-engine --example memory -- --accounts 1000000 --transfers 10000000
//! ```
//!
//! It drives a [`tally_core::Ledger`] directly, with no I/O, the way the state thread does:
//! batches of about [`BATCH_COMMANDS`] commands, each started with `begin_batch` at a later
//! timestamp, whose events are dropped once the batch is done (the engine drops them once they
//! are written). A counting global allocator measures the live heap:
//!
//! 1. after `--accounts` accounts are created (minus the empty ledger): bytes per account;
//! 2. after `--transfers` transfers with unique ids (minus the state after funding every account
//!    with one deposit): bytes per remembered transfer id.
//!
//! Hash tables grow by doubling, so bytes per id depend on where the count falls relative to a
//! power-of-two table: the summary prints each table's fill next to the figures.
//!
//! The figures are bytes requested from the allocator; the "usable" figures are what glibc
//! actually handed out (`malloc_usable_size`), which adds rounding for small allocations such
//! as account id strings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tally_core::{Command, Event, Id, Ledger, LedgerCode, Reply, TransferBody, TransferCommand};

/// Commands per batch, as the engine's group commit forms them under load.
const BATCH_COMMANDS: usize = 8000;

/// What each account is funded with; transfers move at most [`TRANSFER_AMOUNT_MAX`], so no
/// transfer of a run of up to a few billion is refused for lack of funds.
const FUNDING_AMOUNT: u64 = 1 << 40;
const TRANSFER_AMOUNT_MAX: u64 = 100;

/// The limits the issue sets.
const ACCOUNT_BYTES_LIMIT: f64 = 256.0;
const TRANSFER_ID_BYTES_LIMIT: f64 = 64.0;

/// Counts the live heap, in bytes requested and in bytes glibc handed out, and the peak of each.
struct CountingAllocator;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES_PEAK: AtomicUsize = AtomicUsize::new(0);
static USABLE_BYTES: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn usable_size(pointer: *mut u8) -> usize {
    // SAFETY: `pointer` was returned by the system allocator (glibc malloc) and is still live.
    unsafe { libc::malloc_usable_size(pointer.cast()) }
}

fn count_alloc(size: usize, usable: usize) {
    let live = LIVE_BYTES.fetch_add(size, Ordering::Relaxed) + size;
    LIVE_BYTES_PEAK.fetch_max(live, Ordering::Relaxed);
    USABLE_BYTES.fetch_add(usable, Ordering::Relaxed);
}

fn count_dealloc(size: usize, usable: usize) {
    LIVE_BYTES.fetch_sub(size, Ordering::Relaxed);
    USABLE_BYTES.fetch_sub(usable, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc(layout);
        if !pointer.is_null() {
            count_alloc(layout.size(), usable_size(pointer));
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc_zeroed(layout);
        if !pointer.is_null() {
            count_alloc(layout.size(), usable_size(pointer));
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        count_dealloc(layout.size(), usable_size(pointer));
        System.dealloc(pointer, layout);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let usable_before = usable_size(pointer);
        let moved = System.realloc(pointer, layout, new_size);
        if !moved.is_null() {
            count_dealloc(layout.size(), usable_before);
            count_alloc(new_size, usable_size(moved));
        }
        moved
    }
}

#[derive(Clone, Copy)]
struct Heap {
    live_bytes: usize,
    usable_bytes: usize,
}

fn heap() -> Heap {
    Heap {
        live_bytes: LIVE_BYTES.load(Ordering::Relaxed),
        usable_bytes: USABLE_BYTES.load(Ordering::Relaxed),
    }
}

struct Args {
    accounts: u64,
    transfers: u64,
    seed: u64,
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("memory: {message}");
            eprintln!("usage: memory [--accounts N] [--transfers M] [--seed S]");
            std::process::exit(2);
        }
    };
    run(&args);
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        accounts: 1_000_000,
        transfers: 10_000_000,
        seed: 1,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        let number = value
            .replace('_', "")
            .parse::<u64>()
            .map_err(|error| format!("{flag} {value}: {error}"))?;
        match flag.as_str() {
            "--accounts" => args.accounts = number,
            "--transfers" => args.transfers = number,
            "--seed" => args.seed = number,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.accounts < 2 {
        return Err(
            "--accounts must be at least 2 (transfers go between distinct accounts)".into(),
        );
    }
    if args.transfers == 0 {
        return Err("--transfers must be at least 1".into());
    }
    Ok(args)
}

fn run(args: &Args) {
    let mut ledger = Ledger::new();
    let mut batches = Batches::default();
    let usd = LedgerCode::new("USD").expect("valid ledger code");
    let baseline = heap();

    let started = Instant::now();
    for index in 0..args.accounts {
        batches.execute(
            &mut ledger,
            Command::CreateAccount {
                id: account_id(index),
                ledger: usd.clone(),
                allow_overdraft: false,
            },
        );
    }
    batches.finish();
    let accounts_seconds = started.elapsed().as_secs_f64();
    let after_accounts = heap();

    for index in 0..args.accounts {
        let deposit = TransferBody::Deposit {
            account: account_id(index),
            amount: NonZeroU64::new(FUNDING_AMOUNT).expect("non-zero"),
        };
        batches.execute(&mut ledger, transfer(format!("d-{index:011}"), deposit));
    }
    batches.finish();
    let after_funding = heap();

    let mut random = SplitMix64(args.seed);
    let started = Instant::now();
    for index in 0..args.transfers {
        let from = random.below(args.accounts);
        let to = (from + 1 + random.below(args.accounts - 1)) % args.accounts;
        let body = TransferBody::Transfer {
            from: account_id(from),
            to: account_id(to),
            amount: NonZeroU64::new(1 + random.below(TRANSFER_AMOUNT_MAX)).expect("non-zero"),
            pending: None,
        };
        batches.execute(&mut ledger, transfer(format!("t-{index:011}"), body));
    }
    batches.finish();
    let transfers_seconds = started.elapsed().as_secs_f64();
    let after_transfers = heap();

    ledger
        .check_invariants()
        .expect("the ledger invariants hold after the run");
    assert_eq!(batches.refused, 0, "no command of the run is refused");
    assert_eq!(
        ledger.decided_count() as u64,
        args.accounts + args.transfers,
        "every deposit and transfer id is remembered"
    );

    let report = Report {
        args,
        ledger: &ledger,
        baseline,
        after_accounts,
        after_funding,
        after_transfers,
        accounts_seconds,
        transfers_seconds,
        batch_count: batches.count,
    };
    report.print();
}

fn account_id(index: u64) -> Id {
    Id::new(&format!("acct-{index:07}")).expect("valid account id")
}

fn transfer(id: String, body: TransferBody) -> Command {
    Command::Transfer(TransferCommand {
        id: Id::new(&id).expect("valid transfer id"),
        body,
    })
}

/// Feeds commands to the ledger in batches, as the state thread does, dropping each batch's
/// events and replies when it is done.
#[derive(Default)]
struct Batches {
    events: Vec<Event>,
    replies: Vec<Reply>,
    /// Commands in the batch in progress.
    size: usize,
    /// Batches started so far; also the timestamp of the latest, in nanoseconds.
    count: u64,
    /// Replies that were not a freshly created account or transfer.
    refused: u64,
}

impl Batches {
    fn execute(&mut self, ledger: &mut Ledger, command: Command) {
        if self.size == 0 {
            self.count += 1;
            ledger.begin_batch(self.count, &mut self.events);
        }
        ledger.execute(&command, &mut self.events, &mut self.replies);
        self.size += 1;
        if self.size == BATCH_COMMANDS {
            self.finish();
        }
    }

    fn finish(&mut self) {
        let refused = self.replies.iter().filter(|reply| {
            !matches!(
                reply,
                Reply::Account { created: true, .. }
                    | Reply::Transfer(tally_core::TransferReply { created: true, .. })
            )
        });
        self.refused += refused.count() as u64;
        // Drop the buffers, not just clear them: the engine hands each batch's events to the
        // writer, so their capacity is not part of the state.
        self.events = Vec::new();
        self.replies = Vec::new();
        self.size = 0;
    }
}

/// A small deterministic generator (SplitMix64), so runs are reproducible without a new crate.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`; the modulo bias is irrelevant here.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// The bucket count of a hashbrown table grown by inserting `items` one by one: the smallest
/// power of two (at least 4) whose 7/8 load limit holds them (hashbrown 0.16, `capacity_to_buckets`).
fn hashbrown_buckets(items: u64) -> u64 {
    match items {
        0 => 0,
        1..=3 => 4,
        4..=7 => 8,
        _ => (items * 8).div_ceil(7).next_power_of_two(),
    }
}

/// The capacity of a hashbrown table of `buckets` buckets.
fn hashbrown_capacity(buckets: u64) -> u64 {
    if buckets < 8 {
        buckets.saturating_sub(1)
    } else {
        buckets / 8 * 7
    }
}

/// The heap bytes of a hashbrown table: a slot and a control byte per bucket, plus one group
/// of trailing control bytes (16 with SSE2).
fn hashbrown_bytes(buckets: u64, slot_bytes: u64) -> u64 {
    if buckets == 0 {
        return 0;
    }
    buckets * slot_bytes + buckets + 16
}

struct Report<'a> {
    args: &'a Args,
    ledger: &'a Ledger,
    baseline: Heap,
    after_accounts: Heap,
    after_funding: Heap,
    after_transfers: Heap,
    accounts_seconds: f64,
    transfers_seconds: f64,
    batch_count: u64,
}

impl Report<'_> {
    fn print(&self) {
        let accounts = self.args.accounts;
        let transfers = self.args.transfers;
        let per = |after: Heap, before: Heap, count: u64| {
            (
                (after.live_bytes - before.live_bytes) as f64 / count as f64,
                (after.usable_bytes - before.usable_bytes) as f64 / count as f64,
            )
        };
        let (account_bytes, account_usable_bytes) =
            per(self.after_accounts, self.baseline, accounts);
        let (transfer_id_bytes, transfer_id_usable_bytes) =
            per(self.after_transfers, self.after_funding, transfers);

        // The account table holds the external account of USD too; the decided table holds
        // the funding deposits too.
        let account_items = self.ledger.account_count() as u64 - 1;
        let account_map_buckets = hashbrown_buckets(account_items);
        let account_vec_capacity = (account_items + 1).next_power_of_two().max(4);
        let account_slot_bytes = std::mem::size_of::<tally_core::Account>() as u64;
        let id_slot_bytes = 32; // A u128 key, 16-aligned, and a u32 index or a 16-byte `Decided`.
        let decided_items = self.ledger.decided_count() as u64;
        let decided_buckets = hashbrown_buckets(decided_items);
        let decided_before = hashbrown_buckets(accounts);
        let decided_table_bytes = hashbrown_bytes(decided_buckets, id_slot_bytes);
        let decided_growth_bytes =
            decided_table_bytes - hashbrown_bytes(decided_before, id_slot_bytes);

        println!("memory: {accounts} accounts, {transfers} transfers, {} batches of up to {BATCH_COMMANDS} commands", self.batch_count);
        println!(
            "  accounts:  {account_bytes:.1} bytes/account requested ({account_usable_bytes:.1} usable); limit {ACCOUNT_BYTES_LIMIT}; created in {:.2} s",
            self.accounts_seconds
        );
        println!(
            "    Vec<Account>: {account_slot_bytes} bytes/slot, {} of {account_vec_capacity} slots used ({:.0}% fill, assuming growth by doubling)",
            account_items + 1,
            fill(account_items + 1, account_vec_capacity)
        );
        println!(
            "    account_ids: {account_items} of capacity {} ({:.0}% of {account_map_buckets} buckets), {:.1} bytes/account; plus each id string on the heap",
            hashbrown_capacity(account_map_buckets),
            fill(account_items, account_map_buckets),
            hashbrown_bytes(account_map_buckets, id_slot_bytes) as f64 / account_items as f64
        );
        println!(
            "  transfers: {transfer_id_bytes:.1} bytes/transfer id requested ({transfer_id_usable_bytes:.1} usable); limit {TRANSFER_ID_BYTES_LIMIT}; executed in {:.2} s ({:.0} transfers/s)",
            self.transfers_seconds,
            transfers as f64 / self.transfers_seconds
        );
        println!(
            "    decided: {decided_items} ids ({accounts} deposits + {transfers} transfers) of capacity {} ({:.0}% of {decided_buckets} buckets), {:.1} bytes/id over the whole table; table growth during the transfers {:.1} bytes/transfer id",
            hashbrown_capacity(decided_buckets),
            fill(decided_items, decided_buckets),
            decided_table_bytes as f64 / decided_items as f64,
            decided_growth_bytes as f64 / transfers as f64
        );
        println!(
            "    a hashbrown table of 33-byte buckets costs 37.7 bytes/id when 7/8 full and 75.4 right after it doubles"
        );
        println!(
            "  heap: {:.1} MiB live at the end, {:.1} MiB peak (a table resize holds the old and the new table at once)",
            mib(self.after_transfers.live_bytes),
            mib(LIVE_BYTES_PEAK.load(Ordering::Relaxed))
        );
        let verdict = |value: f64, limit: f64| if value <= limit { "within" } else { "OVER" };
        println!(
            "  verdict: accounts {} the limit, transfer ids {} the limit",
            verdict(account_bytes, ACCOUNT_BYTES_LIMIT),
            verdict(transfer_id_bytes, TRANSFER_ID_BYTES_LIMIT)
        );
        println!(
            "{{\"accounts\":{accounts},\"transfers\":{transfers},\"bytes_per_account\":{account_bytes:.1},\"bytes_per_transfer_id\":{transfer_id_bytes:.1},\"usable_bytes_per_account\":{account_usable_bytes:.1},\"usable_bytes_per_transfer_id\":{transfer_id_usable_bytes:.1},\"account_ids_fill\":{:.3},\"decided_fill\":{:.3},\"peak_heap_bytes\":{}}}",
            fill(account_items, account_map_buckets) / 100.0,
            fill(decided_items, decided_buckets) / 100.0,
            LIVE_BYTES_PEAK.load(Ordering::Relaxed)
        );
    }
}

fn fill(items: u64, slots: u64) -> f64 {
    100.0 * items as f64 / slots as f64
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
