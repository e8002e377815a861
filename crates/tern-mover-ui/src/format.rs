//! How the pages write times, ages, sizes and durations, and how a form's date is read. Times are
//! milliseconds since the Unix epoch, shown in UTC (the mover's clock; the operator's browser may be
//! anywhere). Arithmetic on stored values saturates.

/// Days from 1970-01-01 to 0000-03-01 in the proleptic Gregorian calendar (H. Hinnant's civil algorithms).
const EPOCH_SHIFT: i64 = 719_468;
/// Days in a 400-year era.
const ERA_DAYS: i64 = 146_097;

/// The civil date (year, month, day) of a day number (days since 1970-01-01).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + EPOCH_SHIFT;
    let era = z.div_euclid(ERA_DAYS);
    let day_of_era = z.rem_euclid(ERA_DAYS);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day number (days since 1970-01-01) of a civil date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * ERA_DAYS + day_of_era - EPOCH_SHIFT
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn utc(ms: u64) -> String {
    let seconds = ms / 1000;
    let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX / 2);
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Reads an HTML `datetime-local` value, `YYYY-MM-DDTHH:MM` or `YYYY-MM-DDTHH:MM:SS` (a space for the
/// `T` too), as UTC; `None` when it is not one.
pub fn parse_utc(text: &str) -> Option<u64> {
    let text = text.trim();
    let (date, time) = text.split_once(['T', ' '])?;
    let mut date_parts = date.split('-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: u32 = date_parts.next()?.parse().ok()?;
    let day: u32 = date_parts.next()?.parse().ok()?;
    if date_parts.next().is_some() || !(1970..=9999).contains(&year) || !(1..=12).contains(&month) {
        return None;
    }
    if !(1..=31).contains(&day) {
        return None;
    }
    let mut time_parts = time.split(':');
    let hour: u64 = time_parts.next()?.parse().ok()?;
    let minute: u64 = time_parts.next()?.parse().ok()?;
    let second: u64 = match time_parts.next() {
        Some(part) => part.parse().ok()?,
        None => 0,
    };
    if time_parts.next().is_some() || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    // A day that the month does not have (31 February) comes back as another date: refused.
    if civil_from_days(days as i64) != (year, month, day) {
        return None;
    }
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    seconds.checked_mul(1000)
}

/// How far `then_ms` is from `now_ms`: `12 s ago`, `in 5 min`, `just now`.
pub fn relative(now_ms: u64, then_ms: u64) -> String {
    if then_ms > now_ms {
        return format!("in {}", span(then_ms - now_ms));
    }
    let past = now_ms - then_ms;
    if past < 1000 {
        return "just now".into();
    }
    format!("{} ago", span(past))
}

/// A span of time in the largest unit that fits: `850 ms`, `42 s`, `5 min`, `3 h`, `2 d`.
fn span(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{} s", ms / 1000),
        60_000..3_600_000 => format!("{} min", ms / 60_000),
        3_600_000..86_400_000 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

/// A duration to one decimal: `850 ms`, `3.2 s`, `2.5 min`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{:.1} min", ms as f64 / 60_000.0),
        _ => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

/// A size in bytes with a binary unit: `512 B`, `1.5 KiB`, `20.0 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_writes_and_reads_the_same_instant() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00", "a leap day");
        assert_eq!(utc(1_764_551_585_123), "2025-12-01 01:13:05");
        assert_eq!(parse_utc("2025-12-01T01:13:05"), Some(1_764_551_585_000));
        assert_eq!(parse_utc("2025-12-01T01:13"), Some(1_764_551_580_000));
        assert_eq!(parse_utc("2000-02-29 00:00"), Some(951_782_400_000));
        for refused in [
            "",
            "2025-02-30T00:00",
            "2025-13-01T00:00",
            "2025-01-01T24:00",
            "1969-12-31T23:59",
            "x",
        ] {
            assert_eq!(parse_utc(refused), None, "{refused}");
        }
        assert!(
            utc(u64::MAX).starts_with("584556019-04-03"),
            "a far future still formats: {}",
            utc(u64::MAX)
        );
    }

    #[test]
    fn ages_sizes_and_durations_read_as_a_person_says_them() {
        assert_eq!(relative(10_000, 9_500), "just now");
        assert_eq!(relative(100_000, 58_000), "42 s ago");
        assert_eq!(relative(0, 300_000), "in 5 min");
        assert_eq!(relative(u64::MAX, 0), format!("{} d ago", u64::MAX / 86_400_000));
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(20 << 20), "20.0 MiB");
        assert_eq!(size(u64::MAX), "16384.0 PiB");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(3_240), "3.2 s");
        assert_eq!(duration(150_000), "2.5 min");
    }
}
