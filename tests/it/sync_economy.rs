//! What a sync costs upstream and writes at the target, counted from the registries' own access
//! logs: unchanged tags spend one HEAD, shared content crosses the link once, plan writes nothing.

use crate::common;

use common::*;

/// Given a corpus of images (an index, a Docker image, two repositories sharing a base layer, two
/// tags on one digest), the tags to sync.
async fn seed_corpus(upstream: &Registry) -> Vec<String> {
    let base = layer(100, 80_000);
    push_multi_arch(
        upstream,
        "library/web",
        "1.26",
        Format::Oci,
        (
            ImageSpec::new(Format::Oci, vec![base.clone(), layer(101, 9_000)]),
            ImageSpec::new(Format::Oci, vec![base.clone(), layer(102, 9_000)])
                .platform("linux/arm64"),
        ),
        &[0],
    )
    .await;
    push_image(
        upstream,
        "library/worker",
        "2",
        ImageSpec::new(Format::Docker, vec![base.clone(), layer(103, 4_000)]),
    )
    .await;
    let cache = push_image(upstream, "library/cache", "7.2", oci_image(104, 6_000)).await;
    push_manifest(
        upstream,
        "library/cache",
        "latest",
        &cache.media_type,
        &cache.manifest_bytes,
    )
    .await;
    vec![
        upstream.image_ref("library/web", "1.26"),
        upstream.image_ref("library/worker", "2"),
        upstream.image_ref("library/cache", "7.2"),
        upstream.image_ref("library/cache", "latest"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_sync_pulls_each_unique_blob_once_and_mounts_shared_layers() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let images = seed_corpus(&upstream).await;
    let scenario = Scenario::registry_to_registry(&upstream, &target, "mirror", &images);

    let mark = upstream.log_mark().await;
    let target_mark = target.log_mark().await;
    let out = scenario.sync().await;
    out.assert_code(0);
    let log = upstream.access_log_since(mark).await;
    let target_log = target.access_log_since(target_mark).await;

    // Every blob GET upstream is for a distinct digest: the shared base layer crossed once.
    let blob_gets: Vec<String> = log
        .iter()
        .filter(|a| a.method == "GET" && a.kind() == Some("blobs"))
        .map(|a| a.reference().unwrap())
        .collect();
    let mut unique = blob_gets.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        blob_gets.len(),
        unique.len(),
        "a blob was pulled twice:\n{}",
        log.dump()
    );
    // web: base + 2 layers + 2 configs + attestation config and layer; worker: layer + config;
    // cache: layer + config.
    assert_eq!(unique.len(), 11, "{}", log.dump());
    // cache:7.2 and cache:latest share a digest: its manifest was fetched once.
    assert_eq!(
        log.manifest_gets(Some("library/cache")),
        1,
        "{}",
        log.dump()
    );
    // The base layer reached mirror/library/worker by a cross-repository mount.
    let mounts = target_log
        .iter()
        .filter(|a| a.method == "POST" && a.query.contains("mount="))
        .count();
    assert!(
        mounts >= 1,
        "expected a cross-repository mount:\n{}",
        target_log.dump()
    );
    for (repo, tag) in [
        ("library/web", "1.26"),
        ("library/worker", "2"),
        ("library/cache", "7.2"),
        ("library/cache", "latest"),
    ] {
        assert_eq!(
            head_manifest(&target, &format!("mirror/{repo}"), tag).await,
            head_manifest(&upstream, repo, tag).await,
            "mirror/{repo}:{tag}"
        );
        assert_image_complete(&target, &format!("mirror/{repo}"), tag).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn second_run_is_a_no_op_one_head_per_tag_and_no_writes() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let images = seed_corpus(&upstream).await;
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &images);
    scenario.sync().await.assert_code(0);

    let mark = upstream.log_mark().await;
    let target_mark = target.log_mark().await;
    let out = scenario.sync().await;
    out.assert_code(0);
    let log = upstream.access_log_since(mark).await;
    let target_log = target.access_log_since(target_mark).await;
    assert_eq!(
        log.manifest_gets(None),
        0,
        "no upstream manifest GET:\n{}",
        log.dump()
    );
    assert_eq!(
        log.blob_gets(None),
        0,
        "no upstream blob GET:\n{}",
        log.dump()
    );
    assert_eq!(
        log.manifest_heads(None),
        images.len(),
        "one HEAD per tag:\n{}",
        log.dump()
    );
    assert_eq!(
        target_log.mirrored_writes(),
        0,
        "no write to a mirrored repository:\n{}",
        target_log.dump()
    );
    assert!(
        out.stdout.contains("0 synced, 4 unchanged, 0 failed"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn moved_tag_pulls_only_its_changed_layers() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let base = layer(200, 70_000);
    push_image(
        &upstream,
        "library/app",
        "stable",
        ImageSpec::new(Format::Oci, vec![base.clone(), layer(201, 10_000)]),
    )
    .await;
    push_image(&upstream, "library/other", "1", oci_image(202, 10_000)).await;
    let scenario = Scenario::registry_to_registry(
        &upstream,
        &target,
        "",
        &[
            upstream.image_ref("library/app", "stable"),
            upstream.image_ref("library/other", "1"),
        ],
    );
    scenario.sync().await.assert_code(0);

    // The tag moves upstream: same base, a new top layer.
    let moved = push_image(
        &upstream,
        "library/app",
        "stable",
        ImageSpec::new(Format::Oci, vec![base.clone(), layer(203, 12_000)]),
    )
    .await;
    let mark = upstream.log_mark().await;
    let target_mark = target.log_mark().await;
    let out = scenario.sync().await;
    out.assert_code(0);
    let log = upstream.access_log_since(mark).await;
    let pulled: Vec<String> = log
        .iter()
        .filter(|a| a.method == "GET" && a.kind() == Some("blobs"))
        .map(|a| a.reference().unwrap())
        .collect();
    let mut expected = vec![moved.blobs[0].digest.clone(), moved.blobs[2].digest.clone()];
    expected.sort();
    let mut pulled_sorted = pulled.clone();
    pulled_sorted.sort();
    assert_eq!(
        pulled_sorted,
        expected,
        "only the new config and top layer:\n{}",
        log.dump()
    );
    assert_eq!(log.manifest_gets(Some("library/other")), 0);
    assert_eq!(
        target
            .access_log_since(target_mark)
            .await
            .writes(Some("library/other")),
        0
    );
    assert_eq!(
        head_manifest(&target, "library/app", "stable").await,
        Some(moved.digest.clone())
    );
    assert_image_complete(&target, "library/app", "stable").await;
    assert!(out.stdout.contains("2 blobs copied"), "{}", out.stdout);
    assert!(out.stdout.contains("1 present"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_reports_changes_and_writes_nothing() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let images = seed_corpus(&upstream).await;
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &images);

    let target_mark = target.log_mark().await;
    let out = scenario.plan().await;
    out.assert_code(0);
    let target_log = target.access_log_since(target_mark).await;
    assert_eq!(
        target_log.writes(None),
        0,
        "plan wrote to the target:\n{}",
        target_log.dump()
    );
    assert!(
        out.stdout
            .contains(&format!("new: {} -> library/web:1.26", images[0])),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("4 to sync, 0 unchanged"),
        "{}",
        out.stdout
    );
    assert!(
        head_manifest(&target, "library/web", "1.26")
            .await
            .is_none()
    );

    scenario.sync().await.assert_code(0);
    push_image(&upstream, "library/worker", "2", docker_image(300, 5_000)).await;
    let out = scenario.plan().await;
    out.assert_code(0);
    assert!(
        out.stdout
            .contains(&format!("updated: {} -> library/worker:2", images[1])),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("1 to sync, 3 unchanged"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_upstream_tag_fails_alone() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    push_image(&upstream, "library/good", "1", oci_image(400, 3_000)).await;
    let missing = upstream.image_ref("library/good", "does-not-exist");
    let scenario = Scenario::registry_to_registry(
        &upstream,
        &target,
        "",
        &[missing.clone(), upstream.image_ref("library/good", "1")],
    );
    let out = scenario.sync().await;
    out.assert_code(1);
    assert!(
        out.stdout.contains(&format!(
            "FAILED {missing} -> library/good:does-not-exist: not found upstream"
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("1 synced, 0 unchanged, 1 failed"),
        "{}",
        out.stdout
    );
    assert_image_complete(&target, "library/good", "1").await;
}

/// Requests from mirrorsync in an upstream access log, as "METHOD path status".
fn tool_requests(log: &[Access]) -> Vec<String> {
    log.not_harness()
        .iter()
        .map(|a| format!("{} {} {}", a.method, a.path, a.status))
        .collect()
}

/// A host without credentials gets no `GET /v2/` ping: the run's first manifest HEAD stands in
/// for it (its 200 says nothing is asked, its 401 carries the challenge), one round trip before
/// anything else. Open upstream: one HEAD per tag and nothing else on a no-op. Token upstream,
/// anonymous: the first HEAD's 401 leads to the token, as the ping's did, with no more requests
/// than before.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_head_stands_in_for_the_ping_of_a_host_without_credentials() {
    // Open upstream.
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let images = seed_corpus(&upstream).await;
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &images);
    for run in ["cold", "no-op"] {
        let mark = upstream.log_mark().await;
        scenario.sync().await.assert_code(0);
        let asked = tool_requests(&upstream.access_log_since(mark).await);
        // No ping before it (a cold run's later `GET /v2/`s open download connections ahead).
        assert!(
            asked[0].starts_with("HEAD /v2/library/") && asked[0].contains("/manifests/"),
            "{run}: a manifest HEAD comes first:\n{asked:#?}"
        );
        if run == "no-op" {
            assert_eq!(asked.len(), images.len(), "HEADs only:\n{asked:#?}");
            assert!(asked.iter().all(|r| r.starts_with("HEAD ")), "{asked:#?}");
        }
    }

    // Token upstream, anonymous pulls allowed, no credentials configured.
    let token_server = TokenServer::start(vec![("seed".into(), "seedpw".into())], true);
    let secured = Registry::start_with(RegistryOptions {
        token: Some(&token_server),
        ..Default::default()
    })
    .await;
    let img = push_image(&secured, "lib/tok", "a", oci_image(120, 20_000)).await;
    let anonymous =
        Scenario::registry_to_registry(&secured, &target, "", &[secured.image_ref("lib/tok", "a")]);
    token_server.clear_requests();
    let mark = secured.log_mark().await;
    anonymous.sync().await.assert_code(0);
    let asked = tool_requests(&secured.access_log_since(mark).await);
    assert_eq!(
        asked[..2],
        [
            "HEAD /v2/lib/tok/manifests/a 401".to_string(),
            "HEAD /v2/lib/tok/manifests/a 200".to_string()
        ],
        "the first HEAD's 401 is the ping's, then the HEAD again with the token:\n{asked:#?}"
    );
    let tokens = token_server.requests();
    assert_eq!(tokens.len(), 1, "one anonymous token: {tokens:?}");
    let (_, _, digest) = get_manifest(&target, "lib/tok", "a")
        .await
        .expect("mirrored");
    assert_eq!(digest, img.digest);
}

/// A tag's target manifest is asked at the same time as its upstream one, not after it: over a
/// far link, the target's answer is in by the time upstream's is. Upstream's HEAD is held back
/// 800 ms here; the target's HEAD still comes at once.
#[tokio::test(flavor = "multi_thread")]
async fn the_target_head_does_not_wait_for_the_upstream_head() {
    let world = World::start(Proxied::Both).await;
    push_image(&world.upstream, "lib/both", "v1", oci_image(140, 3_000)).await;
    let stall = std::time::Duration::from_millis(800);
    world.up().add(Rule::new(
        "HEAD /v2/lib/both/manifests/v1",
        Action::Stall(stall),
    ));
    let config = world.write(&world.config(&["lib/both:v1"]));
    world.sync(&config).await.assert_code(0);
    let up = world.up().seen();
    let down = world.down().seen();
    let asked_up = up
        .iter()
        .find(|s| s.method == "HEAD" && s.path == "/v2/lib/both/manifests/v1")
        .expect("upstream HEAD");
    let asked_down = down
        .iter()
        .find(|s| s.method == "HEAD" && s.path == "/v2/lib/both/manifests/v1")
        .expect("target HEAD");
    // The two proxies started within milliseconds of each other: their clocks compare.
    assert!(
        asked_down.at < asked_up.at + stall / 2,
        "the target HEAD came {:?} after upstream's, which was held {stall:?}",
        asked_down.at.saturating_sub(asked_up.at)
    );
}
