//! Cron schedules evaluated in an IANA time zone, for the `wrun serve` scheduler.
//!
//! A [`Schedule`] pairs a cron expression with a time zone and answers two
//! questions about instants ([`UnixMillis`]; cron slots fall on whole
//! seconds): "when is the next slot after this instant?"
//! ([`Schedule::next_after`]) and "which slot was missed while the daemon was
//! down?" ([`Schedule::latest_at_or_before`]).
//!
//! # Expressions
//!
//! Parsing and evaluation use the `croner` crate (Vixie-cron syntax with
//! extensions). Five fields (`minute hour day-of-month month day-of-week`) or
//! six fields (a leading `second`) are accepted, as are the nicknames
//! `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. Names such as `MON`
//! and `JAN` are accepted, `L`, `W` and `#` work as in `croner`. A seventh
//! (year) field is refused. When both day-of-month and day-of-week are
//! restricted, a day matches if either matches (the Vixie-cron rule).
//!
//! # Daylight saving time
//!
//! Evaluation happens on the wall clock of the schedule's zone, and `croner`
//! resolves the two DST anomalies as the Open Cron Pattern Specification says:
//!
//! * **Skipped hour (spring forward).** A *fixed-time* expression (numbers in
//!   the second, minute and hour fields, such as `30 2 * * *`) whose wall time
//!   does not exist that day fires once, at the first real instant after the
//!   gap (03:00 local for a 02:30 job in America/New_York). An *interval*
//!   expression (a `*` or step in one of those fields, such as `0 * * * *`)
//!   simply has no slots inside the gap.
//! * **Repeated hour (fall back).** A fixed-time expression fires once, at the
//!   first (daylight-time) occurrence of its wall time. An interval expression
//!   fires at every matching instant of both passes, so an hourly job runs at
//!   01:00 EDT and again at 01:00 EST, one real hour apart.
//!
//! In every case the slots are distinct instants in strictly increasing order;
//! the tests `spring_forward_daily_0230_fires_once_after_the_gap` and
//! `fall_back_hourly_slots_strictly_increase` check this.
//!
//! # Bounded work
//!
//! [`Schedule::parse`] refuses expressions that never match a real date (such
//! as 30 February) by probing for a slot, so the scheduler loop never asks
//! `croner` for a slot that does not exist. Expressions longer than
//! [`MAX_EXPRESSION_LEN`] bytes are refused before parsing.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use wrun_store::UnixMillis;

/// The longest cron expression [`Schedule::parse`] accepts, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 200;

/// Why a cron expression or time zone was refused.
///
/// Each message names the part that is wrong: the expression or the zone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("invalid cron expression {expression:?}: {reason}")]
    InvalidExpression {
        /// The expression as given (cut to [`MAX_EXPRESSION_LEN`] bytes).
        expression: String,
        /// What the parser objected to.
        reason: String,
    },
    /// The cron expression parses but matches no real date (such as `0 0 30 2 *`).
    #[error("cron expression {expression:?} never matches a real date")]
    NeverMatches {
        /// The expression as given.
        expression: String,
    },
    /// The time zone is not a known IANA zone name.
    #[error(
        "unknown time zone {zone:?}: expected an IANA zone name such as \"UTC\" or \"Europe/Helsinki\""
    )]
    UnknownTimeZone {
        /// The zone name as given (cut to 64 bytes).
        zone: String,
    },
}

/// A parsed cron expression bound to an IANA time zone.
#[derive(Clone)]
pub struct Schedule {
    /// The expression exactly as given, trimmed.
    expression: String,
    /// The zone the expression's wall clock is read in.
    timezone: Tz,
    /// The parsed expression.
    cron: Cron,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("expression", &self.expression)
            .field("timezone", &self.timezone.name())
            .finish()
    }
}

