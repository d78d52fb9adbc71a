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
        // The registry logs a request when it has answered it: the `GET /v2/`s sent while the
        // first HEAD was out (spare connections, see below) may be logged before it, and a
        // cold run's later ones open download connections ahead.
        let first = asked.iter().find(|r| !r.starts_with("GET /v2/ "));
        assert!(
            first.is_some_and(|r| r.starts_with("HEAD /v2/library/") && r.contains("/manifests/")),
            "{run}: a manifest HEAD comes first:\n{asked:#?}"
        );
        if run == "no-op" {
            // HEADs only, and the `GET /v2/`s that opened the other HEADs' connections while
            // the first one was out (see `tags_waiting_for_the_first_head_open_...`).
            let heads = asked.iter().filter(|r| r.starts_with("HEAD ")).count();
            assert_eq!(heads, images.len(), "one HEAD per tag:\n{asked:#?}");
            let others: Vec<_> = asked.iter().filter(|r| !r.starts_with("HEAD ")).collect();
            assert!(
                others.len() < images.len() && others.iter().all(|r| r.starts_with("GET /v2/ ")),
                "{asked:#?}"
            );
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

/// Over plain HTTP every request in flight needs a connection of its own (HTTP/1.1), and a new
/// one costs a TCP handshake, a round trip on a far link. While the run's first HEAD finds out
/// what the host answers, the tags waiting behind it each open theirs with a `GET /v2/`, so
/// their HEADs go out on open connections the moment it is answered. Where the operator capped
/// the host's request rate (`requests_per_second`), none is opened: each would spend a request.
#[tokio::test(flavor = "multi_thread")]
async fn tags_waiting_for_the_first_head_open_their_connections_meanwhile() {
    let world = World::start(Proxied::Upstream).await;
    let tags = ["a", "b", "c", "d", "e", "f"];
    for (i, tag) in tags.iter().enumerate() {
        push_image(
            &world.upstream,
            "lib/wait",
            *tag,
            oci_image(130 + i as u64, 3_000),
        )
        .await;
    }
    let images: Vec<String> = tags.iter().map(|t| format!("lib/wait:{t}")).collect();
    // The first HEAD takes 800 ms: the others wait for it.
    let stall = || {
        Rule::new(
            "HEAD /v2/*/manifests/*",
            Action::Stall(std::time::Duration::from_millis(800)),
        )
        .first(1)
    };

    let first = world.up().add(stall());
    let config = world.write(&world.config(&images));
    world.sync(&config).await.assert_code(0);
    assert_eq!(world.up().applied(first), 1);
    let seen = world.up().seen();
    let heads: Vec<_> = seen
        .iter()
        .filter(|s| s.method == "HEAD" && s.path.contains("/manifests/"))
        .collect();
    assert_eq!(heads.len(), tags.len(), "{seen:#?}");
    let answered = heads[0].at + std::time::Duration::from_millis(800);
    let spares: Vec<_> = seen
        .iter()
        .filter(|s| s.method == "GET" && s.path == "/v2/" && s.at < answered)
        .collect();
    assert!(
        !spares.is_empty() && spares.len() < tags.len(),
        "one GET /v2/ per waiting tag, during the first HEAD: {seen:#?}"
    );
    // The other HEADs went out on connections opened before the first HEAD was answered. One
    // may not: the first tag's next requests (its manifest GET, and a `GET /v2/` opening a
    // download connection ahead) compete for the same open connections at that moment. Without
    // the spare connections, at least four of the five would need a new one.
    let opened_before: std::collections::HashSet<u64> = spares
        .iter()
        .map(|s| s.connection)
        .chain([heads[0].connection])
        .collect();
    let on_new: Vec<_> = heads[1..]
        .iter()
        .filter(|h| !opened_before.contains(&h.connection))
        .map(|h| h.path.clone())
        .collect();
    assert!(
        on_new.len() <= 1,
        "HEADs on connections opened after the first HEAD's answer: {on_new:?}\n{seen:#?}"
    );

    // A capped request rate: no spare connection (the tags are unchanged: HEADs only).
    world.up().reset_log();
    let first = world.up().add(stall());
    let capped = world
        .config(&images)
        .upstream_lines("    requests_per_second: 50\n");
    let config = world.write(&capped);
    world.sync(&config).await.assert_code(0);
    assert_eq!(world.up().applied(first), 1);
    let seen = world.up().seen();
    assert!(
        seen.iter().all(|s| s.method == "HEAD"),
        "HEADs only with requests_per_second set: {seen:#?}"
    );
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
