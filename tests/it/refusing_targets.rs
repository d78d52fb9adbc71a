//! User story: my target registry is one I never told mirrorsync about. It refuses shortcuts
//! the Docker client never takes (a body on the closing upload `PUT`, `Content-Range` on a
//! `PATCH`), refuses manifests pushed by digest, allows only two path components, or keeps tags
//! immutable. Whatever `docker push` works with, mirrorsync works with; what cannot work is said
//! in words that name the setting to change, and drift I chose is counted apart from breakage.
//!
//! Each test puts the quirk proxy ([`Quirk`]) in front of a real target registry; results are
//! read from the registry itself (digests, blob bytes), and by skopeo as a real client.

use crate::common;

use std::path::{Path, PathBuf};

use common::observe::assert_promtool_clean;
use common::*;

const MIB: u64 = 1 << 20;

/// A config from the upstream into the proxied target: `target_lines` under `target:` (indented
/// two spaces), `images` as YAML list items.
fn config_file(w: &World, target_lines: &str, images: &[String]) -> PathBuf {
    w.write(&w.config_items(images).target_lines(target_lines))
}

/// `repo:tag` is at the target with upstream's digest, its blobs whole; skopeo copies it out of
/// the target (every blob read and checked by a real client).
async fn assert_mirrored(w: &World, repo: &str, tag: &str) {
    let want = head_manifest(&w.upstream, repo, tag).await;
    assert!(want.is_some(), "{repo}:{tag} missing upstream");
    assert_eq!(
        head_manifest(&w.target, repo, tag).await,
        want,
        "{repo}:{tag} at the target"
    );
    assert_image_complete(&w.target, repo, tag).await;
    skopeo_copies_out(w, repo, tag).await;
}

async fn skopeo_copies_out(w: &World, repo: &str, tag: &str) {
    let out_dir = w
        .dir
        .path()
        .join(format!("skopeo-{}-{tag}", repo.replace('/', "_")));
    let src = format!("docker://{}/{repo}:{tag}", w.target.host());
    let dest = format!("oci:{}", out_dir.display());
    let out = skopeo(&["copy", "--src-tls-verify=false", &src, &dest]).await;
    assert_eq!(out.code, Some(0), "skopeo copy {src}: {}", out.stderr);
}

/// Seeds `n` small images `lib/app<i>:v1`, two layers each (one shared).
async fn small_images(reg: &Registry, n: u64) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..n {
        let repo = format!("lib/app{i}");
        let layers = vec![layer(500, 4_000), layer(501 + i, 9_000 + i as usize)];
        push_image(reg, &repo, "v1", ImageSpec::new(Format::Oci, layers)).await;
        names.push(repo);
    }
    names
}

/// Upload requests for images (mirrorsync's own state document aside).
fn image_uploads(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter()
        .filter(|s| s.path.contains("/blobs/uploads/") && !s.path.starts_with("/v2/mirrorsync/"))
        .collect()
}

