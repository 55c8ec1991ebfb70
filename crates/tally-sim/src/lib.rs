//! Deterministic simulation of the Tally engine, in the manner of TigerBeetle's VOPR and
//! FoundationDB's simulator.
//!
//! One seed drives everything: the clients' commands and retries, when the engine decides and
//! commits batches (through [`tally_engine::Stepper`], the production pipeline run step by
//! step), the simulated clock, the faults of the simulated disk ([`disk`]), crashes, restarts
//! and snapshots. The engine code is the production code; only the clock and the storage are
//! simulated, through the interfaces the engine uses in production ([`tally_engine::Clock`],
//! [`tally_log::Storage`]). A failing seed therefore fails the same way every time:
//! [`Failure`] prints the command that replays it.
//!
//! After every step the simulator checks the ledger invariants (per-ledger balances sum to
//! zero, no account below zero without overdraft, pending amounts match); after every restart,
//! every few steps and at the end it also checks that every acknowledged command is in the
//! state with the answer it was given, exactly once in the log, and that replaying the log
//! from position zero gives the live state.
#![deny(missing_docs)]

mod clients;
pub mod disk;

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tally_core::{decode_events, Event, Id, Ledger};
use tally_engine::{replay_batch, EngineConfig, EngineError, Stepper};
use tally_log::{LogError, LogOptions, Torn};

use crate::clients::{Client, InFlight, Model, Poll, Told};
use crate::disk::{BitFlip, FaultCounts, FaultRates, SimClock, SimDisk};

/// 2026-01-01T00:00:00Z: where every simulated clock starts.
const EPOCH_NS: u64 = 1_767_225_600_000_000_000;
/// Small segments, so that runs roll segments often.
const SEGMENT_BYTES: u64 = 8 * 1024;
/// Steps the drain at the end may take before the run counts as stuck.
const DRAIN_STEPS_MAX: u64 = 20_000;
/// Notable events kept for a failure's report.
const TRACE_LINES: usize = 40;

/// What a run does.
#[derive(Clone, Debug)]
pub struct Options {
    /// Steps before the drain that lets every client finish.
    pub steps: u64,
    /// Simulated clients.
    pub clients: usize,
    /// Disk fault rates while the run goes on.
    pub faults: FaultRates,
    /// Chance per step of a crash, in parts per million.
    pub crash_per_million: u32,
    /// Chance per crash that a bit flips in synced data, in percent.
    pub bit_flip_percent: u32,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            steps: 2_000,
            clients: 6,
            faults: FaultRates {
                io_error: 1_500,
                disk_full: 1_000,
                short_read: 2_000,
                slow_sync: 10_000,
                power_cut: 2_000,
            },
            crash_per_million: 4_000,
            bit_flip_percent: 20,
        }
    }
}

/// What a run did, for the summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Steps taken, drain included.
    pub steps: u64,
    /// Requests sent, retries included.
    pub requests: u64,
    /// Requests sent again with the same ids.
    pub retries: u64,
    /// Commands acknowledged (transfers and accounts).
    pub acknowledged: u64,
    /// Crashes (random, after power cuts, and of a failed engine).
    pub crashes: u64,
    /// Processes that exited (after an I/O error) and started again, the machine staying up.
    pub process_restarts: u64,
    /// Clean shutdowns followed by a restart.
    pub clean_restarts: u64,
    /// Snapshots written.
    pub snapshots: u64,
    /// Starts refused because a flipped bit was found (then repaired and started again).
    pub corruption_detected: u64,
    /// Checks that the replayed log equals the live state.
    pub replay_checks: u64,
    /// Disk faults injected.
    pub faults: FaultCounts,
    /// The log's end position.
    pub final_position: u64,
    /// A digest of every answer and position, equal for equal runs.
    pub digest: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} steps={} requests={} retries={} acknowledged={} crashes={} process_restarts={} \
             clean_restarts={} snapshots={} replay_checks={} position={} {} corruption_detected={} \
             digest={:016x}",
            self.seed,
            self.steps,
            self.requests,
            self.retries,
            self.acknowledged,
            self.crashes,
            self.process_restarts,
            self.clean_restarts,
            self.snapshots,
            self.replay_checks,
            self.final_position,
            self.faults,
            self.corruption_detected,
            self.digest,
        )
    }
}

/// The sums over many runs, for `tally simulate`'s summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Runs that passed.
    pub seeds: u64,
    /// Runs that failed.
    pub failed: u64,
    /// The sums of the passed runs' reports (`seed`, `final_position` and `digest` unused).
    pub totals: Report,
}

