//! User story: every setting I can write in `sync.yaml` and every flag `--help` shows does what
//! it says, and a test shows it.
//!
//! [`every_key_and_flag_has_a_test_that_shows_its_effect`] holds the rule: it reads the keys of
//! `sync.yaml.example` (commented-out ones included) and the flags of each `--help`, and fails
//! naming each one that [`COVERAGE`] does not map to a test, and each mapped test that does not
//! exist. The other tests here show the effect of settings no other test did.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Each key of `sync.yaml.example` (dotted path; list items add no segment; a host under
/// `registries` is `<host>`) and each flag of `--help` (`--flag` for the global ones, else
/// `<subcommand> --flag`), with the tests (`module::function` in `tests/it/`) that show its
/// effect.
#[rustfmt::skip]
const COVERAGE: &[(&str, &[&str])] = &[
    // Keys.
    ("target.chunk_size", &["interop::patch_answered_201_and_chunk_size_setting", "interop::body_limit_413_halves_chunks_down_to_five_mib"]),
    ("sync --deferred-exit-code", &["rate_limits::deferred_exit_code_lets_a_routine_quota_deferral_succeed"]),
    ("sync --liveness-timeout", &["observability::healthz_fails_when_a_running_pass_makes_no_progress", "observability::healthz_stays_200_through_a_long_first_pass_that_keeps_moving_bytes"]),
    ("schedule", &["observability::daemon_runs_passes_skips_overlaps_reloads_on_sighup_and_stops_on_sigterm"]),
    ("timezone", &["settings_coverage::timezone_decides_when_the_schedule_fires"]),
    ("concurrency", &["rate_limits::with_concurrency_1_changed_tags_are_copied_in_priority_order_even_under_load"]),
    ("tag_series", &["series_modes::out_of_sync_mode_exports_per_tag_series_only_for_the_failing_tag", "series_modes::default_mode_exports_every_tag_and_the_aggregates"]),
    ("target", &["sync_formats::single_arch_oci_and_docker_schema2_images_are_mirrored_exactly"]),
    ("target.path", &["sync_formats::oci_layout_target_needs_no_registry_and_reads_back_with_skopeo"]),
    ("target.digests", &["airgap::a_mirror_carried_across_on_disk_keeps_every_digest_and_a_delta_holds_only_what_changed", "sync_formats::oci_layout_target_needs_no_registry_and_reads_back_with_skopeo"]),
    ("target.since", &["airgap::a_mirror_carried_across_on_disk_keeps_every_digest_and_a_delta_holds_only_what_changed"]),
    ("target.registry", &["sync_formats::single_arch_oci_and_docker_schema2_images_are_mirrored_exactly"]),
    ("target.prefix", &["sync_formats::single_arch_oci_and_docker_schema2_images_are_mirrored_exactly", "settings_coverage::registry_prefix_overrides_the_target_prefix"]),
    ("target.insecure", &["sync_formats::single_arch_oci_and_docker_schema2_images_are_mirrored_exactly"]),
    ("target.ca_file", &["sync_auth::tls_htpasswd_target_password_from_env", "sync_auth::tls_target_without_ca_file_fails_with_a_certificate_error"]),
    ("target.auth", &["sync_auth::tls_htpasswd_target_password_from_env", "sync_auth::wrong_target_password_fails_the_tag_without_revealing_it"]),
    ("target.auth.username", &["sync_auth::tls_htpasswd_target_password_from_env"]),
    ("target.auth.password_env", &["sync_auth::tls_htpasswd_target_password_from_env"]),
    ("target.requests_per_second", &["settings_coverage::target_requests_per_second_holds_over_a_run"]),
    ("target.burst", &["settings_coverage::target_requests_per_second_holds_over_a_run"]),
    ("target.bytes_per_second", &["target_limits::target_bytes_per_second_paces_uploads", "target_limits::target_bytes_per_second_paces_copies_within_the_target"]),
    ("target.concurrency", &["target_limits::target_concurrency_bounds_uploads_in_flight"]),
    ("docker_config", &["sync_auth::docker_config_credentials_for_a_token_auth_upstream", "preflight::check_connect_proves_push_access_with_the_credentials_a_sync_uses"]),
    ("registries", &["rate_limits::requests_per_second_with_burst_holds_over_a_whole_run"]),
    ("registries.<host>", &["rate_limits::requests_per_second_with_burst_holds_over_a_whole_run"]),
    ("registries.<host>.mirrors", &["rate_limits::content_comes_from_a_mirror_where_present_and_from_the_origin_otherwise", "rate_limits::a_mirror_that_is_down_does_not_stop_the_sync"]),
    ("registries.<host>.prefix", &["settings_coverage::registry_prefix_overrides_the_target_prefix"]),
    ("registries.<host>.auth", &["sync_auth::token_auth_upstream_with_credentials_from_config", "preflight::check_connect_fails_an_upstream_repository_without_pull_access"]),
    ("registries.<host>.auth.username", &["sync_auth::token_auth_upstream_with_credentials_from_config"]),
    ("registries.<host>.auth.password_file", &["preflight::check_connect_fails_an_upstream_repository_without_pull_access"]),
    ("registries.<host>.insecure", &["sync_formats::single_arch_oci_and_docker_schema2_images_are_mirrored_exactly"]),
    ("registries.<host>.ca_file", &["preflight::check_connect_fails_an_upstream_repository_without_pull_access"]),
    ("registries.<host>.requests_per_second", &["rate_limits::requests_per_second_with_burst_holds_over_a_whole_run"]),
    ("registries.<host>.burst", &["rate_limits::requests_per_second_with_burst_holds_over_a_whole_run"]),
    ("registries.<host>.bytes_per_second", &["rate_limits::bytes_per_second_slows_a_big_blob_down"]),
    ("registries.<host>.concurrency", &["settings_coverage::registry_concurrency_bounds_blob_downloads", "settings_coverage::configs_and_small_blobs_take_no_transfer_slot"]),
    ("registries.<host>.path", &["airgap::a_mirror_carried_across_on_disk_keeps_every_digest_and_a_delta_holds_only_what_changed", "airgap::a_truncated_file_in_the_carry_fails_only_its_tags_and_is_named"]),
    ("registries.<host>.rate_limit_reserve", &["rate_limits::pull_quota_is_spent_on_changed_tags_only_down_to_the_reserve_and_deferred_tags_go_first"]),
    ("images", &["sync_formats::single_arch_oci_and_docker_schema2_images_are_mirrored_exactly"]),
    ("images.source", &["sync_formats::platform_filter_keeps_only_chosen_platforms_and_their_attestations"]),
    ("images.tags", &["selection::filters_choose_tags_from_one_tag_list_per_repository"]),
    ("images.tags.regex", &["selection::filters_choose_tags_from_one_tag_list_per_repository"]),
    ("images.tags.exclude", &["selection::filters_choose_tags_from_one_tag_list_per_repository"]),
    ("images.tags.semver", &["selection::filters_choose_tags_from_one_tag_list_per_repository"]),
    ("images.tags.newest", &["selection::filters_choose_tags_from_one_tag_list_per_repository"]),
    ("images.tags.prerelease", &["settings_coverage::prerelease_lets_pre_releases_into_semver_and_newest"]),
    ("images.tags.all", &["selection::filters_choose_tags_from_one_tag_list_per_repository"]),
    ("images.platforms", &["sync_formats::platform_filter_keeps_only_chosen_platforms_and_their_attestations"]),
    ("images.platforms_mode", &["selection::sparse_platform_mode_keeps_the_upstream_index_where_the_registry_refuses_it", "refusing_targets::manifests_by_digest_refused_and_single_platform_mode"]),
    ("images.target", &["settings_coverage::registry_prefix_overrides_the_target_prefix"]),
    ("images.targets", &["fan_out::an_entry_goes_only_to_the_targets_it_names"]),
    ("targets", &["fan_out::three_targets_pull_each_blob_and_manifest_once"]),
    ("targets.name", &["fan_out::three_targets_pull_each_blob_and_manifest_once"]),
    ("targets.registry", &["fan_out::three_targets_pull_each_blob_and_manifest_once"]),
    ("targets.prefix", &["fan_out::an_entry_goes_only_to_the_targets_it_names"]),
    ("targets.path", &["fan_out::a_registry_and_a_layout_target_are_written_from_one_pull"]),
    ("spool_size", &["fan_out::a_blob_larger_than_spool_size_is_pulled_by_each_target"]),
    ("spool_dir", &["fan_out::three_targets_pull_each_blob_and_manifest_once", "fan_out::an_unwritable_spool_dir_falls_back_to_a_pull_per_target"]),
    ("images.immutable", &["selection::immutable_tags_cost_no_upstream_request_once_mirrored"]),
    ("images.referrers", &["selection::signatures_and_referrer_fallback_tags_follow_their_image"]),
    ("images.backup_tag", &["selection::backup_tag_keeps_the_previous_digest_when_a_tag_moves"]),
    ("images.prune", &["selection::prune_removes_only_tags_mirrorsync_created_and_no_longer_selects"]),
    // Flags.
    ("--log-format", &["observability::json_logs_are_one_event_per_line_with_one_event_per_synced_tag"]),
    ("--log-level", &["settings_coverage::log_level_filters_what_is_logged"]),
    ("sync --config", &["config_errors::unknown_key_is_named_with_its_position", "config_errors::no_config_file_at_all_is_a_usage_error"]),
    ("plan --config", &["config_errors::unknown_key_is_named_with_its_position"]),
    ("check --config", &["config_errors::unknown_key_is_named_with_its_position"]),
    ("sync --shard", &["settings_coverage::shard_flag_splits_the_list"]),
    ("plan --shard", &["settings_coverage::shard_flag_splits_the_list"]),
    ("sync --once", &["sync_economy::cold_sync_pulls_each_unique_blob_once_and_mounts_shared_layers"]),
    ("sync --max-duration", &["kill_safety::max_duration_lets_the_running_tag_finish_and_defers_the_rest", "target_limits::flags_that_do_nothing_in_a_mode_are_usage_errors"]),
    ("sync --grace-period", &["kill_safety::max_duration_abandons_a_transfer_after_the_grace_period_without_a_partial_tag"]),
    ("sync --pushgateway", &["observability::once_pushes_its_metrics_to_a_real_pushgateway", "target_limits::flags_that_do_nothing_in_a_mode_are_usage_errors"]),
    ("sync --instance", &["observability::once_pushes_its_metrics_to_a_real_pushgateway", "target_limits::flags_that_do_nothing_in_a_mode_are_usage_errors"]),
    ("sync --metrics-file", &["observability::textfile_and_metrics_endpoint_pass_promtool", "target_limits::flags_that_do_nothing_in_a_mode_are_usage_errors"]),
    ("sync --metrics-addr", &["observability::textfile_and_metrics_endpoint_pass_promtool", "target_limits::flags_that_do_nothing_in_a_mode_are_usage_errors"]),
    ("sync --run-now", &["observability::daemon_runs_passes_skips_overlaps_reloads_on_sighup_and_stops_on_sigterm", "target_limits::flags_that_do_nothing_in_a_mode_are_usage_errors"]),
    ("sync --report", &["run_report::a_cold_sync_reports_each_tag_as_the_target_holds_it", "run_report::sigterm_mid_run_leaves_a_whole_report_with_the_rest_deferred", "run_report::a_report_path_that_cannot_be_written_stops_the_run_before_any_request"]),
    ("plan --report", &["run_report::plan_reports_new_and_updated_tags_and_writes_nothing_to_the_target"]),
    ("check --connect", &["preflight::check_connect_proves_push_access_with_the_credentials_a_sync_uses", "preflight::check_connect_fails_an_upstream_repository_without_pull_access", "preflight::check_connect_fails_an_unwritable_layout_directory"]),
];

