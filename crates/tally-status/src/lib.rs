//! Tally's own measure of its health, for the status page, `/status.json` and `tally status`.
//!
//! A status page is only worth reading if it cannot stay green while the service fails. So
//! nothing here is reported by hand: availability is counted from the outcome of every API
//! request Tally answers ([`availability`]), persisted so a restart does not reset it
//! ([`store`]); each dependency's health is evaluated by the server from what it can observe
//! (the log, the disk, the read model, the keys) and every change is kept as an incident
//! ([`incidents`]). One report type ([`report`]) is rendered as HTML ([`html`]) and as text
//! ([`text`]), so the page, the JSON and the terminal cannot disagree.
//!
//! Everything but [`store`] is pure: times are passed in, so tests drive known sequences.
#![deny(missing_docs)]

pub mod availability;
pub mod disk;
pub mod html;
pub mod incidents;
pub mod report;
pub mod store;
pub mod text;

pub use availability::{Availability, Outcome, Window};
pub use incidents::Incidents;
pub use report::{
    DependencyStatus, Detail, Health, Incident, JobStatus, StatusReport, WindowFigures,
};
