//! Metrics for long lists: `tag_series: out_of_sync` keeps per-tag series only for tags that
//! are not in sync, and the aggregate lag series are there in both modes.

use crate::common;

use common::exposition::Exposition;
use common::*;

/// Two tags upstream and one the upstream does not have (it fails every run).
async fn world() -> (Registry, Registry, Vec<String>) {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    push_image(&upstream, "team/app", "1.0", oci_image(700, 9_000)).await;
    push_image(&upstream, "ops/tool", "1", docker_image(701, 7_000)).await;
    let images = vec![
        upstream.image_ref("team/app", "1.0"),
        upstream.image_ref("ops/tool", "1"),
        upstream.image_ref("team/app", "gone"),
    ];
    (upstream, target, images)
}

/// One `sync --once` with `extra` appended to the config; its exit code and textfile.
async fn run(scenario: &Scenario, extra: &str) -> (Option<i32>, Exposition) {
    let mut yaml = std::fs::read_to_string(&scenario.config).expect("config");
    yaml.push_str(extra);
    std::fs::write(&scenario.config, yaml).expect("config");
    let textfile = scenario.dir.path().join("metrics.prom");
    let out = sync_once_with_metrics_file(&scenario.config, &textfile).await;
    let text = std::fs::read_to_string(&textfile).expect("textfile written");
    (out.code, Exposition::parse(&text))
}

fn tag_sources(e: &Exposition, name: &str) -> Vec<String> {
    let mut v: Vec<String> = e
        .find(name, &[])
        .iter()
        .map(|s| s.labels["source"].clone())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_sync_mode_exports_per_tag_series_only_for_the_failing_tag() {
    let (upstream, target, images) = world().await;
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &images);
    let (code, e) = run(&scenario, "tag_series: out_of_sync\n").await;
    assert_eq!(code, Some(1), "one tag fails\n{}", e.text);
    let gone = images[2].clone();
    for name in ["mirrorsync_tag_in_sync", "mirrorsync_tag_lag_seconds"] {
        assert_eq!(
            tag_sources(&e, name),
            vec![gone.clone()],
            "{name}\n{}",
            e.text
        );
    }
    assert_eq!(e.value("mirrorsync_tag_in_sync", &[("source", &gone)]), 0.0);
    // The aggregates count every tag of the pass.
    assert_eq!(
        e.value(
            "mirrorsync_repository_tags_out_of_sync",
            &[("repository", "team/app")]
        ),
        1.0,
        "{}",
        e.text
    );
    assert_eq!(
        e.value(
            "mirrorsync_repository_tags_out_of_sync",
            &[("repository", "ops/tool")]
        ),
        0.0
    );
    assert_eq!(
        e.value("mirrorsync_tag_lag_distribution_seconds_count", &[]),
        3.0,
        "{}",
        e.text
    );
    let gone_lag = e.value("mirrorsync_tag_lag_seconds", &[("source", &gone)]);
    assert_eq!(e.value("mirrorsync_lag_max_seconds", &[]), gone_lag);
    assert_eq!(
        e.value(
            "mirrorsync_repository_lag_max_seconds",
            &[("repository", "ops/tool")]
        ),
        0.0
    );

    // The missing tag appears upstream: the next run drops its series too.
    push_image(&upstream, "team/app", "gone", oci_image(702, 5_000)).await;
    let (code, e) = run(&scenario, "").await;
    assert_eq!(code, Some(0), "{}", e.text);
    assert!(
        e.find("mirrorsync_tag_in_sync", &[]).is_empty(),
        "no per-tag series once every tag is in sync\n{}",
        e.text
    );
    assert_eq!(e.value("mirrorsync_lag_max_seconds", &[]), 0.0);
    assert_eq!(
        e.value(
            "mirrorsync_tag_lag_distribution_seconds_bucket",
            &[("le", "0")]
        ),
        3.0,
        "{}",
        e.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn default_mode_exports_every_tag_and_the_aggregates() {
    let (upstream, target, images) = world().await;
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &images);
    let (code, e) = run(&scenario, "").await;
    assert_eq!(code, Some(1), "{}", e.text);
    let mut all = images.clone();
    all.sort();
    assert_eq!(tag_sources(&e, "mirrorsync_tag_in_sync"), all, "{}", e.text);
    assert_eq!(
        e.value(
            "mirrorsync_repository_tags_out_of_sync",
            &[("repository", "team/app")]
        ),
        1.0
    );
    assert_eq!(
        e.value("mirrorsync_tag_lag_distribution_seconds_count", &[]),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_series_mode_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "tag_series: some\ntarget:\n  path: ./out\nimages:\n  - busybox:1.36\n",
    );
    let out = mirrorsync(&["check", "--config", &config.display().to_string()]).await;
    out.assert_code(2);
    assert!(
        out.stderr.contains("tag_series") && out.stderr.contains(":1:"),
        "{}",
        out.stderr
    );
}
