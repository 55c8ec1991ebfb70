//! The rules a campaign must obey before it is published, each reported with its field and a fix.
//!
//! Every rule is checked on every spec, so that one run shows every fault; a rule whose inputs
//! are already reported wrong by another rule stays quiet, so each fault is reported once.

use std::collections::HashMap;

use serde::Serialize;
use tally_core::campaign::{is_reserved, RESERVED_PREFIX};
use tally_core::limits::CAMPAIGN_ID_BYTES_MAX;
use tally_core::{Id, LedgerCode};
use url::Url;

use crate::limits::{
    CONNECT_TIMEOUT_MS_MAX, CONNECT_TIMEOUT_MS_MIN, ENDPOINTS_PER_GROUP_MAX,
    READ_TIMEOUTS_PER_DELIVERY_MAX, READ_TIMEOUT_MS_MAX, READ_TIMEOUT_MS_MIN,
    RETRIES_PER_DELIVERY_MAX, RETRY_BUDGET_PERCENT_MAX, URL_BYTES_MAX,
};
use crate::spec::{CampaignSpec, DeliverySpec};
use crate::time::{format_rfc3339, LocalCalendar};

/// One broken rule: where, which, what is wrong with the values given, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Dotted path of the field, such as `delivery.read_timeout_ms` or `delivery.primary[1]`.
    pub field: String,
    /// The rule, serialized as its stable code.
    pub rule: Rule,
    /// What is wrong, with the values found.
    pub message: String,
    /// What to change.
    pub fix: String,
}

/// The rules, each with a stable code for machines (`Rule::code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// `id` is not a Tally id.
    IdInvalid,
    /// `gift_ledger` is not a ledger code.
    LedgerInvalid,
    /// `verification_account` is not a Tally id.
    AccountInvalid,
    /// A count that must be positive is zero.
    LimitZero,
    /// The pool cannot cover one full day.
    InventoryBelowDailyLimit,
    /// One user may claim more than a whole day allows.
    PerUserLimitAboveDailyLimit,
    /// `timezone` is not in the time zone database.
    TimezoneUnknown,
    /// The campaign ends when or before it starts.
    EndsNotAfterStart,
    /// A timeout lies outside its bounds.
    TimeoutOutOfRange,
    /// The read timeout does not exceed the connect timeout.
    ReadTimeoutNotAboveConnect,
    /// A delivery group has no endpoint.
    GroupEmpty,
    /// A delivery group has more endpoints than allowed.
    GroupTooLarge,
    /// A URL does not parse, or has spaces around it.
    UrlMalformed,
    /// A URL is longer than allowed.
    UrlTooLong,
    /// A URL is not http or https.
    UrlSchemeUnsupported,
    /// A URL carries a user name or password.
    UrlHasCredentials,
    /// A URL has a `#fragment`.
    UrlHasFragment,
    /// Two endpoints are the same after normalisation.
    EndpointDuplicate,
    /// `max_read_timeouts` is zero or above its bound.
    MaxReadTimeoutsOutOfRange,
    /// `max_retries` is above its bound.
    MaxRetriesOutOfRange,
    /// The read-timeout cap exceeds the attempts a delivery gets, so it can never apply.
    ReadTimeoutCapUnreachable,
    /// `retry_budget_percent` is above its bound.
    RetryBudgetOutOfRange,
    /// Retries are configured but the budget allows none.
    RetriesWithoutBudget,
}

impl Rule {
    /// Every rule, in the order `check` reports them.
    pub const ALL: [Rule; 23] = [
        Rule::IdInvalid,
        Rule::LedgerInvalid,
        Rule::AccountInvalid,
        Rule::LimitZero,
        Rule::InventoryBelowDailyLimit,
        Rule::PerUserLimitAboveDailyLimit,
        Rule::TimezoneUnknown,
        Rule::EndsNotAfterStart,
        Rule::TimeoutOutOfRange,
        Rule::ReadTimeoutNotAboveConnect,
        Rule::GroupEmpty,
        Rule::GroupTooLarge,
        Rule::UrlMalformed,
        Rule::UrlTooLong,
        Rule::UrlSchemeUnsupported,
        Rule::UrlHasCredentials,
        Rule::UrlHasFragment,
        Rule::EndpointDuplicate,
        Rule::MaxReadTimeoutsOutOfRange,
        Rule::MaxRetriesOutOfRange,
        Rule::ReadTimeoutCapUnreachable,
        Rule::RetryBudgetOutOfRange,
        Rule::RetriesWithoutBudget,
    ];

