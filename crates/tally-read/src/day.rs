//! UTC calendar days, the unit of the daily summaries.
//!
//! A day is a count of days since 1970-01-01 (the Unix epoch), converted to and from
//! `YYYY-MM-DD` with the proleptic Gregorian calendar (Howard Hinnant's `days_from_civil` and
//! `civil_from_days`), so that the read model needs no date library and no clock.

use std::fmt;

/// Nanoseconds in a UTC day (the Unix clock has no leap seconds).
const DAY_NS: u64 = 86_400 * 1_000_000_000;

/// One UTC calendar day between 0000-01-01 and 9999-12-31, the years `YYYY-MM-DD` can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day {
    /// Days since 1970-01-01; negative before it.
    days: i32,
}

impl Day {
    /// The day the timestamp (nanoseconds since the Unix epoch) falls on, in UTC.
    pub fn of_timestamp_ns(timestamp_ns: u64) -> Day {
        // At most u64::MAX / DAY_NS = 213,503 days: the year 2554.
        let days = i32::try_from(timestamp_ns / DAY_NS).expect("u64 nanoseconds span 213,503 days");
        Day { days }
    }

    /// Parses `YYYY-MM-DD` (exactly ten characters, ASCII digits, a valid date of the proleptic
    /// Gregorian calendar); the error says what is wrong.
    pub fn parse(text: &str) -> Result<Day, &'static str> {
        const SHAPE: &str = "must be a date written YYYY-MM-DD";
        let bytes = text.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return Err(SHAPE);
        }
        let number = |range: std::ops::Range<usize>| -> Result<i64, &'static str> {
            bytes[range].iter().try_fold(0i64, |value, &byte| {
                if byte.is_ascii_digit() {
                    Ok(value * 10 + i64::from(byte - b'0'))
                } else {
                    Err(SHAPE)
                }
            })
        };
        let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
        if !(1..=12).contains(&month) {
            return Err("the month must be 01 to 12");
        }
        if !(1..=days_in_month(year, month)).contains(&day) {
            return Err("the day does not exist in that month");
        }
        let days = days_from_civil(year, month, day);
        Ok(Day {
            days: i32::try_from(days).expect("years 0 to 9999 span fewer than 2^31 days"),
        })
    }

    /// Days since 1970-01-01, or `None` for a day before it (no timestamp falls on one).
    pub fn since_epoch(self) -> Option<u32> {
        u32::try_from(self.days).ok()
    }

    /// The day `days` days after 1970-01-01, if `YYYY-MM-DD` can write it.
    pub fn from_since_epoch(days: u32) -> Option<Day> {
        let days = i32::try_from(days).ok()?;
        let (year, _, _) = civil_from_days(i64::from(days));
        (year <= 9999).then_some(Day { days })
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = civil_from_days(i64::from(self.days));
        write!(f, "{year:04}-{month:02}-{day:02}")
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a valid date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days() {
        let day = |text| Day::parse(text).unwrap();
        assert_eq!(day("1970-01-01").since_epoch(), Some(0));
        assert_eq!(day("1970-01-02").since_epoch(), Some(1));
        assert_eq!(day("2000-03-01").since_epoch(), Some(11_017));
        assert_eq!(day("1969-12-31").since_epoch(), None);
        assert_eq!(day("2024-02-29").to_string(), "2024-02-29");
        assert_eq!(Day::of_timestamp_ns(0), day("1970-01-01"));
        assert_eq!(Day::of_timestamp_ns(DAY_NS - 1), day("1970-01-01"));
        assert_eq!(Day::of_timestamp_ns(DAY_NS), day("1970-01-02"));
        // 2026-12-01T00:00:00Z.
        assert_eq!(
            Day::of_timestamp_ns(1_796_083_200 * 1_000_000_000),
            day("2026-12-01")
        );
        assert_eq!(Day::of_timestamp_ns(u64::MAX).to_string(), "2554-07-21");
        assert!(day("0000-01-01") < day("1969-12-31"));
    }

    #[test]
    fn every_day_round_trips() {
        let first = Day::parse("0000-01-01").unwrap();
        let last = Day::parse("9999-12-31").unwrap();
        let mut previous: Option<(i64, i64, i64)> = None;
        for days in first.days..=last.days {
            let day = Day { days };
            let text = day.to_string();
            assert_eq!(Day::parse(&text), Ok(day), "{text}");
            let date = civil_from_days(i64::from(days));
            if let Some(previous) = previous {
                assert!(previous < date, "{previous:?} then {date:?}");
            }
            previous = Some(date);
        }
        assert_eq!(Day::from_since_epoch(0), Some(Day { days: 0 }));
        let last_since_epoch = last.since_epoch().unwrap();
        assert_eq!(Day::from_since_epoch(last_since_epoch), Some(last));
        assert_eq!(Day::from_since_epoch(last_since_epoch + 1), None);
        assert_eq!(Day::from_since_epoch(u32::MAX), None);
    }

    #[test]
    fn malformed_dates_are_refused() {
        for text in [
            "",
            "2024-1-01",
            "2024-01-1",
            "24-01-01",
            "2024/01/01",
            "20240101",
            "2024-01-01T00:00:00Z",
            " 2024-01-01",
            "2024-01-01 ",
            "+202-01-01",
            "-202-01-01",
            "2024-0a-01",
            "２０２４-01-01",
            "2024-00-01",
            "2024-13-01",
            "2024-01-00",
            "2024-01-32",
            "2023-02-29",
            "1900-02-29",
            "2024-04-31",
        ] {
            assert!(Day::parse(text).is_err(), "{text:?} parsed");
        }
        assert!(Day::parse("2000-02-29").is_ok());
    }
}
