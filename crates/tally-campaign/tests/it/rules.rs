//! One valid baseline, then one mutation per rule: exactly that rule fires, on that field.

use tally_campaign::{check, CampaignSpec, Rule};

use crate::baseline;

/// Applies `mutate` to the baseline and asserts that exactly `rule` fires, on `field`, with a
/// message and a fix.
#[track_caller]
fn check_only(mutate: impl FnOnce(&mut CampaignSpec), field: &str, rule: Rule) {
    let mut spec = baseline();
    mutate(&mut spec);
    let violations = check(&spec);
    let found: Vec<(&str, Rule)> = violations
        .iter()
        .map(|v| (v.field.as_str(), v.rule))
        .collect();
    assert_eq!(found, [(field, rule)], "{violations:#?}");
    assert!(!violations[0].message.is_empty());
    assert!(!violations[0].fix.is_empty());
}

fn url(text: &str) -> String {
    text.to_owned()
}

#[test]
fn the_baseline_is_valid() {
    assert_eq!(check(&baseline()), []);
}

#[test]
fn id_invalid() {
    check_only(|spec| spec.id = "spring 2026".into(), "id", Rule::IdInvalid);
    check_only(|spec| spec.id = String::new(), "id", Rule::IdInvalid);
    check_only(|spec| spec.id = "a".repeat(129), "id", Rule::IdInvalid);
}

#[test]
fn ledger_invalid() {
    check_only(
        |spec| spec.gift_ledger = "G".repeat(33),
        "gift_ledger",
        Rule::LedgerInvalid,
    );
    check_only(
        |spec| spec.gift_ledger = "gift/eur".into(),
        "gift_ledger",
        Rule::LedgerInvalid,
    );
}

#[test]
fn account_invalid() {
    check_only(
        |spec| spec.verification_account = "".into(),
        "verification_account",
        Rule::AccountInvalid,
    );
}

#[test]
fn limit_zero() {
    check_only(|spec| spec.inventory = 0, "inventory", Rule::LimitZero);
    check_only(
        |spec| spec.per_user_limit = 0,
        "per_user_limit",
        Rule::LimitZero,
    );
    // A zero daily limit says nothing more about inventory or the per-user limit.
    check_only(|spec| spec.daily_limit = 0, "daily_limit", Rule::LimitZero);
}

#[test]
fn inventory_below_daily_limit() {
    check_only(
        |spec| spec.inventory = spec.daily_limit - 1,
        "inventory",
        Rule::InventoryBelowDailyLimit,
    );
    let mut spec = baseline();
    spec.inventory = spec.daily_limit;
    assert_eq!(check(&spec), [], "equal is enough");
}

#[test]
fn per_user_limit_above_daily_limit() {
    check_only(
        |spec| spec.per_user_limit = spec.daily_limit + 1,
        "per_user_limit",
        Rule::PerUserLimitAboveDailyLimit,
    );
    let mut spec = baseline();
    spec.per_user_limit = spec.daily_limit;
    assert_eq!(check(&spec), [], "equal is allowed");
}

#[test]
fn timezone_unknown() {
    check_only(
        |spec| spec.timezone = "CEST".into(),
        "timezone",
        Rule::TimezoneUnknown,
    );
    check_only(
        |spec| spec.timezone = "Europe/Atlantis".into(),
        "timezone",
        Rule::TimezoneUnknown,
    );
    check_only(
        |spec| spec.timezone = "+01:00".into(),
        "timezone",
        Rule::TimezoneUnknown,
    );
}

#[test]
fn ends_not_after_start() {
    check_only(
        |spec| spec.ends_at_ns = spec.starts_at_ns,
        "ends_at",
        Rule::EndsNotAfterStart,
    );
    check_only(
        |spec| spec.ends_at_ns = spec.starts_at_ns - 1,
        "ends_at",
        Rule::EndsNotAfterStart,
    );
}

#[test]
fn timeout_out_of_range() {
    check_only(
        |spec| spec.delivery.connect_timeout_ms = 9,
        "delivery.connect_timeout_ms",
        Rule::TimeoutOutOfRange,
    );
    check_only(
        |spec| spec.delivery.connect_timeout_ms = 10_001,
        "delivery.connect_timeout_ms",
        Rule::TimeoutOutOfRange,
    );
    check_only(
        |spec| spec.delivery.read_timeout_ms = 60_001,
        "delivery.read_timeout_ms",
        Rule::TimeoutOutOfRange,
    );
    // Out of range and below the connect timeout: the range is what to fix first.
    check_only(
        |spec| spec.delivery.read_timeout_ms = 0,
        "delivery.read_timeout_ms",
        Rule::TimeoutOutOfRange,
    );
}

