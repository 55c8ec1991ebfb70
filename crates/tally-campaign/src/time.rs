//! Time in a campaign: RFC 3339 times in the spec, and local days in the campaign's time zone.
//!
//! Tally's clock is nanoseconds since the Unix epoch as a `u64` (the batch timestamps of
//! `tally-core`, at most [`TIMESTAMP_NS_MAX`]), so the spec keeps its times in that form and
//! converts only at its edges: RFC 3339 text in, RFC 3339 text (in UTC) out.
//!
//! Why `jiff` rather than `chrono-tz`: jiff can embed the IANA time zone database as compact
//! TZif data (`tzdb-bundle-always`) and be built without any code that reads the system copy, so
//! a campaign's daily limit means the same on every machine and no file is read (this crate does
//! no I/O). chrono-tz generates Rust code for the whole database in a build script, which is
//! slow to build, and needs chrono besides.

use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::Timestamp;
use serde::de::{self, MapAccess, Visitor};
use tally_core::limits::TIMESTAMP_NS_MAX;
use tally_core::OffsetChange;

use crate::CampaignError;

/// Nanoseconds in a second.
const NS_PER_SECOND: u64 = 1_000_000_000;
/// Seconds in a local calendar day. Days are counted on local wall-clock time, so a day with a
/// daylight saving change still ends at local midnight.
const SECONDS_PER_DAY: i64 = 24 * 60 * 60;

/// Maps Tally timestamps to local calendar days in a campaign's time zone, so that a daily limit
/// resets at local midnight.
#[derive(Debug, Clone)]
pub struct LocalCalendar {
    zone: TimeZone,
}

impl LocalCalendar {
    /// The calendar of an IANA time zone name such as `Europe/Berlin` (any ASCII case), looked up
    /// in the time zone database compiled into Tally.
    pub fn new(name: &str) -> Result<LocalCalendar, CampaignError> {
        // `Etc/Unknown` is a placeholder for "no idea" in jiff and CLDR, not a zone.
        if name.eq_ignore_ascii_case("Etc/Unknown") {
            return Err(CampaignError::UnknownTimeZone { name: name.into() });
        }
        match TimeZoneDatabase::bundled().get(name) {
            Ok(zone) => Ok(LocalCalendar { zone }),
            Err(_) => Err(CampaignError::UnknownTimeZone { name: name.into() }),
        }
    }

    /// The local day of `timestamp_ns` (nanoseconds since the Unix epoch): days since
    /// 1970-01-01 on the zone's wall clock. Negative just after the epoch west of Greenwich.
    pub fn local_day(&self, timestamp_ns: u64) -> i32 {
        assert!(
            timestamp_ns <= TIMESTAMP_NS_MAX,
            "timestamp beyond Tally's clock"
        );
        let seconds = i64::try_from(timestamp_ns / NS_PER_SECOND).expect("bounded by i64::MAX");
        let timestamp = Timestamp::from_second(seconds).expect("jiff covers Tally's clock");
        let offset_seconds = i64::from(self.zone.to_offset(timestamp).seconds());
        // Offsets are below a day, and `seconds` is far from i64's ends, so this cannot wrap.
        let day = (seconds + offset_seconds).div_euclid(SECONDS_PER_DAY);
        i32::try_from(day).expect("Tally's clock ends in 2262, well within i32 days")
    }
}