/// The keys of a YAML example in which commented-out lines (`# key: value`, one `# ` per level
/// of commenting) count as written: dotted paths, list items adding no segment, a host key under
/// `registries` written `<host>`, and the keys of a flow mapping (`auth: { a: 1, b: 2 }`).
fn example_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    for raw in text.lines() {
        // Uncomment: each leading `#` becomes a space, and each `# ` one level of indentation less.
        let lead = raw.len() - raw.trim_start_matches([' ', '#']).len();
        let hashes = raw[..lead].matches('#').count();
        let line = raw.replacen('#', " ", hashes);
        let content = line.trim_start();
        let mut column = (line.len() - content.len()).saturating_sub(2 * hashes);
        let content = match content.strip_prefix("- ") {
            Some(rest) => {
                column += 2;
                rest
            }
            None => content,
        };
        let Some((key, rest)) = content.split_once(':') else {
            continue;
        };
        let key = key.trim_matches('"');
        let is_key = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
            && (rest.is_empty() || rest.starts_with(' '));
        if !is_key {
            continue;
        }
        while stack.last().is_some_and(|(c, _)| *c >= column) {
            stack.pop();
        }
        let mut path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
        let key = if path == ["registries"] {
            "<host>"
        } else {
            key
        };
        path.push(key);
        let full = path.join(".");
        if let Some(inner) = rest
            .trim()
            .strip_prefix('{')
            .and_then(|r| r.split('}').next())
        {
            for pair in inner.split(',') {
                if let Some((k, _)) = pair.split_once(':') {
                    keys.insert(format!("{full}.{}", k.trim()));
                }
            }
        }
        keys.insert(full);
        stack.push((column, key.to_string()));
    }
    keys
}

