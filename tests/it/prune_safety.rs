//! User story: `prune: true` removes tags that are no longer selected, and never a manifest that
//! something still configured needs. In a registry a tag goes by deleting its manifest, which
//! takes every other tag on that digest with it, so a digest pin in the same repository, an
//! alias (two tags, one digest), another entry landing on the same digest, and the children of a
//! kept index all keep the manifest alive. Each run is followed by a second one, where the bug
//! showed, and the state never names a repository `repo@sha256`.

use crate::common;

use common::*;
use reqwest::Method;

fn image(seed: u64, name: &str) -> ImageSpec {
    oci_image(seed, 3_000).label("name", name)
}

/// The run state mirrorsync keeps in the target (`mirrorsync/state:latest`), as JSON.
async fn state_document(target: &Registry) -> serde_json::Value {
    let (bytes, _, _) = get_manifest(target, "mirrorsync/state", "latest")
        .await
        .expect("a state manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = target
        .client()
        .send(
            Method::GET,
            &format!("/v2/mirrorsync/state/blobs/{layer}"),
            &[],
            None,
        )
        .await
        .unwrap();
    assert!(resp.status().is_success());
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

fn assert_state_names_repositories_only(state: &serde_json::Value) {
    let created = state["created"].as_object().expect("created");
    for (repository, tags) in created {
        assert!(
            !repository.contains('@') && !repository.contains(':'),
            "the state records a repository named {repository:?}: {state}"
        );
        for tag in tags.as_array().unwrap() {
            let tag = tag.as_str().unwrap();
            assert!(
                !tag.chars().all(|c| c.is_ascii_hexdigit()) || tag.len() != 64,
                "a digest recorded as a tag: {tag}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_keeps_every_manifest_a_configured_entry_needs_run_after_run() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let host = upstream.host();
    let repo = "team/app";

    // 0.9: unique, prunable. 1.0: digest A, also pinned by digest. 1.1 and stable: one digest
    // (an alias). 2.0: the digest other/app:y lands on in the same target repository.
    let unique = push_image(&upstream, repo, "0.9", image(1, "unique")).await;
    let pinned = push_image(&upstream, repo, "1.0", image(2, "pinned")).await;
    let alias = push_image(&upstream, repo, "1.1", image(3, "alias")).await;
    push_image(&upstream, repo, "stable", image(3, "alias")).await;
    let shared = push_image(&upstream, repo, "2.0", image(4, "shared")).await;
    let other = push_image(&upstream, "other/app", "y", image(4, "shared")).await;
    assert_eq!(shared.digest, other.digest);
    // A multi-platform index, and a tag on one of its children.
    let amd64 = push_image(
        &upstream,
        repo,
        None,
        image(5, "amd64").platform("linux/amd64"),
    )
    .await;
    let arm64 = push_image(
        &upstream,
        repo,
        None,
        image(6, "arm64").platform("linux/arm64"),
    )
    .await;
    let multi = push_index(
        &upstream,
        repo,
        "multi",
        Format::Oci,
        &[
            (amd64.clone(), Some(Platform::new("linux", "amd64", None))),
            (arm64, Some(Platform::new("linux", "arm64", None))),
        ],
    )
    .await;
    push_manifest(
        &upstream,
        repo,
        "amd64-only",
        &amd64.media_type,
        &amd64.manifest_bytes,
    )
    .await;

    let config = |tags: &str| {
        Scenario::registry_to_registry(
            &upstream,
            &target,
            "",
            &[
                format!("{{ source: \"{host}/{repo}\", tags: [{tags}], prune: true }}"),
                format!("\"{host}/{repo}@{}\"", pinned.digest),
                format!("{{ source: \"{host}/other/app\", tags: [\"y\"], target: {repo} }}"),
            ],
        )
    };
    let all = config(r#""0.9", "1.0", "1.1", "stable", "2.0", "multi", "amd64-only""#);
    all.sync().await.assert_code(0);
    for tag in [
        "0.9",
        "1.0",
        "1.1",
        "stable",
        "2.0",
        "y",
        "multi",
        "amd64-only",
    ] {
        assert!(head_manifest(&target, repo, tag).await.is_some(), "{tag}");
    }

    // Only stable and multi stay selected; the pin and other/app:y stay configured.
    let narrowed = config(r#""stable", "multi""#);
    for run in 1..=2 {
        let out = narrowed.sync().await;
        out.assert_code(0);
        let pruned: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("PRUNED "))
            .collect();
        if run == 1 {
            assert_eq!(
                pruned,
                vec![format!("PRUNED {repo}:0.9 {}", unique.digest).as_str()],
                "only the tag nothing else needs is pruned:\n{}",
                out.stdout
            );
        } else {
            assert!(pruned.is_empty(), "run {run}:\n{}", out.stdout);
        }
        assert_eq!(head_manifest(&target, repo, "0.9").await, None);
        assert_eq!(head_manifest(&target, repo, &unique.digest).await, None);
        // The pin, by digest (what the bug deleted on the second run).
        assert_eq!(
            head_manifest(&target, repo, &pinned.digest).await,
            Some(pinned.digest.clone()),
            "run {run}: the pinned manifest must stay"
        );
        // The alias, the shared digest, the index and the child it lists.
        assert_eq!(
            head_manifest(&target, repo, "stable").await,
            Some(alias.digest.clone())
        );
        assert_eq!(
            head_manifest(&target, repo, "y").await,
            Some(shared.digest.clone())
        );
        assert_eq!(
            head_manifest(&target, repo, "multi").await,
            Some(multi.digest.clone())
        );
        assert_image_complete(&target, repo, "multi").await;
        assert_eq!(
            head_manifest(&target, repo, &amd64.digest).await,
            Some(amd64.digest.clone())
        );
        let state = state_document(&target).await;
        assert_state_names_repositories_only(&state);
    }
    // A pull of the pin through skopeo still works (an independent reader).
    let pin_ref = format!("docker://{}/{repo}@{}", target.host(), pinned.digest);
    let mut args = skopeo_flags(&target, None);
    args.insert(0, "inspect".to_string());
    args.push("--raw".to_string());
    args.push(pin_ref);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    skopeo(&args).await.assert_code(0);
}

/// A tag filter whose upstream tag list cannot be read keeps nothing it would have selected
/// known: its repository is not pruned that run (before, every created tag was removed).
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_tag_list_prunes_nothing() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let proxy = Proxy::start(&upstream).await;
    let repo = "team/lib";
    for (i, tag) in ["1.0.0", "1.1.0"].iter().enumerate() {
        push_image(&upstream, repo, *tag, image(10 + i as u64, tag)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigYaml::to_registry(&target.host())
        .upstream(&proxy.host())
        .images(&[format!(
            "{{ source: \"{}/{repo}\", tags: [{{ all: true }}], prune: true }}",
            proxy.host()
        )])
        .write(dir.path());
    let config = config.display().to_string();
    mirrorsync(&["sync", "--once", "--config", &config])
        .await
        .assert_code(0);
    assert_eq!(tags(&target, repo).await.len(), 2);

    // The tag list answers 404 (as after a repository rename upstream).
    proxy.add(Rule::new(
        "GET /v2/*/tags/list",
        Action::respond(404, &[("Content-Type", "application/json")], "{}"),
    ));
    let out = mirrorsync(&["sync", "--once", "--config", &config]).await;
    out.assert_code(1);
    assert!(!out.stdout.contains("PRUNED"), "{}", out.stdout);
    let mut left = tags(&target, repo).await;
    left.sort();
    assert_eq!(left, vec!["1.0.0".to_string(), "1.1.0".to_string()]);
}