#[test]
fn read_timeout_not_above_connect() {
    check_only(
        |spec| spec.delivery.read_timeout_ms = spec.delivery.connect_timeout_ms,
        "delivery.read_timeout_ms",
        Rule::ReadTimeoutNotAboveConnect,
    );
}

#[test]
fn group_empty() {
    check_only(
        |spec| spec.delivery.primary.clear(),
        "delivery.primary",
        Rule::GroupEmpty,
    );
    check_only(
        |spec| spec.delivery.backup = Some(vec![]),
        "delivery.backup",
        Rule::GroupEmpty,
    );
    let mut spec = baseline();
    spec.delivery.backup = None;
    assert_eq!(check(&spec), [], "backup is optional");
}

#[test]
fn group_too_large() {
    let many = (0..17)
        .map(|index| format!("https://gifts-{index}.example.com/"))
        .collect();
    check_only(
        |spec| spec.delivery.primary = many,
        "delivery.primary",
        Rule::GroupTooLarge,
    );
}

#[test]
fn url_malformed() {
    check_only(
        |spec| spec.delivery.primary[1] = url("gifts.example.com/deliver"),
        "delivery.primary[1]",
        Rule::UrlMalformed,
    );
    check_only(
        |spec| spec.delivery.primary[0] = url("https://"),
        "delivery.primary[0]",
        Rule::UrlMalformed,
    );
    check_only(
        |spec| spec.delivery.primary[0] = url(" https://a.example.com/"),
        "delivery.primary[0]",
        Rule::UrlMalformed,
    );
    check_only(
        |spec| spec.stats_webhook = Some(url("http://[::1")),
        "stats_webhook",
        Rule::UrlMalformed,
    );
}

#[test]
fn url_too_long() {
    let long = format!("https://a.example.com/{}", "x".repeat(2048));
    check_only(
        |spec| spec.delivery.backup = Some(vec![long]),
        "delivery.backup[0]",
        Rule::UrlTooLong,
    );
}

#[test]
fn url_scheme_unsupported() {
    check_only(
        |spec| spec.delivery.primary[0] = url("ftp://gifts.example.com/"),
        "delivery.primary[0]",
        Rule::UrlSchemeUnsupported,
    );
    check_only(
        |spec| spec.stats_webhook = Some(url("mailto:ops@example.com")),
        "stats_webhook",
        Rule::UrlSchemeUnsupported,
    );
}

#[test]
fn url_has_credentials() {
    check_only(
        |spec| spec.delivery.primary[0] = url("https://user:secret@gifts.example.com/"),
        "delivery.primary[0]",
        Rule::UrlHasCredentials,
    );
    check_only(
        |spec| spec.delivery.primary[0] = url("https://token@gifts.example.com/"),
        "delivery.primary[0]",
        Rule::UrlHasCredentials,
    );
}

#[test]
fn url_has_fragment() {
    check_only(
        |spec| spec.delivery.primary[0] = url("https://gifts.example.com/deliver#now"),
        "delivery.primary[0]",
        Rule::UrlHasFragment,
    );
}

#[test]
fn endpoint_duplicate() {
    // Within a group, and across groups after normalisation (case, default port, dot segments).
    check_only(
        |spec| spec.delivery.primary[1] = spec.delivery.primary[0].clone(),
        "delivery.primary[1]",
        Rule::EndpointDuplicate,
    );
    check_only(
        |spec| {
            spec.delivery.backup =
                Some(vec![url("HTTPS://Gifts-A.Example.com:443/v1/x/../deliver")])
        },
        "delivery.backup[0]",
        Rule::EndpointDuplicate,
    );
    let mut spec = baseline();
    spec.delivery.backup = Some(vec![url("https://gifts-a.example.com/v1/deliver/")]);
    assert_eq!(check(&spec), [], "a different path is a different endpoint");
}

#[test]
fn max_read_timeouts_out_of_range() {
    check_only(
        |spec| spec.delivery.max_read_timeouts = 0,
        "delivery.max_read_timeouts",
        Rule::MaxReadTimeoutsOutOfRange,
    );
    check_only(
        |spec| {
            spec.delivery.max_retries = 10;
            spec.delivery.max_read_timeouts = 11;
        },
        "delivery.max_read_timeouts",
        Rule::MaxReadTimeoutsOutOfRange,
    );
}

