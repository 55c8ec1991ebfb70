//! Integration tests of the `tally` binary, built as one test binary.

mod support;

mod auth;
mod bench_offline;
mod campaign;
mod crash;
mod crash_loop;
mod deliveries;
mod observability;
mod projector;
mod status;
