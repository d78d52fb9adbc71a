//! Choosing what to mirror: tag filters over a real tag list, immutable tags, platform modes,
//! signatures and referrers, backup tags.

use crate::common;

use common::*;

/// A repository with semver, pre-release and non-semver tags, each a distinct small image.
async fn seed_tags(upstream: &Registry, repo: &str, tags: &[&str]) {
    let base = push_blob(upstream, repo, &layer(1, 2_000)).await;
    let _ = base;
    for (i, tag) in tags.iter().enumerate() {
        push_image(
            upstream,
            repo,
            *tag,
            oci_image(1, 2_000)
                .label("tag", tag)
                .label("n", &i.to_string()),
        )
        .await;
    }
}

fn entry(upstream: &Registry, repo: &str, rest: &str) -> String {
    format!("{{ source: \"{}/{repo}\", {rest} }}", upstream.host())
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_choose_tags_from_one_tag_list_per_repository() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let tags = [
        "1.23.0",
        "1.24.1",
        "1.25",
        "1.25-alpine",
        "1.25-alpine-slim",
        "1.26.0-rc1",
        "2.0.0",
        "latest",
        "edge",
    ];
    seed_tags(&upstream, "library/web", &tags).await;
    let scenario = Scenario::registry_to_registry(
        &upstream,
        &target,
        "",
        &[entry(
            &upstream,
            "library/web",
            r#"tags: [{ semver: ">=1.24 <2" }, { regex: '^\d+\.\d+-alpine', exclude: slim }, { newest: 1 }, "edge"]"#,
        )],
    );
    let mark = upstream.log_mark().await;
    let out = scenario.sync().await;
    out.assert_code(0);
    let log = upstream.access_log_since(mark).await;
    let lists = log.iter().filter(|a| a.kind() == Some("tags")).count();
    assert_eq!(lists, 1, "the tag list is fetched once:\n{}", log.dump());
    let mut mirrored = common::tags(&target, "library/web").await;
    mirrored.sort();
    assert_eq!(
        mirrored,
        vec!["1.24.1", "1.25", "1.25-alpine", "2.0.0", "edge"],
        "{}",
        out.stdout
    );
    for tag in &mirrored {
        assert_eq!(
            head_manifest(&target, "library/web", tag).await,
            head_manifest(&upstream, "library/web", tag).await
        );
    }
    // all: true takes every tag.
    let target2 = Registry::start().await;
    let all = Scenario::registry_to_registry(
        &upstream,
        &target2,
        "",
        &[entry(&upstream, "library/web", "tags: [{ all: true }]")],
    );
    all.sync().await.assert_code(0);
    assert_eq!(
        common::tags(&target2, "library/web").await.len(),
        tags.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn immutable_tags_cost_no_upstream_request_once_mirrored() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    seed_tags(&upstream, "library/tool", &["v1.0.0", "v1.1.0", "nightly"]).await;
    let scenario = Scenario::registry_to_registry(
        &upstream,
        &target,
        "",
        &[entry(
            &upstream,
            "library/tool",
            r#"tags: ["v1.0.0", "v1.1.0", "nightly"], immutable: ["v*.*.*"]"#,
        )],
    );
    scenario.sync().await.assert_code(0);

    let mark = upstream.log_mark().await;
    let out = scenario.sync().await;
    out.assert_code(0);
    let log = upstream.access_log_since(mark).await;
    let touched: Vec<String> = log.iter().filter_map(|a| a.reference()).collect();
    assert_eq!(
        touched,
        vec!["nightly".to_string()],
        "only the mutable tag is checked:\n{}",
        log.dump()
    );
    assert!(out.stdout.contains("3 unchanged"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn sparse_platform_mode_keeps_the_upstream_index_where_the_registry_refuses_it() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let arm = push_multi_arch(
        &upstream,
        "library/app",
        "1",
        Format::Oci,
        (
            oci_image(5, 4_000),
            oci_image(6, 4_000).platform("linux/arm64"),
        ),
        &[],
    )
    .await
    .second;
    let scenario = Scenario::registry_to_registry(
        &upstream,
        &target,
        "",
        &[entry(
            &upstream,
            "library/app",
            r#"tags: ["1"], platforms: [linux/arm64], platforms_mode: sparse"#,
        )],
    );
    let out = scenario.sync().await;
    // distribution 2.8 refuses an index whose children are missing: the tag fails with the
    // registry's reason, and no tag points at the incomplete index.
    out.assert_code(1);
    assert!(
        out.stdout.contains("MANIFEST_BLOB_UNKNOWN")
            || out.stdout.contains("manifest blob unknown"),
        "{}",
        out.stdout
    );
    assert!(head_manifest(&target, "library/app", "1").await.is_none());
    // The chosen platform's image itself was copied.
    assert_eq!(
        head_manifest(&target, "library/app", &arm.digest).await,
        Some(arm.digest.clone())
    );
}

/// A small image (one 300-byte layer from `seed`) under the cosign-style `tag`, as cosign pushes
/// a signature (`sha256-<hex>.sig`) or an attestation (`.att`).
async fn cosign_tag(upstream: &Registry, repo: &str, tag: &str, seed: u64) -> PushedImage {
    let kind = tag.rsplit('.').next().unwrap_or_default();
    let img = push_image(upstream, repo, None, oci_image(seed, 300).label(kind, "1")).await;
    push_manifest(upstream, repo, tag, &img.media_type, &img.manifest_bytes).await;
    img
}

#[tokio::test(flavor = "multi_thread")]
async fn signatures_and_referrer_fallback_tags_follow_their_image() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let image = push_image(&upstream, "library/signed", "1.0", oci_image(7, 3_000)).await;
    let hex = image.digest.trim_start_matches("sha256:");
    // cosign-style signature and attestation tags, and an OCI referrers fallback index.
    let sig = cosign_tag(&upstream, "library/signed", &format!("sha256-{hex}.sig"), 8).await;
    cosign_tag(&upstream, "library/signed", &format!("sha256-{hex}.att"), 9).await;
    push_index(
        &upstream,
        "library/signed",
        &*format!("sha256-{hex}"),
        Format::Oci,
        &[(sig.clone(), None)],
    )
    .await;
    // A signature of some other digest is not copied.
    push_manifest(
        &upstream,
        "library/signed",
        &format!("sha256-{}.sig", "0".repeat(64)),
        &sig.media_type,
        &sig.manifest_bytes,
    )
    .await;

    let scenario = Scenario::registry_to_registry(
        &upstream,
        &target,
        "",
        &[entry(
            &upstream,
            "library/signed",
            r#"tags: ["1.0"], referrers: true"#,
        )],
    );
    scenario.sync().await.assert_code(0);
    let mut mirrored = common::tags(&target, "library/signed").await;
    mirrored.sort();
    let mut expected = vec![
        "1.0".to_string(),
        format!("sha256-{hex}"),
        format!("sha256-{hex}.att"),
        format!("sha256-{hex}.sig"),
    ];
    expected.sort();
    assert_eq!(mirrored, expected);
    for tag in &expected {
        assert_image_complete(&target, "library/signed", tag).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_tag_keeps_the_previous_digest_when_a_tag_moves() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let first = push_image(&upstream, "library/svc", "stable", oci_image(11, 2_000)).await;
    let scenario = Scenario::registry_to_registry(
        &upstream,
        &target,
        "",
        &[entry(
            &upstream,
            "library/svc",
            r#"tags: ["stable"], backup_tag: "{tag}-prev""#,
        )],
    );
    scenario.sync().await.assert_code(0);
    let second = push_image(&upstream, "library/svc", "stable", oci_image(12, 2_000)).await;
    scenario.sync().await.assert_code(0);
    assert_eq!(
        head_manifest(&target, "library/svc", "stable").await,
        Some(second.digest)
    );
    assert_eq!(
        head_manifest(&target, "library/svc", "stable-prev").await,
        Some(first.digest)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_removes_only_tags_mirrorsync_created_and_no_longer_selects() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    seed_tags(&upstream, "library/app", &["1.0.0", "1.1.0", "1.2.0"]).await;
    // A tag somebody else pushed to the target repository: never pruned.
    let foreign = push_image(&target, "library/app", "hand-made", oci_image(20, 500)).await;
    let config_for = |newest: usize| {
        Scenario::registry_to_registry(
            &upstream,
            &target,
            "",
            &[entry(
                &upstream,
                "library/app",
                &format!("tags: [{{ newest: {newest} }}], prune: true"),
            )],
        )
    };
    config_for(3).sync().await.assert_code(0);
    assert_eq!(common::tags(&target, "library/app").await.len(), 4);

    // Only the newest now: plan shows the two prunes first and changes nothing.
    let narrowed = config_for(1);
    let plan = narrowed.plan().await;
    plan.assert_code(0);
    let first_lines: Vec<&str> = plan.stdout.lines().take(2).collect();
    assert!(
        first_lines
            .iter()
            .all(|l| l.starts_with("prune: library/app:1.")),
        "{}",
        plan.stdout
    );
    assert_eq!(
        common::tags(&target, "library/app").await.len(),
        4,
        "plan wrote nothing"
    );

    let out = narrowed.sync().await;
    out.assert_code(0);
    assert!(
        out.stdout.contains("PRUNED library/app:1.0.0"),
        "{}",
        out.stdout
    );
    let mut left = common::tags(&target, "library/app").await;
    left.sort();
    assert_eq!(left, vec!["1.2.0".to_string(), "hand-made".to_string()]);
    assert_eq!(
        head_manifest(&target, "library/app", "hand-made").await,
        Some(foreign.digest)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_lists_are_followed_across_link_pages_and_a_looping_link_fails_alone() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let proxy = Proxy::start(&upstream).await;
    // 320 tags on one digest (distribution 2.8 never paginates, so the proxy does).
    let image = push_image(&upstream, "library/many", "t0000", oci_image(30, 1_000)).await;
    let all: Vec<String> = (0..320).map(|i| format!("t{i:04}")).collect();
    for tag in &all[1..] {
        push_manifest(
            &upstream,
            "library/many",
            tag,
            &image.media_type,
            &image.manifest_bytes,
        )
        .await;
    }
    let list = "/v2/library/many/tags/list";
    proxy.add(Rule::new(
        &format!("GET {list}?last=t0299*"),
        tags_page("library/many", &all[300..], None),
    ));
    proxy.add(Rule::new(
        &format!("GET {list}?last=t0149*"),
        tags_page(
            "library/many",
            &all[150..300],
            Some(&format!("{list}?last=t0299&n=150")),
        ),
    ));
    proxy.add(Rule::new(
        &format!("GET {list}"),
        tags_page(
            "library/many",
            &all[..150],
            Some(&format!("{list}?last=t0149&n=150")),
        ),
    ));
    // Another repository whose next page is itself.
    proxy.add(Rule::new(
        "GET /v2/library/loop/tags/list",
        tags_page(
            "library/loop",
            &["a".to_string()],
            Some("/v2/library/loop/tags/list"),
        ),
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "target: {{ registry: \"{t}\", insecure: true }}\n\
             registries: {{ \"{p}\": {{ insecure: true }} }}\n\
             images:\n  - {{ source: \"{p}/library/many\", tags: [{{ regex: '^t0[0-3]\\d\\d$' }}] }}\n  \
             - {{ source: \"{p}/library/loop\", tags: [{{ all: true }}] }}\n",
            t = target.host(),
            p = proxy.host(),
        ),
    );
    let out = mirrorsync(&["sync", "--once", "--config", &config.display().to_string()]).await;
    out.assert_code(1);
    assert!(out.stdout.contains("pagination loops"), "{}", out.stdout);
    let pages: Vec<String> = proxy
        .seen()
        .iter()
        .filter(|s| s.path == list)
        .map(|s| s.query.clone())
        .collect();
    assert_eq!(pages.len(), 3, "three pages, each once: {pages:?}");
    let mut mirrored = common::tags(&target, "library/many").await;
    mirrored.sort();
    assert_eq!(mirrored, all, "all 320 tags across the pages");
    // One digest under 320 tags: its content crossed once.
    assert_eq!(
        proxy
            .seen()
            .iter()
            .filter(|s| s.method == "GET" && s.path.contains("/manifests/"))
            .count(),
        1
    );
}
