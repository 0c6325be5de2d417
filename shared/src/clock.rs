//! Wall-clock time as text, in UTC, without a date crate: RFC 3339 (JSON logs, access
//! lines, webhook events), Python's `asctime` (text logs), and the calendar conversion
//! under both.

use std::fmt::{self, Display};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// A UTC calendar time, to the millisecond.
pub struct Civil {
    /// Year.
    pub year: i64,
    /// Month, 1-12.
    pub month: u32,
    /// Day of the month, 1-31.
    pub day: u32,
    /// Hour, 0-23.
    pub hour: u32,
    /// Minute.
    pub minute: u32,
    /// Second.
    pub second: u32,
    /// Milliseconds.
    pub millis: u32,
}

impl Civil {
    /// The calendar time of `time` (a clock set before 1970 gives the epoch).
    pub fn of(time: SystemTime) -> Civil {
        // A clock set before 1970 logs as the epoch.
        let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = since.as_secs();
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let of_day = (secs % 86_400) as u32;
        Civil {
            year,
            month,
            day,
            hour: of_day / 3600,
            minute: of_day / 60 % 60,
            second: of_day % 60,
            millis: since.subsec_millis(),
        }
    }
}

/// Howard Hinnant's `civil_from_days`, the inverse of `days_from_civil`
/// (<http://howardhinnant.github.io/date_algorithms.html>): days since 1970-01-01 to a
/// proleptic Gregorian (year, month, day).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of March-based year, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2000-10-10T13:55:36.123Z`.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339(pub SystemTime);

impl Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = Civil::of(self.0);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
        )
    }
}

/// `2000-10-10 13:55:36,123`: Python's default `asctime` layout (here in UTC).
#[derive(Debug, Clone, Copy)]
pub struct Asctime(pub SystemTime);

impl Display for Asctime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = Civil::of(self.0);
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02},{:03}",
            c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let at = |secs: u64, millis: u64| UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis);
        for (secs, millis, rfc, asctime) in [
            (0, 0, "1970-01-01T00:00:00.000Z", "1970-01-01 00:00:00,000"),
            (
                951_782_400,
                5,
                "2000-02-29T00:00:00.005Z",
                "2000-02-29 00:00:00,005",
            ),
            (
                1_735_689_599,
                999,
                "2024-12-31T23:59:59.999Z",
                "2024-12-31 23:59:59,999",
            ),
            (
                1_795_833_754,
                123,
                "2026-11-28T02:42:34.123Z",
                "2026-11-28 02:42:34,123",
            ),
            (
                4_107_542_400,
                0,
                "2100-03-01T00:00:00.000Z",
                "2100-03-01 00:00:00,000",
            ),
        ] {
            assert_eq!(Rfc3339(at(secs, millis)).to_string(), rfc);
            assert_eq!(Asctime(at(secs, millis)).to_string(), asctime);
        }
        // Before the epoch: clamped.
        assert_eq!(
            Rfc3339(UNIX_EPOCH - Duration::from_secs(5)).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
    }

    /// Hinnant's `days_from_civil`, to check `civil_from_days` against its inverse.
    fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
        let y = y - i64::from(m <= 2);
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(m);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    #[test]
    fn civil_round_trip() {
        let mut previous = civil_from_days(-1);
        for days in 0..200_000 {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d), "{days}");
            assert_eq!(days_from_civil(y, m, d), days);
            assert!((y, m, d) > previous);
            previous = (y, m, d);
        }
    }
}
