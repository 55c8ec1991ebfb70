//! Progress bars for long offline jobs on a terminal (`tally verify`, `tally project --rebuild`).
//!
//! The job runs on an offline thread and counts its progress in atomics; this side polls them
//! and draws. Only when standard error is a terminal: in a pipe or a log file a bar is noise, so
//! then nothing is drawn and the command prints only its result.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tally_offline::{Job, OfflineConfig, OfflineExecutor, Priority};

/// How often the bar is redrawn.
const REDRAW_INTERVAL: Duration = Duration::from_millis(100);

/// Priority of a command's offline work (`--offline-priority`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PriorityArg {
    /// `SCHED_IDLE` (in an idle cgroup where possible): only CPU time nothing else wants.
    Idle,
    /// Like any other process: for comparison, or to finish sooner on a busy machine.
    Normal,
}

impl PriorityArg {
    /// An executor running offline work at this priority.
    pub fn executor(self) -> OfflineExecutor {
        let priority = match self {
            PriorityArg::Idle => Priority::Idle,
            PriorityArg::Normal => Priority::Normal,
        };
        OfflineExecutor::new(OfflineConfig::with_priority(priority))
    }
}

/// Waits for `job`, drawing a bar labelled `label` on a terminal, and returns its outcome.
pub fn follow<T>(job: Job<T>, label: &'static str) -> Result<T, String> {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    let template = match job.progress().status().unit {
        "bytes" => "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        _ => "{msg} [{bar:40}] {human_pos}/{human_len} {per_sec} eta {eta}",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label);
    while !job.is_finished() {
        update(&bar, &job);
        std::thread::sleep(REDRAW_INTERVAL);
    }
    update(&bar, &job);
    bar.finish_and_clear();
    job.join()
}

fn update<T>(bar: &ProgressBar, job: &Job<T>) {
    let status = job.progress().status();
    if status.total > 0 {
        bar.set_length(status.total);
    }
    bar.set_position(status.done);
}
