//! HTTP dates (RFC 9110 section 5.6.7): IMF-fixdate out; in, the three formats a recipient must accept
//! (IMF-fixdate, the obsolete RFC 850 and asctime forms) and the variants real servers send.
//!
//! RFC 9110 says a recipient parsing a timestamp must accept all three formats, and RFC 6265 section 5.1.1
//! documents how lenient real parsers are: names in any case, a missing or wrong day-of-week, a single-digit
//! day, dashes between date parts with a four-digit year, `UTC` for `GMT`. The day-of-week is ignored
//! (it is redundant, and servers get it wrong); the other parts are checked, so `31 Feb` is invalid.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

/// Days between 0000-03-01 and 1970-01-01 in the proleptic Gregorian calendar, for [`days_from_civil`].
const EPOCH_DAYS_FROM_0000_03_01: i64 = 719_468;

/// Parses an HTTP date; `None` for anything invalid (RFC 9111 treats an invalid date as in the past where
/// it matters, which callers decide). Years 1601 to 9999 are accepted; a two-digit year (RFC 850) more
/// than 50 years in the future means the most recent past year with those digits (RFC 9110 section
/// 5.6.7), judged against the system clock.
pub fn parse(value: &HeaderValue) -> Option<SystemTime> {
    parse_str(value.to_str().ok()?, SystemTime::now())
}

/// Parses an HTTP date given as text; `now` decides the century of a two-digit year.
pub fn parse_str(text: &str, now: SystemTime) -> Option<SystemTime> {
    let text = text.trim();
    if text.len() > 64 {
        return None;
    }
    // Drop the day-of-week: everything up to the first comma, or a leading alphabetic word (asctime).
    let rest = match text.split_once(',') {
        Some((weekday, rest)) if weekday.bytes().all(|b| b.is_ascii_alphabetic()) => rest,
        Some(_) => return None,
        None => {
            let word_end = text.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(text.len());
            let word = &text[..word_end];
            // asctime starts with the weekday and then the month name: keep the month.
            if month_number(word).is_some() {
                text
            } else {
                &text[word_end..]
            }
        }
    };
    // At most five tokens; a sixth makes the date invalid. No allocation: dates are parsed on every miss.
    let mut tokens = [""; 5];
    let mut count = 0;
    for token in rest.split([' ', '-', '\t']).filter(|t| !t.is_empty()) {
        if count == tokens.len() {
            return None;
        }
        tokens[count] = token;
        count += 1;
    }
    let (day, month, year, time, zone) = match &tokens[..count] {
        // IMF-fixdate `06 Nov 1994 08:49:37 GMT`, RFC 850 `06-Nov-94 08:49:37 GMT` (dashes split above).
        [day, month, year, time, zone] => (*day, *month, *year, *time, Some(*zone)),
        // asctime `Nov  6 08:49:37 1994`.
        [month, day, time, year] if month_number(month).is_some() => (*day, *month, *year, *time, None),
        // No zone at all is read as GMT, as the cookie parsers do.
        [day, month, year, time] => (*day, *month, *year, *time, None),
        _ => return None,
    };
    if let Some(zone) = zone
        && !["gmt", "utc", "ut", "z", "+0000", "-0000"]
            .iter()
            .any(|known| zone.eq_ignore_ascii_case(known))
    {
        return None;
    }
    let day: u32 = digits(day, 1, 2)?;
    let month = month_number(month)?;
    let year = match year.len() {
        2 => two_digit_year(digits(year, 2, 2)?, now),
        4 => digits(year, 4, 4)?,
        _ => return None,
    };
    let mut clock = time.split(':');
    let hour: u32 = digits(clock.next()?, 1, 2)?;
    let minute: u32 = digits(clock.next()?, 1, 2)?;
    let second: u32 = digits(clock.next()?, 1, 2)?;
    if clock.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if !(1601..=9999).contains(&year) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year as i64, month, day);
    // A leap second (`:60`) is read as the next second, like POSIX time.
    let seconds = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    if seconds >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(seconds as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(seconds.unsigned_abs()))
    }
}

