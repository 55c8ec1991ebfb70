//! The executor's series in `/metrics`, read at scrape time from the same figures the status
//! page shows.
//!
//! - `tally_offline_isolation{mode}`: 1 for the isolation in force (`none`, `sched_idle`,
//!   `sched_idle+idle_cgroup`), 0 for the others.
//! - `tally_offline_boosts_total`: jobs the starvation guard handed to a normal-priority thread.
//! - `tally_offline_handovers_total`: threads requests wait for that an idle thread found
//!   waiting on another core and moved to its own (see `handover.rs`).
//! - `tally_online_slice_seconds`: the scheduler slice threads requests wait for run with, 0
//!   for the kernel's default (see `slice.rs`).
//! - `tally_huge_pages_off`: 1 while the process's memory is kept off transparent huge pages
//!   (see `huge_pages.rs`).
//! - per job, running or among the newest finished, labelled `name` (fixed by the code), `id`
//!   and `unit` (what is counted): `tally_offline_job_units_done`,
//!   `tally_offline_job_units_expected` (0 while unknown), `tally_offline_job_units_per_second`
//!   (since it started), `tally_offline_job_elapsed_seconds`, and `tally_offline_job_state` with
//!   a `state` label, 1 for the current one.
//!
//! Labels never come from client input, and the job table is bounded, so the series are too.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::{Isolation, JobState, JobStatus, OfflineExecutor};

impl OfflineExecutor {
    /// Adds the executor's series to `registry`; their values are read at each scrape.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(Scrape {
            executor: self.clone(),
        }));
    }
}

struct Scrape {
    executor: OfflineExecutor,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

type Labels = Vec<(&'static str, String)>;

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let isolation = self.executor.isolation();
        let modes = Isolation::ALL.iter().map(|mode| {
            (
                vec![("mode", mode.as_str().to_string())],
                u64::from(*mode == isolation),
            )
        });
        family(
            &mut encoder,
            "tally_offline_isolation",
            "1 for the isolation of offline threads in force: none (normal priority), sched_idle, or sched_idle+idle_cgroup (SCHED_IDLE inside a child cpu cgroup with cpu.idle = 1); 0 for the others.",
            modes,
        )?;
        let boosts = ConstCounter::new(self.executor.boosts());
        boosts.encode(encoder.encode_descriptor(
            "tally_offline_boosts",
            "Offline jobs holding a pinned resource that made no progress for the bound (500 ms by default) and were handed to a normal-priority thread by the starvation guard.",
            None,
            MetricType::Counter,
        )?)?;
        let handovers = ConstCounter::new(crate::handovers());
        handovers.encode(encoder.encode_descriptor(
            "tally_offline_handovers",
            "Threads requests wait for that an idle-priority offline thread found waiting for a core behind another such thread and moved to its own core, which it then yielded to them.",
            None,
            MetricType::Counter,
        )?)?;
        let slice =
            ConstGauge::new(crate::short_slice_in_force().map_or(0.0, |slice| slice.as_secs_f64()));
        slice.encode(encoder.encode_descriptor(
            "tally_online_slice_seconds",
            "The scheduler slice the threads requests wait for asked the kernel for and got (Linux 6.12 and later); 0 while they run with the kernel's default slice.",
            None,
            MetricType::Gauge,
        )?)?;
        let huge_pages_off = ConstGauge::new(i64::from(crate::huge_pages_off()));
        huge_pages_off.encode(encoder.encode_descriptor(
            "tally_huge_pages_off",
            "1 while the kernel keeps this process's memory off transparent huge pages, whose zeroing inside one page fault holds a core for milliseconds; 0 otherwise.",
            None,
            MetricType::Gauge,
        )?)?;
        let jobs = self.executor.jobs();
        let labels = |job: &JobStatus| -> Labels {
            vec![
                ("name", job.name.to_string()),
                ("id", job.id.to_string()),
                ("unit", job.unit.to_string()),
            ]
        };
        family(
            &mut encoder,
            "tally_offline_job_units_done",
            "Units (see the unit label) an offline job has done.",
            jobs.iter().map(|job| (labels(job), job.done)),
        )?;
        family(
            &mut encoder,
            "tally_offline_job_units_expected",
            "Units (see the unit label) an offline job has in all; 0 while unknown.",
            jobs.iter().map(|job| (labels(job), job.total)),
        )?;
        family(
            &mut encoder,
            "tally_offline_job_units_per_second",
            "Units an offline job has done per second since it started.",
            jobs.iter()
                .map(|job| (labels(job), job.rate_per_second.unwrap_or(0.0))),
        )?;
        family(
            &mut encoder,
            "tally_offline_job_elapsed_seconds",
            "Seconds since an offline job started, or how long it took once finished.",
            jobs.iter()
                .map(|job| (labels(job), job.elapsed.as_secs_f64())),
        )?;
        let states = jobs.iter().flat_map(|job| {
            JobState::ALL.iter().map(move |state| {
                let mut labels = labels(job);
                labels.push(("state", state.as_str().to_string()));
                (labels, u64::from(*state == job.state))
            })
        });
        family(
            &mut encoder,
            "tally_offline_job_state",
            "1 for the state an offline job is in (running, boosted: handed to a normal-priority thread, done, failed), 0 for the others.",
            states,
        )
    }
}

/// One gauge family; nothing is written for an empty one.
fn family<N: EncodeGaugeValue + fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (Labels, N)>,
) -> fmt::Result {
    let mut samples = samples.peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, ConstGauge::<N>::TYPE)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}
