//! A builder's `schedule`: a cron expression read in UTC, five fields or
//! six with seconds first (`*/20 * * * * *`), no year. Firings are whole
//! seconds; every node computes the same ones from the same text.

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use crate::ids::Hash32;
use crate::Millis;

pub const MAX_SCHEDULE_LEN: usize = 128;
/// How far ahead of a firing a node may announce it: clocks differ a little.
pub const MAX_EARLY_MS: Millis = 10_000;

fn parse(expr: &str) -> Result<Cron, String> {
    if expr.len() > MAX_SCHEDULE_LEN {
        return Err(format!("schedule is over {MAX_SCHEDULE_LEN} bytes"));
    }
    let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
    parser.parse(expr).map_err(|e| format!("schedule {expr:?} is not a cron expression: {e}"))
}

fn time(ms: Millis) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

fn ms(t: DateTime<Utc>) -> Option<Millis> {
    Millis::try_from(t.timestamp_millis()).ok()
}

/// A schedule as a recipe may have it: one that parses and fires at
/// least once in the year after 2001-01-01 (so no `30 2` in February,
/// whose search would cost every node a scan of centuries).
pub fn check(expr: &str) -> Result<(), String> {
    let cron = parse(expr)?;
    let from = time(978_307_200_000).expect("a valid time");
    // A year holds every minute, month and weekday combination but leap days.
    let leap_from = time(1_078_099_200_000).expect("a valid time"); // 2004-03-01
    let fires = |start: DateTime<Utc>| {
        let end = start + chrono::Duration::days(366 * 4);
        cron.find_next_occurrence(&start, true).ok().is_some_and(|t| t < end)
    };
    if !fires(from) && !fires(leap_from) {
        return Err(format!("schedule {expr:?} never fires"));
    }
    Ok(())
}

/// The latest firing at or before `at_ms`.
pub fn latest_firing(expr: &str, at_ms: Millis) -> Option<Millis> {
    let cron = parse(expr).ok()?;
    ms(cron.find_previous_occurrence(&time(at_ms)?, true).ok()?)
}

/// The first firing after `after_ms`.
pub fn next_firing(expr: &str, after_ms: Millis) -> Option<Millis> {
    let cron = parse(expr).ok()?;
    ms(cron.find_next_occurrence(&time(after_ms)?, false).ok()?)
}

/// Whether `at_ms` is a firing of the schedule: a whole second it matches.
pub fn is_firing(expr: &str, at_ms: Millis) -> bool {
    at_ms % 1000 == 0 && latest_firing(expr, at_ms) == Some(at_ms)
}

/// The job of one firing: named by the branch, builder and firing time
/// only, so nodes that hold different heads of the branch name the same job.
pub fn scheduled_job_id(repo: &str, branch: &str, builder: &str, at_ms: Millis) -> Hash32 {
    Hash32::of_fields(
        "peerbot.job.scheduled.v1",
        &[repo.as_bytes(), branch.as_bytes(), builder.as_bytes(), &at_ms.to_le_bytes()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firings_of_a_nightly_and_of_a_seconds_schedule() {
        // 2026-12-06 18:20:37 UTC
        let now = 1_796_581_237_000;
        let t = latest_firing("0 3 * * *", now).unwrap();
        assert_eq!(t, 1_796_526_000_000, "03:00 that day");
        assert!(is_firing("0 3 * * *", t));
        assert!(!is_firing("0 3 * * *", t + 1000));
        assert!(!is_firing("0 3 * * *", t + 1), "not a whole second");
        assert_eq!(next_firing("0 3 * * *", t), Some(t + 86_400_000));
        assert_eq!(latest_firing("*/20 * * * * *", now), Some(1_796_581_220_000));
        assert_eq!(next_firing("*/20 * * * * *", now), Some(1_796_581_240_000));
    }

    #[test]
    fn bad_schedules_are_named() {
        assert!(check("0 3 * * *").is_ok());
        assert!(check("*/10 * * * * *").is_ok());
        assert!(check("0 0 29 2 *").is_ok(), "leap days fire");
        assert!(check("0 0 30 2 *").unwrap_err().contains("never fires"));
        assert!(check("61 * * * *").is_err());
        assert!(check("nightly").is_err());
        assert!(check("* * * * * * 2030").is_err(), "no year field");
        assert!(check(&"*".repeat(200)).is_err());
    }
}
