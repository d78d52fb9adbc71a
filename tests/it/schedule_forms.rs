//! User stories about `schedule:`: every form the documentation promises (5 fields, 6 fields
//! with seconds first, the `@` nicknames, a `timezone`) is accepted by `mirrorsync check`, which
//! shows the next pass as the daemon will compute it; anything else is a configuration error
//! (exit 2) naming the line, column and key.

use crate::common;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use common::*;

/// Runs `mirrorsync check` on a config with this schedule and timezone; returns the next pass it
/// printed, and the instants just before and after the run.
async fn next_pass(
    schedule: &str,
    timezone: &str,
) -> (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "schedule: \"{schedule}\"\ntimezone: {timezone}\ntarget:\n  path: ./mirror\nimages:\n  - busybox:1.36\n"
        ),
    );
    let before = Utc::now();
    let out = mirrorsync(&["check", "--config", config.to_str().unwrap()]).await;
    let after = Utc::now();
    out.assert_code(0);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("schedule: "))
        .unwrap_or_else(|| panic!("{schedule}: check shows no schedule line:\n{}", out.stdout));
    assert!(
        line.contains(schedule) && line.contains(timezone),
        "{schedule}: the line names the expression and zone: {line}"
    );
    let at = line
        .rsplit_once("next pass at ")
        .unwrap_or_else(|| panic!("{schedule}: no next pass in {line}"))
        .1;
    let next = DateTime::parse_from_rfc3339(at.trim())
        .unwrap_or_else(|e| panic!("{schedule}: {at}: {e}"))
        .with_timezone(&Utc);
    (next, before, after)
}

/// The first local time after `now` (in `tz`) accepted by `matches`, scanning minute by
/// minute (second by second when `seconds`): a plain reference, no cron library involved.
fn brute_force(
    now: DateTime<Utc>,
    tz: Tz,
    seconds: bool,
    matches: impl Fn(&chrono::DateTime<Tz>) -> bool,
) -> DateTime<Utc> {
    let step = if seconds {
        Duration::seconds(1)
    } else {
        Duration::minutes(1)
    };
    let mut t = now.with_nanosecond(0).unwrap();
    if !seconds {
        t = t.with_second(0).unwrap();
    }
    for _ in 0..(2 * 366 * 24 * 60) {
        t += step;
        let local = t.with_timezone(&tz);
        if (seconds || local.second() == 0) && matches(&local) {
            return t;
        }
    }
    panic!("no occurrence found");
}

/// Asserts that `check` printed the occurrence `expected` computes from the time of the run.
async fn assert_next(
    schedule: &str,
    timezone: &str,
    seconds: bool,
    matches: impl Fn(&chrono::DateTime<Tz>) -> bool + Copy,
) {
    let tz: Tz = timezone.parse().unwrap();
    let (next, before, after) = next_pass(schedule, timezone).await;
    let a = brute_force(before, tz, seconds, matches);
    let b = brute_force(after, tz, seconds, matches);
    assert!(
        next == a || next == b,
        "{schedule} in {timezone}: check said {next}, expected {a} (or {b})"
    );
    assert!(next > before, "{schedule}: the next pass is in the future");
}

fn at(h: u32, m: u32) -> impl Fn(&chrono::DateTime<Tz>) -> bool + Copy {
    move |t| t.hour() == h && t.minute() == m
}

