//! `tally project --rebuild --data-dir DIR`: rebuilds the embedded read model from position zero.
//!
//! For a read model that is suspect, or after a change to how it is built. The server must be
//! stopped: the log's lock keeps a second process out. The rebuild runs as an offline job (idle
//! priority by default) with a progress bar on a terminal.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use tally_log::{EventLog, LogOptions, SegmentedLog};
use tally_read::{rebuild, READ_MODEL_FILE_NAME, REBUILD_JOB};

use crate::progress::{follow, PriorityArg};

#[derive(clap::Args)]
pub struct ProjectArgs {
    /// Rebuild the read model from position zero (replacing `DATA_DIR/read.redb`).
    #[arg(long, required = true)]
    rebuild: bool,
    /// The data directory (as given to `tally serve --data-dir`); its server must be stopped.
    #[arg(long, default_value = "./tally-data", env = "TALLY_DATA_DIR")]
    data_dir: PathBuf,
    /// Priority of the rebuild: `idle` leaves the CPU to everything else, `normal` competes.
    #[arg(long, value_enum, default_value_t = PriorityArg::Idle)]
    offline_priority: PriorityArg,
}

pub fn run(args: ProjectArgs) -> anyhow::Result<()> {
    assert!(args.rebuild, "clap requires --rebuild");
    let log_dir = args.data_dir.join("log");
    if !log_dir.is_dir() {
        anyhow::bail!(
            "{} holds no log directory; is it a tally data directory?",
            args.data_dir.display()
        );
    }
    let (log, _) = SegmentedLog::open(&log_dir, LogOptions::default()).with_context(|| {
        format!(
            "cannot open the log of {} (a running server holds it: stop it first)",
            args.data_dir.display()
        )
    })?;
    let log_end = log.next_position();
    let reader = log.reader();
    let path = args.data_dir.join(READ_MODEL_FILE_NAME);
    let offline = args.offline_priority.executor();
    eprintln!(
        "tally: rebuilding {} from the {log_end} events of the log (offline isolation: {})",
        path.display(),
        offline.isolation().as_str()
    );
    let started = Instant::now();
    let job_path = path.clone();
    let job = offline.spawn_job(REBUILD_JOB, "events", move |progress| {
        rebuild(&job_path, reader, log_end, progress).map_err(|error| error.to_string())
    })?;
    let position = follow(job, "rebuilding").map_err(anyhow::Error::msg)?;
    drop(log);
    println!(
        "rebuilt {}: {position} events in {:.1} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
