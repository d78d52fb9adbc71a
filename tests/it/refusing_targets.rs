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

use common::*;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;

struct World {
    upstream: Registry,
    target: Registry,
    down: Proxy,
    dir: TempDir,
}

impl World {
    async fn new() -> World {
        let upstream = Registry::start().await;
        let target = Registry::start().await;
        let down = Proxy::start(&target).await;
        World {
            upstream,
            target,
            down,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A config from the upstream into the proxied target: `head` is YAML before `images:`
    /// under `target:` (two-space indented), `images` are YAML list items.
    fn config(&self, target_extra: &str, images: &[String]) -> PathBuf {
        let mut yaml = format!(
            "target:\n  registry: \"{}\"\n  insecure: true\n{target_extra}\
             registries:\n  \"{}\":\n    insecure: true\nimages:\n",
            self.down.host(),
            self.upstream.host()
        );
        for image in images {
            yaml.push_str(&format!("  - {image}\n"));
        }
        write_config(self.dir.path(), &yaml)
    }

    fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.upstream.host())
    }

    async fn sync(&self, config: &Path) -> Output {
        mirrorsync(&["sync", "--once", "--config", &config.display().to_string()]).await
    }
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
/// with the bytes, empty PUT. The refused blob is redone, no tag fails, no second refusal.
#[tokio::test(flavor = "multi_thread")]
async fn closing_put_with_a_body_refused_falls_back_to_the_docker_flow() {
    let w = World::new().await;
    let repos = small_images(&w.upstream, 3).await;
    Quirk::PutBodyRefused.install(&w.down);
    let images: Vec<String> = repos.iter().map(|r| w.image(&format!("{r}:v1"))).collect();
    let config = w.config("", &images);
    let metrics = w.dir.path().join("metrics.prom");
    let out = mirrorsync(&[
        "sync",
        "--once",
        "--config",
        &config.display().to_string(),
        "--metrics-file",
        &metrics.display().to_string(),
    ])
    .await;
    out.assert_code(0);
    for repo in &repos {
        assert_mirrored(&w, repo, "v1").await;
    }
    let seen = w.down.seen();
    let refused: Vec<&Seen> = seen.iter().filter(|s| s.status == 500).collect();
    assert_eq!(
        refused.len(),
        1,
        "one refusal teaches the host:\n{}",
        seen.dump()
    );
    assert!(refused[0].method == "PUT" && content_length(refused[0]) > 0);
    // After it, no PUT carries a body: each blob is POST, PATCH with the bytes, empty PUT.
    let after: Vec<&Seen> = seen
        .iter()
        .skip_while(|s| s.status != 500)
        .skip(1)
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
    let w = World::new().await;
    let image = push_image(
        &w.upstream,
        "lib/big",
        "v1",
        ImageSpec::new(Format::Oci, vec![layer(600, 700)]).big_layer(12 * MIB, 61),
    )
    .await;
    Quirk::ContentRangeRefused.install(&w.down);
    let config = w.config("  chunk_size: 5MiB\n", &[w.image("lib/big:v1")]);
    let out = w.sync(&config).await;
    out.assert_code(0);
    assert_mirrored(&w, "lib/big", "v1").await;
    let seen = w.down.seen();
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