/// The long flags of one `--help` text, without `--help` and `--version`.
fn help_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = if l.len() > 4 && l.starts_with('-') && l.as_bytes()[2] == b',' {
                &l[4..]
            } else {
                l
            };
            let flag = l.strip_prefix("--")?;
            let name: String = flag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty() && name != "help" && name != "version").then(|| format!("--{name}"))
        })
        .collect()
}

/// The subcommands listed under `Commands:` in the top-level help.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

/// Whether `tests/it/<module>.rs` has a test function `name`.
fn test_exists(module: &str, name: &str) -> bool {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/it/{module}.rs"));
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().collect();
    lines.iter().enumerate().any(|(i, l)| {
        let l = l.trim_start();
        (l.starts_with(&format!("async fn {name}(")) || l.starts_with(&format!("fn {name}(")))
            && lines[..i]
                .iter()
                .rev()
                .take(3)
                .any(|a| a.contains("#[tokio::test") || a.contains("#[test]"))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_key_and_flag_has_a_test_that_shows_its_effect() {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("sync.yaml.example"))
            .expect("sync.yaml.example");
    let mut wanted: BTreeSet<String> = example_keys(&example);
    let top = mirrorsync(&["--help"]).await;
    top.assert_code(0);
    let global = help_flags(&top.stdout);
    wanted.extend(global.iter().cloned());
    let commands = subcommands(&top.stdout);
    assert!(commands.contains(&"sync".to_string()), "{}", top.stdout);
    for command in &commands {
        let help = mirrorsync(&[command, "--help"]).await;
        help.assert_code(0);
        for flag in help_flags(&help.stdout).difference(&global) {
            wanted.insert(format!("{command} {flag}"));
        }
    }
    // The extraction itself works (a broken parser would make the rule vacuous).
    for sure in [
        "target.registry",
        "registries.<host>.mirrors",
        "images.tags.regex",
        "sync --once",
        "--log-format",
    ] {
        assert!(wanted.contains(sure), "{sure} not extracted: {wanted:#?}");
    }

    let mapped: BTreeMap<&str, &[&str]> = COVERAGE.iter().copied().collect();
    let mut problems = Vec::new();
    for item in &wanted {
        match mapped.get(item.as_str()) {
            None | Some([]) => problems.push(format!(
                "`{item}` has no test: add (\"{item}\", &[\"<module>::<test>\"]) to COVERAGE in tests/it/settings_coverage.rs, naming a test that shows its effect"
            )),
            Some(tests) => {
                for test in *tests {
                    let exists = test
                        .split_once("::")
                        .is_some_and(|(module, name)| test_exists(module, name));
                    if !exists {
                        problems.push(format!(
                            "`{item}` is mapped to `{test}`, which is not a test function in tests/it/"
                        ));
                    }
                }
            }
        }
    }
    for item in mapped.keys() {
        if !wanted.contains(*item) {
            problems.push(format!(
                "COVERAGE lists `{item}`, which is neither a key of sync.yaml.example nor a flag of --help"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "every key and flag needs a test that shows its effect:\n  {}",
        problems.join("\n  ")
    );
}

fn yaml_images(refs: &[String]) -> String {
    refs.iter().map(|r| format!("  - {r}\n")).collect()
}

/// A tiny image per `repo:tag`, distinct by `seed`.
async fn seed(reg: &Registry, repo: &str, tag: &str, seed: u64) -> PushedImage {
    push_image(reg, repo, tag, oci_image(seed, 1_000 + seed as usize)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn timezone_decides_when_the_schedule_fires() {
    use chrono::Timelike;
    let upstream = Registry::start().await;
    seed(&upstream, "team/app", "1", 41).await;
    // A daily time a few seconds ahead on Kathmandu's clock (UTC+5:45, no DST): only a daemon
    // that reads the schedule in that zone passes now; in UTC that time is hours away.
    let zone: chrono_tz::Tz = "Asia/Kathmandu".parse().unwrap();
    let due = chrono::Utc::now().with_timezone(&zone) + chrono::Duration::seconds(12);
    let cron = format!("{} {} {} * * *", due.second(), due.minute(), due.hour());
    let started = Instant::now();
    let mut daemons = Vec::new();
    let mut targets = Vec::new();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for (dir, timezone) in dirs.iter().zip(["Asia/Kathmandu", "UTC"]) {
        let target = Registry::start().await;
        let config = write_config(
            dir.path(),
            &format!(
                "schedule: \"{cron}\"\ntimezone: {timezone}\n\
                 target: {{ registry: \"{t}\", insecure: true }}\n\
                 registries:\n  \"{u}\": {{ insecure: true }}\nimages:\n  - {u}/team/app:1\n",
                t = target.host(),
                u = upstream.host()
            ),
        );
        daemons.push(observe::Daemon::start(&config, &[]).await);
        targets.push(target);
    }
    let wait = Duration::from_secs(12 + 10).saturating_sub(started.elapsed());
    observe::poll(
        wait.max(Duration::from_secs(5)),
        || "the daemon in Asia/Kathmandu never passed".to_string(),
        || async { (!tags(&targets[0], "team/app").await.is_empty()).then_some(()) },
    )
    .await;
    assert!(
        tags(&targets[1], "team/app").await.is_empty(),
        "the UTC daemon passed at a time meant for Kathmandu:\n{}",
        daemons[1].logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_prefix_overrides_the_target_prefix() {
    let one = Registry::start().await;
    let two = Registry::start().await;
    let target = Registry::start().await;
    let a = seed(&one, "team/a", "1", 42).await;
    let b = seed(&two, "team/b", "1", 43).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "target: {{ registry: \"{t}\", insecure: true, prefix: mirror }}\n\
             registries:\n  \"{o}\": {{ insecure: true }}\n  \"{w}\": {{ insecure: true, prefix: hub }}\n\
             images:\n{images}  - {{ source: \"{o}/team/a:1\", target: custom/a }}\n",
            t = target.host(),
            o = one.host(),
            w = two.host(),
            images = yaml_images(&[one.image_ref("team/a", "1"), two.image_ref("team/b", "1")]),
        ),
    );
    mirrorsync(&["sync", "--once", "--config", config.to_str().unwrap()])
        .await
        .assert_code(0);
    for (repo, img) in [("mirror/team/a", &a), ("hub/team/b", &b), ("custom/a", &a)] {
        let (_, _, digest) = get_manifest(&target, repo, "1")
            .await
            .unwrap_or_else(|| panic!("{repo}:1 at the target"));
        assert_eq!(digest, img.digest, "{repo}");
    }
    assert!(tags(&target, "mirror/team/b").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn prerelease_lets_pre_releases_into_semver_and_newest() {
    let upstream = Registry::start().await;
    for (i, tag) in ["1.0.0", "1.1.0-rc1", "1.1.0", "2.0.0-beta"]
        .iter()
        .enumerate()
    {
        seed(&upstream, "team/app", tag, 50 + i as u64).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for prerelease in [false, true] {
        let target = Registry::start().await;
        let config = write_config(
            dir.path(),
            &format!(
                "target: {{ registry: \"{t}\", insecure: true }}\n\
                 registries:\n  \"{u}\": {{ insecure: true }}\n\
                 images:\n  - source: \"{u}/team/app\"\n    tags:\n\
                 \x20     - {{ semver: \">=1.1 <2\", prerelease: {prerelease} }}\n\
                 \x20     - {{ newest: 1, prerelease: {prerelease} }}\n",
                t = target.host(),
                u = upstream.host()
            ),
        );
        mirrorsync(&["sync", "--once", "--config", config.to_str().unwrap()])
            .await
            .assert_code(0);
        let mut mirrored = tags(&target, "team/app").await;
        mirrored.sort();
        results.push(mirrored);
    }
    assert_eq!(results[0], vec!["1.1.0"], "prerelease: false");
    assert_eq!(
        results[1],
        vec!["1.1.0", "1.1.0-rc1", "2.0.0-beta"],
        "prerelease: true"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn target_requests_per_second_holds_over_a_run() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let proxy = Proxy::start(&target).await;
    let mut refs = Vec::new();
    for i in 0..6u64 {
        seed(&upstream, &format!("rps/app{i}"), "1", 60 + i).await;
        refs.push(upstream.image_ref(&format!("rps/app{i}"), "1"));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "target:\n  registry: \"{p}\"\n  insecure: true\n  requests_per_second: 4\n  burst: 1\n\
             registries:\n  \"{u}\": {{ insecure: true }}\nimages:\n{images}",
            p = proxy.host(),
            u = upstream.host(),
            images = yaml_images(&refs),
        ),
    );
    let started = Instant::now();
    mirrorsync(&["sync", "--once", "--config", config.to_str().unwrap()])
        .await
        .assert_code(0);
    let took = started.elapsed();
    let seen = proxy.seen();
    let max = seen.max_in_window(Duration::from_secs(1));
    eprintln!(
        "{} requests to the target in {took:.1?}, at most {max} in any second",
        seen.len()
    );
    assert!(seen.len() >= 24, "{}", seen.dump());
    // 4 per second with a burst of 1: a one-second window holds at most 5 arrivals (one at
    // each end), however the run is timed.
    assert!(
        max <= 5,
        "{max} requests within one second:\n{}",
        seen.dump()
    );
    assert!(took >= Duration::from_secs_f64((seen.len() - 1) as f64 / 4.0 * 0.9));
}

/// Syncs `repositories` (tag `1` each) from the upstream behind `proxy` with one blob transfer
/// at a time (`concurrency: 1`), and checks each image landed whole.
async fn sync_with_one_transfer_slot(proxy: &Proxy, target: &Registry, repositories: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let images: String = repositories
        .iter()
        .map(|r| format!("  - {}/{r}:1\n", proxy.host()))
        .collect();
    let config = write_config(
        dir.path(),
        &format!(
            "target: {{ registry: \"{t}\", insecure: true }}\n\
             registries:\n  \"{p}\": {{ insecure: true, concurrency: 1 }}\n\
             images:\n{images}",
            t = target.host(),
            p = proxy.host(),
        ),
    );
    mirrorsync(&["sync", "--once", "--config", config.to_str().unwrap()])
        .await
        .assert_code(0);
    for repository in repositories {
        assert_image_complete(target, repository, "1").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_concurrency_bounds_blob_downloads() {
    let upstream = Registry::start().await;
    let proxy = Proxy::start(&upstream).await;
    let target = Registry::start().await;
    // Each blob download takes about 200 ms: overlapping ones would arrive together.
    proxy.add(Rule::new(
        "GET /v2/*/blobs/*",
        Action::Throttle(1024 * 1024),
    ));
    let layers = (0..5).map(|i| layer(70 + i, 200 * 1024)).collect();
    push_image(
        &upstream,
        "wide/app",
        "1",
        ImageSpec::new(Format::Oci, layers),
    )
    .await;
    sync_with_one_transfer_slot(&proxy, &target, &["wide/app"]).await;
    let seen = proxy.seen();
    let mut layer_gets: Vec<Duration> = seen
        .iter()
        .filter(|s| s.is("GET", "blobs", None) && s.body_bytes >= 200 * 1024)
        .map(|s| s.at)
        .collect();
    layer_gets.sort();
    assert_eq!(layer_gets.len(), 5, "{}", seen.dump());
    let closest = layer_gets.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    eprintln!("blob downloads with concurrency 1: closest arrivals {closest:.0?} apart");
    assert!(
        closest >= Duration::from_millis(150),
        "two downloads overlapped ({closest:?} apart):\n{}",
        seen.dump()
    );
}

/// `concurrency` bounds layer transfers, not configs: with one transfer slot held by a slow
/// layer, another image's config and small layer (64 KiB at most) are fetched meanwhile, not
/// after it. On a far link a slot held over each config's round trip starved the layers.
#[tokio::test(flavor = "multi_thread")]
async fn configs_and_small_blobs_take_no_transfer_slot() {
    let upstream = Registry::start().await;
    let proxy = Proxy::start(&upstream).await;
    let target = Registry::start().await;
    // The big image's layer takes about 2 s; the small image comes after it has started.
    proxy.add(Rule::new(
        "GET /v2/big/app/blobs/*",
        Action::Throttle(256 * 1024),
    ));
    proxy.add(Rule::new(
        "GET /v2/small/app/manifests/*",
        Action::Stall(Duration::from_millis(300)),
    ));
    push_image(
        &upstream,
        "big/app",
        "1",
        ImageSpec::new(Format::Oci, vec![layer(90, 512 * 1024)]),
    )
    .await;
    push_image(
        &upstream,
        "small/app",
        "1",
        ImageSpec::new(Format::Oci, vec![layer(91, 20 * 1024)]),
    )
    .await;
    sync_with_one_transfer_slot(&proxy, &target, &["big/app", "small/app"]).await;
    let seen = proxy.seen();
    let blob_gets = |repo: &str| -> Vec<_> {
        seen.iter()
            .filter(|s| s.is("GET", "blobs", Some(repo)))
            .cloned()
            .collect()
    };
    let big_layer = blob_gets("big/app")
        .into_iter()
        .find(|s| s.body_bytes >= 512 * 1024)
        .unwrap_or_else(|| panic!("no layer download:\n{}", seen.dump()));
    let small = blob_gets("small/app");
    assert_eq!(small.len(), 2, "config and layer:\n{}", seen.dump());
    for blob in small {
        assert!(
            blob.at > big_layer.at && blob.at < big_layer.at + Duration::from_millis(1500),
            "a small blob waited for the one transfer slot (big layer at {:?}, small blob at {:?}):\n{}",
            big_layer.at,
            blob.at,
            seen.dump()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shard_flag_splits_the_list() {
    let upstream = Registry::start().await;
    let mut refs = Vec::new();
    for i in 0..8u64 {
        let repo = format!("shard/app{i}");
        seed(&upstream, &repo, "1", 80 + i).await;
        refs.push(upstream.image_ref(&repo, "1"));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut shares = Vec::new();
    for index in 0..2 {
        let target = Registry::start().await;
        let config = write_config(
            dir.path(),
            &format!(
                "target: {{ registry: \"{t}\", insecure: true }}\n\
                 registries:\n  \"{u}\": {{ insecure: true }}\nimages:\n{images}",
                t = target.host(),
                u = upstream.host(),
                images = yaml_images(&refs),
            ),
        );
        let shard = format!("{index}/2");
        let config = config.to_str().unwrap();
        let plan = mirrorsync(&["plan", "--shard", &shard, "--config", config]).await;
        plan.assert_code(0);
        mirrorsync(&["sync", "--once", "--shard", &shard, "--config", config])
            .await
            .assert_code(0);
        let mut synced = BTreeSet::new();
        for i in 0..8 {
            let repo = format!("shard/app{i}");
            let here = !tags(&target, &repo).await.is_empty();
            // `plan --shard` names exactly the repositories `sync --shard` copies.
            assert_eq!(
                plan.stdout.contains(&format!("{repo}:1")),
                here,
                "{repo} in plan {shard}:\n{}",
                plan.stdout
            );
            if here {
                synced.insert(repo);
            }
        }
        shares.push(synced);
    }
    assert!(!shares[0].is_empty() && !shares[1].is_empty(), "{shares:?}");
    assert!(shares[0].is_disjoint(&shares[1]), "{shares:?}");
    assert_eq!(shares[0].len() + shares[1].len(), 8, "{shares:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn log_level_filters_what_is_logged() {
    let upstream = Registry::start().await;
    seed(&upstream, "team/app", "1", 90).await;
    let mut stderr = Vec::new();
    for level in ["warn", "debug"] {
        let target = Registry::start().await;
        let scenario = Scenario::registry_to_registry(
            &upstream,
            &target,
            "",
            &[upstream.image_ref("team/app", "1")],
        );
        let out = mirrorsync(&[
            "--log-level",
            level,
            "sync",
            "--once",
            "--config",
            &scenario.config_arg(),
        ])
        .await;
        out.assert_code(0);
        stderr.push(out.stderr);
    }
    assert!(
        !stderr[0].contains("INFO") && !stderr[0].contains("DEBUG"),
        "--log-level warn:\n{}",
        stderr[0]
    );
    assert!(
        stderr[1].contains("DEBUG"),
        "--log-level debug:\n{}",
        stderr[1]
    );
}