#[tokio::test(flavor = "multi_thread")]
async fn five_and_six_field_expressions() {
    assert_next("30 4 * * *", "UTC", false, at(4, 30)).await;
    assert_next("*/15 * * * MON-FRI", "UTC", false, |t| {
        t.minute() % 15 == 0 && !matches!(t.weekday(), Weekday::Sat | Weekday::Sun)
    })
    .await;
    // Six fields: seconds first.
    assert_next("15 */10 * * * *", "UTC", true, |t| {
        t.second() == 15 && t.minute() % 10 == 0
    })
    .await;
    assert_next("*/20 * * * * *", "UTC", true, |t| t.second() % 20 == 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nicknames_are_accepted() {
    assert_next("@hourly", "UTC", false, |t| t.minute() == 0).await;
    assert_next("@daily", "UTC", false, at(0, 0)).await;
    assert_next("@midnight", "UTC", false, at(0, 0)).await;
    assert_next("@weekly", "UTC", false, |t| {
        t.weekday() == Weekday::Sun && t.hour() == 0 && t.minute() == 0
    })
    .await;
    assert_next("@monthly", "UTC", false, |t| {
        t.day() == 1 && t.hour() == 0 && t.minute() == 0
    })
    .await;
    for yearly in ["@yearly", "@annually"] {
        let (next, before, _) = next_pass(yearly, "UTC").await;
        let want = Utc.from_utc_datetime(
            &NaiveDate::from_ymd_opt(before.year() + 1, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap(),
        );
        assert_eq!(next, want, "{yearly}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn timezone_moves_the_pass() {
    // @daily in Berlin is local midnight: 23:00 or 22:00 UTC, never 00:00 UTC.
    assert_next("@daily", "Europe/Berlin", false, at(0, 0)).await;
    let (next, _, _) = next_pass("@daily", "Europe/Berlin").await;
    assert!(matches!(next.hour(), 22 | 23), "{next}");
    assert_next("0 3 * * *", "America/New_York", false, at(3, 0)).await;
    assert_next("0 3 * * *", "Asia/Kolkata", false, at(3, 0)).await;
    let (kolkata, _, _) = next_pass("0 3 * * *", "Asia/Kolkata").await;
    assert_eq!(
        (kolkata.hour(), kolkata.minute()),
        (21, 30),
        "03:00 IST is 21:30 UTC"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_schedules_are_config_errors() {
    for (schedule, reason) in [
        ("@fortnightly", "unknown schedule nickname"),
        ("*/5 * * *", "has 4 fields"),
        ("0 0 0 1 1 * 2030", "has 7 fields"),
        ("61 * * * *", "invalid schedule"),
        ("0 0 30 2 *", "never fires"),
        ("", "schedule is empty"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            &format!(
                "schedule: \"{schedule}\"\ntarget:\n  path: ./mirror\nimages:\n  - busybox:1.36\n"
            ),
        );
        let out = mirrorsync(&["check", "--config", config.to_str().unwrap()]).await;
        out.assert_code(2);
        let located = format!("{}:1:11: schedule", config.display());
        assert!(
            out.stderr.contains(&located) && out.stderr.contains(reason),
            "{schedule:?}: expected `{located}` and `{reason}`:\n{}",
            out.stderr
        );
    }
    // An unknown zone is named at its own key.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "schedule: \"@daily\"\ntimezone: Mars/Olympus_Mons\ntarget:\n  path: ./mirror\nimages:\n  - busybox:1.36\n",
    );
    let out = mirrorsync(&["check", "--config", config.to_str().unwrap()]).await;
    out.assert_code(2);
    assert!(
        out.stderr.contains(":2:11: timezone") && out.stderr.contains("Mars/Olympus_Mons"),
        "{}",
        out.stderr
    );
}

/// The daemon uses the schedule parsed at load: with `@hourly` it waits for the top of the hour
/// (it logs the schedule it waits for) instead of refusing to start.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_starts_on_a_nickname() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "schedule: \"@hourly\"\ntarget:\n  path: ./mirror\nimages:\n  - busybox:1.36\n",
    );
    let mut child = tokio::process::Command::new(bin_path())
        .args(["sync", "--config", config.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Drain stderr for the whole life of the child, so that its logging never hits a closed pipe.
    let stderr = child.stderr.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    let waiting = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = rx.recv().await {
            if line.contains("waiting for the schedule") {
                return line;
            }
        }
        String::new()
    })
    .await
    .expect("the daemon logs its schedule within 30 s");
    assert!(
        waiting.contains("@hourly") && waiting.contains("UTC"),
        "{waiting}"
    );
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
        .await
        .expect("the daemon stops on SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "idle daemon exits 0 on SIGTERM");
    assert!(
        !dir.path().join("mirror").exists(),
        "no pass ran before the hour"
    );
}