impl LocalCalendar {
    /// The zone's UTC offsets over `[starts_at_ns, ends_at_ns)`: the one in force at
    /// `starts_at_ns`, then every change before `ends_at_ns`, in order. This is what the ledger
    /// records with a campaign so that it can count local days without a time zone database
    /// (see `tally_core::campaign`). Transitions that keep the offset (a new abbreviation) are
    /// left out.
    pub fn offset_changes(&self, starts_at_ns: u64, ends_at_ns: u64) -> Vec<OffsetChange> {
        assert!(starts_at_ns < ends_at_ns && ends_at_ns <= TIMESTAMP_NS_MAX);
        let start = Timestamp::from_nanosecond(i128::from(starts_at_ns))
            .expect("jiff covers Tally's clock");
        let mut changes = vec![OffsetChange {
            from_ns: starts_at_ns,
            offset_seconds: self.zone.to_offset(start).seconds(),
        }];
        for transition in self.zone.following(start) {
            let Ok(from_ns) = u64::try_from(transition.timestamp().as_nanosecond()) else {
                continue;
            };
            if from_ns >= ends_at_ns {
                break;
            }
            let offset_seconds = transition.offset().seconds();
            let last = changes.last().expect("starts with one");
            if from_ns > last.from_ns && offset_seconds != last.offset_seconds {
                changes.push(OffsetChange {
                    from_ns,
                    offset_seconds,
                });
            }
        }
        changes
    }
}

/// Parses an RFC 3339 time with an offset into Tally's clock.
fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let timestamp: Timestamp = text.parse().map_err(|error| {
        format!(
            "`{text}` is not an RFC 3339 time with an offset, such as 2025-12-01T09:00:00+01:00 \
             or 2025-12-01T08:00:00Z ({error})"
        )
    })?;
    let ns = timestamp.as_nanosecond();
    if ns < 0 {
        return Err(format!(
            "`{text}` is before 1970-01-01T00:00:00Z, where Tally's clock starts"
        ));
    }
    u64::try_from(ns)
        .ok()
        .filter(|ns| *ns <= TIMESTAMP_NS_MAX)
        .ok_or_else(|| format!("`{text}` is after 2262-04-11, where Tally's clock ends"))
}

/// Formats Tally's clock as RFC 3339 in UTC (`Z`), with as many fraction digits as needed; a
/// time beyond the clock (only a spec built in code can hold one) is shown as a number.
pub(crate) fn format_rfc3339(timestamp_ns: u64) -> String {
    match Timestamp::from_nanosecond(i128::from(timestamp_ns)) {
        Ok(timestamp) if timestamp_ns <= TIMESTAMP_NS_MAX => timestamp.to_string(),
        _ => format!("{timestamp_ns} ns"),
    }
}

/// `#[serde(with)]` for a `u64` nanosecond time written as RFC 3339 text. In TOML the time may
/// also be a native (unquoted) offset date-time.
pub(crate) mod rfc3339 {
    use super::*;

    pub fn serialize<S: serde::Serializer>(ns: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        if *ns > TIMESTAMP_NS_MAX {
            return Err(serde::ser::Error::custom(format!(
                "time {ns} ns is beyond Tally's clock"
            )));
        }
        serializer.serialize_str(&format_rfc3339(*ns))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(Rfc3339Visitor)
    }

    struct Rfc3339Visitor;

