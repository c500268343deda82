//! RFC 5322 dates for trace fields, without a calendar dependency.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as `Wed, 25 Nov 2026 10:51:33 +0000`.
pub fn rfc2822_now() -> String {
    rfc2822(SystemTime::now())
}

/// A time as an RFC 5322 date in UTC.
pub fn rfc2822(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {d} {} {y} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A time as RFC 3339 in UTC with milliseconds: `2026-11-25T10:51:33.000Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let ms = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The day number (since 1970-01-01) of an RFC 3339 date or time's `YYYY-MM-DD`.
pub fn days_from_rfc3339(text: &str) -> Option<i64> {
    let date = text.get(..10)?;
    let mut parts = date.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// Milliseconds since the Unix epoch of an RFC 3339 time in UTC (`Z`), or of a bare date.
pub fn ms_from_rfc3339(text: &str) -> Option<u64> {
    let days = days_from_rfc3339(text)?;
    let mut ms = u64::try_from(days).ok()? * 86_400_000;
    if let Some(clock) = text.get(11..).filter(|c| !c.is_empty()) {
        let clock = clock.strip_suffix('Z').unwrap_or(clock);
        let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
        let mut parts = hms.split(':');
        let h: u64 = parts.next()?.parse().ok()?;
        let mi: u64 = parts.next()?.parse().ok()?;
        let s: u64 = parts.next().unwrap_or("0").parse().ok()?;
        let frac_ms: u64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
        ms += ((h * 60 + mi) * 60 + s) * 1000 + frac_ms;
    }
    Some(ms)
}

/// (year, month, day) to days since 1970-01-01 (Howard Hinnant's method).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_dates() {
        assert_eq!(rfc2822(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_603_893);
        assert_eq!(rfc2822(t), "Wed, 25 Nov 2026 10:51:33 +0000");
        assert_eq!(rfc3339(t), "2026-11-25T10:51:33.000Z");
        assert_eq!(
            ms_from_rfc3339("2026-11-25T10:51:33.000Z"),
            Some(1_795_603_893_000)
        );
        assert_eq!(ms_from_rfc3339("2026-11-25"), Some(1_795_564_800_000));
        assert_eq!(days_from_rfc3339("1970-01-01"), Some(0));
        assert_eq!(days_from_rfc3339("2026-13-01"), None);
    }
}
