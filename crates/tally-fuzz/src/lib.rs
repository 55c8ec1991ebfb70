//! The fuzz targets of Tally, as plain functions of the fuzzer's bytes.
//!
//! Each target feeds its bytes to one input boundary and panics when the code under test breaks
//! a promise: a panic or abort inside it, an answer it must never give, or two paths that must
//! agree and do not. Returning is success, whether the input was accepted or refused.
//!
//! ```
//! // A log whose only record is cut short: recovery cuts it, and the log keeps working.
//! assert_eq!(tally_fuzz::log_record::run(&[0, 40, 0, 0, 0, 1, 2]), tally_fuzz::Reached::Accepted);
//! ```
//!
//! Key design choice: the targets live in the workspace rather than in `fuzz/`, so clippy, the
//! formatter and the test suite cover them, and the seed corpus is generated and checked by a
//! test; `fuzz/` only wraps each function in libFuzzer's `fuzz_target!`.
#![deny(missing_docs)]

mod alloc_limit;
pub mod http_body;
mod ledger_check;
pub mod log_record;
pub mod seeds;
pub mod snapshot;

pub use alloc_limit::LimitedAllocator;

/// The largest single allocation the fuzz targets allow: what none of their inputs (at most a
/// few megabytes) justifies. Each target installs a [`LimitedAllocator`] with it.
pub const ALLOCATION_BYTES_MAX: usize = 256 << 20;

/// How far an input got, so that tests can check that the seeds reach the deep paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reached {
    /// The boundary refused the input, as it should refuse malformed bytes.
    Refused,
    /// The input passed the boundary and everything behind it.
    Accepted,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::seeds::TARGETS;
    use super::Reached;

    /// Set to rewrite the committed seeds from the encoders instead of comparing them.
    const WRITE_SEEDS: &str = "TALLY_WRITE_FUZZ_SEEDS";

    fn corpus_dir(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(target)
    }

    /// Every file of a target's committed corpus, by name.
    fn committed(target: &str) -> BTreeMap<String, Vec<u8>> {
        let dir = corpus_dir(target);
        std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("read {}: {error}", dir.display()))
            .map(|entry| {
                let path = entry.expect("a directory entry").path();
                let name = path.file_name().expect("a file name").to_string_lossy();
                let bytes = std::fs::read(&path).expect("read a corpus file");
                (name.into_owned(), bytes)
            })
            .collect()
    }

    #[test]
    fn committed_seeds_are_what_the_encoders_write() {
        for target in &TARGETS {
            let generated: BTreeMap<String, Vec<u8>> = (target.seeds)().into_iter().collect();
            if std::env::var_os(WRITE_SEEDS).is_some() {
                let dir = corpus_dir(target.name);
                std::fs::create_dir_all(&dir).expect("create the corpus directory");
                for name in committed(target.name)
                    .keys()
                    .filter(|name| name.starts_with("seed-"))
                {
                    std::fs::remove_file(dir.join(name)).expect("remove an old seed");
                }
                for (name, bytes) in &generated {
                    std::fs::write(dir.join(name), bytes).expect("write a seed");
                }
            }
            let seeds: BTreeMap<String, Vec<u8>> = committed(target.name)
                .into_iter()
                .filter(|(name, _)| name.starts_with("seed-"))
                .collect();
            assert_eq!(
                seeds.keys().collect::<Vec<_>>(),
                generated.keys().collect::<Vec<_>>(),
                "seeds of {}; {WRITE_SEEDS}=1 cargo test -p tally-fuzz rewrites them",
                target.name
            );
            for (name, bytes) in &generated {
                assert!(
                    (target.same)(&seeds[name], bytes),
                    "fuzz/corpus/{}/{name} differs from what the encoders write; {WRITE_SEEDS}=1 cargo test -p tally-fuzz rewrites it",
                    target.name
                );
            }
        }
    }

    #[test]
    fn every_seed_passes_every_check_of_its_target() {
        for target in &TARGETS {
            for (name, bytes) in (target.seeds)() {
                assert_eq!(
                    (target.run)(&bytes),
                    Reached::Accepted,
                    "{}/{name}",
                    target.name
                );
            }
        }
    }

    /// The committed corpus holds the seeds and the inputs that once found a bug: each must
    /// still be handled without breaking a promise.
    #[test]
    fn every_committed_input_is_handled() {
        for target in &TARGETS {
            let corpus = committed(target.name);
            assert!(!corpus.is_empty(), "the corpus of {} is empty", target.name);
            for bytes in corpus.values() {
                (target.run)(bytes);
            }
        }
    }
}
