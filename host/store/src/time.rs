//! The one time unit of stored data: [`UnixMillis`].
//!
//! Every instant the store keeps (creation, expiry, revocation, last use,
//! rotation, a schedule's slot, a job's start and end) is milliseconds
//! since the Unix epoch, in the database, in the operations' types and in
//! the API's JSON. Seconds appear only where a protocol fixes them (a
//! webhook signature's `t`) or in cron arithmetic, converted at that edge.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

/// An instant: milliseconds since 1970-01-01T00:00:00Z.
///
/// Serialised as a plain integer. Arithmetic saturates instead of
/// overflowing, so an absurd duration from a user cannot wrap a deadline
/// into the past.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// The epoch itself.
    pub const EPOCH: UnixMillis = UnixMillis(0);

    /// The current time (the epoch if the clock is before 1970).
    pub fn now() -> UnixMillis {
        UnixMillis(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// The instant `secs` seconds after the epoch.
    pub fn from_secs(secs: i64) -> UnixMillis {
        UnixMillis(secs.saturating_mul(1000))
    }

    /// Whole seconds since the epoch (rounded down).
    pub fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: Duration) -> UnixMillis {
        UnixMillis(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// `self - d`, saturating.
    pub fn saturating_sub(self, d: Duration) -> UnixMillis {
        UnixMillis(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// RFC 3339 in UTC with milliseconds, for example
    /// `2023-11-14T22:13:20.123Z`. Never panics; years outside 0..=9999 are
    /// written with more digits or a sign, which is no longer strict RFC 3339.
    pub fn rfc3339(self) -> String {
        let millis = self.0;
        let secs = millis.div_euclid(1000);
        let milli = millis.rem_euclid(1000);
        let days = secs.div_euclid(86_400);
        let second_of_day = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
            second_of_day / 3600,
            second_of_day % 3600 / 60,
            second_of_day % 60
        )
    }

    /// The time from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: UnixMillis) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

/// Converts days since 1970-01-01 into a proleptic Gregorian (year, month,
/// day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl ToSql for UnixMillis {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl FromSql for UnixMillis {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        i64::column_result(value).map(UnixMillis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_and_saturate() {
        assert_eq!(UnixMillis::from_secs(2).as_millis(), 2000);
        assert_eq!(UnixMillis(1999).as_secs(), 1);
        assert_eq!(UnixMillis(-1).as_secs(), -1);
        assert_eq!(UnixMillis::from_secs(i64::MAX), UnixMillis(i64::MAX));
        assert_eq!(
            UnixMillis(i64::MAX - 1).saturating_add(Duration::from_secs(10)),
            UnixMillis(i64::MAX)
        );
        assert_eq!(
            UnixMillis(5).saturating_add(Duration::MAX),
            UnixMillis(i64::MAX)
        );
        assert_eq!(UnixMillis(5).since(UnixMillis(7)), Duration::ZERO);
        assert_eq!(
            UnixMillis(1500).since(UnixMillis(500)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn now_is_milliseconds() {
        // 2020-01-01 in milliseconds is 1.577e12; in seconds it would be 1.577e9.
        assert!(UnixMillis::now().as_millis() > 1_577_836_800_000);
    }

    #[test]
    fn serialises_as_an_integer() {
        assert_eq!(serde_json::to_string(&UnixMillis(42)).unwrap(), "42");
        assert_eq!(
            serde_json::from_str::<UnixMillis>("42").unwrap(),
            UnixMillis(42)
        );
    }
}