impl Schedule {
    /// Parses a five- or six-field cron expression and an IANA zone name
    /// (such as `"UTC"` or `"America/New_York"`; names are case-sensitive).
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InvalidExpression`] if the expression is empty, too
    /// long or does not parse; [`ScheduleError::NeverMatches`] if it parses
    /// but names no real date; [`ScheduleError::UnknownTimeZone`] if the zone
    /// is not in the IANA database compiled into the binary.
    pub fn parse(cron: &str, tz: &str) -> Result<Schedule, ScheduleError> {
        let expression = cron.trim();
        if expression.len() > MAX_EXPRESSION_LEN {
            return Err(ScheduleError::InvalidExpression {
                expression: truncate(expression, MAX_EXPRESSION_LEN),
                reason: format!("longer than {MAX_EXPRESSION_LEN} bytes"),
            });
        }
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| ScheduleError::InvalidExpression {
                expression: expression.to_owned(),
                reason: e.to_string(),
            })?;
        let timezone = Tz::from_str(tz.trim()).map_err(|_| ScheduleError::UnknownTimeZone {
            zone: truncate(tz.trim(), 64),
        })?;
        let schedule = Schedule {
            expression: expression.to_owned(),
            timezone,
            cron: parsed,
        };
        // Every satisfiable expression has a slot within eight years of any
        // instant (29 February recurs at worst every eight years), so probing
        // from a fixed instant tells satisfiable from unsatisfiable ones.
        const PROBE_FROM: i64 = 946_684_800; // 2000-01-01T00:00:00Z
        if schedule
            .next_after(UnixMillis::from_secs(PROBE_FROM))
            .is_none()
        {
            return Err(ScheduleError::NeverMatches {
                expression: schedule.expression,
            });
        }
        Ok(schedule)
    }

    /// Returns the first slot strictly after `after`.
    ///
    /// Returns `None` if the instant is outside the range `chrono` and
    /// `croner` support (years 1 to 4999) or no later slot exists there.
    pub fn next_after(&self, after: UnixMillis) -> Option<UnixMillis> {
        // Slots are whole seconds: the first one after the second `after`
        // falls in is also the first one after `after`.
        let start = self.local(after.as_secs())?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        let next = UnixMillis::from_secs(next.timestamp());
        // The crate promises a slot strictly after the start; hold it to that.
        (next > after).then_some(next)
    }

    /// Returns the most recent slot in `(not_before, now]`.
    ///
    /// The daemon calls this on start with `not_before` set to the last slot
    /// it fired (or the schedule's creation time), so a slot missed while it
    /// was down fires exactly once, and several missed slots collapse into
    /// the latest one. Returns `None` if no slot lies in the interval.
    pub fn latest_at_or_before(
        &self,
        now: UnixMillis,
        not_before: UnixMillis,
    ) -> Option<UnixMillis> {
        if now <= not_before {
            return None;
        }
        let start = self.local(now.as_secs())?;
        let prev = self.cron.find_previous_occurrence(&start, true).ok()?;
        let prev = UnixMillis::from_secs(prev.timestamp());
        (prev > not_before && prev <= now).then_some(prev)
    }

    /// Returns the cron expression as given (trimmed).
    #[cfg(test)]
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Returns the IANA name of the schedule's time zone.
    #[cfg(test)]
    pub fn timezone(&self) -> &'static str {
        self.timezone.name()
    }

    /// Converts Unix seconds to a date-time on the schedule's wall clock.
    fn local(&self, unix_secs: i64) -> Option<DateTime<Tz>> {
        let utc = DateTime::<Utc>::from_timestamp(unix_secs, 0)?;
        Some(self.timezone.from_utc_datetime(&utc.naive_utc()))
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, for error messages.
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds for a UTC date and time.
    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .unwrap()
            .timestamp()
    }

    /// The schedule's questions in whole seconds, which cron slots are, so
    /// the cases below read as wall-clock arithmetic.
    trait InSeconds {
        fn next_secs(&self, after: i64) -> Option<i64>;
        fn latest_secs(&self, now: i64, not_before: i64) -> Option<i64>;
    }

    impl InSeconds for Schedule {
        fn next_secs(&self, after: i64) -> Option<i64> {
            self.next_after(UnixMillis::from_secs(after))
                .map(UnixMillis::as_secs)
        }
        fn latest_secs(&self, now: i64, not_before: i64) -> Option<i64> {
            self.latest_at_or_before(
                UnixMillis::from_secs(now),
                UnixMillis::from_secs(not_before),
            )
            .map(UnixMillis::as_secs)
        }
    }

    #[test]
    fn instants_between_seconds() {
        let s = Schedule::parse("* * * * *", "UTC").unwrap();
        let t = UnixMillis::from_secs(utc(2025, 6, 1, 12, 0, 0));
        // Half a second before a slot: that slot; half a second after: the next.
        assert_eq!(s.next_after(UnixMillis(t.as_millis() - 500)), Some(t));
        assert_eq!(
            s.next_after(UnixMillis(t.as_millis() + 500)),
            Some(UnixMillis::from_secs(t.as_secs() + 60))
        );
        // A slot already fired half a second before is not fired again.
        assert_eq!(
            s.latest_at_or_before(UnixMillis(t.as_millis() + 500), t),
            None
        );
        assert_eq!(
            s.latest_at_or_before(
                UnixMillis(t.as_millis() + 500),
                UnixMillis(t.as_millis() - 1)
            ),
            Some(t)
        );
    }

    /// Lists the slots of `schedule` in `(from, to]`.
    fn slots(schedule: &Schedule, from: i64, to: i64) -> Vec<i64> {
        let mut out = Vec::new();
        let mut at = from;
        while let Some(next) = schedule.next_secs(at) {
            if next > to {
                break;
            }
            out.push(next);
            at = next;
        }
        out
    }

    #[test]
    fn every_minute_in_utc() {
        let s = Schedule::parse("* * * * *", "UTC").unwrap();
        let t = utc(2025, 6, 1, 12, 0, 0);
        assert_eq!(s.next_secs(t), Some(t + 60), "strictly after a slot");
        assert_eq!(s.next_secs(t - 1), Some(t));
        assert_eq!(s.next_secs(t + 59), Some(t + 60));
        assert_eq!(s.expression(), "* * * * *");
        assert_eq!(s.timezone(), "UTC");
    }

    #[test]
    fn six_fields_and_nicknames_parse() {
        let s = Schedule::parse("*/15 * * * * *", "UTC").unwrap();
        let t = utc(2025, 6, 1, 12, 0, 0);
        assert_eq!(s.next_secs(t), Some(t + 15));
        let daily = Schedule::parse("@daily", "UTC").unwrap();
        assert_eq!(daily.next_secs(t), Some(utc(2025, 6, 2, 0, 0, 0)));
    }

    #[test]
    fn weekday_0900_in_kolkata() {
        // Asia/Kolkata is UTC+05:30 all year, so 09:00 local is 03:30 UTC.
        let s = Schedule::parse("0 9 * * MON-FRI", "Asia/Kolkata").unwrap();
        // Friday 2025-01-03 10:00 IST, after that day's slot.
        let fri_after = utc(2025, 1, 3, 4, 30, 0);
        // The next slot is Monday 2025-01-06 09:00 IST.
        assert_eq!(s.next_secs(fri_after), Some(utc(2025, 1, 6, 3, 30, 0)));
        // Thursday 08:59 IST runs the same day.
        assert_eq!(
            s.next_secs(utc(2025, 1, 2, 3, 29, 0)),
            Some(utc(2025, 1, 2, 3, 30, 0))
        );
    }

    #[test]
    fn weekday_0900_in_helsinki_winter_and_summer() {
        let s = Schedule::parse("0 9 * * 1-5", "Europe/Helsinki").unwrap();
        // Winter (EET, +02:00): Monday 2025-01-06 09:00 is 07:00 UTC.
        assert_eq!(
            s.next_secs(utc(2025, 1, 4, 0, 0, 0)),
            Some(utc(2025, 1, 6, 7, 0, 0))
        );
        // Summer (EEST, +03:00): Monday 2025-07-07 09:00 is 06:00 UTC.
        assert_eq!(
            s.next_secs(utc(2025, 7, 5, 0, 0, 0)),
            Some(utc(2025, 7, 7, 6, 0, 0))
        );
    }

    #[test]
    fn invalid_expression_names_the_expression() {
        for bad in [
            "",
            "   ",
            "* * *",
            "61 * * * *",
            "* * * * * * *",
            "hello",
            "0 25 * * *",
        ] {
            let err = Schedule::parse(bad, "UTC").unwrap_err();
            assert!(
                matches!(err, ScheduleError::InvalidExpression { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().contains("cron expression"), "{err}");
        }
        let long = "*".repeat(MAX_EXPRESSION_LEN + 1);
        let err = Schedule::parse(&long, "UTC").unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    #[test]
    fn expression_that_never_matches_is_refused_quickly() {
        let started = std::time::Instant::now();
        let err = Schedule::parse("0 0 30 2 *", "UTC").unwrap_err();
        assert!(matches!(err, ScheduleError::NeverMatches { .. }), "{err:?}");
        assert!(err.to_string().contains("never matches"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // 29 February is rare but real.
        let leap = Schedule::parse("0 0 29 2 *", "UTC").unwrap();
        assert_eq!(
            leap.next_secs(utc(2025, 1, 1, 0, 0, 0)),
            Some(utc(2028, 2, 29, 0, 0, 0))
        );
    }

    #[test]
    fn invalid_zone_names_the_zone() {
        for bad in ["Mars/Olympus", "", "europe/helsinki", "+02:00"] {
            let err = Schedule::parse("* * * * *", bad).unwrap_err();
            assert!(
                matches!(err, ScheduleError::UnknownTimeZone { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().contains("time zone"), "{err}");
        }
    }

    #[test]
    fn latest_at_or_before_semantics() {
        let s = Schedule::parse("0 * * * *", "UTC").unwrap();
        let h10 = utc(2025, 6, 1, 10, 0, 0);
        let h11 = utc(2025, 6, 1, 11, 0, 0);
        let h12 = utc(2025, 6, 1, 12, 0, 0);
        // `now` exactly on a slot includes it.
        assert_eq!(s.latest_secs(h12, h10), Some(h12));
        // Between slots: the latest one before `now`; missed slots collapse.
        assert_eq!(s.latest_secs(h12 + 1800, h10), Some(h12));
        assert_eq!(s.latest_secs(h11 + 1, h10 - 7200), Some(h11));
        // `not_before` is exclusive: the slot already fired is not fired again.
        assert_eq!(s.latest_secs(h12 + 1800, h12), None);
        assert_eq!(s.latest_secs(h11 + 59, h11), None);
        // Empty or reversed interval.
        assert_eq!(s.latest_secs(h12, h12), None);
        assert_eq!(s.latest_secs(h10, h12), None);
        // Firing the returned slot and restarting again finds nothing new.
        let fired = s.latest_secs(h12 + 10, h10).unwrap();
        assert_eq!(s.latest_secs(h12 + 20, fired), None);
    }

    #[test]
    fn out_of_range_instants_give_none() {
        let s = Schedule::parse("* * * * *", "UTC").unwrap();
        assert_eq!(s.next_secs(i64::MAX), None);
        assert_eq!(s.next_secs(i64::MIN), None);
        assert_eq!(s.latest_secs(i64::MAX, 0), None);
    }

    #[test]
    fn spring_forward_daily_0230_fires_once_after_the_gap() {
        // On 2025-03-09 America/New_York jumps from 02:00 EST to 03:00 EDT,
        // so 02:30 does not exist that day.
        let s = Schedule::parse("30 2 * * *", "America/New_York").unwrap();
        let before = utc(2025, 3, 8, 12, 0, 0);
        let all = slots(&s, before, utc(2025, 3, 11, 12, 0, 0));
        // 2025-03-08 02:30 EST is before the start, so the slots are:
        // 2025-03-09 03:00 EDT (07:00 UTC, first instant after the gap),
        // 2025-03-10 02:30 EDT (06:30 UTC), 2025-03-11 02:30 EDT (06:30 UTC).
        assert_eq!(
            all,
            vec![
                utc(2025, 3, 9, 7, 0, 0),
                utc(2025, 3, 10, 6, 30, 0),
                utc(2025, 3, 11, 6, 30, 0),
            ]
        );
        // On restart after the gap the missed slot is found exactly once.
        let missed = s.latest_secs(utc(2025, 3, 9, 12, 0, 0), before);
        assert_eq!(missed, Some(utc(2025, 3, 9, 7, 0, 0)));
    }

    #[test]
    fn fall_back_hourly_slots_strictly_increase() {
        // On 2025-11-02 America/New_York goes back from 02:00 EDT to 01:00 EST,
        // so 01:00-01:59 happens twice.
        let s = Schedule::parse("0 * * * *", "America/New_York").unwrap();
        let from = utc(2025, 11, 2, 3, 30, 0); // 23:30 EDT on 1 November
        let all = slots(&s, from, utc(2025, 11, 2, 9, 0, 0));
        assert_eq!(
            all,
            vec![
                utc(2025, 11, 2, 4, 0, 0), // 00:00 EDT
                utc(2025, 11, 2, 5, 0, 0), // 01:00 EDT
                utc(2025, 11, 2, 6, 0, 0), // 01:00 EST, the repeated hour
                utc(2025, 11, 2, 7, 0, 0), // 02:00 EST
                utc(2025, 11, 2, 8, 0, 0), // 03:00 EST
                utc(2025, 11, 2, 9, 0, 0), // 04:00 EST
            ]
        );
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        // Backwards from inside the second pass finds the second 01:00 only
        // once, then the first.
        assert_eq!(
            s.latest_secs(utc(2025, 11, 2, 6, 30, 0), from),
            Some(utc(2025, 11, 2, 6, 0, 0))
        );
        assert_eq!(
            s.latest_secs(utc(2025, 11, 2, 6, 0, 0) - 1, from),
            Some(utc(2025, 11, 2, 5, 0, 0))
        );
    }

    #[test]
    fn fall_back_fixed_time_fires_once() {
        // A daily 01:30 job runs once on the fall-back day, at 01:30 EDT.
        let s = Schedule::parse("30 1 * * *", "America/New_York").unwrap();
        let all = slots(&s, utc(2025, 11, 1, 12, 0, 0), utc(2025, 11, 3, 12, 0, 0));
        assert_eq!(
            all,
            vec![
                utc(2025, 11, 2, 5, 30, 0), // 01:30 EDT
                utc(2025, 11, 3, 6, 30, 0), // 01:30 EST the next day
            ]
        );
    }

    #[test]
    fn slots_strictly_increase_across_a_dst_year() {
        // Every 30 minutes through a whole year in Helsinki, both transitions
        // included: no instant repeats and no step goes backwards.
        let s = Schedule::parse("*/30 * * * *", "Europe/Helsinki").unwrap();
        let all = slots(&s, utc(2025, 1, 1, 0, 0, 0), utc(2026, 1, 1, 0, 0, 0));
        assert!(
            all.windows(2).all(|w| w[1] - w[0] == 1800),
            "uniform in real time"
        );
        assert_eq!(all.len(), 365 * 48);
    }
}
