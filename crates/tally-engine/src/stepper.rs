//! The engine driven one step at a time, by one thread, for deterministic simulation.
//!
//! Production runs the pipeline on two threads (see `pipeline.rs`) whose interleaving the OS
//! decides, so a failing run cannot be replayed. A [`Stepper`] runs the very same parts (the
//! recovery, the [`crate::pipeline::Decider`] that decides batches, the
//! [`crate::pipeline::Writer`] that appends them, the offline snapshot job) but lets the caller
//! choose when each step happens: a simulator that draws those choices from a seed, together with
//! a simulated clock and disk, replays any run exactly. The pipelining is kept: up to
//! `STAGED_BATCHES_MAX + 1` decided batches may wait for the log, as one waits in the channel and
//! one in the writer in production.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tally_core::{Command, Ledger};
use tally_log::{Batch, LogReader, SnapshotStore, Storage};
use tokio::sync::oneshot;

use crate::limits::{COMMAND_QUEUE_REQUESTS_MAX, STAGED_BATCHES_MAX};
use crate::pipeline::{Decider, Request, Staged, Taken, Writer};
use crate::snapshotter::snapshot_job;
use crate::{write_final_snapshot, Answer, Detail, EngineConfig, EngineError, Recovered, Recovery};

/// The answer to one submitted request, once its batch is durable (or failed). Poll it with
/// `try_recv`; a closed channel means the request was lost with its engine (a crash).
pub type Ticket = oneshot::Receiver<Result<Vec<Answer>, EngineError>>;

/// The engine's pipeline under the caller's control. See the module documentation.
pub struct Stepper {
    decider: Decider,
    writer: Writer,
    queue: VecDeque<Request>,
    staged: VecDeque<Staged>,
    store: SnapshotStore,
    snapshot_reader: Box<dyn LogReader>,
    offline: tally_offline::OfflineExecutor,
}

impl Stepper {
    /// Recovers the state from `config.data_dir` on `storage`, exactly as [`crate::Engine::open_in`]
    /// does, without starting any thread.
    pub fn open(
        storage: Arc<dyn Storage>,
        config: &EngineConfig,
    ) -> Result<(Stepper, Recovery), EngineError> {
        let Recovered {
            decider,
            writer,
            recovery,
            store,
            feed: _,
        } = Recovered::open(storage, config)?;
        let snapshot_reader = writer.log.reader();
        let stepper = Stepper {
            decider,
            writer,
            queue: VecDeque::new(),
            staged: VecDeque::new(),
            store,
            snapshot_reader,
            offline: config.offline.clone(),
        };
        Ok((stepper, recovery))
    }

    /// Queues `commands` as one request, with the admission rules of
    /// [`crate::EngineHandle::execute`]: [`EngineError::Overloaded`] when the queue is full,
    /// [`EngineError::Unavailable`] once the engine has failed.
    pub fn submit(&mut self, commands: Vec<Command>) -> Result<Ticket, EngineError> {
        let (reply, ticket) = oneshot::channel();
        let request = Request::Execute {
            commands,
            detail: Detail::Compact,
            restriction: None,
            reply,
        };
        if self.queue.len() >= COMMAND_QUEUE_REQUESTS_MAX {
            self.decider.shared.metrics.overloaded.inc();
            return Err(EngineError::Overloaded);
        }
        self.decider.shared.admit(request.weight())?;
        self.queue.push_back(request);
        Ok(ticket)
    }

    /// Decides one batch from at most `requests` queued requests (none: expirations only) and
    /// stages it for the log. Returns false, doing nothing, while the staged batches are at
    /// their bound: the writer must commit first. A failed engine refuses the requests instead.
    pub fn decide(&mut self, requests: usize) -> bool {
        if self.staged.len() > STAGED_BATCHES_MAX {
            return false;
        }
        if self.decider.shared.failed.load(Ordering::SeqCst) {
            for request in self.queue.drain(..) {
                self.decider.refuse(request);
            }
            return true;
        }
        let Some(mut batch) = self.decider.begin() else {
            // The engine failed; the next call refuses what is queued.
            return true;
        };
        for _ in 0..requests {
            let Some(request) = self.queue.pop_front() else {
                break;
            };
            if self.decider.take(&mut batch, request) != Taken::More {
                break;
            }
        }
        if let Some(staged) = self.decider.seal(batch) {
            self.staged.push_back(staged);
        }
        true
    }

    /// Appends the oldest staged batch and delivers its answers. Returns false if none is staged.
    pub fn commit(&mut self) -> bool {
        match self.staged.pop_front() {
            Some(staged) => {
                self.writer.commit(staged);
                true
            }
            None => false,
        }
    }

    /// Runs the offline snapshot job to the durable end, as the snapshot thread does. Returns
    /// the position written, or why it failed (a failed snapshot changes nothing else).
    pub fn snapshot(&mut self) -> Result<u64, String> {
        let never = AtomicBool::new(false);
        let position = snapshot_job(
            &self.store,
            self.snapshot_reader.as_mut(),
            &self.decider.shared,
            &self.offline,
            &never,
        )?;
        Ok(position.expect("a snapshot that is never stopped finishes"))
    }

    /// Stops as [`crate::Engine::shutdown`] does: commits everything decided, then writes the
    /// final snapshot. Queued requests that were never decided are dropped unanswered.
    pub fn shutdown(mut self) -> Result<(), EngineError> {
        while self.commit() {}
        let shared = Arc::clone(&self.decider.shared);
        if shared.failed.load(Ordering::SeqCst) {
            return Err(shared.unavailable());
        }
        write_final_snapshot(&self.decider.ledger, &shared, &self.store)
    }

    /// The durable batches of the log from `position` on, read and checked as a consumer reads
    /// them: for a simulator comparing the live state with a replay.
    pub fn read_log_from(&mut self, position: u64) -> Result<Vec<Batch>, EngineError> {
        let mut batches = Vec::new();
        for batch in self.snapshot_reader.read_from(position)? {
            batches.push(batch?);
        }
        Ok(batches)
    }

    /// The live state: everything decided, including staged batches not yet durable.
    pub fn ledger(&self) -> &Ledger {
        &self.decider.ledger
    }

    /// Requests queued and not yet decided.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Decided batches waiting for the log.
    pub fn staged(&self) -> usize {
        self.staged.len()
    }

    /// The position up to which the log is durable.
    pub fn durable_position(&self) -> u64 {
        self.decider.shared.durable_position.load(Ordering::SeqCst)
    }

    /// Why the engine stopped accepting work, once an append failed.
    pub fn failure(&self) -> Option<String> {
        self.decider
            .shared
            .failed
            .load(Ordering::SeqCst)
            .then(|| self.decider.shared.unavailable().to_string())
    }
}
