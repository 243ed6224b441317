//! `Retry-After` (RFC 9110 §10.2.3): parsing every form a recipient must accept, and the value
//! this filter adds when an answer lacks one.
//!
//! `Retry-After = HTTP-date / delay-seconds`. Dates come in three forms (§5.6.7): IMF-fixdate
//! `Sun, 06 Nov 1994 08:49:37 GMT`, the obsolete RFC 850 `Sunday, 06-Nov-94 08:49:37 GMT` (a
//! two-digit year more than 50 years ahead means the past century) and asctime
//! `Sun Nov  6 08:49:37 1994`. A date counts from the response's `Date` when it has one.

use crate::config::{Jitter, RetryAfter};
use filter_core::random::Random;
use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

/// A parsed `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// Seconds to wait.
    Seconds(u64),
    /// A moment, in seconds since the Unix epoch.
    Date(i64),
}

/// The weekday names of RFC 850 dates; httpdate's IMF-fixdate wants their first three letters.
const LONG_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Parses a field value; `None` for anything that is not one of the forms (negative, fractional,
/// signed, empty, a list, an impossible date, a weekday that does not match its date). httpdate
/// also refuses a leap second (`:60`), which RFC 9110's grammar allows: such a `Retry-After` is
/// replaced like any unreadable one, and such a `Date` leaves the wait counted from our clock.
pub fn parse(value: &str, now_year: i64) -> Option<Value> {
    let value = value.trim_matches([' ', '\t']);
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Longer than any sane delay: refuse rather than overflow.
        return value.parse().ok().map(Value::Seconds);
    }
    let text = match value.split_once(", ") {
        Some((day_name, rest)) if LONG_DAYS.contains(&day_name) => {
            Cow::Owned(rfc850_as_imf_fixdate(day_name, rest, now_year)?)
        }
        _ => Cow::Borrowed(value),
    };
    let at = httpdate::parse_http_date(&text).ok()?;
    let secs = at.duration_since(UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok().map(Value::Date)
}

/// `Sunday, 06-Nov-94 08:49:37 GMT` rewritten as `Sun, 06 Nov 1994 08:49:37 GMT`, with the
/// century RFC 9110 asks for, for httpdate to read and check. httpdate reads RFC 850 dates
/// itself, but with a fixed pivot (a two-digit year below 70 is 20yy, any other 19yy), where
/// RFC 9110 §5.6.7 takes the most recent past year only for a date more than 50 years ahead:
/// seen from 2026, `71` is 2071, and httpdate would read 1971 and then refuse the weekday of a
/// correct 2071 date. So only the century is ours; every other check is httpdate's.
fn rfc850_as_imf_fixdate(day_name: &str, rest: &str, now_year: i64) -> Option<String> {
    let (date, time_and_zone) = rest.split_once(' ')?;
    let mut parts = date.split('-');
    let (day, month, yy) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || yy.len() != 2 || !yy.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut year = now_year - now_year.rem_euclid(100) + yy.parse::<i64>().ok()?;
    if year > now_year + 50 {
        year -= 100;
    }
    let short_day = day_name.get(..3)?;
    Some(format!(
        "{short_day}, {day} {month} {year:04} {time_and_zone}"
    ))
}

/// The calendar year of a moment (seconds since the epoch), for two-digit years.
pub fn year_of(secs: i64) -> i64 {
    // H. Hinnant's civil_from_days, year only.
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month_is_jan_or_feb = mp >= 10;
    yoe + era * 400 + i64::from(month_is_jan_or_feb)
}

/// The wait a value asks for, from `now` (or the response's `Date`, when given), never negative.
pub fn wait(value: Value, now_secs: i64, date: Option<i64>) -> Duration {
    match value {
        Value::Seconds(s) => Duration::from_secs(s),
        Value::Date(at) => {
            let from = date.unwrap_or(now_secs);
            Duration::from_secs(u64::try_from(at.saturating_sub(from)).unwrap_or(0))
        }
    }
}

/// The response's `Date`, as seconds since the epoch.
pub fn parse_date(value: &str, now_year: i64) -> Option<i64> {
    match parse(value, now_year)? {
        Value::Date(at) => Some(at),
        Value::Seconds(_) => None,
    }
}

/// A fresh `Retry-After` in whole seconds: `default` spread by the jitter, rounded up, at least
/// 1 and at most `max`.
pub fn fresh(policy: &RetryAfter, random: &dyn Random) -> u64 {
    let ms = u64::try_from(policy.default.as_millis()).unwrap_or(u64::MAX);
    let jittered = match policy.jitter {
        Jitter::None => ms,
        Jitter::Full => random.below_or_at(ms),
        Jitter::Equal => ms / 2 + random.below_or_at(ms - ms / 2),
    };
    cap(jittered.div_ceil(1000).max(1), policy)
}

/// At most `max`, in whole seconds (rounded up).
pub fn cap(secs: u64, policy: &RetryAfter) -> u64 {
    let max = u64::try_from(policy.max.as_millis().div_ceil(1000)).unwrap_or(u64::MAX);
    secs.min(max.max(1))
}

/// What to do with a response's `Retry-After` fields: `None` keeps them, `Some(v)` replaces them
/// with `v` seconds. Called only for statuses the policy covers.
pub fn decide(
    fields: &[&str],
    policy: &RetryAfter,
    now_secs: i64,
    now_year: i64,
    date: Option<&str>,
    random: &dyn Random,
) -> Option<u64> {
    // One valid field: kept if within the cap. None, several, or junk: replaced.
    let [field] = fields else {
        return Some(fresh(policy, random));
    };
    let Some(value) = parse(field, now_year) else {
        return Some(fresh(policy, random));
    };
    let date = date.and_then(|d| parse_date(d, now_year));
    let asked = wait(value, now_secs, date);
    (asked > policy.max).then(|| cap(u64::MAX, policy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::random::{Fixed, SplitMix};

    const NOV_6_1994: i64 = 784_111_777;

    #[test]
    fn the_three_date_forms_of_rfc_9110() {
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:37 GMT", 2026),
            Some(Value::Date(NOV_6_1994))
        );
        assert_eq!(
            parse("Sunday, 06-Nov-94 08:49:37 GMT", 2026),
            Some(Value::Date(NOV_6_1994))
        );
        assert_eq!(
            parse("Sun Nov  6 08:49:37 1994", 2026),
            Some(Value::Date(NOV_6_1994))
        );
        assert_eq!(
            parse("Tue, 24 Nov 2026 00:00:00 GMT", 2026),
            Some(Value::Date(1_795_478_400))
        );
        // Two-digit years: 94 is 1994 seen from 2026; 30 is 2030.
        assert_eq!(
            parse("Tuesday, 01-Jan-30 00:00:00 GMT", 2026),
            Some(Value::Date(1_893_456_000))
        );
        assert!(parse("Thu, 29 Feb 2024 12:00:00 GMT", 2026).is_some());
        assert_eq!(parse("Thu, 29 Feb 2023 12:00:00 GMT", 2026), None);
    }

    #[test]
    fn two_digit_years_follow_rfc_9110_not_a_fixed_pivot() {
        // Seen from 2026, 71 is 2071 (45 years ahead); a fixed pivot at 70 would say 1971.
        assert_eq!(
            parse("Thursday, 01-Jan-71 00:00:00 GMT", 2026),
            Some(Value::Date(3_187_296_000))
        );
        // 1971's weekday for that date is refused rather than read as 1971.
        assert_eq!(parse("Friday, 01-Jan-71 00:00:00 GMT", 2026), None);
        // Seen from 2021, 71 is 50 years ahead exactly, still the future.
        assert_eq!(
            parse("Thursday, 01-Jan-71 00:00:00 GMT", 2021),
            Some(Value::Date(3_187_296_000))
        );
        // Seen from 2020, it is 51 years ahead: the past century.
        assert_eq!(
            parse("Friday, 01-Jan-71 00:00:00 GMT", 2020),
            Some(Value::Date(31_536_000))
        );
    }

    #[test]
    fn a_weekday_must_match_its_date() {
        assert_eq!(parse("Mon, 06 Nov 1994 08:49:37 GMT", 2026), None);
        assert_eq!(parse("Monday, 06-Nov-94 08:49:37 GMT", 2026), None);
        assert_eq!(parse("Mon Nov  6 08:49:37 1994", 2026), None);
    }

    #[test]
    fn years_of_moments() {
        assert_eq!(year_of(NOV_6_1994), 1994);
        assert_eq!(year_of(1_795_478_400), 2026);
        assert_eq!(year_of(1_893_456_000), 2030);
        assert_eq!(year_of(1_893_455_999), 2029);
        assert_eq!(year_of(0), 1970);
    }

    #[test]
    fn delay_seconds_and_what_is_not() {
        assert_eq!(parse("120", 2026), Some(Value::Seconds(120)));
        assert_eq!(parse(" 3 ", 2026), Some(Value::Seconds(3)));
        assert_eq!(parse("0", 2026), Some(Value::Seconds(0)));
        for junk in [
            "",
            "-1",
            "1.5",
            "+5",
            "abc",
            "1, 2",
            "99999999999999999999999",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun Nov 6 08:49:37 1994",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sunday, 6-Nov-94 08:49:37 GMT",
            "Sun, 06-Nov-94 08:49:37 GMT",
            "Sunday, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 UTC",
        ] {
            assert_eq!(parse(junk, 2026), None, "{junk:?}");
        }
    }

    #[test]
    fn a_date_counts_from_the_response_s_date_and_never_goes_negative() {
        let v = Value::Date(NOV_6_1994 + 30);
        assert_eq!(wait(v, 0, Some(NOV_6_1994)), Duration::from_secs(30));
        assert_eq!(wait(v, NOV_6_1994 + 40, None), Duration::ZERO);
    }

    fn policy(jitter: Jitter) -> RetryAfter {
        RetryAfter {
            statuses: vec![429, 503],
            default: Duration::from_secs(10),
            max: Duration::from_secs(60),
            jitter,
        }
    }

    #[test]
    fn added_values_are_spread_whole_and_capped() {
        let r = SplitMix::new(3);
        let full: Vec<u64> = (0..500).map(|_| fresh(&policy(Jitter::Full), &r)).collect();
        assert!(full.iter().all(|s| (1..=10).contains(s)));
        assert!(full.contains(&1) && full.contains(&10));
        let equal: Vec<u64> = (0..500)
            .map(|_| fresh(&policy(Jitter::Equal), &r))
            .collect();
        assert!(equal.iter().all(|s| (5..=10).contains(s)));
        assert_eq!(fresh(&policy(Jitter::None), &r), 10);
        let small = RetryAfter {
            max: Duration::from_secs(3),
            ..policy(Jitter::None)
        };
        assert_eq!(fresh(&small, &r), 3);
    }

    #[test]
    fn upstream_values_are_kept_capped_or_replaced() {
        let p = policy(Jitter::None);
        let now = 1_795_478_400;
        let d = |fields: &[&str], date| decide(fields, &p, now, 2026, date, &Fixed(0));
        assert_eq!(d(&["30"], None), None);
        assert_eq!(d(&["600"], None), Some(60));
        assert_eq!(d(&["Tue, 24 Nov 2026 00:00:30 GMT"], None), None);
        assert_eq!(d(&["Tue, 24 Nov 2026 01:00:00 GMT"], None), Some(60));
        // Counted from the response's own Date, not our clock.
        assert_eq!(
            d(
                &["Tue, 24 Nov 2026 01:00:00 GMT"],
                Some("Tue, 24 Nov 2026 00:59:30 GMT")
            ),
            None
        );
        assert_eq!(d(&[], None), Some(10));
        assert_eq!(d(&["soon"], None), Some(10));
        assert_eq!(d(&["1", "2"], None), Some(10));
    }

    proptest::proptest! {
        #[test]
        fn hostile_values_never_panic(value in ".{0,40}", year in -5000i64..5000) {
            let _ = parse(&value, year);
        }

        #[test]
        fn date_shaped_values_never_panic(
            value in "(Sun|Sunday|Mon)[, ]{0,2}[0-9A-Za-z -]{0,12} [0-9:]{0,9}( GMT| [0-9]{0,5})?",
            year in -5000i64..15000,
        ) {
            let _ = parse(&value, year);
        }
    }
}
