//! What the Helm chart runs, run for real: the CronJob's container arguments (as rendered by
//! `helm template`, kept in charts/tests/golden by the chart tests) against local registries,
//! and N shards of an Indexed Job at once against one target.

use crate::common;

use std::collections::BTreeSet;

use common::*;

/// The rendered container args, with the config path swapped for a local one and the
/// Pushgateway (and its `--instance`) dropped (the observability tests cover pushing).
fn chart_args(file: &str, config: &str) -> Vec<String> {
    let path = format!("{}/charts/tests/golden/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut args: Vec<String> = text.lines().map(str::to_string).collect();
    let at = args
        .iter()
        .position(|a| a == "--config")
        .expect("--config in the chart's args");
    args[at + 1] = config.to_string();
    // The Pushgateway and its `instance` label (which needs it) go together.
    for flag in ["--pushgateway", "--instance"] {
        if let Some(at) = args.iter().position(|a| a == flag) {
            args.drain(at..at + 2);
        }
    }
    args
}

async fn seed_repos(upstream: &Registry, count: usize) -> Vec<String> {
    let mut images = Vec::new();
    for i in 0..count {
        let repo = format!("team/svc{i}");
        push_image(
            upstream,
            &repo,
            "1",
            ImageSpec::new(
                Format::Oci,
                vec![layer(1, 3_000), layer(100 + i as u64, 1_000)],
            ),
        )
        .await;
        push_image(
            upstream,
            &repo,
            "2",
            ImageSpec::new(
                Format::Oci,
                vec![layer(1, 3_000), layer(200 + i as u64, 1_000)],
            ),
        )
        .await;
        images.push(upstream.image_ref(&repo, "1"));
        images.push(upstream.image_ref(&repo, "2"));
    }
    images
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cronjob_container_args_sync_against_real_registries() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let images = seed_repos(&upstream, 3).await;
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &images);
    let args = chart_args("cronjob-args.txt", &scenario.config_arg());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = mirrorsync(&args).await;
    out.assert_code(0);
    for line in out.stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("--log-format json line {line:?}: {e}"));
    }
    for i in 0..3 {
        assert_image_complete(&target, &format!("team/svc{i}"), "1").await;
        assert_image_complete(&target, &format!("team/svc{i}"), "2").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shards_split_the_list_and_run_together_without_conflicts() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let images = seed_repos(&upstream, 12).await;
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &images);
    let args = chart_args("cronjob-sharded-args.txt", &scenario.config_arg());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let shards = 4;

    // Plans first: each shard's share, from the same environment an Indexed Job gives.
    let mut shares: Vec<BTreeSet<String>> = Vec::new();
    for index in 0..shards {
        let env = [
            ("MIRRORSYNC_SHARDS", "4"),
            ("JOB_COMPLETION_INDEX", &*index.to_string()),
        ];
        let plan = mirrorsync_with_env(&["plan", "--config", &scenario.config_arg()], &env).await;
        plan.assert_code(0);
        let share: BTreeSet<String> = plan
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("new: "))
            .map(|l| l.split(" -> ").next().unwrap().to_string())
            .collect();
        // Tags of one repository stay together.
        for image in &share {
            let repo = image.rsplit_once(':').unwrap().0;
            assert!(
                share.contains(&format!("{repo}:1")) && share.contains(&format!("{repo}:2")),
                "{share:?}"
            );
        }
        shares.push(share);
    }
    let union: BTreeSet<String> = shares.iter().flatten().cloned().collect();
    let all: BTreeSet<String> = images.iter().cloned().collect();
    assert_eq!(union, all, "the shards cover the whole list");
    assert_eq!(
        shares.iter().map(|s| s.len()).sum::<usize>(),
        all.len(),
        "no tag is in two shards"
    );
    assert!(
        shares.iter().filter(|s| !s.is_empty()).count() >= 2,
        "work is spread: {shares:?}"
    );

    // Then all shards at once against one target.
    let runs = (0..shards).map(|index| {
        let args = args.clone();
        async move {
            let index = index.to_string();
            let env = [
                ("MIRRORSYNC_SHARDS", "4"),
                ("JOB_COMPLETION_INDEX", index.as_str()),
            ];
            mirrorsync_with_env(&args, &env).await
        }
    });
    for out in futures_util::future::join_all(runs).await {
        out.assert_code(0);
    }
    for image in &images {
        let (repo, tag) = image.split_once('/').unwrap().1.rsplit_once(':').unwrap();
        assert_image_complete(&target, repo, tag).await;
    }
    // Each shard keeps its own state.
    let mut state_tags = common::tags(&target, "mirrorsync/state").await;
    state_tags.sort();
    let expected: Vec<String> = (0..shards).map(|i| format!("shard-{i}-of-4")).collect();
    assert_eq!(state_tags, expected);
}