fn content_length(s: &Seen) -> u64 {
    s.header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Item 1: a target that refuses a body on the closing `PUT` (500 "not supported") gets every
/// blob, and the state document, the Docker client's way after one refusal: POST, one PATCH
/// with the bytes, empty PUT. Refused blobs are redone, no tag fails, and no upload started
/// after the first refusal is refused.
#[tokio::test(flavor = "multi_thread")]
async fn closing_put_with_a_body_refused_falls_back_to_the_docker_flow() {
    let w = World::start(Proxied::Target).await;
    let repos = small_images(&w.upstream, 3).await;
    Quirk::PutBodyRefused.install(w.down());
    let images: Vec<String> = repos.iter().map(|r| w.image(&format!("{r}:v1"))).collect();
    let config = config_file(&w, "", &images);
    let metrics = w.dir.path().join("metrics.prom");
    let out = sync_once_with_metrics_file(&config, &metrics).await;
    out.assert_code(0);
    for repo in &repos {
        assert_mirrored(&w, repo, "v1").await;
    }
    let seen = w.down().seen();
    let refused: Vec<&Seen> = seen.iter().filter(|s| s.status == 500).collect();
    assert!(!refused.is_empty());
    assert!(
        refused
            .iter()
            .all(|s| s.method == "PUT" && content_length(s) > 0)
    );
    // Uploads already in flight when the first refusal came may each be refused once (the
    // proxy logs answers, so their order against the first PATCH is a race); after the last
    // refusal the host is on the Docker client's flow.
    let last_refusal = seen
        .iter()
        .rposition(|s| s.status == 500)
        .expect("a refusal");
    // After it, no PUT carries a body: each blob is POST, PATCH with the bytes, empty PUT.
    let after: Vec<&Seen> = seen
        .iter()
        .skip(last_refusal + 1)
        .filter(|s| s.path.contains("/blobs/uploads/"))
        .collect();
    assert!(
        after
            .iter()
            .filter(|s| s.method == "PUT")
            .all(|s| content_length(s) == 0)
    );
    assert!(
        after
            .iter()
            .any(|s| s.method == "PATCH" && content_length(s) > 0)
    );
    let puts = image_uploads(&seen)
        .iter()
        .filter(|s| s.method == "PUT" && s.status == 201)
        .count();
    // 1 shared layer + 3 own layers + 3 configs.
    assert_eq!(puts, 7, "each blob completed once:\n{}", seen.dump());
    // The state document went up the same way.
    assert!(
        !tags(&w.target, "mirrorsync/state").await.is_empty(),
        "no state document"
    );
    assert!(out.stderr.contains("patch-then-put"), "{}", out.stderr);
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    assert!(
        text.lines()
            .any(|l| l.starts_with("mirrorsync_upload_flow{")
                && l.contains("flow=\"patch-then-put\"")
                && l.ends_with(" 1")),
        "{text}"
    );
    assert!(uploads_are_closed(&w.target));
}

/// Item 1, chunked: a `PATCH` with `Content-Range` refused (416, no chunked uploads) makes the
/// big layer go up as one streamed PATCH without it; the layer is read from upstream again
/// (a streamed body cannot be replayed) and the tag lands.
#[tokio::test(flavor = "multi_thread")]
async fn patch_with_content_range_refused_falls_back_to_one_streamed_patch() {
    let w = World::start(Proxied::Target).await;
    let image = push_image(
        &w.upstream,
        "lib/big",
        "v1",
        oci_image(600, 700).big_layer(12 * MIB, 61),
    )
    .await;
    Quirk::ContentRangeRefused.install(w.down());
    let config = config_file(&w, "  chunk_size: 5MiB\n", &[w.image("lib/big:v1")]);
    let out = w.sync(&config).await;
    out.assert_code(0);
    assert_mirrored(&w, "lib/big", "v1").await;
    let seen = w.down().seen();
    let refused = seen.iter().filter(|s| s.status == 416).count();
    assert_eq!(refused, 1, "{}", seen.dump());
    let big = image
        .blobs
        .iter()
        .find(|b| b.size == 12 * MIB)
        .expect("big layer");
    let whole = seen
        .iter()
        .filter(|s| s.method == "PATCH" && s.status == 202 && content_length(s) == 12 * MIB)
        .count();
    assert_eq!(
        whole,
        1,
        "one streamed PATCH of the whole layer:\n{}",
        seen.dump()
    );
    assert!(
        seen.iter()
            .filter(|s| s.method == "PATCH" && s.status != 416)
            .all(|s| s.header("content-range").is_none()),
        "no Content-Range after the refusal"
    );
    assert_eq!(
        blob_sha256(&w.target, "lib/big", &big.digest)
            .await
            .as_deref(),
        Some(big.digest.as_str())
    );
    assert!(out.stderr.contains("single-patch"), "{}", out.stderr);
    assert!(uploads_are_closed(&w.target));
}

/// Upload sessions left open at the target (distribution keeps them on disk).
fn uploads_are_closed(target: &Registry) -> bool {
    fn walk(dir: &Path) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return true;
        };
        entries.flatten().all(|entry| {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "_uploads") {
                std::fs::read_dir(&path).map_or(true, |sessions| {
                    sessions
                        .flatten()
                        .all(|s| !s.path().join("startedat").exists())
                })
            } else {
                !path.is_dir() || walk(&path)
            }
        })
    }
    walk(
        &target
            .storage_root()
            .join("docker/registry/v2/repositories"),
    )
}

