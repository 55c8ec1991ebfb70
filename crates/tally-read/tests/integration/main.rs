//! Integration tests of the read model, as one binary.
//!
//! Batches come from a real `tally_core::Ledger` driven by commands, and reach the read model
//! through an in-memory log whose durable end the test controls.

mod support;

mod history;
mod ledgers;
mod lifecycle;
mod properties;
mod transfers;
