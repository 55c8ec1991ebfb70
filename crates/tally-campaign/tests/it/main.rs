//! Tests of the campaign definition through its public API, built as one test binary.

mod encoding;
mod parse;
mod rules;

use tally_campaign::{CampaignSpec, Format};

/// The documented example campaign, which must be valid.
pub const EXAMPLE_TOML: &str = include_str!("../../../../docs/examples/campaign.toml");

/// A valid spec every rule test mutates.
pub fn baseline() -> CampaignSpec {
    CampaignSpec::parse(EXAMPLE_TOML, Format::Toml).expect("the example parses")
}
