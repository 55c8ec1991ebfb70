//! The campaign spec: one struct for the API's JSON body, the TOML file, and the stored form.
//!
//! Fields are plain strings and numbers, checked by [`crate::check`] rather than by the parser,
//! so that one pass can report every fault of a campaign with a fix instead of stopping at the
//! first. Only what cannot be represented at all (bad syntax, an unknown field, a wrong type, a
//! time that is not RFC 3339 or lies outside Tally's clock) is a parse error.

use serde::{Deserialize, Serialize};

use crate::limits::{RETRIES_PER_DELIVERY_DEFAULT, SPEC_BYTES_MAX};
use crate::time::{format_rfc3339, rfc3339, LocalCalendar};
use crate::CampaignError;

/// A gift campaign as defined by its owner: what is given, how much, when, and where deliveries
/// go. A campaign is a draft until published; publishing requires [`crate::check`] to find
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    /// The campaign's id (Tally's id rule, at most 117 characters, not starting with `tally:`).
    pub id: String,
    /// The ledger (asset code) the gifts are counted in; its pool account holds the inventory.
    pub gift_ledger: String,
    /// Gift units put in the pool when the campaign is defined.
    pub inventory: u64,
    /// Most gifts one user may claim over the whole campaign.
    pub per_user_limit: u64,
    /// Most gifts claimed per local day (see `timezone`) over all users.
    pub daily_limit: u64,
    /// IANA time zone name whose midnight resets the daily limit, such as `Europe/Berlin`.
    pub timezone: String,
    /// When claims open, in nanoseconds since the Unix epoch (RFC 3339 in JSON and TOML).
    #[serde(rename = "starts_at", with = "rfc3339")]
    pub starts_at_ns: u64,
    /// When claims close (exclusive), in nanoseconds since the Unix epoch (RFC 3339 text).
    #[serde(rename = "ends_at", with = "rfc3339")]
    pub ends_at_ns: u64,
    /// The account that must claim and receive a gift before the campaign may go live.
    pub verification_account: String,
    /// Where and how gifts are delivered.
    pub delivery: DeliverySpec,
    /// Optional URL that receives the campaign's statistics; a non-core call, dropped first
    /// under pressure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_webhook: Option<String>,
}

/// The delivery target of a campaign: endpoint groups, timeouts and the retry policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySpec {
    /// Endpoints that receive deliveries while they are healthy; at least one.
    pub primary: Vec<String>,
    /// Endpoints that take over when every primary endpoint is ejected. Optional: a target
    /// without a standby still works, failover is just not possible. Given, it is not empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Vec<String>>,
    /// How long to wait for a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long to wait for the answer once connected, in milliseconds.
    pub read_timeout_ms: u64,
    /// Read timeouts one delivery may suffer before it is no longer sent and waits for
    /// verification instead (a read timeout may hide a success).
    pub max_read_timeouts: u32,
    /// Retries of one delivery after its first attempt (default 3).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Retries allowed, as a percentage of first attempts over a recent window.
    pub retry_budget_percent: u32,
}

fn default_max_retries() -> u32 {
    RETRIES_PER_DELIVERY_DEFAULT
}

/// The text form of a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The API's body.
    Json,
    /// A campaign file, with the delivery settings under `[delivery]`.
    Toml,
}

impl Format {
    /// The format of a file by its name: `.json` is JSON, anything else is read as TOML.
    pub fn for_file_name(name: &str) -> Format {
        let is_json = name
            .rsplit_once('.')
            .is_some_and(|(_, extension)| extension.eq_ignore_ascii_case("json"));
        if is_json {
            Format::Json
        } else {
            Format::Toml
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Json => "JSON",
            Format::Toml => "TOML",
        })
    }
}

/// Version of [`CampaignSpec::to_canonical_bytes`]; raised when the stored form changes.
const ENCODING_VERSION: u32 = 1;

/// The stored form: the spec under a version.
#[derive(Serialize)]
struct Stored<'a> {
    version: u32,
    campaign: &'a CampaignSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredOwned {
    version: u32,
    campaign: CampaignSpec,
}

impl CampaignSpec {
    /// Parses a spec in `format`. Errors name the line, the column and, where known, the field.
    pub fn parse(text: &str, format: Format) -> Result<CampaignSpec, CampaignError> {
        if text.len() > SPEC_BYTES_MAX {
            return Err(CampaignError::TooLarge {
                format,
                bytes: text.len(),
                max: SPEC_BYTES_MAX,
            });
        }
        match format {
            Format::Json => parse_json(text),
            Format::Toml => parse_toml(text),
        }
    }