/// Formats `time` as an IMF-fixdate header value.
pub fn format(time: SystemTime) -> HeaderValue {
    HeaderValue::from_str(&httpdate::fmt_http_date(time)).unwrap_or(HeaderValue::from_static(""))
}

fn digits(text: &str, min: usize, max: usize) -> Option<u32> {
    if text.len() < min || text.len() > max || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn month_number(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    if name.len() != 3 {
        return None;
    }
    MONTHS
        .iter()
        .position(|month| month.eq_ignore_ascii_case(name))
        .map(|index| index as u32 + 1)
}

/// RFC 9110 section 5.6.7: a two-digit year more than 50 years in the future is in the past century.
fn two_digit_year(two: u32, now: SystemTime) -> u32 {
    let this_year = civil_year(now);
    let century = this_year / 100 * 100;
    let candidate = century + two;
    if candidate > this_year + 50 {
        candidate - 100
    } else {
        candidate
    }
}

fn civil_year(time: SystemTime) -> u32 {
    let days = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Inverse of days_from_civil, year only (Howard Hinnant's algorithm).
    let z = days + EPOCH_DAYS_FROM_0000_03_01;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let year = year_of_era + era * 400 + i64::from(month_index >= 10);
    year.clamp(0, 9999) as u32
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => 29,
        _ => 28,
    }
}

/// Days from 1970-01-01 to the given date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - EPOCH_DAYS_FROM_0000_03_01
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(text: &str) -> Option<u64> {
        let now = UNIX_EPOCH + Duration::from_secs(1_790_000_000); // 2026-09
        parse_str(text, now).map(|t| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
    }

    #[test]
    fn the_three_formats() {
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(at("Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(at("Sun Nov  6 08:49:37 1994"), Some(784_111_777));
    }

    #[test]
    fn variants_real_servers_send() {
        assert_eq!(at("sun, 06 nov 1994 08:49:37 gmt"), Some(784_111_777));
        assert_eq!(at("SUN, 06 NOV 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(at("Mon, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777), "wrong weekday");
        assert_eq!(at("06 Nov 1994 08:49:37 GMT"), Some(784_111_777), "no weekday");
        assert_eq!(at("Sun, 6 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(at("Sun, 06-Nov-1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 UTC"), Some(784_111_777));
        assert_eq!(at("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
    }

    #[test]
    fn invalid_dates() {
        for text in [
            "",
            "0",
            "-1",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 06 Nov 10000 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994",
            "2026-11-30T12:00:00Z",
        ] {
            assert_eq!(at(text), None, "{text}");
        }
    }

    #[test]
    fn two_digit_years_follow_the_fifty_year_rule() {
        // In 2026, `76` is 2076 (50 years ahead is allowed), `77` is 1977.
        assert!(at("Monday, 01-Jan-76 00:00:00 GMT").is_some_and(|s| s > 3_000_000_000));
        assert!(at("Friday, 01-Jan-77 00:00:00 GMT").is_some_and(|s| s < 300_000_000));
    }

    #[test]
    fn before_the_epoch() {
        let before = parse_str("Tue, 01 Jan 1901 00:00:00 GMT", SystemTime::now()).expect("parses");
        assert!(before < UNIX_EPOCH);
    }

    proptest! {
        #[test]
        fn round_trips_what_we_format(seconds in 0u64..253_402_300_799) {
            let time = UNIX_EPOCH + Duration::from_secs(seconds);
            let text = httpdate::fmt_http_date(time);
            prop_assert_eq!(parse_str(&text, SystemTime::now()), Some(time));
        }

        #[test]
        fn never_panics(text in "\\PC{0,40}") {
            let _ = parse_str(&text, SystemTime::now());
        }
    }
}