#[test]
fn max_retries_out_of_range() {
    check_only(
        |spec| spec.delivery.max_retries = 11,
        "delivery.max_retries",
        Rule::MaxRetriesOutOfRange,
    );
}

#[test]
fn read_timeout_cap_unreachable() {
    check_only(
        |spec| {
            spec.delivery.max_retries = 1;
            spec.delivery.max_read_timeouts = 3;
        },
        "delivery.max_read_timeouts",
        Rule::ReadTimeoutCapUnreachable,
    );
    let mut spec = baseline();
    spec.delivery.max_retries = 0;
    spec.delivery.max_read_timeouts = 1;
    spec.delivery.retry_budget_percent = 0;
    assert_eq!(
        check(&spec),
        [],
        "no retries: one attempt, one read timeout"
    );
}

#[test]
fn retry_budget_out_of_range() {
    check_only(
        |spec| spec.delivery.retry_budget_percent = 51,
        "delivery.retry_budget_percent",
        Rule::RetryBudgetOutOfRange,
    );
    check_only(
        |spec| spec.delivery.retry_budget_percent = 400,
        "delivery.retry_budget_percent",
        Rule::RetryBudgetOutOfRange,
    );
}

#[test]
fn retries_without_budget() {
    check_only(
        |spec| spec.delivery.retry_budget_percent = 0,
        "delivery.retry_budget_percent",
        Rule::RetriesWithoutBudget,
    );
}

#[test]
fn every_fault_is_reported_in_one_pass() {
    let mut spec = baseline();
    spec.id = "bad id".into();
    spec.inventory = 10;
    spec.timezone = "CET/Berlin".into();
    spec.ends_at_ns = spec.starts_at_ns;
    spec.delivery.read_timeout_ms = 100;
    spec.delivery
        .primary
        .push("https://gifts-b.example.com/v1/deliver".into());
    spec.delivery.backup = Some(vec!["ftp://x.example.com/".into()]);
    spec.delivery.retry_budget_percent = 90;
    let found: Vec<(String, Rule)> = check(&spec)
        .into_iter()
        .map(|v| (v.field, v.rule))
        .collect();
    let expected = [
        ("id", Rule::IdInvalid),
        ("inventory", Rule::InventoryBelowDailyLimit),
        ("timezone", Rule::TimezoneUnknown),
        ("ends_at", Rule::EndsNotAfterStart),
        ("delivery.read_timeout_ms", Rule::ReadTimeoutNotAboveConnect),
        ("delivery.primary[2]", Rule::EndpointDuplicate),
        ("delivery.backup[0]", Rule::UrlSchemeUnsupported),
        ("delivery.retry_budget_percent", Rule::RetryBudgetOutOfRange),
    ];
    let expected: Vec<(String, Rule)> = expected
        .iter()
        .map(|(field, rule)| (field.to_string(), *rule))
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn messages_carry_the_values_and_fixes_say_what_to_do() {
    let mut spec = baseline();
    spec.inventory = 1500;
    let violations = check(&spec);
    assert_eq!(violations.len(), 1);
    assert!(
        violations[0].message.contains("1500"),
        "{}",
        violations[0].message
    );
    assert!(
        violations[0].message.contains("2000"),
        "{}",
        violations[0].message
    );
    assert!(
        violations[0].fix.contains("at least 2000"),
        "{}",
        violations[0].fix
    );
}

#[test]
fn every_rule_has_a_distinct_code_and_is_documented() {
    let docs = include_str!("../../../../docs/campaigns.md");
    let mut codes: Vec<&str> = Rule::ALL.iter().map(|rule| rule.code()).collect();
    for code in &codes {
        assert!(
            docs.contains(&format!("`{code}`")),
            "docs/campaigns.md does not describe `{code}`"
        );
    }
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), Rule::ALL.len());
}

#[test]
fn violations_serialize_with_the_rule_code() {
    let mut spec = baseline();
    spec.delivery.max_retries = 11;
    let json = serde_json::to_value(check(&spec)).unwrap();
    assert_eq!(json[0]["rule"], "max_retries_out_of_range");
    assert_eq!(json[0]["field"], "delivery.max_retries");
}
