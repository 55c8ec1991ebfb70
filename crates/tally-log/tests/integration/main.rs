//! Integration tests of `tally-log`, built as one binary.

mod crash;
mod fs;
mod log;
mod recovery;
mod snapshot;
mod util;
mod verify;