    /// The stable code: part of the API's answers and `tally campaign check --json`.
    pub fn code(self) -> &'static str {
        match self {
            Rule::IdInvalid => "id_invalid",
            Rule::LedgerInvalid => "ledger_invalid",
            Rule::AccountInvalid => "account_invalid",
            Rule::LimitZero => "limit_zero",
            Rule::InventoryBelowDailyLimit => "inventory_below_daily_limit",
            Rule::PerUserLimitAboveDailyLimit => "per_user_limit_above_daily_limit",
            Rule::TimezoneUnknown => "timezone_unknown",
            Rule::EndsNotAfterStart => "ends_not_after_start",
            Rule::TimeoutOutOfRange => "timeout_out_of_range",
            Rule::ReadTimeoutNotAboveConnect => "read_timeout_not_above_connect",
            Rule::GroupEmpty => "group_empty",
            Rule::GroupTooLarge => "group_too_large",
            Rule::UrlMalformed => "url_malformed",
            Rule::UrlTooLong => "url_too_long",
            Rule::UrlSchemeUnsupported => "url_scheme_unsupported",
            Rule::UrlHasCredentials => "url_has_credentials",
            Rule::UrlHasFragment => "url_has_fragment",
            Rule::EndpointDuplicate => "endpoint_duplicate",
            Rule::MaxReadTimeoutsOutOfRange => "max_read_timeouts_out_of_range",
            Rule::MaxRetriesOutOfRange => "max_retries_out_of_range",
            Rule::ReadTimeoutCapUnreachable => "read_timeout_cap_unreachable",
            Rule::RetryBudgetOutOfRange => "retry_budget_out_of_range",
            Rule::RetriesWithoutBudget => "retries_without_budget",
        }
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// Every rule the spec breaks, in field order; empty when the campaign may be published.
pub fn check(spec: &CampaignSpec) -> Vec<Violation> {
    let mut found = Found(Vec::new());
    check_names(spec, &mut found);
    check_limits(spec, &mut found);
    check_schedule(spec, &mut found);
    check_timeouts(&spec.delivery, &mut found);
    check_endpoints(spec, &mut found);
    check_retries(&spec.delivery, &mut found);
    found.0
}

/// The violations found so far.
struct Found(Vec<Violation>);

impl Found {
    fn add(&mut self, field: impl Into<String>, rule: Rule, message: String, fix: String) {
        let field = field.into();
        assert!(!field.is_empty());
        assert!(!message.is_empty());
        assert!(!fix.is_empty());
        self.0.push(Violation {
            field,
            rule,
            message,
            fix,
        });
    }
}

/// A value quoted for a message, shortened so that a huge value cannot flood the output.
fn quoted(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 80;
    if text.chars().count() <= SHOWN_CHARS_MAX {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(SHOWN_CHARS_MAX).collect();
        format!("{head:?}… ({} bytes)", text.len())
    }
}

fn check_names(spec: &CampaignSpec, found: &mut Found) {
    let id_fix = format!("use 1 to {CAMPAIGN_ID_BYTES_MAX} characters of A-Z, a-z, 0-9, '.', '_', ':' and '-', not starting with \"{RESERVED_PREFIX}\", such as \"spring-2026\"");
    match Id::new(&spec.id) {
        Err(error) => found.add(
            "id",
            Rule::IdInvalid,
            format!("campaign id {} {error}", quoted(&spec.id)),
            id_fix,
        ),
        Ok(id) if id.as_str().len() > CAMPAIGN_ID_BYTES_MAX => found.add(
            "id",
            Rule::IdInvalid,
            format!(
                "campaign id {} has {} bytes; at most {CAMPAIGN_ID_BYTES_MAX}, so that its pool account id \"{RESERVED_PREFIX}pool:ID\" is an id",
                quoted(&spec.id),
                spec.id.len()
            ),
            id_fix,
        ),
        Ok(id) if is_reserved(&id) => found.add(
            "id",
            Rule::IdInvalid,
            format!(
                "campaign id {} starts with \"{RESERVED_PREFIX}\", which the ledger keeps for its own ids",
                quoted(&spec.id)
            ),
            id_fix,
        ),
        Ok(_) => {}
    }
    if let Err(error) = LedgerCode::new(&spec.gift_ledger) {
        found.add(
            "gift_ledger",
            Rule::LedgerInvalid,
            format!("gift ledger {} {error}", quoted(&spec.gift_ledger)),
            "name the ledger the gifts are counted in: 1 to 32 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-', such as \"GIFT\"".into(),
        );
    }
    let account_fix = format!("name an account id: 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-', not starting with \"{RESERVED_PREFIX}\"");
    match Id::new(&spec.verification_account) {
        Err(error) => found.add(
            "verification_account",
            Rule::AccountInvalid,
            format!(
                "verification account {} {error}",
                quoted(&spec.verification_account)
            ),
            account_fix,
        ),
        Ok(id) if is_reserved(&id) => found.add(
            "verification_account",
            Rule::AccountInvalid,
            format!(
                "verification account {} starts with \"{RESERVED_PREFIX}\", which the ledger keeps for its own ids",
                quoted(&spec.verification_account)
            ),
            account_fix,
        ),
        Ok(_) => {}
    }
}

fn check_limits(spec: &CampaignSpec, found: &mut Found) {
    let counts = [
        (
            "inventory",
            spec.inventory,
            "put at least one gift in the pool",
        ),
        (
            "per_user_limit",
            spec.per_user_limit,
            "let each user claim at least one gift",
        ),
        (
            "daily_limit",
            spec.daily_limit,
            "allow at least one claim per day",
        ),
    ];
    for (field, value, fix) in counts {
        if value == 0 {
            found.add(
                field,
                Rule::LimitZero,
                format!("{field} is 0, so nobody can ever claim a gift"),
                fix.into(),
            );
        }
    }
    // Comparisons with a zero are already reported above.
    if spec.inventory > 0 && spec.daily_limit > 0 && spec.inventory < spec.daily_limit {
        found.add(
            "inventory",
            Rule::InventoryBelowDailyLimit,
            format!(
                "inventory {} is below the daily limit {}, so the pool can run dry on the first day and the daily limit never applies",
                spec.inventory, spec.daily_limit
            ),
            format!(
                "raise inventory to at least {}, or lower daily_limit to at most {}",
                spec.daily_limit, spec.inventory
            ),
        );
    }
    if spec.per_user_limit > 0 && spec.daily_limit > 0 && spec.per_user_limit > spec.daily_limit {
        found.add(
            "per_user_limit",
            Rule::PerUserLimitAboveDailyLimit,
            format!(
                "per_user_limit {} is above the daily limit {}, so one user could take a whole day's gifts",
                spec.per_user_limit, spec.daily_limit
            ),
            format!(
                "lower per_user_limit to at most {}, or raise daily_limit to at least {}",
                spec.daily_limit, spec.per_user_limit
            ),
        );
    }
}

fn check_schedule(spec: &CampaignSpec, found: &mut Found) {
    if LocalCalendar::new(&spec.timezone).is_err() {
        found.add(
            "timezone",
            Rule::TimezoneUnknown,
            format!("time zone {} is not in the IANA time zone database", quoted(&spec.timezone)),
            "use an IANA zone name such as \"Europe/Berlin\", \"America/New_York\" or \"UTC\" (not an abbreviation like \"CET\" or an offset)".into(),
        );
    }
    if spec.ends_at_ns <= spec.starts_at_ns {
        found.add(
            "ends_at",
            Rule::EndsNotAfterStart,
            format!(
                "ends_at {} is not after starts_at {}, so the campaign would never be open",
                format_rfc3339(spec.ends_at_ns),
                format_rfc3339(spec.starts_at_ns)
            ),
            "set ends_at to a time after starts_at (RFC 3339 with an offset, such as 2026-01-31T23:59:59+01:00)".into(),
        );
    }
}

fn check_timeouts(delivery: &DeliverySpec, found: &mut Found) {
    let connect = delivery.connect_timeout_ms;
    let read = delivery.read_timeout_ms;
    let connect_ok = (CONNECT_TIMEOUT_MS_MIN..=CONNECT_TIMEOUT_MS_MAX).contains(&connect);
    let read_ok = (READ_TIMEOUT_MS_MIN..=READ_TIMEOUT_MS_MAX).contains(&read);
    if !connect_ok {
        found.add(
            "delivery.connect_timeout_ms",
            Rule::TimeoutOutOfRange,
            format!(
                "connect timeout {connect} ms is outside {CONNECT_TIMEOUT_MS_MIN}..={CONNECT_TIMEOUT_MS_MAX} ms: shorter fails healthy targets on jitter, longer holds delivery slots for handshakes that will not complete"
            ),
            format!("set connect_timeout_ms between {CONNECT_TIMEOUT_MS_MIN} and {CONNECT_TIMEOUT_MS_MAX}; 100 to 1000 suits most targets"),
        );
    }
    if !read_ok {
        found.add(
            "delivery.read_timeout_ms",
            Rule::TimeoutOutOfRange,
            format!(
                "read timeout {read} ms is outside {READ_TIMEOUT_MS_MIN}..={READ_TIMEOUT_MS_MAX} ms: shorter cuts off deliveries that succeed, longer lets one slow target tie up the dispatcher"
            ),
            format!("set read_timeout_ms between {READ_TIMEOUT_MS_MIN} and {READ_TIMEOUT_MS_MAX}, above the target's usual answer time"),
        );
    }
    if connect_ok && read_ok && read <= connect {
        found.add(
            "delivery.read_timeout_ms",
            Rule::ReadTimeoutNotAboveConnect,
            format!(
                "read timeout {read} ms is not above the connect timeout {connect} ms; the target needs longer to do its work than to accept a connection"
            ),
            format!("raise read_timeout_ms above {connect}, or lower connect_timeout_ms below {read}"),
        );
    }
}

fn check_endpoints(spec: &CampaignSpec, found: &mut Found) {
    let delivery = &spec.delivery;
    let mut groups = vec![("delivery.primary", delivery.primary.as_slice())];
    if let Some(backup) = &delivery.backup {
        groups.push(("delivery.backup", backup.as_slice()));
    }
    // Normalised URL → the field where it first appeared.
    let mut seen: HashMap<String, String> = HashMap::new();
    for (group, urls) in groups {
        check_group_size(group, urls.len(), found);
        for (index, text) in urls.iter().enumerate() {
            let field = format!("{group}[{index}]");
            let Some(url) = check_url(&field, text, found) else {
                continue;
            };
            if let Some(first) = seen.get(url.as_str()) {
                found.add(
                    field.as_str(),
                    Rule::EndpointDuplicate,
                    format!(
                        "{} is the same endpoint as {first} ({})",
                        quoted(text),
                        url.as_str()
                    ),
                    format!("remove {field}; an endpoint belongs to one group, once"),
                );
            } else {
                seen.insert(url.as_str().to_owned(), field);
            }
        }
    }
    if let Some(webhook) = &spec.stats_webhook {
        check_url("stats_webhook", webhook, found);
    }
}

fn check_group_size(group: &str, count: usize, found: &mut Found) {
    if count == 0 {
        let fix = if group == "delivery.primary" {
            "list at least one endpoint URL in delivery.primary".to_owned()
        } else {
            "list at least one endpoint URL in delivery.backup, or leave backup out (no failover)"
                .to_owned()
        };
        found.add(
            group,
            Rule::GroupEmpty,
            format!("{group} has no endpoint, so it could never deliver"),
            fix,
        );
    }
    if count > ENDPOINTS_PER_GROUP_MAX {
        found.add(
            group,
            Rule::GroupTooLarge,
            format!("{group} has {count} endpoints, more than {ENDPOINTS_PER_GROUP_MAX}"),
            format!("list at most {ENDPOINTS_PER_GROUP_MAX} endpoints; put a load balancer in front of a larger fleet"),
        );
    }
}

/// Checks one URL; gives it back normalised (lower-case scheme and host, default port dropped,
/// dot segments resolved) when it is usable.
fn check_url(field: &str, text: &str, found: &mut Found) -> Option<Url> {
    let example =
        "write an absolute http or https URL such as \"https://gifts.example.com/v1/deliver\"";
    if text.len() > URL_BYTES_MAX {
        found.add(
            field,
            Rule::UrlTooLong,
            format!("URL of {} bytes is longer than {URL_BYTES_MAX}", text.len()),
            format!("shorten the URL to at most {URL_BYTES_MAX} bytes"),
        );
        return None;
    }
    if text.trim() != text {
        found.add(
            field,
            Rule::UrlMalformed,
            format!("URL {} has spaces around it", quoted(text)),
            "remove the spaces around the URL".into(),
        );
        return None;
    }
    let url = match Url::parse(text) {
        Ok(url) => url,
        Err(error) => {
            found.add(
                field,
                Rule::UrlMalformed,
                format!("URL {} does not parse: {error}", quoted(text)),
                example.into(),
            );
            return None;
        }
    };
    if !matches!(url.scheme(), "http" | "https") {
        found.add(
            field,
            Rule::UrlSchemeUnsupported,
            format!(
                "URL {} has scheme {:?}; deliveries go over HTTP",
                quoted(text),
                url.scheme()
            ),
            example.into(),
        );
        return None;
    }
    // The url crate requires a host for http and https.
    assert!(url.host().is_some());
    let mut usable = true;
    if !url.username().is_empty() || url.password().is_some() {
        found.add(
            field,
            Rule::UrlHasCredentials,
            format!("URL {} carries a user name or password, which would be stored in the log and shown in status pages", quoted(text)),
            "remove the user:password@ part; give the target's credentials to the dispatcher separately".into(),
        );
        usable = false;
    }
    if url.fragment().is_some() {
        found.add(
            field,
            Rule::UrlHasFragment,
            format!(
                "URL {} has a #fragment, which is never sent to the server",
                quoted(text)
            ),
            "remove the #... part".into(),
        );
        usable = false;
    }
    usable.then_some(url)
}

fn check_retries(delivery: &DeliverySpec, found: &mut Found) {
    let cap = delivery.max_read_timeouts;
    let retries = delivery.max_retries;
    let budget = delivery.retry_budget_percent;
    let cap_ok = (1..=READ_TIMEOUTS_PER_DELIVERY_MAX).contains(&cap);
    let retries_ok = retries <= RETRIES_PER_DELIVERY_MAX;
    if !cap_ok {
        found.add(
            "delivery.max_read_timeouts",
            Rule::MaxReadTimeoutsOutOfRange,
            format!("max_read_timeouts {cap} is outside 1..={READ_TIMEOUTS_PER_DELIVERY_MAX}; a delivery always gets its first attempt, and every read timeout may be a success the target already applied"),
            format!("set max_read_timeouts between 1 and {READ_TIMEOUTS_PER_DELIVERY_MAX}; 1 or 2 suits targets whose idempotency you have not verified"),
        );
    }
    if !retries_ok {
        found.add(
            "delivery.max_retries",
            Rule::MaxRetriesOutOfRange,
            format!("max_retries {retries} is above {RETRIES_PER_DELIVERY_MAX}; more retries do not recover a target that is down"),
            format!("set max_retries to at most {RETRIES_PER_DELIVERY_MAX}; failed deliveries go to the retry queue anyway"),
        );
    }
    // `max_retries` is at most 10 here, so the sum cannot overflow.
    if cap_ok && retries_ok && cap > retries + 1 {
        found.add(
            "delivery.max_read_timeouts",
            Rule::ReadTimeoutCapUnreachable,
            format!(
                "max_read_timeouts {cap} exceeds the {} attempts a delivery gets (1 + max_retries {retries}), so the cap would never apply",
                retries + 1
            ),
            format!("lower max_read_timeouts to at most {}, or raise max_retries to at least {}", retries + 1, cap - 1),
        );
    }
    if budget > RETRY_BUDGET_PERCENT_MAX {
        found.add(
            "delivery.retry_budget_percent",
            Rule::RetryBudgetOutOfRange,
            format!("retry_budget_percent {budget} is above {RETRY_BUDGET_PERCENT_MAX}; retries that large turn a struggling target into a dead one"),
            format!("set retry_budget_percent between 0 and {RETRY_BUDGET_PERCENT_MAX}; 10 to 20 is usual"),
        );
    }
    if retries_ok && retries > 0 && budget == 0 {
        found.add(
            "delivery.retry_budget_percent",
            Rule::RetriesWithoutBudget,
            format!("max_retries is {retries} but retry_budget_percent is 0, so no retry would ever be sent"),
            "give retries a budget (such as 10), or set max_retries to 0 to deliver without retries".into(),
        );
    }
}
