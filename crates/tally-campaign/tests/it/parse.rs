//! The JSON and TOML forms, and parse errors that name the line and the field.

use proptest::prelude::*;
use tally_campaign::{CampaignError, CampaignSpec, Format};

use crate::{baseline, EXAMPLE_TOML};

const EXAMPLE_JSON: &str = r#"{
  "id": "spring-2026",
  "gift_ledger": "GIFT",
  "inventory": 50000,
  "per_user_limit": 3,
  "daily_limit": 2000,
  "timezone": "Europe/Berlin",
  "starts_at": "2026-03-20T08:00:00Z",
  "ends_at": "2026-04-30T23:59:59+02:00",
  "verification_account": "gift-verification",
  "delivery": {
    "primary": ["https://gifts-a.example.com/v1/deliver", "https://gifts-b.example.com/v1/deliver"],
    "backup": ["https://gifts-dr.example.net/v1/deliver"],
    "connect_timeout_ms": 200,
    "read_timeout_ms": 1500,
    "max_read_timeouts": 2,
    "retry_budget_percent": 10
  },
  "stats_webhook": "https://stats.example.com/hooks/tally"
}"#;

/// Parses `text` and returns the parse error's (line, field, message).
#[track_caller]
fn parse_error(text: &str, format: Format) -> (usize, Option<String>, String) {
    match CampaignSpec::parse(text, format) {
        Err(CampaignError::Parse {
            line,
            field,
            message,
            ..
        }) => (line, field, message),
        other => panic!("expected a parse error, found {other:?}"),
    }
}

#[test]
fn json_and_toml_give_the_same_spec() {
    let json = CampaignSpec::parse(EXAMPLE_JSON, Format::Json).unwrap();
    assert_eq!(json, baseline());
}

#[test]
fn optional_fields_take_their_defaults() {
    let json = EXAMPLE_JSON
        .replace(
            r#""backup": ["https://gifts-dr.example.net/v1/deliver"],"#,
            "",
        )
        .replace(
            r#","stats_webhook": "https://stats.example.com/hooks/tally""#,
            "",
        );
    let spec = CampaignSpec::parse(&json, Format::Json).unwrap();
    assert_eq!(spec.delivery.backup, None);
    assert_eq!(
        spec.delivery.max_retries,
        tally_campaign::limits::RETRIES_PER_DELIVERY_DEFAULT
    );
}

