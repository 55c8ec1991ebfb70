//! Gift campaign definitions: the spec, the rules it must obey before it is published, and the
//! local days its daily limit counts in.
//!
//! A campaign gives units of a gift ledger out of a pool account, within a per-user and a daily
//! limit, between two times, and delivers each claimed gift to an HTTP target. This crate is the
//! definition only; claims, the API and the delivery dispatcher build on it. It does no I/O: it
//! parses strings and checks rules, and time comes in as arguments.
//!
//! Main items: [`CampaignSpec`] (one struct for the API's JSON, the TOML file and the stored
//! form), [`check`] (every [`Violation`] with its field, [`Rule`] code and fix),
//! [`LocalCalendar`] (a timestamp's day in the campaign's time zone).
//!
//! ```
//! use tally_campaign::{check, CampaignSpec, Format, Rule};
//!
//! let text = r#"
//!     id = "spring-2026"
//!     gift_ledger = "GIFT"
//!     inventory = 1000
//!     per_user_limit = 5
//!     daily_limit = 100
//!     timezone = "Europe/Berlin"
//!     starts_at = 2026-03-01T00:00:00+01:00
//!     ends_at = "2026-03-31T23:59:59+02:00"
//!     verification_account = "gift-verification"
//!
//!     [delivery]
//!     primary = ["https://gifts.example.com/v1/deliver"]
//!     connect_timeout_ms = 300
//!     read_timeout_ms = 200
//!     max_read_timeouts = 1
//!     retry_budget_percent = 10
//! "#;
//! let spec = CampaignSpec::parse(text, Format::Toml).unwrap();
//! let violations = check(&spec);
//! assert_eq!(violations.len(), 1);
//! assert_eq!(violations[0].rule, Rule::ReadTimeoutNotAboveConnect);
//! assert_eq!(violations[0].field, "delivery.read_timeout_ms");
//! ```
//!
//! # Why each rule exists
//!
//! The rules catch a campaign that would misbehave once live, where fixing it costs gifts or
//! an outage; configuration checked by rules before it goes live is one of the lessons of the
//! gift platform Tally's campaigns come from. `docs/campaigns.md` lists them with their codes.
//!
//! - **Names** (`id_invalid`, `ledger_invalid`, `account_invalid`): the campaign's id, its gift
//!   ledger and its verification account become ledger ids and codes; one that the ledger
//!   would refuse must be refused at definition time, not at the first claim.
//! - **Counts** (`limit_zero`, `inventory_below_daily_limit`,
//!   `per_user_limit_above_daily_limit`): a zero limit makes a campaign nobody can claim from;
//!   a pool smaller than one day's limit runs dry on day one, so the daily limit the owner
//!   planned never applies; a per-user limit above the daily limit lets one user take a whole
//!   day's gifts.
//! - **Schedule** (`timezone_unknown`, `ends_not_after_start`): the daily limit resets at local
//!   midnight, which needs a real IANA zone (an abbreviation like `CET` is ambiguous and does
//!   not follow daylight saving); a campaign that ends before it starts is never open.
//! - **Timeouts** (`timeout_out_of_range`, `read_timeout_not_above_connect`): timeouts are per
//!   dependency, fast failures (connect) separated from slow ones (read). Too short fails
//!   healthy targets, too long lets one slow target hold the dispatcher's delivery slots. The
//!   read timeout covers the target's work, which takes longer than accepting a connection;
//!   a read timeout at or below the connect timeout is a swapped pair.
//! - **Endpoints** (`group_empty`, `group_too_large`, `url_*`, `endpoint_duplicate`): a group
//!   without an endpoint cannot deliver; bounded groups bound health tracking; a URL must be
//!   an absolute http(s) URL without credentials (they would be stored in the log and shown
//!   in status pages) or a fragment (never sent). The same endpoint twice, even spelled
//!   differently (`HTTPS://Gifts.example.com:443/a` and `https://gifts.example.com/a`), would
//!   defeat failover and outlier ejection, which count health per endpoint.
//! - **Retries** (`max_read_timeouts_out_of_range`, `max_retries_out_of_range`,
//!   `read_timeout_cap_unreachable`, `retry_budget_out_of_range`, `retries_without_budget`):
//!   a read timeout may hide a delivery the target applied, so each one is capped per delivery
//!   (`max_read_timeouts` ≥ 1: the first attempt can always time out); the cap must be
//!   reachable within the attempts a delivery gets (1 + `max_retries`), or it is a setting
//!   that does nothing. Retries are gated by a budget (a percentage of first attempts) so that
//!   they cannot become a retry storm; a budget above 50 % is one, and retries configured with
//!   a zero budget would never be sent.
//!
//! Key design choice: the spec's fields are plain strings and numbers checked by [`check`],
//! not types that refuse bad values while parsing, so one pass can show every fault of a
//! campaign, each with a fix, and the CLI and the API give the same answers.
#![deny(missing_docs)]

pub mod limits;
mod rules;
mod spec;
mod time;

pub use rules::{check, Rule, Violation};
pub use spec::{CampaignSpec, DeliverySpec, Format};
pub use time::LocalCalendar;

/// Why a campaign could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CampaignError {
    /// The text is not a campaign spec: bad syntax, an unknown or missing field, a wrong type,
    /// or a time that is not RFC 3339 with an offset.
    #[error("{format} line {line}, column {column}{}: {message}", field.as_ref().map(|field| format!(", field `{field}`")).unwrap_or_default())]
    Parse {
        /// The format read.
        format: Format,
        /// 1-based line of the fault (0 when unknown).
        line: usize,
        /// 1-based column of the fault, in characters (0 when unknown).
        column: usize,
        /// Dotted path of the field, when the fault is in one.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// The text is larger than any campaign.
    #[error("{format} text of {bytes} bytes is larger than the {max} bytes a campaign may take; is it the right file?")]
    TooLarge {
        /// The format read.
        format: Format,
        /// The size found.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A time zone name is not in the time zone database.
    #[error("time zone {name:?} is not in the IANA time zone database; use a name such as \"Europe/Berlin\"")]
    UnknownTimeZone {
        /// The name given.
        name: String,
    },
    /// Stored bytes are not a campaign written by [`CampaignSpec::to_canonical_bytes`].
    #[error("stored campaign is unreadable: {reason}")]
    Decode {
        /// What is wrong.
        reason: String,
    },
}