    impl<'de> Visitor<'de> for Rfc3339Visitor {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 time with an offset, such as \"2025-12-01T09:00:00+01:00\"")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            parse_rfc3339(text).map_err(E::custom)
        }

        // A native TOML date-time arrives as a one-entry map; toml's own type reads it, which
        // also tells local times (no offset) apart so the error can say what is missing.
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<u64, A::Error> {
            let datetime: toml::value::Datetime =
                serde::Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))?;
            if datetime.time.is_none() {
                return Err(de::Error::custom(format!(
                    "`{datetime}` is a date without a time; write a time with an offset, such \
                     as {datetime}T00:00:00+01:00"
                )));
            }
            if datetime.offset.is_none() {
                return Err(de::Error::custom(format!(
                    "`{datetime}` has no offset, so it names no single instant; write it as \
                     {datetime}Z for UTC or with the zone's offset, such as {datetime}+01:00"
                )));
            }
            parse_rfc3339(&datetime.to_string()).map_err(de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: u64 = NS_PER_SECOND;

    fn ns(text: &str) -> u64 {
        parse_rfc3339(text).unwrap()
    }

    #[track_caller]
    fn check_day(zone: &str, time: &str, expected_local_date: &str) {
        let calendar = LocalCalendar::new(zone).unwrap();
        let expected: jiff::civil::Date = expected_local_date.parse().unwrap();
        let epoch = jiff::civil::date(1970, 1, 1);
        let expected_day = expected.since(epoch).unwrap().get_days();
        assert_eq!(
            calendar.local_day(ns(time)),
            expected_day,
            "{time} in {zone}"
        );
    }

    #[test]
    fn utc_days_start_at_midnight_utc() {
        let utc = LocalCalendar::new("UTC").unwrap();
        assert_eq!(utc.local_day(0), 0);
        assert_eq!(utc.local_day(86_399 * NS + NS - 1), 0);
        assert_eq!(utc.local_day(86_400 * NS), 1);
        assert_eq!(utc.local_day(TIMESTAMP_NS_MAX), 106_751);
    }

    #[test]
    fn west_of_greenwich_the_epoch_is_the_day_before() {
        let new_york = LocalCalendar::new("America/New_York").unwrap();
        assert_eq!(new_york.local_day(0), -1);
    }

    #[test]
    fn berlin_days_across_daylight_saving_changes() {
        // Spring forward: 2025-03-30 02:00 CET becomes 03:00 CEST (01:00 UTC).
        check_day("Europe/Berlin", "2025-03-29T22:59:59Z", "2025-03-29");
        check_day("Europe/Berlin", "2025-03-29T23:00:00Z", "2025-03-30");
        check_day("Europe/Berlin", "2025-03-30T21:59:59Z", "2025-03-30");
        check_day("Europe/Berlin", "2025-03-30T22:00:00Z", "2025-03-31");
        // Fall back: 2025-10-26 03:00 CEST becomes 02:00 CET (01:00 UTC); the day is 25 hours.
        check_day("Europe/Berlin", "2025-10-25T21:59:59Z", "2025-10-25");
        check_day("Europe/Berlin", "2025-10-25T22:00:00Z", "2025-10-26");
        check_day("Europe/Berlin", "2025-10-26T22:59:59Z", "2025-10-26");
        check_day("Europe/Berlin", "2025-10-26T23:00:00Z", "2025-10-27");
    }

    #[test]
    fn new_york_days_across_daylight_saving_changes() {
        // 2025-03-09: EST (-05:00) to EDT (-04:00) at 02:00 local; the day is 23 hours.
        check_day("America/New_York", "2025-03-09T04:59:59Z", "2025-03-08");
        check_day("America/New_York", "2025-03-09T05:00:00Z", "2025-03-09");
        check_day("America/New_York", "2025-03-10T03:59:59Z", "2025-03-09");
        check_day("America/New_York", "2025-03-10T04:00:00Z", "2025-03-10");
        // 2025-11-02: back to EST at 02:00 local; midnight after it is 05:00 UTC.
        check_day("America/New_York", "2025-11-02T03:59:59Z", "2025-11-01");
        check_day("America/New_York", "2025-11-02T04:00:00Z", "2025-11-02");
        check_day("America/New_York", "2025-11-03T04:59:59Z", "2025-11-02");
        check_day("America/New_York", "2025-11-03T05:00:00Z", "2025-11-03");
    }

    #[test]
    fn kolkata_days_start_at_half_past_six_utc() {
        // +05:30 all year round.
        check_day("Asia/Kolkata", "2025-06-30T18:29:59Z", "2025-06-30");
        check_day("Asia/Kolkata", "2025-06-30T18:30:00Z", "2025-07-01");
        check_day("Asia/Kathmandu", "2025-06-30T18:14:59Z", "2025-06-30");
        check_day("Asia/Kathmandu", "2025-06-30T18:15:00Z", "2025-07-01");
    }

    #[test]
    fn offset_changes_list_the_offset_at_the_start_and_every_change_in_the_window() {
        let berlin = LocalCalendar::new("Europe/Berlin").unwrap();
        let changes = berlin.offset_changes(ns("2025-01-01T00:00:00Z"), ns("2026-01-01T00:00:00Z"));
        let expected = [
            ("2025-01-01T00:00:00Z", 3600),
            ("2025-03-30T01:00:00Z", 7200),
            ("2025-10-26T01:00:00Z", 3600),
        ];
        let expected: Vec<OffsetChange> = expected
            .iter()
            .map(|(time, offset_seconds)| OffsetChange {
                from_ns: ns(time),
                offset_seconds: *offset_seconds,
            })
            .collect();
        assert_eq!(changes, expected);
        let kolkata = LocalCalendar::new("Asia/Kolkata").unwrap();
        assert_eq!(
            kolkata.offset_changes(0, TIMESTAMP_NS_MAX).len(),
            1,
            "+05:30 since before 1970"
        );
        for zone in [
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
            "UTC",
        ] {
            let whole = LocalCalendar::new(zone)
                .unwrap()
                .offset_changes(0, TIMESTAMP_NS_MAX);
            assert!(
                whole.len() <= tally_core::limits::CAMPAIGN_OFFSET_CHANGES_MAX,
                "{zone}: {}",
                whole.len()
            );
        }
    }

    proptest::proptest! {
        /// The ledger's day from the recorded offsets is the calendar's day, for any window and
        /// any time in it: the ledger needs no time zone database to count days right.
        #[test]
        fn the_ledgers_day_from_recorded_offsets_is_the_calendars(
            zone in proptest::sample::select(vec!["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Apia", "UTC"]),
            start in 0u64..4_000_000_000,
            length in 1u64..400_000_000,
            at in 0.0f64..1.0,
        ) {
            let calendar = LocalCalendar::new(zone).unwrap();
            let (starts_at_ns, ends_at_ns) = (start * NS, (start + length) * NS);
            let definition = tally_core::CampaignDefinition {
                id: tally_core::Id::new("c").unwrap(),
                gift_ledger: tally_core::LedgerCode::new("G").unwrap(),
                inventory: 1,
                per_user_limit: 1,
                daily_limit: 1,
                starts_at_ns,
                ends_at_ns,
                verification_account: tally_core::Id::new("v").unwrap(),
                offsets: calendar.offset_changes(starts_at_ns, ends_at_ns),
                spec: Vec::new(),
            };
            definition.validate().unwrap();
            let time = starts_at_ns + ((ends_at_ns - starts_at_ns) as f64 * at) as u64;
            let time = time.min(ends_at_ns - 1);
            proptest::prop_assert_eq!(definition.local_day(time), calendar.local_day(time));
        }
    }

    #[test]
    fn the_same_instant_written_with_any_offset_is_the_same_time() {
        assert_eq!(ns("2025-12-01T09:00:00+01:00"), ns("2025-12-01T08:00:00Z"));
        assert_eq!(ns("2025-12-01T13:30:00+05:30"), ns("2025-12-01T08:00:00Z"));
        assert_eq!(ns("1970-01-01T00:00:00.000000001Z"), 1);
    }

    #[test]
    fn times_outside_tallys_clock_or_without_offset_are_refused() {
        let error = parse_rfc3339("1969-12-31T23:59:59Z").unwrap_err();
        assert!(error.contains("before 1970"), "{error}");
        let error = parse_rfc3339("2263-01-01T00:00:00Z").unwrap_err();
        assert!(error.contains("after 2262"), "{error}");
        let error = parse_rfc3339("2025-12-01T09:00:00").unwrap_err();
        assert!(error.contains("with an offset"), "{error}");
        assert!(parse_rfc3339("tomorrow").is_err());
    }

    #[test]
    fn formatting_round_trips_to_the_nanosecond() {
        for ns in [0, 1, 1_700_000_000_123_456_789, TIMESTAMP_NS_MAX] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ns)), Ok(ns));
        }
        assert_eq!(format_rfc3339(u64::MAX), "18446744073709551615 ns");
    }

    #[test]
    fn unknown_zones_are_refused() {
        for name in ["Mars/Olympus", "", "Etc/Unknown", "europe berlin"] {
            assert!(LocalCalendar::new(name).is_err(), "{name:?}");
        }
        assert!(LocalCalendar::new("europe/berlin").is_ok());
    }
}
