//! Integration tests of `tally-auth`, built as one binary: key management on a real
//! directory, and verification of real and forged tokens.

mod keys;
mod support;
mod verify;
