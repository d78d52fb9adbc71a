//! Logs an operator can follow: each tag is reported when it finishes, with its own duration;
//! `plan` speaks in the conditional; JSON logs are JSON only and end with a run summary; text
//! logs print a changed tag once; a dead upstream host is reported once; a tag abandoned at
//! SIGTERM says how far it got; the README's examples are real output.

use crate::common;
use common::observe::{Daemon, poll};
use common::util::free_port;
use common::*;

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const MIB: u64 = 1024 * 1024;

fn message(e: &Value) -> &str {
    e["message"].as_str().unwrap_or_default()
}

/// A config in its own directory.
fn config(yaml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), yaml);
    (dir, path.display().to_string())
}

/// A config up to `images:` (the caller appends the list items).
fn registries_yaml(target: &Registry, upstream_host: &str, extra: &str) -> String {
    ConfigYaml::to_registry(&target.host())
        .upstream(upstream_host)
        .upstream_lines(extra)
        .yaml()
}

// ---------------------------------------------------------------------------------------------
// Item 7: each tag's event when that tag finishes, with its own duration.

/// A slow tag (its manifest GET stalls 4 s) and a fast one, two tags at once.
async fn slow_and_fast() -> (Registry, Proxy, Registry, tempfile::TempDir, String) {
    let upstream = Registry::start().await;
    let proxy = Proxy::start(&upstream).await;
    let target = Registry::start().await;
    push_image(&upstream, "team/slow", "1", oci_image(1, 10_000)).await;
    push_image(&upstream, "team/fast", "1", oci_image(2, 10_000)).await;
    // The slow tag's manifest GET waits 4 s; the fast tag has nothing in its way.
    proxy.add(Rule::new(
        "GET /v2/team/slow/manifests/*",
        Action::Stall(Duration::from_secs(4)),
    ));
    let mut yaml = format!(
        "concurrency: 2\n{}",
        registries_yaml(&target, &proxy.host(), "")
    );
    yaml.push_str(&format!("  - {}\n", proxy.image_ref("team/slow", "1")));
    yaml.push_str(&format!("  - {}\n", proxy.image_ref("team/fast", "1")));
    let (_dir, cfg) = config(&yaml);

    (upstream, proxy, target, _dir, cfg)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fast_tag_is_logged_while_a_slow_tag_still_runs_with_its_own_duration() {
    let (_upstream, _proxy, _target, _dir, cfg) = slow_and_fast().await;
    let started = Instant::now();
    let mut child = spawn_mirrorsync(&["--log-format", "json", "sync", "--once", "--config", &cfg]);
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    let mut fast_event = None;
    let deadline = Duration::from_secs(30);
    while fast_event.is_none() {
        let line = tokio::time::timeout(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no event for the fast tag:\n{seen}"))
            .expect("read stderr")
            .unwrap_or_else(|| panic!("stderr ended without the fast tag's event:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        let event: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if event["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("team/fast:1"))
        {
            fast_event = Some(event);
        }
    }
    let fast_at = started.elapsed();
    let still_running = child.try_wait().expect("try_wait").is_none();
    let fast = fast_event.expect("fast event");
    // The rest of stderr, then the exit.
    while let Ok(Some(line)) = lines.next_line().await {
        seen.push_str(&line);
        seen.push('\n');
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the run ends")
        .expect("wait");
    let run_took = started.elapsed();
    let events = json_lines(&seen);
    let slow = events
        .iter()
        .find(|e| {
            e["source"]
                .as_str()
                .is_some_and(|s| s.ends_with("team/slow:1"))
        })
        .unwrap_or_else(|| panic!("no event for the slow tag:\n{seen}"));
    let fast_ms = fast["duration_ms"].as_u64().expect("fast duration_ms");
    let slow_ms = slow["duration_ms"].as_u64().expect("slow duration_ms");
    eprintln!(
        "fast tag's event after {fast_at:.1?} (duration_ms {fast_ms}), run took {run_took:.1?}, slow tag's duration_ms {slow_ms}"
    );
    assert_eq!(status.code(), Some(0), "{seen}");
    assert!(
        still_running,
        "the fast tag's event came only after the process ended ({fast_at:?})"
    );
    assert!(
        fast_at < Duration::from_secs(3),
        "fast event at {fast_at:?}"
    );
    assert!(
        run_took >= Duration::from_secs(4),
        "the slow tag was not slow: {run_took:?}"
    );
    assert!(fast_ms < 3000, "the fast tag's own duration: {fast_ms} ms");
    assert!(slow_ms >= 4000, "the slow tag's own duration: {slow_ms} ms");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_text_logs_a_fast_tag_gets_its_line_on_stdout_while_a_slow_tag_still_runs() {
    let (_upstream, _proxy, _target, _dir, cfg) = slow_and_fast().await;
    let started = Instant::now();
    let mut child = spawn_mirrorsync(&["sync", "--once", "--config", &cfg]);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a first line")
        .expect("read stdout")
        .expect("stdout ended without a line");
    let at = started.elapsed();
    let still_running = child.try_wait().expect("try_wait").is_none();
    let mut rest = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push(line);
    }
    let status = child.wait().await.expect("wait");
    eprintln!("first stdout line after {at:.1?}: {first}\nthen: {rest:?}");
    assert_eq!(status.code(), Some(0));
    assert!(first.contains("/team/fast:1 -> team/fast:1 "), "{first}");
    assert!(still_running && at < Duration::from_secs(3), "{at:?}");
    assert!(rest[0].contains("/team/slow:1 -> "), "{rest:?}");
    assert!(rest[1].starts_with("2 tags: 2 synced"), "{rest:?}");
}

// ---------------------------------------------------------------------------------------------
// Item 8: `plan` says what it would do.

#[tokio::test(flavor = "multi_thread")]
async fn plan_says_would_sync_with_current_and_new_digests_and_counts_unchanged_tags() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let old = push_image(&upstream, "team/app", "moving", oci_image(10, 5_000)).await;
    push_image(&upstream, "team/app", "steady", oci_image(11, 5_000)).await;
    let refs = vec![
        upstream.image_ref("team/app", "moving"),
        upstream.image_ref("team/app", "steady"),
    ];
    let first = Scenario::registry_to_registry(&upstream, &target, "", &refs);
    first.sync().await.assert_code(0);
    // Upstream moves one tag and adds another.
    let new = push_image(&upstream, "team/app", "moving", oci_image(12, 5_000)).await;
    let added = push_image(&upstream, "team/app", "added", oci_image(13, 5_000)).await;
    let mut refs = refs;
    refs.push(upstream.image_ref("team/app", "added"));
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &refs);

    let out = scenario.plan().await;
    out.assert_code(0);
    eprintln!("plan stdout:\n{}plan stderr:\n{}", out.stdout, out.stderr);
    let moving = upstream.image_ref("team/app", "moving");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains(&moving))
        .unwrap_or_else(|| panic!("no line for the moved tag:\n{}", out.stdout));
    assert!(
        line.starts_with("updated: ")
            && line.contains(&format!("{} -> {}", old.digest, new.digest)),
        "the current and the new digest: {line}"
    );
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains(&upstream.image_ref("team/app", "added")))
        .unwrap_or_else(|| panic!("no line for the new tag:\n{}", out.stdout));
    assert!(
        line.starts_with("new: ") && line.contains(&added.digest),
        "{line}"
    );
    assert!(
        !out.stdout
            .contains(&upstream.image_ref("team/app", "steady")),
        "an unchanged tag is counted, not listed:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("3 tags: 2 to sync, 1 unchanged,"),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("tag synced"), "{}", out.stderr);

    // JSON: "would sync" events without copied-bytes fields.
    let out = mirrorsync(&[
        "--log-format",
        "json",
        "plan",
        "--config",
        &scenario.config_arg(),
    ])
    .await;
    out.assert_code(0);
    let events = json_lines(&out.stderr);
    let tag_events: Vec<&Value> = events
        .iter()
        .filter(|e| e.get("source").is_some())
        .collect();
    assert_eq!(tag_events.len(), 2, "{}", out.stderr);
    for e in &tag_events {
        assert_eq!(message(e), "would sync", "{e}");
        for field in [
            "bytes_copied",
            "blobs_copied",
            "blobs_mounted",
            "blobs_present",
        ] {
            assert!(e.get(field).is_none(), "{field} in a plan event: {e}");
        }
    }
    let moved = tag_events
        .iter()
        .find(|e| e["source"].as_str() == Some(moving.as_str()))
        .expect("event for the moved tag");
    assert_eq!(moved["current"].as_str(), Some(old.digest.as_str()));
    assert_eq!(moved["digest"].as_str(), Some(new.digest.as_str()));
    assert_eq!(moved["result"].as_str(), Some("updated"));
    assert!(
        !events.iter().any(|e| message(e).contains("synced")),
        "{}",
        out.stderr
    );
    let summary: Vec<&Value> = events
        .iter()
        .filter(|e| message(e) == "plan finished")
        .collect();
    assert_eq!(summary.len(), 1, "{}", out.stderr);
    assert_eq!(summary[0]["would_sync"].as_u64(), Some(2));
    assert_eq!(summary[0]["unchanged"].as_u64(), Some(1));
    // Nothing was written.
    assert_eq!(
        head_manifest(&target, "team/app", "moving").await,
        Some(old.digest.clone())
    );
}

// ---------------------------------------------------------------------------------------------
// Item 9: JSON logs are JSON only, and end with one run summary.

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_stay_json_for_configuration_and_usage_errors() {
    let (_dir, cfg) =
        config("target:\n  registry: \"127.0.0.1:1\"\nimages:\n  - [not, a, string\n");
    for args in [
        vec!["--log-format", "json", "sync", "--once", "--config", &cfg],
        vec!["--log-format", "json", "check", "--config", &cfg],
        vec!["--log-format=json", "sync", "--once", "--no-such-flag"],
        vec![
            "--log-format",
            "json",
            "sync",
            "--once",
            "--shard",
            "5/2",
            "--config",
            &cfg,
        ],
    ] {
        let out = mirrorsync(&args).await;
        eprintln!("{args:?}: exit {:?}\n{}", out.code, out.stderr);
        out.assert_code(2);
        let events = json_lines(&out.stderr);
        assert!(
            events
                .iter()
                .any(|e| e["level"] == "ERROR"
                    && !e["error"].as_str().unwrap_or_default().is_empty()),
            "an ERROR event with the error: {}",
            out.stderr
        );
    }
    // The same error in text mode is plain text.
    let out = mirrorsync(&["sync", "--once", "--config", &cfg]).await;
    out.assert_code(2);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_run_ends_with_one_summary_event_with_the_exit_code() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let image = push_image(
        &upstream,
        "team/app",
        "1",
        ImageSpec::new(Format::Oci, vec![layer(20, 30_000), layer(21, 40_000)]),
    )
    .await;
    let refs = vec![
        upstream.image_ref("team/app", "1"),
        upstream.image_ref("team/app", "missing"),
    ];
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &refs);
    let out = scenario.sync_with_flags(&["--log-format", "json"]).await;
    out.assert_code(1);
    let events = json_lines(&out.stderr);
    let summaries: Vec<&Value> = events
        .iter()
        .filter(|e| message(e) == "run finished")
        .collect();
    assert_eq!(summaries.len(), 1, "{}", out.stderr);
    let s = summaries[0];
    eprintln!("run summary: {s}");
    let bytes: u64 = image.blobs.iter().map(|b| b.size).sum();
    assert_eq!(s["tags"].as_u64(), Some(2), "{s}");
    assert_eq!(s["synced"].as_u64(), Some(1), "{s}");
    assert_eq!(s["failed"].as_u64(), Some(1), "{s}");
    assert_eq!(s["unchanged"].as_u64(), Some(0), "{s}");
    assert_eq!(s["deferred"].as_u64(), Some(0), "{s}");
    assert_eq!(
        s["blobs_copied"].as_u64(),
        Some(image.blobs.len() as u64),
        "{s}"
    );
    assert_eq!(s["bytes_copied"].as_u64(), Some(bytes), "{s}");
    assert_eq!(s["blobs_mounted"].as_u64(), Some(0), "{s}");
    assert_eq!(s["blobs_present"].as_u64(), Some(0), "{s}");
    assert!(s["duration_ms"].as_u64().is_some(), "{s}");
    assert_eq!(s["exit_code"].as_i64(), Some(1), "{s}");
    // It is the last event.
    assert_eq!(message(events.last().unwrap()), "run finished");

    // A second run: everything present is unchanged, and the summary says exit 1 again.
    let out = scenario.sync_with_flags(&["--log-format", "json"]).await;
    let events = json_lines(&out.stderr);
    let s = events
        .iter()
        .find(|e| message(e) == "run finished")
        .expect("summary");
    assert_eq!(s["unchanged"].as_u64(), Some(1), "{s}");
    assert_eq!(s["blobs_copied"].as_u64(), Some(0), "{s}");
    assert_eq!(s["exit_code"].as_i64(), out.code.map(i64::from), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_logs_each_pass_start_end_and_the_next_pass_time() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    push_image(&upstream, "team/app", "1", oci_image(30, 1_000)).await;
    let mut yaml = format!(
        "schedule: \"*/2 * * * * *\"\n{}",
        registries_yaml(&target, &upstream.host(), "")
    );
    yaml.push_str(&format!("  - {}\n", upstream.image_ref("team/app", "1")));
    let (_dir, cfg) = config(&yaml);
    let daemon = Daemon::start(std::path::Path::new(&cfg), &["--log-format", "json"]).await;
    let events = poll(
        Duration::from_secs(20),
        || format!("two passes never ended\n{}", daemon.logs()),
        || async {
            let stderr = daemon.stderr();
            let complete: String = stderr
                .lines()
                .filter(|l| l.ends_with('}'))
                .map(|l| format!("{l}\n"))
                .collect();
            let events = json_lines(&complete);
            let ended = events
                .iter()
                .filter(|e| message(e) == "run finished")
                .count();
            (ended >= 2).then_some(events)
        },
    )
    .await;
    let kinds: Vec<&str> = events
        .iter()
        .map(message)
        .filter(|m| matches!(*m, "pass started" | "run finished" | "next pass scheduled"))
        .collect();
    eprintln!("daemon pass events: {kinds:?}");
    // The order: next pass, start, end, next pass, start, end...
    let first_start = kinds
        .iter()
        .position(|k| *k == "pass started")
        .expect("start");
    assert_eq!(kinds[first_start - 1], "next pass scheduled", "{kinds:?}");
    assert_eq!(kinds[first_start + 1], "run finished", "{kinds:?}");
    assert_eq!(kinds[first_start + 2], "next pass scheduled", "{kinds:?}");
    assert_eq!(kinds[first_start + 3], "pass started", "{kinds:?}");
    for e in events
        .iter()
        .filter(|e| message(e) == "next pass scheduled")
    {
        let next = e["next_pass"].as_str().expect("next_pass");
        let when = chrono::DateTime::parse_from_rfc3339(next)
            .unwrap_or_else(|err| panic!("next_pass {next:?}: {err}"));
        let logged = chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap())
            .expect("timestamp");
        let ahead = when - logged;
        assert!(
            ahead > chrono::TimeDelta::zero() && ahead <= chrono::TimeDelta::seconds(3),
            "next pass {next} for an event at {logged}"
        );
    }
    let end = events
        .iter()
        .find(|e| message(e) == "run finished")
        .unwrap();
    assert_eq!(end["exit_code"].as_i64(), Some(0), "{end}");
    assert_eq!(end["tags"].as_u64(), Some(1), "{end}");
}