    /// The calendar of the campaign's time zone, for counting claims per local day.
    pub fn calendar(&self) -> Result<LocalCalendar, CampaignError> {
        LocalCalendar::new(&self.timezone)
    }

    /// One line that lets the owner see the campaign is the one they meant: pool, limits,
    /// times (in UTC) and endpoint counts.
    pub fn summary(&self) -> String {
        let backup = self.delivery.backup.as_ref().map_or(0, Vec::len);
        format!(
            "{} {} in the pool, {} a day ({}), {} per user, {} to {}, {} primary and {backup} backup endpoint(s)",
            self.inventory,
            self.gift_ledger,
            self.daily_limit,
            self.timezone,
            self.per_user_limit,
            format_rfc3339(self.starts_at_ns),
            format_rfc3339(self.ends_at_ns),
            self.delivery.primary.len(),
        )
    }

    /// The stored form: compact JSON `{"version":1,"campaign":{...}}` with fields in a fixed
    /// order, times in UTC and every default written out, so equal specs give equal bytes.
    /// JSON rather than a binary form because campaigns are rare and small.
    ///
    /// Panics if a time is beyond Tally's clock, which no parsed spec holds.
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        let stored = Stored {
            version: ENCODING_VERSION,
            campaign: self,
        };
        serde_json::to_vec(&stored).expect("a spec's times are within Tally's clock")
    }

    /// Reads the stored form written by [`CampaignSpec::to_canonical_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<CampaignSpec, CampaignError> {
        let stored: StoredOwned =
            serde_json::from_slice(bytes).map_err(|error| CampaignError::Decode {
                reason: error.to_string(),
            })?;
        if stored.version != ENCODING_VERSION {
            return Err(CampaignError::Decode {
                reason: format!(
                    "stored campaign version {} is not {ENCODING_VERSION}, the one this release reads",
                    stored.version
                ),
            });
        }
        Ok(stored.campaign)
    }
}

fn parse_json(text: &str) -> Result<CampaignSpec, CampaignError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let spec: CampaignSpec =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let field = field_of(error.path());
            let inner = error.into_inner();
            parse_error(
                Format::Json,
                inner.line(),
                inner.column(),
                field,
                json_message(&inner),
            )
        })?;
    // Trailing characters after the object are a mistake too (two objects, a stray brace).
    deserializer.end().map_err(|error| {
        parse_error(
            Format::Json,
            error.line(),
            error.column(),
            None,
            json_message(&error),
        )
    })?;
    Ok(spec)
}

/// serde_json ends its messages with " at line L column C", which the error says separately.
fn json_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

fn parse_toml(text: &str) -> Result<CampaignSpec, CampaignError> {
    let to_error = |error: toml::de::Error, field: Option<String>| {
        let (line, column) = match error.span() {
            Some(span) => line_and_column(text, span.start),
            None => (0, 0),
        };
        parse_error(
            Format::Toml,
            line,
            column,
            field,
            error.message().to_owned(),
        )
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|error| to_error(error, None))?;
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let field = field_of(error.path());
        to_error(error.into_inner(), field)
    })
}

/// The dotted path of the field an error is about; `None` for the document itself.
fn field_of(path: &serde_path_to_error::Path) -> Option<String> {
    let text = path.to_string();
    (text != "." && !text.is_empty()).then_some(text)
}

fn parse_error(
    format: Format,
    line: usize,
    column: usize,
    field: Option<String>,
    message: String,
) -> CampaignError {
    CampaignError::Parse {
        format,
        line,
        column,
        field,
        message,
    }
}

/// The 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_choose_the_format() {
        assert_eq!(Format::for_file_name("a.json"), Format::Json);
        assert_eq!(Format::for_file_name("dir.d/A.JSON"), Format::Json);
        assert_eq!(Format::for_file_name("a.toml"), Format::Toml);
        assert_eq!(Format::for_file_name("campaign"), Format::Toml);
    }

    #[test]
    fn lines_and_columns_count_characters() {
        assert_eq!(line_and_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_and_column("é\nx", 1), (1, 1));
        assert_eq!(line_and_column("ab", 99), (1, 3));
    }
}