impl Summary {
    /// Adds a passed run.
    pub fn add(&mut self, report: &Report) {
        let totals = &mut self.totals;
        self.seeds += 1;
        totals.steps += report.steps;
        totals.requests += report.requests;
        totals.retries += report.retries;
        totals.acknowledged += report.acknowledged;
        totals.crashes += report.crashes;
        totals.process_restarts += report.process_restarts;
        totals.clean_restarts += report.clean_restarts;
        totals.snapshots += report.snapshots;
        totals.corruption_detected += report.corruption_detected;
        totals.replay_checks += report.replay_checks;
        totals.faults += report.faults;
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let totals = &self.totals;
        write!(
            f,
            "seeds={} failed={} steps={} requests={} retries={} acknowledged={} crashes={} \
             process_restarts={} clean_restarts={} snapshots={} replay_checks={} {} \
             corruption_detected={}",
            self.seeds,
            self.failed,
            totals.steps,
            totals.requests,
            totals.retries,
            totals.acknowledged,
            totals.crashes,
            totals.process_restarts,
            totals.clean_restarts,
            totals.snapshots,
            totals.replay_checks,
            totals.faults,
            totals.corruption_detected,
        )
    }
}

/// A run that broke a promise, with how to replay it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// The steps the run was asked for.
    pub steps: u64,
    /// The step at which the check failed.
    pub step: u64,
    /// What failed.
    pub message: String,
    /// The last notable events before the failure (crashes, faults, restarts), oldest first.
    pub trace: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} failed at step {}: {}\n  replay it with: tally simulate --seed {} --steps {}",
            self.seed, self.step, self.message, self.seed, self.steps
        )?;
        if !self.trace.is_empty() {
            write!(f, "\n  last events:")?;
            for line in &self.trace {
                write!(f, "\n    {line}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

/// Runs one simulation. Equal seeds and options give equal runs.
pub fn run(seed: u64, options: &Options) -> Result<Report, Failure> {
    let mut sim = Sim::new(seed, options.clone());
    let outcome = sim.restart().and_then(|()| sim.run());
    match outcome {
        Ok(()) => Ok(sim.report),
        Err(message) => Err(Failure {
            seed,
            steps: options.steps,
            step: sim.step,
            message,
            trace: sim.trace.into(),
        }),
    }
}

struct Sim {
    options: Options,
    rng: ChaCha8Rng,
    clock: SimClock,
    disk: SimDisk,
    config: EngineConfig,
    /// `None` between a crash and the restart.
    stepper: Option<Stepper>,
    clients: Vec<Client>,
    model: Model,
    report: Report,
    step: u64,
    /// The log replayed by the checks, and the command ids it records.
    replica: Ledger,
    recorded: BTreeSet<Id>,
    /// The last [`TRACE_LINES`] notable events, for a failure's report.
    trace: VecDeque<String>,
}

impl Sim {
    fn new(seed: u64, options: Options) -> Sim {
        let rng = ChaCha8Rng::seed_from_u64(seed);
        // The disk draws its faults from a stream of its own, so that adding a decision to the
        // simulator does not shift every fault of every seed.
        let mut disk_rng = rng.clone();
        disk_rng.set_stream(1);
        let clock = SimClock::new(EPOCH_NS);
        let disk = SimDisk::new(disk_rng, options.faults, clock.clone());
        let mut config = EngineConfig::new(PathBuf::from("/sim/data"));
        config.clock = Arc::new(clock.clone());
        config.snapshot_interval_events = 0;
        config.log_options = LogOptions {
            segment_bytes_max: SEGMENT_BYTES,
        };
        let clients = (0..options.clients).map(|_| Client::default()).collect();
        Sim {
            options,
            rng,
            clock,
            disk,
            config,
            stepper: None,
            clients,
            model: Model::default(),
            report: Report {
                seed,
                digest: 0xcbf2_9ce4_8422_2325,
                ..Report::default()
            },
            step: 0,
            replica: Ledger::new(),
            recorded: BTreeSet::new(),
            trace: VecDeque::new(),
        }
    }

    fn note(&mut self, event: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("step {}: {event}", self.step));
    }

    fn run(&mut self) -> Result<(), String> {
        while self.step < self.options.steps {
            self.step += 1;
            self.random_step(true)?;
            self.check_step()?;
        }
        self.drain()?;
        self.report.steps = self.step;
        self.report.faults = self.disk.counts();
        Ok(())
    }

    /// Lets every client finish without faults or crashes, then checks everything, restarts
    /// cleanly and checks again.
    fn drain(&mut self) -> Result<(), String> {
        self.disk.set_rates(FaultRates::NONE);
        if self.stepper.is_none() || self.stepper().failure().is_some() || self.disk.powered_off() {
            self.crash()?;
        }
        let started = self.step;
        while self.clients.iter().any(|client| client.in_flight.is_some()) {
            if self.step - started > DRAIN_STEPS_MAX {
                return Err("clients still wait for answers after the drain".into());
            }
            self.step += 1;
            self.random_step(false)?;
            self.check_step()?;
        }
        while self.stepper().commit() {}
        self.check_acknowledged()?;
        self.check_replay(false)?;
        self.clean_restart()?;
        let unanswered: Vec<_> = self
            .model
            .sent
            .iter()
            .filter(|id| {
                !self.model.transfers.contains_key(*id)
                    && !self.model.accounts.contains(*id)
                    && !self.model.campaign_answered.contains(*id)
            })
            .collect();
        if let Some(id) = unanswered.first() {
            return Err(format!(
                "{} commands were never answered, such as {id:?}",
                unanswered.len()
            ));
        }
        self.report.final_position = self.stepper().durable_position();
        Ok(())
    }

    fn stepper(&mut self) -> &mut Stepper {
        self.stepper.as_mut().expect("the engine runs")
    }

    /// One step: the clock moves, then one thing happens.
    fn random_step(&mut self, chaos: bool) -> Result<(), String> {
        self.clock.advance(self.rng.random_range(0..2_000_000));
        self.poll_clients()?;
        if chaos {
            let failed = self.stepper().failure().is_some();
            // A failed engine, or one that lost its disk, is restarted by its supervisor soon.
            if self.disk.powered_off()
                || self.rng.random_range(0..1_000_000) < self.options.crash_per_million
            {
                return self.crash();
            }
            // The process of a failed engine exits and its supervisor starts a new one: the
            // machine stays up, and so does what the kernel holds of the disk.
            if failed && self.rng.random_bool(0.2) {
                return self.process_restart();
            }
            if self.rng.random_range(0..1_000) < 2 {
                return self.clean_restart();
            }
        }
        match self.rng.random_range(0..100) {
            0..35 if chaos => self.send_new(),
            0..35 => {}
            35..65 => {
                let requests = self.rng.random_range(0..=8);
                self.stepper().decide(requests);
            }
            65..95 => {
                let before = self.stepper().failure();
                self.stepper().commit();
                if before.is_none() {
                    if let Some(failure) = self.stepper().failure() {
                        self.note(format!("engine failed: {failure}"));
                    }
                }
            }
            95..98 => self
                .clock
                .advance(self.rng.random_range(500_000_000..8_000_000_000)),
            _ => match self.stepper().snapshot() {
                Ok(position) => {
                    self.report.snapshots += 1;
                    self.note(format!("snapshot at {position}"));
                }
                Err(error) => self.note(format!("snapshot failed: {error}")),
            },
        }
        Ok(())
    }

    /// A client with nothing in flight sends a new request.
    fn send_new(&mut self) {
        let index = self.rng.random_range(0..self.clients.len());
        if self.clients[index].in_flight.is_some() {
            return;
        }
        let commands = self.clients[index].new_request(index, &mut self.rng, &self.model);
        self.model.sent(&commands);
        self.clients[index].in_flight = Some(InFlight {
            commands,
            tickets: Vec::new(),
            deadline_ns: 0,
        });
        self.send(index);
    }

    /// Sends client `index`'s request (again).
    fn send(&mut self, index: usize) {
        let timeout_ns = self.rng.random_range(50_000_000..2_000_000_000);
        let now_ns = tally_engine::Clock::now_ns(&self.clock);
        let commands = self.clients[index]
            .in_flight
            .as_ref()
            .expect("a request in flight")
            .commands
            .clone();
        let first = self.clients[index]
            .in_flight
            .as_ref()
            .is_some_and(|in_flight| in_flight.deadline_ns == 0);
        self.report.requests += 1;
        self.report.retries += u64::from(!first);
        let ticket = self
            .stepper
            .as_mut()
            .map(|stepper| stepper.submit(commands));
        let in_flight = self.clients[index].in_flight.as_mut().expect("in flight");
        in_flight.deadline_ns = now_ns + timeout_ns;
        if let Some(Ok(ticket)) = ticket {
            in_flight.tickets.push(ticket);
        }
    }

    /// Collects answers; clients whose attempts are lost or overdue send again.
    fn poll_clients(&mut self) -> Result<(), String> {
        let now_ns = tally_engine::Clock::now_ns(&self.clock);
        for index in 0..self.clients.len() {
            let Some(in_flight) = self.clients[index].in_flight.as_mut() else {
                continue;
            };
            match in_flight.poll() {
                Poll::Answered(answers) => {
                    let in_flight = self.clients[index].in_flight.take().expect("in flight");
                    self.model.answered(&in_flight.commands, &answers)?;
                    self.report.acknowledged += answers.len() as u64;
                    for answer in &answers {
                        self.digest(format!("{answer:?}").as_bytes());
                    }
                }
                Poll::Lost if self.stepper.is_some() => self.send(index),
                Poll::Waiting if now_ns > in_flight.deadline_ns => self.send(index),
                Poll::Lost | Poll::Waiting => {}
            }
        }
        Ok(())
    }

    fn digest(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.report.digest =
                (self.report.digest ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }

    /// The process dies: queued and staged work is lost, the disk keeps what a crash leaves.
    fn crash(&mut self) -> Result<(), String> {
        self.report.crashes += 1;
        self.stepper = None;
        let torn = match self.rng.random_range(0..3) {
            0 => Torn::Nothing,
            1 => Torn::Prefix(self.rng.random_range(1..4096)),
            _ => Torn::Zeros(self.rng.random_range(1..4096)),
        };
        let faults = self.disk.counts();
        self.disk.crash(torn);
        let flip = (self.rng.random_range(0..100) < self.options.bit_flip_percent)
            .then(|| self.disk.flip_bit(&mut self.rng))
            .flatten();
        self.note(format!(
            "crash ({torn:?}, flip {flip:?}); faults so far {faults:?}"
        ));
        self.restart_after(flip)
    }

    /// The process dies and starts again; the disk keeps everything, synced or not.
    fn process_restart(&mut self) -> Result<(), String> {
        self.report.process_restarts += 1;
        self.stepper = None;
        self.note("process restart".into());
        self.restart()
    }

    /// A clean stop (final snapshot), then a start.
    fn clean_restart(&mut self) -> Result<(), String> {
        let stepper = self.stepper.take().expect("the engine runs");
        let rates = self.disk.set_rates(FaultRates::NONE);
        let stopped = stepper.shutdown();
        self.disk.set_rates(rates);
        match stopped {
            Ok(()) => self.report.clean_restarts += 1,
            Err(error) => {
                // A failed engine cannot stop cleanly; it is restarted as after a crash.
                self.report.crashes += 1;
                self.digest(error.to_string().as_bytes());
                self.disk.crash(Torn::Nothing);
            }
        }
        self.restart()
    }

    fn restart(&mut self) -> Result<(), String> {
        self.restart_after(None)
    }

    /// Starts the engine on the disk as it is. Injected faults may make a start fail; the
    /// supervisor then tries again, and after a few failures starts without faults (the disk was
    /// replaced). A flipped bit must either stop the start with a corruption error, then be
    /// repaired, or be harmless (in a snapshot, or in history a snapshot covers). The start that
    /// finds the flip may be the first without faults, so one more start follows it.
    fn restart_after(&mut self, flip: Option<BitFlip>) -> Result<(), String> {
        /// Starts that may fail from injected faults before the faults are turned off.
        const FAULTY_STARTS: u32 = 3;
        let mut flip = flip;
        for attempt in 0..FAULTY_STARTS + 2 {
            let rates = (attempt >= FAULTY_STARTS).then(|| self.disk.set_rates(FaultRates::NONE));
            let faults_before = self.disk.counts();
            let opened = Stepper::open(Arc::new(self.disk.clone()), &self.config);
            if let Some(rates) = rates {
                self.disk.set_rates(rates);
            }
            match &opened {
                Ok((_, recovery)) => self.note(format!("started: {recovery:?}")),
                Err(error) => self.note(format!("start failed: {error}")),
            }
            match opened {
                Ok((stepper, _)) => {
                    self.stepper = Some(stepper);
                    if let Some(flip) = flip.take() {
                        self.disk.apply_flip(&flip);
                    }
                    self.check_recovered()?;
                    return Ok(());
                }
                Err(error) => {
                    let injected = self.disk.counts() != faults_before;
                    if self.disk.powered_off() {
                        self.disk.crash(Torn::Nothing);
                    }
                    if let Some(found) = flip.take() {
                        if is_corruption(&error) {
                            self.report.corruption_detected += 1;
                            self.disk.apply_flip(&found);
                            continue;
                        }
                        if !injected {
                            return Err(format!(
                                "a bit flipped at byte {} of {} and the start failed without naming the corruption: {error}",
                                found.offset,
                                found.path.display()
                            ));
                        }
                        flip = Some(found);
                    } else if !injected {
                        return Err(format!("the engine did not start after a crash: {error}"));
                    }
                }
            }
        }
        Err("the engine did not start with faults turned off".into())
    }

    /// After a start: the recovered state keeps every promise.
    fn check_recovered(&mut self) -> Result<(), String> {
        self.check_acknowledged()?;
        self.check_replay(true)
    }

    /// The checks made after every step.
    fn check_step(&mut self) -> Result<(), String> {
        let Some(stepper) = self.stepper.as_ref() else {
            return Ok(());
        };
        stepper
            .ledger()
            .check_invariants()
            .map_err(|violation| format!("ledger invariant broken: {violation}"))?;
        // A failed engine holds decided changes its log refused: only a restart reconciles them.
        // Nor can anything be read back once the power is gone.
        let settled =
            stepper.staged() == 0 && stepper.failure().is_none() && !self.disk.powered_off();
        self.check_acknowledged()?;
        if settled {
            self.check_replay(false)?;
        }
        Ok(())
    }

    /// Every acknowledged command is in the live state with the answer it was given.
    fn check_acknowledged(&mut self) -> Result<(), String> {
        let ledger = self.stepper.as_ref().expect("the engine runs").ledger();
        for id in &self.model.accounts {
            if ledger.account_by_id(id).is_none() {
                return Err(format!("acknowledged account {id:?} is missing"));
            }
        }
        if self.model.campaign_defined && ledger.campaigns().is_empty() {
            return Err("the acknowledged campaign is missing".into());
        }
        for (order_id, position) in &self.model.claims {
            match ledger.claim(order_id) {
                Some(claim) if claim.pending == *position => {}
                other => {
                    return Err(format!(
                        "acknowledged claim {order_id:?} at {position} is {other:?} in the state"
                    ))
                }
            }
        }
        for (id, told) in &self.model.transfers {
            match ledger.outcome(id).map(Told::of) {
                Some(outcome) if outcome == *told => {}
                Some(outcome) => {
                    return Err(format!(
                        "acknowledged command {id:?} was told {told:?}, the state says {outcome:?}"
                    ))
                }
                None => return Err(format!("acknowledged command {id:?} ({told:?}) is missing")),
            }
        }
        Ok(())
    }

    /// Replaying the durable log from position zero gives the live state, and records every
    /// command id at most once. After a start the replica replays the whole log again; between
    /// starts it follows the log's new batches. Only between batches: staged batches are not
    /// durable yet, and a failed engine holds changes its log refused.
    fn check_replay(&mut self, from_zero: bool) -> Result<(), String> {
        if from_zero {
            self.replica = Ledger::new();
            self.recorded.clear();
        }
        let rates = self.disk.set_rates(FaultRates::NONE);
        let stepper = self.stepper.as_mut().expect("the engine runs");
        let batches = stepper.read_log_from(self.replica.next_position());
        self.disk.set_rates(rates);
        let batches = batches.map_err(|error| format!("reading the log back failed: {error}"))?;
        for batch in &batches {
            replay_batch(&mut self.replica, batch)
                .map_err(|error| format!("the log does not replay: {error}"))?;
            let events = decode_events(&batch.body, batch.header.event_count)
                .map_err(|error| format!("the log does not decode: {error}"))?;
            for event in events {
                let id = match event {
                    Event::Transfer(transfer) => transfer.id,
                    Event::Rejected { id, .. } => id,
                    _ => continue,
                };
                if !self.recorded.insert(id.clone()) {
                    return Err(format!("command {id:?} is recorded twice in the log"));
                }
            }
        }
        let live = self.stepper.as_ref().expect("the engine runs").ledger();
        if self.replica != *live {
            return Err(format!(
                "replaying the log ({} events) does not give the live state ({} events)",
                self.replica.next_position(),
                live.next_position()
            ));
        }
        self.report.replay_checks += 1;
        Ok(())
    }
}

/// Whether a failed start named damaged data (rather than an I/O error).
fn is_corruption(error: &EngineError) -> bool {
    match error {
        EngineError::Log(log) => {
            matches!(**log, LogError::Corrupt { .. }) || log.to_string().contains("corrupt")
        }
        EngineError::Replay { .. } | EngineError::SnapshotAheadOfLog { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_exactly() {
        let options = Options {
            steps: 600,
            ..Options::default()
        };
        let first = run(7, &options).unwrap();
        let second = run(7, &options).unwrap();
        assert_eq!(first, second);
        assert!(first.acknowledged > 0, "{first}");
    }
}