// ---------------------------------------------------------------------------------------------
// Item 10: text mode prints a changed tag once.

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_print_a_changed_tag_once_and_a_failed_one_once() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    push_image(&upstream, "team/app", "1", oci_image(40, 1_000)).await;
    let refs = vec![
        upstream.image_ref("team/app", "1"),
        upstream.image_ref("team/app", "missing"),
    ];
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &refs);
    let out = scenario.sync().await;
    out.assert_code(1);
    eprintln!("stdout:\n{}stderr:\n{}", out.stdout, out.stderr);
    for source in &refs {
        let both = format!("{}{}", out.stdout, out.stderr);
        let needle = format!("{source} -> ");
        assert_eq!(
            both.matches(&needle).count(),
            1,
            "{source} printed once over stdout and stderr:\n{both}"
        );
        assert!(out.stdout.contains(&needle), "on stdout: {}", out.stdout);
    }
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("2 tags: 1 synced, 0 unchanged, 1 failed"),
        "{last}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 11: a dead host is reported once.

async fn dead_host_run(host: &str, probe_url: &str) {
    let target = Registry::start().await;
    let mut yaml = format!("concurrency: 4\n{}", registries_yaml(&target, host, ""));
    for i in 0..20 {
        yaml.push_str(&format!("  - {host}/team/app{i}:1\n"));
    }
    let (_dir, cfg) = config(&yaml);
    let started = Instant::now();
    let out = mirrorsync(&["sync", "--once", "--config", &cfg]).await;
    let took = started.elapsed();
    out.assert_code(1);
    let both = format!("{}{}", out.stdout, out.stderr);
    let error_lines = both.lines().filter(|l| l.contains(probe_url)).count();
    let failed = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAILED "))
        .count();
    eprintln!(
        "{host}: 20 tags, exit 1 after {took:.1?}; the connection error on {error_lines} lines, {failed} FAILED lines\n{both}"
    );
    assert_eq!(failed, 20, "{both}");
    assert!(error_lines >= 1, "the error is reported:\n{both}");
    // One probe with its retries (5 tries: 4 "retrying" lines and the final error).
    assert!(error_lines <= 5, "{error_lines} lines:\n{both}");
    assert!(
        both.lines()
            .any(|l| l.contains(probe_url) && l.contains("GET /v2/")),
        "the operation is named:\n{both}"
    );
    assert!(
        !both.contains("HEAD manifest"),
        "no per-tag manifest retries:\n{both}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_tags_on_a_port_where_nothing_listens_report_the_error_once() {
    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    dead_host_run(&host, &format!("http://{host}/v2/")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_tags_on_a_name_that_resolves_nowhere_report_the_error_once() {
    // `.invalid` never resolves (RFC 2606), so no packet leaves the machine.
    dead_host_run("nowhere.invalid", "http://nowhere.invalid/v2/").await;
}

// ---------------------------------------------------------------------------------------------
// Item 12: a tag abandoned mid-copy says how far it got.

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_abandoned_after_the_grace_period_says_how_many_blobs_were_copied() {
    let upstream = Registry::start().await;
    let proxy = Proxy::start(&upstream).await;
    let target = Registry::start().await;
    let image = push_image(
        &upstream,
        "slow/big",
        "v1",
        ImageSpec::new(Format::Oci, vec![layer(50, 1000), layer(51, 2000)])
            .big_layer(100 * MIB, 52),
    )
    .await;
    let extra = "    bytes_per_second: 20MiB\n";
    let mut yaml = registries_yaml(&target, &proxy.host(), extra);
    yaml.push_str(&format!("  - {}\n", proxy.image_ref("slow/big", "v1")));
    let (_dir, cfg) = config(&yaml);
    let child = spawn_mirrorsync(&["sync", "--once", "--config", &cfg, "--grace-period", "1s"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sigterm(&child);
    let out = wait_output(child, Duration::from_secs(30), "exits after SIGTERM").await;
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    eprintln!("SIGTERM 1.5 s into a 100 MiB layer at 20 MiB/s:\n{stdout}");
    assert_eq!(out.code, Some(3), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("/slow/big:v1 -> "))
        .unwrap_or_else(|| panic!("no line for slow/big:\n{stdout}"));
    // Config and the two small layers are through; the big layer is not.
    let total = image.blobs.len();
    assert_eq!(total, 4);
    assert!(
        line.starts_with("DEFERRED ")
            && line.ends_with(&format!(
                "stopped after the grace period, {} of {total} blobs copied",
                total - 1
            )),
        "{line}"
    );
    assert!(!stdout.contains("before the copy started"), "{stdout}");
    assert_eq!(head_manifest(&target, "slow/big", "v1").await, None);
}

// ---------------------------------------------------------------------------------------------
// Item 17: the README says what the program does.

/// A line's shape: digests, numbers and image names replaced.
fn shape(line: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    let parts: Vec<&str> = line.split(' ').collect();
    for (i, word) in parts.iter().enumerate() {
        let arrow = |j: usize| parts.get(j) == Some(&"->");
        let w = if word.starts_with("sha256:") {
            "DIGEST".to_string()
        } else if arrow(i + 1) || (i > 0 && arrow(i - 1) && !word.starts_with("sha256:")) {
            "IMAGE".to_string()
        } else {
            // Every run of digits (and decimal points between them) becomes one `9`.
            let mut out = String::new();
            for c in word.chars() {
                let digit = c.is_ascii_digit() || (c == '.' && out.ends_with('9'));
                if !digit {
                    out.push(c);
                } else if !out.ends_with('9') {
                    out.push('9');
                }
            }
            out
        };
        words.push(w);
    }
    let mut line = words.join(" ");
    // Sizes are decimal with a unit that depends on the size.
    for unit in ["(9 B)", "(9 kB)", "(9 MB)", "(9 GB)", "(9 TB)"] {
        line = line.replace(unit, "(SIZE)");
    }
    line
}

/// The lines of the first fenced block after the line containing `marker`.
fn readme_block(readme: &str, marker: &str) -> Vec<String> {
    let after = &readme[readme
        .find(marker)
        .unwrap_or_else(|| panic!("README has no {marker:?}"))..];
    let start = after.find("```\n").expect("a block") + 4;
    let end = after[start..].find("```").expect("block end") + start;
    after[start..end].lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_summary_examples_have_the_shape_of_real_output() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    push_image(
        &upstream,
        "library/nginx",
        "1.26",
        ImageSpec::new(Format::Oci, vec![layer(60, 2_000), layer(61, 3_000)]),
    )
    .await;
    push_image(
        &upstream,
        "library/alpine",
        "3.20",
        oci_image(65, 3_600_000),
    )
    .await;
    let refs = vec![
        upstream.image_ref("library/alpine", "3.20"),
        upstream.image_ref("library/nginx", "1.26"),
        upstream.image_ref("library/nginx", "1.27"),
        upstream.image_ref("library/redis", "7.4"),
    ];
    let one = Scenario::registry_to_registry(&upstream, &target, "mirror", &refs[..2]);
    one.sync().await.assert_code(0);
    // Upstream moves 1.26, adds 1.27 (sharing a layer) and redis 7.4 (sharing one too).
    push_image(
        &upstream,
        "library/nginx",
        "1.26",
        ImageSpec::new(Format::Oci, vec![layer(60, 2_000), layer(62, 3_000_000)]),
    )
    .await;
    push_image(
        &upstream,
        "library/nginx",
        "1.27",
        ImageSpec::new(Format::Oci, vec![layer(60, 2_000), layer(63, 4_000_000)]),
    )
    .await;
    push_image(
        &upstream,
        "library/redis",
        "7.4",
        ImageSpec::new(Format::Oci, vec![layer(60, 2_000), layer(64, 5_000_000)]),
    )
    .await;
    let all = Scenario::registry_to_registry(&upstream, &target, "mirror", &refs);
    let plan = all.plan().await;
    plan.assert_code(0);
    let sync = all.sync().await;
    sync.assert_code(0);
    eprintln!("plan:\n{}sync:\n{}", plan.stdout, sync.stdout);
    for (marker, out) in [
        ("the summary that goes to stdout", &sync.stdout),
        ("`plan` prints", &plan.stdout),
    ] {
        let real: Vec<String> = out.lines().map(shape).collect();
        for line in readme_block(&readme, marker) {
            assert!(
                real.contains(&shape(&line)),
                "README line {line:?} (shape {:?}) matches no real line:\n{out}\n{real:#?}",
                shape(&line)
            );
        }
    }
}

#[test]
fn the_readme_states_that_the_oci_layout_converts_docker_manifests() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    // Every paragraph that promises preserved digests says where they are not.
    for paragraph in readme.split("\n\n") {
        let flat = paragraph.replace('\n', " ");
        if flat.contains("digests are preserved") || flat.contains("digests preserved") {
            assert!(
                flat.contains("OCI layout"),
                "a promise of preserved digests without the OCI layout's conversion:\n{paragraph}"
            );
        }
    }
    assert!(
        readme.contains("Docker manifests to OCI"),
        "the OCI layout's conversion is stated"
    );
}

#[test]
fn no_source_refers_to_a_document_outside_the_repository() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let outside = concat!("PRODUCT", ".md");
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | ".git") {
                    stack.push(path);
                }
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(&path)
                && text.contains(outside)
            {
                found.push(path.display().to_string());
            }
        }
    }
    assert!(
        found.is_empty(),
        "{outside} is not in the repository: {found:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_digest_already_mirrored_needs_no_probe_of_a_dead_host() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let image = push_image(&upstream, "team/pinned", "1", oci_image(70, 1_000)).await;
    let pinned = format!("{}/team/pinned@{}", upstream.host(), image.digest);
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &[pinned]);
    scenario.sync().await.assert_code(0);
    // The upstream goes away: nothing is needed from it, so nothing fails.
    drop(upstream);
    let out = scenario.sync().await;
    eprintln!("{}{}", out.stdout, out.stderr);
    out.assert_code(0);
    assert!(
        out.stdout.contains("1 tag: 0 synced, 1 unchanged"),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("unreachable"), "{}", out.stderr);
}
