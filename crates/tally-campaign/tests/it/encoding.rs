//! The stored form: canonical bytes that read back to the same spec.

use proptest::prelude::*;
use tally_campaign::{CampaignError, CampaignSpec, DeliverySpec};
use tally_core::limits::TIMESTAMP_NS_MAX;

use crate::baseline;

fn spec_strategy() -> impl Strategy<Value = CampaignSpec> {
    let text = ".{0,20}";
    let urls = prop::collection::vec(text, 0..4);
    let delivery = (
        urls.clone(),
        prop::option::of(urls),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(
                primary,
                backup,
                connect_timeout_ms,
                read_timeout_ms,
                max_read_timeouts,
                max_retries,
                retry_budget_percent,
            )| DeliverySpec {
                primary,
                backup,
                connect_timeout_ms,
                read_timeout_ms,
                max_read_timeouts,
                max_retries,
                retry_budget_percent,
            },
        );
    let names = (text, text, text, text);
    let counts = (any::<u64>(), any::<u64>(), any::<u64>());
    let times = (0..=TIMESTAMP_NS_MAX, 0..=TIMESTAMP_NS_MAX);
    (names, counts, times, delivery, prop::option::of(text)).prop_map(
        |(
            (id, gift_ledger, timezone, verification_account),
            (inventory, per_user_limit, daily_limit),
            (starts_at_ns, ends_at_ns),
            delivery,
            stats_webhook,
        )| CampaignSpec {
            id,
            gift_ledger,
            inventory,
            per_user_limit,
            daily_limit,
            timezone,
            starts_at_ns,
            ends_at_ns,
            verification_account,
            delivery,
            stats_webhook,
        },
    )
}

proptest! {
    #[test]
    fn canonical_bytes_round_trip(spec in spec_strategy()) {
        let bytes = spec.to_canonical_bytes();
        let decoded = CampaignSpec::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&decoded, &spec);
        prop_assert_eq!(decoded.to_canonical_bytes(), bytes);
    }
}

#[test]
fn the_stored_form_is_versioned_compact_json() {
    let bytes = baseline().to_canonical_bytes();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(
        text.starts_with(r#"{"version":1,"campaign":{"id":"spring-2026","#),
        "{text}"
    );
    // Times are stored in UTC, defaults written out.
    assert!(
        text.contains(r#""starts_at":"2026-03-20T08:00:00Z""#),
        "{text}"
    );
    assert!(text.contains(r#""max_retries":3"#), "{text}");
    assert!(!text.contains(' '), "{text}");
}

#[test]
fn other_versions_and_garbage_are_refused() {
    let text = String::from_utf8(baseline().to_canonical_bytes()).unwrap();
    let future = text.replacen(r#""version":1"#, r#""version":2"#, 1);
    let error = CampaignSpec::from_bytes(future.as_bytes()).unwrap_err();
    assert!(
        matches!(&error, CampaignError::Decode { reason } if reason.contains("version 2")),
        "{error}"
    );
    assert!(CampaignSpec::from_bytes(b"\x00\x01").is_err());
}
