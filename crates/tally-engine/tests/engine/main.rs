//! Integration tests of the engine, built as one binary: the write path end to end, restarts and
//! crashes, group commit, backpressure, I/O failures, snapshots, verification, expiry and campaigns.
//!
//! Every test talks to the engine through the helpers in `support`, so that the tests do not pin
//! the API; crash and failure tests run on the log's in-memory storage, which knows exactly what
//! each sync made durable.

mod campaigns;
mod expiry;
mod failure;
mod pipeline;
mod restart;
mod round_trip;
mod snapshots;
mod status;
mod support;
mod verify;
