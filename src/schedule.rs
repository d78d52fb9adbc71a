//! When the long-running `mirrorsync sync` starts a run.
//!
//! [`Schedule`] is the config's `schedule` (standard cron, 5 fields, or 6 with seconds first)
//! evaluated in its `timezone` (an IANA name such as `UTC` or `Europe/Berlin`), with the
//! daylight-saving rules of that zone: `0 3 * * *` in `Europe/Berlin` fires at 03:00 local time
//! every day, whether that is 01:00 or 02:00 UTC. Day-of-week names and numbers follow cron
//! (`0`/`7` = Sunday, `MON-FRI` = Monday to Friday); when both day-of-month and day-of-week are
//! restricted, either one matching is enough, as in Vixie cron. `@hourly`, `@daily` (or
//! `@midnight`), `@weekly` (Sunday 00:00), `@monthly`, `@yearly` (or `@annually`) are accepted too.

use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// The `@` forms accepted as a whole schedule.
pub const NICKNAMES: [&str; 7] = [
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@yearly",
    "@annually",
];

/// A parsed cron schedule in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: chrono_tz::Tz,
    expr: String,
}

impl Schedule {
    /// Parses a cron expression of 5 fields (`minute hour day-of-month month day-of-week`) or 6
    /// (`second` first), or an `@hourly`-style nickname, to be evaluated in `timezone`.
    ///
    /// Errors say what is wrong: the field count, the field croner rejected, an unknown time
    /// zone (named), or an expression that never fires (such as `0 0 30 2 *`).
    pub fn parse(expr: &str, timezone: &str) -> Result<Schedule, String> {
        let trimmed = expr.trim();
        if trimmed.is_empty() {
            return Err(
                "schedule is empty: expected a cron expression such as \"0 */6 * * *\"".to_string(),
            );
        }
        if trimmed.starts_with('@') {
            if !NICKNAMES.iter().any(|n| n.eq_ignore_ascii_case(trimmed)) {
                return Err(format!(
                    "unknown schedule nickname \"{trimmed}\": use one of {}, or a cron \
                     expression",
                    NICKNAMES.join(", ")
                ));
            }
        } else {
            let fields = trimmed.split_whitespace().count();
            if fields != 5 && fields != 6 {
                return Err(format!(
                    "schedule \"{trimmed}\" has {fields} field{}: expected 5 (minute hour \
                     day-of-month month day-of-week) or 6 (second minute hour day-of-month \
                     month day-of-week)",
                    if fields == 1 { "" } else { "s" }
                ));
            }
        }
        let tz_name = timezone.trim();
        let tz: chrono_tz::Tz = if tz_name.is_empty() {
            return Err(
                "timezone is empty: expected an IANA time zone name such as UTC or Europe/Berlin"
                    .to_string(),
            );
        } else {
            tz_name.parse().map_err(|_| {
                format!(
                    "unknown timezone \"{tz_name}\": expected an IANA time zone name such as \
                     UTC or Europe/Berlin"
                )
            })?
        };
        // croner knows every nickname but Vixie cron's (and Kubernetes') `@midnight`.
        let pattern = if trimmed.eq_ignore_ascii_case("@midnight") {
            "@daily"
        } else {
            trimmed
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| format!("invalid schedule \"{trimmed}\": {e}"))?;
        let schedule = Schedule {
            cron,
            tz,
            expr: trimmed.to_string(),
        };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(format!(
                "schedule \"{trimmed}\" never fires (no matching date in {tz_name})"
            ));
        }
        Ok(schedule)
    }

    /// The first occurrence strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        let next = next.with_timezone(&Utc);
        // Guard against a library returning `after` itself for sub-second inputs.
        (next > after).then_some(next)
    }

    /// The time between the next two occurrences after `from`: the schedule's period there.
    pub fn interval(&self, from: DateTime<Utc>) -> Option<Duration> {
        let first = self.next_after(from)?;
        let second = self.next_after(first)?;
        (second - first).to_std().ok()
    }

    /// How long to sleep from `now` until the next occurrence (zero if it is already due), and
    /// that occurrence.
    pub fn sleep_until_next(&self, now: DateTime<Utc>) -> Option<(Duration, DateTime<Utc>)> {
        let next = self.next_after(now)?;
        Some(((next - now).to_std().unwrap_or(Duration::ZERO), next))
    }

    /// The expression as given (trimmed).
    pub fn expression(&self) -> &str {
        &self.expr
    }

    /// The time zone the expression is evaluated in.
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.tz
    }

    /// A human description, e.g. `"0 */6 * * *" in UTC (At minute 0, every 6 hours.)`.
    pub fn describe(&self) -> String {
        format!(
            "\"{}\" in {} ({})",
            self.expr,
            self.tz.name(),
            self.cron.describe().trim()
        )
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.expr, self.tz.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn five_field_expression() {
        let s = Schedule::parse("0 */6 * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc(2024, 5, 1, 1, 2, 3)),
            Some(utc(2024, 5, 1, 6, 0, 0))
        );
        // Strictly after: an occurrence instant gives the following one.
        assert_eq!(
            s.next_after(utc(2024, 5, 1, 6, 0, 0)),
            Some(utc(2024, 5, 1, 12, 0, 0))
        );
        assert_eq!(
            s.next_after(utc(2024, 5, 1, 23, 59, 59)),
            Some(utc(2024, 5, 2, 0, 0, 0))
        );
        assert_eq!(
            s.interval(utc(2024, 5, 1, 1, 0, 0)),
            Some(Duration::from_secs(6 * 3600))
        );
        let d = s.describe();
        assert!(d.contains("0 */6 * * *") && d.contains("UTC"), "{d}");
    }

    #[test]
    fn six_field_expression_has_seconds_first() {
        let s = Schedule::parse("*/1 * * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc(2024, 5, 1, 1, 2, 3)),
            Some(utc(2024, 5, 1, 1, 2, 4))
        );
        let sub = utc(2024, 5, 1, 1, 2, 3) + chrono::Duration::milliseconds(500);
        assert_eq!(s.next_after(sub), Some(utc(2024, 5, 1, 1, 2, 4)));
        assert_eq!(
            s.interval(utc(2024, 5, 1, 1, 2, 3)),
            Some(Duration::from_secs(1))
        );

        let s = Schedule::parse("30 0 3 * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc(2024, 5, 1, 4, 0, 0)),
            Some(utc(2024, 5, 2, 3, 0, 30))
        );
    }

    #[test]
    fn weekdays_are_not_shifted() {
        let s = Schedule::parse("*/15 * * * MON-FRI", "UTC").unwrap();
        // 2024-05-03 is a Friday; after its last slot comes Monday 2024-05-06 00:00.
        assert_eq!(utc(2024, 5, 3, 0, 0, 0).weekday(), Weekday::Fri);
        assert_eq!(
            s.next_after(utc(2024, 5, 3, 23, 50, 0)),
            Some(utc(2024, 5, 6, 0, 0, 0))
        );
        assert_eq!(
            s.next_after(utc(2024, 5, 3, 10, 1, 0)),
            Some(utc(2024, 5, 3, 10, 15, 0))
        );
        // Every occurrence over two weeks is Monday to Friday.
        let mut t = utc(2024, 5, 1, 0, 0, 0);
        for _ in 0..(14 * 96) {
            t = s.next_after(t).unwrap();
            assert!(!matches!(t.weekday(), Weekday::Sat | Weekday::Sun), "{t}");
            assert_eq!(t.minute() % 15, 0);
        }
        // Numeric day-of-week: 0 and 7 are Sunday, 1 is Monday.
        let sun = Schedule::parse("0 12 * * 0", "UTC").unwrap();
        let next = sun.next_after(utc(2024, 5, 1, 0, 0, 0)).unwrap();
        assert_eq!(next, utc(2024, 5, 5, 12, 0, 0));
        assert_eq!(next.weekday(), Weekday::Sun);
        let sun7 = Schedule::parse("0 12 * * 7", "UTC").unwrap();
        assert_eq!(sun7.next_after(utc(2024, 5, 1, 0, 0, 0)), Some(next));
        let mon = Schedule::parse("0 12 * * 1", "UTC").unwrap();
        assert_eq!(
            mon.next_after(utc(2024, 5, 1, 0, 0, 0)).unwrap().weekday(),
            Weekday::Mon
        );
    }

    #[test]
    fn interval_of_quarter_hour() {
        let s = Schedule::parse("*/15 * * * *", "UTC").unwrap();
        assert_eq!(
            s.interval(utc(2024, 5, 1, 10, 7, 0)),
            Some(Duration::from_secs(15 * 60))
        );
        assert_eq!(
            s.interval(utc(2024, 5, 1, 10, 45, 0)),
            Some(Duration::from_secs(15 * 60))
        );
        let (sleep, at) = s.sleep_until_next(utc(2024, 5, 1, 10, 7, 0)).unwrap();
        assert_eq!(at, utc(2024, 5, 1, 10, 15, 0));
        assert_eq!(sleep, Duration::from_secs(8 * 60));
    }

    #[test]
    fn berlin_daily_at_three_across_dst() {
        let s = Schedule::parse("0 3 * * *", "Europe/Berlin").unwrap();
        // Spring forward on 2024-03-31 (02:00 CET -> 03:00 CEST). 03:00 CET is 02:00 UTC,
        // 03:00 CEST is 01:00 UTC.
        assert_eq!(
            s.next_after(utc(2024, 3, 29, 12, 0, 0)),
            Some(utc(2024, 3, 30, 2, 0, 0))
        );
        assert_eq!(
            s.next_after(utc(2024, 3, 30, 12, 0, 0)),
            Some(utc(2024, 3, 31, 1, 0, 0))
        );
        assert_eq!(
            s.next_after(utc(2024, 3, 31, 1, 0, 0)),
            Some(utc(2024, 4, 1, 1, 0, 0))
        );
        // Across the change the gap between the two runs is 23 hours.
        assert_eq!(
            s.interval(utc(2024, 3, 29, 12, 0, 0)),
            Some(Duration::from_secs(23 * 3600))
        );
        // Fall back on 2024-10-27 (03:00 CEST -> 02:00 CET): 03:00 local happens once, at
        // 02:00 UTC, and the day before at 01:00 UTC.
        assert_eq!(
            s.next_after(utc(2024, 10, 25, 12, 0, 0)),
            Some(utc(2024, 10, 26, 1, 0, 0))
        );
        assert_eq!(
            s.next_after(utc(2024, 10, 26, 12, 0, 0)),
            Some(utc(2024, 10, 27, 2, 0, 0))
        );
        assert_eq!(
            s.interval(utc(2024, 10, 25, 12, 0, 0)),
            Some(Duration::from_secs(25 * 3600))
        );
        let local = s
            .next_after(utc(2024, 10, 26, 12, 0, 0))
            .unwrap()
            .with_timezone(&chrono_tz::Europe::Berlin);
        assert_eq!((local.hour(), local.minute()), (3, 0));
        assert_eq!(s.timezone(), chrono_tz::Europe::Berlin);

        // A time inside the spring-forward gap runs once, when the gap ends; a time in the
        // repeated autumn hour runs once, on its first occurrence.
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            s.next_after(utc(2024, 3, 30, 12, 0, 0)),
            Some(utc(2024, 3, 31, 1, 0, 0))
        );
        assert_eq!(
            s.next_after(utc(2024, 3, 31, 1, 0, 0)),
            Some(utc(2024, 4, 1, 0, 30, 0))
        );
        assert_eq!(
            s.next_after(utc(2024, 10, 26, 12, 0, 0)),
            Some(utc(2024, 10, 27, 0, 30, 0))
        );
        assert_eq!(
            s.next_after(utc(2024, 10, 27, 0, 30, 0)),
            Some(utc(2024, 10, 28, 1, 30, 0))
        );
    }

    #[test]
    fn invalid_expressions_are_rejected_with_reasons() {
        let e = Schedule::parse("", "UTC").unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = Schedule::parse("* * * *", "UTC").unwrap_err();
        assert!(e.contains("4 fields") && e.contains("expected 5"), "{e}");
        let e = Schedule::parse("0 0 0 1 1 * 2030", "UTC").unwrap_err();
        assert!(e.contains("7 fields"), "{e}");
        for bad in [
            "61 * * * *",
            "* 25 * * *",
            "* * 32 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "a b c d e",
            "0 */6 * * FUNDAY",
        ] {
            let e = Schedule::parse(bad, "UTC").unwrap_err();
            assert!(
                e.contains("invalid schedule") && e.contains(bad),
                "{bad}: {e}"
            );
        }
        let e = Schedule::parse("0 0 30 2 *", "UTC").unwrap_err();
        assert!(e.contains("never fires"), "{e}");
    }

    #[test]
    fn unknown_timezones_are_rejected_by_name() {
        let e = Schedule::parse("0 3 * * *", "Mars/Olympus_Mons").unwrap_err();
        assert!(
            e.contains("unknown timezone") && e.contains("Mars/Olympus_Mons"),
            "{e}"
        );
        let e = Schedule::parse("0 3 * * *", "").unwrap_err();
        assert!(e.contains("timezone is empty"), "{e}");
        assert!(Schedule::parse("0 3 * * *", "America/New_York").is_ok());
    }

    #[test]
    fn nicknames() {
        let s = Schedule::parse("@hourly", "UTC").unwrap();
        assert_eq!(
            s.interval(utc(2024, 5, 1, 10, 7, 0)),
            Some(Duration::from_secs(3600))
        );
        let e = Schedule::parse("@fortnightly", "UTC").unwrap_err();
        assert!(
            e.contains("unknown schedule nickname") && e.contains("@daily"),
            "{e}"
        );
    }
}