/// Item 2: a target that refuses manifests pushed by digest fails a multi-platform tag with a
/// line that says so and names `platforms:`, while a single-platform image lands. With one
/// platform and `platforms_mode: single`, that platform's own manifest goes under the tag
/// (its digest, which a pull of that platform resolves to), and the next run finds it in sync.
#[tokio::test(flavor = "multi_thread")]
async fn manifests_by_digest_refused_and_single_platform_mode() {
    let w = World::start(Proxied::Target).await;
    let amd = push_image(&w.upstream, "lib/multi", None, oci_image(700, 5_000)).await;
    let arm = push_image(
        &w.upstream,
        "lib/multi",
        None,
        oci_image(701, 6_000).platform("linux/arm64"),
    )
    .await;
    let arm_platform = arm.platform.clone();
    push_index(
        &w.upstream,
        "lib/multi",
        "v1",
        Format::Oci,
        &[
            (amd.clone(), amd.platform.clone()),
            (arm.clone(), arm_platform),
        ],
    )
    .await;
    small_images(&w.upstream, 1).await;
    Quirk::ManifestByDigestRefused.install(w.down());

    let config = config_file(&w, "", &[w.image("lib/multi:v1"), w.image("lib/app0:v1")]);
    let out = w.sync(&config).await;
    out.assert_code(1);
    let line = failed_line(&out, "lib/multi:v1");
    assert!(
        line.contains("the target refuses manifests pushed by digest, so a multi-platform image cannot be stored there")
            && line.contains("`platforms:`"),
        "{line}"
    );
    assert_mirrored(&w, "lib/app0", "v1").await;
    assert!(head_manifest(&w.target, "lib/multi", "v1").await.is_none());

    let single = format!(
        "{{ source: \"{}\", platforms: [linux/arm64], platforms_mode: single }}",
        w.image("lib/multi:v1")
    );
    let config = config_file(&w, "", &[single]);
    let out = w.sync(&config).await;
    out.assert_code(0);
    assert_eq!(
        head_manifest(&w.target, "lib/multi", "v1").await.as_deref(),
        Some(arm.digest.as_str()),
        "the arm64 manifest itself is under the tag"
    );
    assert_image_complete(&w.target, "lib/multi", "v1").await;
    let raw = skopeo_inspect_raw(
        &format!("docker://{}/lib/multi:v1", w.target.host()),
        &["--tls-verify=false"],
    )
    .await;
    assert_eq!(
        raw, arm.manifest_bytes,
        "skopeo reads the platform's own bytes"
    );
    skopeo_copies_out(&w, "lib/multi", "v1").await;

    let mark = w.down().mark();
    let again = w.sync(&config).await;
    again.assert_code(0);
    assert!(again.stdout.contains("1 unchanged"), "{}", again.stdout);
    assert!(
        image_uploads(&w.down().since(mark)).is_empty(),
        "nothing uploaded when in sync"
    );

    // Validation: single takes exactly one platform.
    let two = format!(
        "{{ source: \"{}\", platforms: [linux/arm64, linux/amd64], platforms_mode: single }}",
        w.image("lib/multi:v1")
    );
    let out = w.sync(&config_file(&w, "", &[two])).await;
    out.assert_code(2);
    assert!(out.stderr.contains("platforms_mode"), "{}", out.stderr);
}