#[test]
fn unknown_fields_are_named() {
    let json = EXAMPLE_JSON.replace(r#""max_read_timeouts": 2"#, r#""max_read_timeout": 2"#);
    let (line, field, message) = parse_error(&json, Format::Json);
    assert_eq!(line, 16);
    assert_eq!(field.as_deref(), Some("delivery.max_read_timeout"));
    assert!(
        message.contains("unknown field `max_read_timeout`"),
        "{message}"
    );

    let toml = format!("{EXAMPLE_TOML}\ncolour = \"red\"\n");
    let (_, _, message) = parse_error(&toml, Format::Toml);
    assert!(message.contains("unknown field `colour`"), "{message}");
}

#[test]
fn bad_times_name_the_field_and_the_line() {
    let json = EXAMPLE_JSON.replace("2026-03-20T08:00:00Z", "2026-03-20 08:00");
    let (line, field, message) = parse_error(&json, Format::Json);
    assert_eq!((line, field.as_deref()), (8, Some("starts_at")));
    assert!(message.contains("RFC 3339"), "{message}");

    let toml = EXAMPLE_TOML.replace("2026-03-20T09:00:00+01:00", "2026-03-20T09:00:00");
    let (line, field, message) = parse_error(&toml, Format::Toml);
    assert_eq!((line, field.as_deref()), (13, Some("starts_at")));
    assert!(message.contains("has no offset"), "{message}");

    let toml = EXAMPLE_TOML.replace("2026-03-20T09:00:00+01:00", "2026-03-20");
    let (_, field, message) = parse_error(&toml, Format::Toml);
    assert_eq!(field.as_deref(), Some("starts_at"));
    assert!(message.contains("a date without a time"), "{message}");

    let toml = EXAMPLE_TOML.replace("2026-03-20T09:00:00+01:00", "\"1969-07-20T20:17:00Z\"");
    let (_, field, message) = parse_error(&toml, Format::Toml);
    assert_eq!(field.as_deref(), Some("starts_at"));
    assert!(message.contains("before 1970"), "{message}");
}

#[test]
fn wrong_types_and_missing_fields_are_named() {
    let toml = EXAMPLE_TOML.replace("read_timeout_ms = 1500", "read_timeout_ms = \"1500\"");
    let (line, field, _) = parse_error(&toml, Format::Toml);
    assert_eq!(
        (line, field.as_deref()),
        (27, Some("delivery.read_timeout_ms"))
    );

    let json = EXAMPLE_JSON.replace(r#""inventory": 50000"#, r#""inventory": -5"#);
    let (line, field, _) = parse_error(&json, Format::Json);
    assert_eq!((line, field.as_deref()), (4, Some("inventory")));

    let toml = EXAMPLE_TOML.replace("daily_limit = 2000", "");
    let (_, _, message) = parse_error(&toml, Format::Toml);
    assert!(message.contains("missing field `daily_limit`"), "{message}");
}

#[test]
fn syntax_errors_give_a_line() {
    let (line, field, _) = parse_error("id = \"x\"\ninventory = = 3\n", Format::Toml);
    assert_eq!((line, field), (2, None));
    let (line, _, _) = parse_error("{\n\"id\": \"x\",,\n}", Format::Json);
    assert_eq!(line, 2);
    let (_, _, message) = parse_error(&format!("{EXAMPLE_JSON} {{}}"), Format::Json);
    assert!(message.contains("trailing characters"), "{message}");
}

#[test]
fn oversized_text_is_refused_before_parsing() {
    let text = " ".repeat(tally_campaign::limits::SPEC_BYTES_MAX + 1);
    assert!(matches!(
        CampaignSpec::parse(&text, Format::Json),
        Err(CampaignError::TooLarge { .. })
    ));
}

#[test]
fn errors_display_line_field_and_message() {
    let json = EXAMPLE_JSON.replace(r#""inventory": 50000"#, r#""inventory": "many""#);
    let error = CampaignSpec::parse(&json, Format::Json)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("JSON line 4, column 21, field `inventory`: invalid type"),
        "{error}"
    );
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics_the_parsers(text in ".{0,400}") {
        let _ = CampaignSpec::parse(&text, Format::Json);
        let _ = CampaignSpec::parse(&text, Format::Toml);
        let _ = CampaignSpec::from_bytes(text.as_bytes());
    }

    #[test]
    fn mangled_examples_never_panic_the_parsers(
        cut in 0usize..2000,
        insert in "[\\[\\]{}\"=,:#\\n a-z0-9.+-]{0,8}",
    ) {
        for (example, format) in [(EXAMPLE_TOML, Format::Toml), (EXAMPLE_JSON, Format::Json)] {
            let mut at = cut.min(example.len());
            while !example.is_char_boundary(at) {
                at -= 1;
            }
            let text = format!("{}{insert}{}", &example[..at], &example[at..]);
            if let Ok(spec) = CampaignSpec::parse(&text, format) {
                let _ = tally_campaign::check(&spec);
            }
        }
    }
}

#[test]
fn the_summary_names_pool_limits_times_and_endpoints() {
    assert_eq!(
        baseline().summary(),
        "50000 GIFT in the pool, 2000 a day (Europe/Berlin), 3 per user, 2026-03-20T08:00:00Z to \
         2026-04-30T21:59:59Z, 2 primary and 1 backup endpoint(s)"
    );
}