/// Item 3: a target that allows exactly two path components refuses the upload POST for
/// `mirror/lib/app0` (404 NAME_UNKNOWN): the tag fails with a line naming the path and the keys
/// that change it, `check --connect` says the same before any sync, and the same images land
/// under their two-component upstream path without the prefix.
#[tokio::test(flavor = "multi_thread")]
async fn nested_repository_path_refused_names_the_keys() {
    let w = World::start(Proxied::Target).await;
    small_images(&w.upstream, 1).await;
    Quirk::TwoComponentNames.install(w.down());
    let config = config_file(&w, "  prefix: mirror\n", &[w.image("lib/app0:v1")]);

    let check = mirrorsync(&[
        "check",
        "--connect",
        "--config",
        &config.display().to_string(),
    ])
    .await;
    check.assert_code(1);
    let said = |text: &str| {
        text.contains("mirror/lib/app0")
            && text.contains("`prefix`")
            && text.contains("`target:`")
            && text.contains("two")
    };
    assert!(
        said(&check.stdout) || said(&check.stderr),
        "{}\n{}",
        check.stdout,
        check.stderr
    );

    let metrics = w.dir.path().join("metrics.prom");
    let out = sync_once_with_metrics_file(&config, &metrics).await;
    out.assert_code(1);
    assert!(said(failed_line(&out, "lib/app0:v1")), "{}", out.stdout);
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    assert!(
        text.contains("mirrorsync_run_tags_failed{reason=\"name_refused\"} 1"),
        "{text}"
    );

    let config = config_file(&w, "", &[w.image("lib/app0:v1")]);
    w.sync(&config).await.assert_code(0);
    assert_mirrored(&w, "lib/app0", "v1").await;
}

/// Item 3: upstream moved a tag the target keeps immutable (ECR's 400 TAG_INVALID): the tag
/// fails with the refusal said in words, and the metrics count it as `tag_immutable`, apart
/// from a tag that failed for another reason.
#[tokio::test(flavor = "multi_thread")]
async fn immutable_tag_moved_upstream_is_counted_apart() {
    let w = World::start(Proxied::Target).await;
    small_images(&w.upstream, 1).await;
    let config = config_file(&w, "", &[w.image("lib/app0:v1")]);
    w.sync(&config).await.assert_code(0);
    let old = head_manifest(&w.target, "lib/app0", "v1")
        .await
        .expect("mirrored");
    push_image(&w.upstream, "lib/app0", "v1", oci_image(800, 3_000)).await;
    Quirk::ImmutableTag {
        repo: "lib/app0".into(),
        tag: "v1".into(),
    }
    .install(w.down());
    let metrics = w.dir.path().join("metrics.prom");
    let config = config_file(&w, "", &[w.image("lib/app0:v1"), w.image("lib/gone:v1")]);
    let out = sync_once_with_metrics_file(&config, &metrics).await;
    out.assert_code(1);
    let line = failed_line(&out, "lib/app0:v1");
    assert!(
        line.contains("upstream moved") && line.contains("immutable") && line.contains(&old),
        "{line}"
    );
    failed_line(&out, "lib/gone:v1");
    assert_eq!(head_manifest(&w.target, "lib/app0", "v1").await, Some(old));
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    assert_promtool_clean(&text, "the metrics file");
    let value = |reason: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "mirrorsync_run_tags_failed{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_string)
    };
    assert_eq!(value("tag_immutable").as_deref(), Some("1"), "{text}");
    assert_eq!(value("other").as_deref(), Some("1"), "{text}");
}

/// A referrer manifest for the manifest `subject` (media type, digest, size), pushed by digest.
async fn push_referrer(
    reg: &Registry,
    repo: &str,
    subject: (&str, &str, usize),
    kind: &str,
) -> Listed {
    let empty = push_blob(reg, repo, b"{}")
        .await
        .with_media_type("application/vnd.oci.empty.v1+json");
    let blob = push_blob(reg, repo, kind.as_bytes())
        .await
        .with_media_type("application/octet-stream");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": kind,
        "config": empty.to_json(),
        "layers": [blob.to_json()],
        "subject": {"mediaType": subject.0, "digest": subject.1, "size": subject.2},
    });
    let bytes = serde_json::to_vec(&manifest).expect("json");
    let digest = push_manifest(reg, repo, &sha256_digest(&bytes), OCI_MANIFEST, &bytes).await;
    Listed {
        media_type: OCI_MANIFEST.into(),
        digest,
        size: bytes.len(),
        artifact_type: kind.into(),
    }
}

/// Item 6: an upstream whose referrers API answers in two pages (`Link: rel="next"`) has both
/// pages' referrers copied; a signature of an attestation (a referrer of a referrer, listed by
/// the API for the attestation) is copied too, and both subjects' fallback indexes at the target
/// (distribution has no referrers API) list them.
#[tokio::test(flavor = "multi_thread")]
async fn referrers_past_the_first_page_and_referrers_of_referrers() {
    let w = World::start(Proxied::Target).await;
    let up = Proxy::start(&w.upstream).await;
    let image = push_image(&w.upstream, "app/signed", "1.0", oci_image(900, 3_000)).await;
    let subject = (
        image.media_type.as_str(),
        image.digest.as_str(),
        image.manifest_bytes.len(),
    );
    let sig = push_referrer(
        &w.upstream,
        "app/signed",
        subject,
        "application/vnd.dev.cosign.artifact.sig.v1+json",
    )
    .await;
    let att = push_referrer(
        &w.upstream,
        "app/signed",
        subject,
        "application/vnd.in-toto+json",
    )
    .await;
    let att_subject = (OCI_MANIFEST, att.digest.as_str(), att.size);
    let att_sig = push_referrer(
        &w.upstream,
        "app/signed",
        att_subject,
        "application/vnd.dev.cosign.artifact.sig.v1+json",
    )
    .await;
    Quirk::ReferrersPaged {
        repo: "app/signed".into(),
        subject: image.digest.clone(),
        pages: vec![vec![sig.clone()], vec![att.clone()]],
    }
    .install(&up);
    Quirk::Referrers {
        subject: att.digest.clone(),
        referrers: vec![att_sig.clone()],
    }
    .install(&up);
    // A registry with the API lists no referrers as an empty index (404 means no API).
    for leaf in [&sig, &att_sig] {
        Quirk::Referrers {
            subject: leaf.digest.clone(),
            referrers: Vec::new(),
        }
        .install(&up);
    }
    let config = w.write(
        &ConfigYaml::to_registry(&w.target.host())
            .upstream(&up.host())
            .images(&[format!(
                "{{ source: \"{}/app/signed:1.0\", referrers: true }}",
                up.host()
            )]),
    );
    let out = w.sync(&config).await;
    out.assert_code(0);
    for listed in [&sig, &att, &att_sig] {
        assert_eq!(
            get_manifest(&w.target, "app/signed", &listed.digest).await,
            get_manifest(&w.upstream, "app/signed", &listed.digest).await,
            "referrer {} at the target",
            listed.digest
        );
        assert_image_complete(&w.target, "app/signed", &listed.digest).await;
    }
    let listed_at = |digest: &str| {
        let tag = format!("sha256-{}", digest.trim_start_matches("sha256:"));
        let target = &w.target;
        async move {
            let (bytes, _, _) = get_manifest(target, "app/signed", &tag)
                .await
                .expect("fallback tag");
            let index: serde_json::Value = serde_json::from_slice(&bytes).expect("index");
            index["manifests"]
                .as_array()
                .expect("manifests")
                .iter()
                .filter_map(|e| e["digest"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed_at(&image.digest).await,
        [sig.digest.clone(), att.digest.clone()]
    );
    assert_eq!(listed_at(&att.digest).await, vec![att_sig.digest.clone()]);
    let seen = up.seen();
    assert!(
        seen.iter()
            .any(|s| s.path.contains("/referrers/") && s.query == "page=2"),
        "second page read:\n{}",
        seen.dump()
    );
}
