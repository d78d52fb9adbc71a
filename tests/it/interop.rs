//! User story: I mirror from and into registries that are not CNCF distribution (Nexus,
//! Artifactory, ECR, Harbor, a homelab registry behind nginx or with a self-signed certificate),
//! and mirrorsync copies as it does into distribution.
//!
//! Each test puts the quirk proxy ([`Quirk`]) in front of a real registry, upstream or target,
//! to imitate one documented behaviour of another registry, then runs a cold sync and a no-op
//! sync. Results are read back from the registries themselves (digests and blob bytes), never
//! through the proxy; the proxy's record of requests gives the counts each behaviour is about.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

/// A config mirroring `repo:tag` entries through `up` into `down`, same paths, with YAML lines
/// for `target:` (indented two spaces).
fn config_file(world: &World, images: &[&str], target_lines: &str) -> PathBuf {
    world.write(&world.config(images).target_lines(target_lines))
}

/// `repo:tag` is at the target with upstream's digest, every blob present with the right
/// bytes: read from the registries directly.
async fn assert_mirrored(upstream: &Registry, target: &Registry, repo: &str, tag: &str) {
    let want = head_manifest(upstream, repo, tag).await;
    assert!(want.is_some(), "{repo}:{tag} missing upstream");
    assert_eq!(
        head_manifest(target, repo, tag).await,
        want,
        "{repo}:{tag} digest at the target"
    );
    assert_image_complete(target, repo, tag).await;
}

/// The summary line's counts: "N tags: S synced, U unchanged, F failed, ...".
fn summary(out: &Output) -> (usize, usize, usize) {
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains(" synced, "))
        .unwrap_or_else(|| panic!("no summary line\n{}\n{}", out.stdout, out.stderr));
    let num = |word: &str| -> usize {
        let before = line.split(word).next().unwrap_or("");
        before
            .split_whitespace()
            .last()
            .and_then(|n| n.trim_matches(',').parse().ok())
            .unwrap_or_else(|| panic!("no {word:?} count in {line:?}"))
    };
    (num(" synced"), num(" unchanged"), num(" failed"))
}

/// Manifest GETs by tag (not by digest) in `repo`.
fn tag_gets(seen: &[Seen], repo: &str) -> usize {
    seen.iter()
        .filter(|s| s.is("GET", "manifests", Some(repo)))
        .filter(|s| !s.reference().unwrap_or_default().starts_with("sha256:"))
        .count()
}

/// Manifest GETs by digest in `repo`.
fn digest_gets(seen: &[Seen], repo: &str) -> usize {
    seen.iter()
        .filter(|s| s.is("GET", "manifests", Some(repo)))
        .filter(|s| s.reference().unwrap_or_default().starts_with("sha256:"))
        .count()
}

/// Upload requests (POST, PATCH, PUT, DELETE on `/blobs/uploads/`) for images (mirrorsync's own
/// state document is written every run).
fn upload_requests(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter()
        .filter(|s| s.path.contains("/blobs/uploads/") && !s.path.starts_with("/v2/mirrorsync/"))
        .collect()
}

/// Upload sessions the target registry keeps open on disk (distribution:
/// `<root>/docker/registry/v2/repositories/<name>/_uploads/<id>` with its `startedat` and
/// `data`; a cancelled session leaves only an empty `hashstates` tree behind).
fn uploads_left(target: &Registry) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "_uploads") {
                if let Ok(sessions) = std::fs::read_dir(&path) {
                    out.extend(
                        sessions
                            .flatten()
                            .map(|s| s.path())
                            .filter(|s| s.join("startedat").exists() || s.join("data").exists()),
                    );
                }
            } else if path.is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &target
            .storage_root()
            .join("docker/registry/v2/repositories"),
        &mut out,
    );
    out
}

/// Two single-platform images and an index over two more: the tags of an upstream corpus.
async fn seed_corpus(reg: &Registry, repo: &str) -> Vec<&'static str> {
    for (tag, seed) in [("a", 1u64), ("b", 2)] {
        push_image(
            reg,
            repo,
            tag,
            ImageSpec::new(
                Format::Oci,
                vec![layer(seed, 4096), layer(seed + 100, 2048)],
            ),
        )
        .await;
    }
    let amd = push_image(
        reg,
        repo,
        None,
        docker_image(3, 3000).platform("linux/amd64"),
    )
    .await;
    let arm = push_image(
        reg,
        repo,
        None,
        docker_image(4, 3000).platform("linux/arm64"),
    )
    .await;
    push_index(
        reg,
        repo,
        "multi",
        Format::Docker,
        &[
            (amd, Some(Platform::linux_amd64())),
            (arm, Some(Platform::parse("linux/arm64"))),
        ],
    )
    .await;
    vec!["a", "b", "multi"]
}

/// Items 1 (HEAD 404 without body, Nexus) and 1 (HEAD 405): the first HEAD fails, the rest of
/// the run resolves tags with GET, one per tag, whose bytes are also the copy's (no second GET
/// by digest); a missing tag is reported only after a GET said 404; the no-op run asks one HEAD
/// and one GET per tag and copies nothing.
#[tokio::test(flavor = "multi_thread")]
async fn manifest_head_that_does_not_work_falls_back_to_one_get_per_tag() {
    for quirk in [Quirk::HeadNotFound, Quirk::HeadNotAllowed] {
        let world = World::start(Proxied::Both).await;
        let tags = seed_corpus(&world.upstream, "lib/app").await;
        quirk.install(world.up());
        let mut images: Vec<String> = tags.iter().map(|t| format!("lib/app:{t}")).collect();
        images.push("lib/app:missing".into());
        let images: Vec<&str> = images.iter().map(String::as_str).collect();
        let config = config_file(&world, &images, "");

        let out = world.sync(&config).await;
        let seen = world.up().seen();
        eprintln!("{quirk:?} cold:\n{}", seen.dump());
        assert_eq!(summary(&out), (3, 0, 1), "{quirk:?}\n{}", out.stdout);
        let missing = failed_line(&out, "lib/app:missing");
        assert!(
            missing.contains("not found") && missing.contains("GET"),
            "{missing}"
        );
        for tag in &tags {
            assert_mirrored(&world.upstream, &world.target, "lib/app", tag).await;
        }
        // At most one HEAD per tag: the answer to the one sent in place of the ping stands once
        // the host is found to ask for no credentials, and HEAD is given up after a failure.
        let heads = seen.count("HEAD", "manifests", Some("lib/app"));
        assert!(
            heads <= images.len(),
            "{quirk:?}: HEAD is given up after the failures in flight, saw {heads}"
        );
        assert_eq!(tag_gets(&seen, "lib/app"), 4, "{quirk:?}: one GET per tag");
        // The index's two children are fetched by digest; the tags' own manifests are not.
        assert_eq!(digest_gets(&seen, "lib/app"), 2, "{quirk:?}");
        assert!(out.stderr.contains("manifest HEAD does not work here"));

        world.up().reset_log();
        let out = world.sync(&config).await;
        let seen = world.up().seen();
        assert_eq!(summary(&out), (0, 3, 1), "{quirk:?} no-op\n{}", out.stdout);
        assert!(
            seen.count("HEAD", "manifests", Some("lib/app")) <= images.len(),
            "{quirk:?} no-op:\n{}",
            seen.dump()
        );
        assert_eq!(tag_gets(&seen, "lib/app"), 4, "{quirk:?} no-op");
        assert_eq!(digest_gets(&seen, "lib/app"), 0, "{quirk:?} no-op");
        assert_eq!(seen.count("GET", "blobs", None), 0, "{quirk:?} no-op");
    }
}

/// Item 1, pre-flight: `check --connect` against a registry that does not answer manifest HEAD
/// (404 without a body, or 405) says ok for a tag the registry has (found in its tag list: no
/// pull spent) and "not found" only for the tag it lacks.
#[tokio::test(flavor = "multi_thread")]
async fn check_connect_tells_a_registry_without_head_from_a_missing_tag() {
    for quirk in [Quirk::HeadNotFound, Quirk::HeadNotAllowed] {
        let world = World::start(Proxied::Both).await;
        for (repo, seed) in [("lib/here", 91u64), ("lib/other", 92)] {
            push_image(&world.upstream, repo, "v1", oci_image(seed, 1000)).await;
        }
        quirk.install(world.up());
        let config = config_file(&world, &["lib/here:v1", "lib/other:gone"], "");
        let out = mirrorsync(&[
            "check",
            "--connect",
            "--config",
            &config.display().to_string(),
        ])
        .await;
        out.assert_code(1);
        let here = out
            .stdout
            .lines()
            .find(|l| l.contains("lib/here"))
            .unwrap_or_default();
        assert!(here.starts_with("ok"), "{quirk:?}\n{}", out.stdout);
        let other = out
            .stdout
            .lines()
            .find(|l| l.contains("lib/other"))
            .unwrap_or_default();
        assert!(
            other.starts_with("FAILED")
                && other.contains("not found")
                && other.contains("tag list"),
            "{quirk:?}\n{}",
            out.stdout
        );
        let seen = world.up().seen();
        assert_eq!(
            seen.count("GET", "manifests", None),
            0,
            "{quirk:?}: a pull was spent\n{}",
            seen.dump()
        );
    }
}

/// Item 1, quota: the GETs that replace a broken HEAD are pulls. With 3 pulls left and a
/// reserve of 1, two tags are resolved and the third is deferred instead of hitting a 429.
#[tokio::test(flavor = "multi_thread")]
async fn gets_that_replace_head_count_against_the_pull_quota() {
    let world = World::start(Proxied::Both).await;
    for (tag, seed) in [("t1", 11u64), ("t2", 12), ("t3", 13)] {
        push_image(&world.upstream, "lib/q", tag, oci_image(seed, 1000)).await;
    }
    Quirk::HeadNotFound.install(world.up());
    world.up().set_quota(Some(3));
    let config = world.write(
        &world
            .config(&["lib/q:t1", "lib/q:t2", "lib/q:t3"])
            .top("concurrency: 1\n")
            .upstream_lines("    rate_limit_reserve: 1\n"),
    );
    let out = world.sync(&config).await;
    let seen = world.up().seen();
    assert!(
        seen.iter().all(|s| s.status != 429),
        "no GET went over the quota:\n{}",
        seen.dump()
    );
    assert_eq!(world.up().quota(), Some(1), "the reserve is kept");
    assert!(
        out.stdout.contains("DEFERRED ") && out.stdout.contains("pull quota"),
        "{}",
        out.stdout
    );
    assert_eq!(tags(&world.target, "lib/q").await.len(), 2);
}

/// Item 2 (no Docker-Content-Digest: Artifactory, ECR, Nexus): one GET per changed manifest
/// (the tag GET's bytes are pushed, digest computed locally), and after an upstream change only
/// the changed tag is fetched, once.
#[tokio::test(flavor = "multi_thread")]
async fn no_content_digest_costs_one_get_per_changed_manifest() {
    let world = World::start(Proxied::Both).await;
    let tags = seed_corpus(&world.upstream, "lib/nd").await;
    Quirk::NoContentDigest.install(world.up());
    let images: Vec<String> = tags.iter().map(|t| format!("lib/nd:{t}")).collect();
    let images: Vec<&str> = images.iter().map(String::as_str).collect();
    let config = config_file(&world, &images, "");

    let out = world.sync(&config).await;
    let seen = world.up().seen();
    assert_eq!(summary(&out), (3, 0, 0), "{}", out.stdout);
    for tag in &tags {
        assert_mirrored(&world.upstream, &world.target, "lib/nd", tag).await;
    }
    assert_eq!(tag_gets(&seen, "lib/nd"), 3, "one GET per tag");
    assert_eq!(
        digest_gets(&seen, "lib/nd"),
        2,
        "only the index's children by digest:\n{}",
        seen.dump()
    );

    // No-op: the digest is only known from a GET; nothing else is fetched.
    world.up().reset_log();
    let out = world.sync(&config).await;
    let seen = world.up().seen();
    assert_eq!(summary(&out), (0, 3, 0), "{}", out.stdout);
    assert_eq!(tag_gets(&seen, "lib/nd"), 3);
    assert_eq!(digest_gets(&seen, "lib/nd"), 0);
    assert_eq!(seen.count("GET", "blobs", None), 0);

    // One tag moves upstream: it costs one GET, not two.
    push_image(&world.upstream, "lib/nd", "a", oci_image(77, 5000)).await;
    world.up().reset_log();
    let out = world.sync(&config).await;
    let seen = world.up().seen();
    assert_eq!(summary(&out), (1, 2, 0), "{}", out.stdout);
    assert_mirrored(&world.upstream, &world.target, "lib/nd", "a").await;
    assert_eq!(tag_gets(&seen, "lib/nd"), 3);
    assert_eq!(digest_gets(&seen, "lib/nd"), 0, "{}", seen.dump());
}

/// A signed schema 1 manifest (what old Docker Hub, Quay and Harbor tags serve).
fn schema1_manifest() -> Vec<u8> {
    br#"{
   "schemaVersion": 1,
   "name": "lib/old",
   "tag": "v1",
   "architecture": "amd64",
   "fsLayers": [{"blobSum": "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"}],
   "history": [{"v1Compatibility": "{\"id\":\"e45a5af57b00862e5ef5782a9925979a02ba2b12dff832fd0991335f4a11e5c5\"}"}],
   "signatures": [{"header": {"alg": "ES256"}, "signature": "c2lnbmF0dXJl", "protected": "e30"}]
}"#
    .to_vec()
}

/// Item 3 (schema 1): the error says so; when the HEAD's media type says schema 1 no GET is
/// made, in this run or the next; a schema 1 manifest met on a GET is named too.
#[tokio::test(flavor = "multi_thread")]
async fn schema1_is_named_and_not_pulled() {
    let world = World::start(Proxied::Both).await;
    push_image(&world.upstream, "lib/old", "good", oci_image(5, 500)).await;
    let body = schema1_manifest();
    let digest = sha256_digest(&body);
    let prettyjws = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    let len = body.len().to_string();
    world.up().add(Rule::new(
        "HEAD /v2/lib/old/manifests/v1",
        Action::respond(
            200,
            &[
                ("Content-Type", prettyjws),
                ("Docker-Content-Digest", &digest),
                ("Content-Length", &len),
            ],
            "",
        ),
    ));
    world.up().add(Rule::new(
        "GET /v2/lib/old/manifests/v1",
        Action::respond(200, &[("Content-Type", prettyjws)], body.clone()),
    ));
    // Another tag whose HEAD says nothing useful: the GET finds schema 1.
    world.up().add(Rule::new(
        "HEAD /v2/lib/old/manifests/v2",
        Action::respond(200, &[("Content-Type", "application/json")], ""),
    ));
    world.up().add(Rule::new(
        "GET /v2/lib/old/manifests/v2",
        Action::respond(200, &[("Content-Type", prettyjws)], body.clone()),
    ));
    let config = config_file(&world, &["lib/old:v1", "lib/old:v2", "lib/old:good"], "");
    for run in ["cold", "again"] {
        world.up().reset_log();
        let out = world.sync(&config).await;
        let seen = world.up().seen();
        for tag in ["lib/old:v1", "lib/old:v2"] {
            let line = failed_line(&out, tag);
            assert!(
                line.contains("schema 1") && line.contains("digests preserved"),
                "{run}: {line}"
            );
            assert!(!line.contains("hashes to"), "{run}: {line}");
        }
        assert_eq!(
            seen.iter()
                .filter(|s| s.method == "GET" && s.path == "/v2/lib/old/manifests/v1")
                .count(),
            0,
            "{run}: no pull for a HEAD that says schema 1"
        );
        assert_mirrored(&world.upstream, &world.target, "lib/old", "good").await;
    }
}

/// An image with one `size`-byte generated layer and a small one.
async fn big_image(reg: &Registry, repo: &str, tag: &str, size: u64, seed: u64) -> PushedImage {
    push_image(reg, repo, tag, oci_image(seed, 700).big_layer(size, seed)).await
}

/// Item 4 (ECR answers PATCH with 201) and `target.chunk_size`: a 20 MiB layer in 6 MiB chunks
/// is four PATCHes (6+6+6+2), each answered 201, then the PUT; the image lands whole. With the
/// default chunk size the same layer is one PUT with the body.
#[tokio::test(flavor = "multi_thread")]
async fn patch_answered_201_and_chunk_size_setting() {
    let world = World::start(Proxied::Both).await;
    big_image(&world.upstream, "lib/big", "v1", 20 * MIB, 21).await;
    Quirk::PatchCreated.install(world.down());
    let config = config_file(&world, &["lib/big:v1"], "  chunk_size: 6MiB\n");
    let out = world.sync(&config).await;
    out.assert_code(0);
    assert_mirrored(&world.upstream, &world.target, "lib/big", "v1").await;
    let seen = world.down().seen();
    let patches: Vec<u64> = seen
        .iter()
        .filter(|s| s.method == "PATCH")
        .map(|s| {
            assert_eq!(s.status, 201);
            s.header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(
        patches,
        vec![6 * MIB, 6 * MIB, 6 * MIB, 2 * MIB],
        "{}",
        seen.dump()
    );
    assert!(uploads_left(&world.target).is_empty());

    world.down().reset_log();
    let out = world.sync(&config).await;
    assert_eq!(summary(&out), (0, 1, 0));
    assert!(upload_requests(&world.down().seen()).is_empty());

    // Default chunk size: the 20 MiB layer goes up as the body of one PUT.
    let other = World::start(Proxied::Both).await;
    big_image(&other.upstream, "lib/big", "v1", 20 * MIB, 21).await;
    let out = other.sync(&config_file(&other, &["lib/big:v1"], "")).await;
    out.assert_code(0);
    let seen = other.down().seen();
    assert_eq!(seen.iter().filter(|s| s.method == "PATCH").count(), 0);
    assert!(
        seen.iter()
            .any(|s| s.method == "PUT"
                && s.header("content-length") == Some(&(20 * MIB).to_string()))
    );

    // Validation: below ECR's 5 MiB floor is a config error naming the key.
    let bad = config_file(&world, &["lib/big:v1"], "  chunk_size: 1MiB\n");
    let out = world.sync(&bad).await;
    out.assert_code(2);
    assert!(out.stderr.contains("target.chunk_size"), "{}", out.stderr);
}

/// Item 5: behind a 10 MiB body limit with a 5 MiB minimum part, a 20 MiB and a 70 MiB layer
/// land: each 413 halves the chunk size (never below 5 MiB) for the rest of the run, and the
/// blob restarts; no session is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn body_limit_413_halves_chunks_down_to_five_mib() {
    let world = World::start(Proxied::Both).await;
    big_image(&world.upstream, "lib/huge", "small", 20 * MIB, 31).await;
    big_image(&world.upstream, "lib/huge", "large", 70 * MIB, 32).await;
    Quirk::BodyLimit {
        max_body: 10 * MIB,
        min_part: 5 * MIB,
    }
    .install(world.down());
    let config = config_file(&world, &["lib/huge:small", "lib/huge:large"], "");
    let started = Instant::now();
    let out = world.sync(&config).await;
    out.assert_code(0);
    eprintln!("cold sync behind a 10 MiB limit: {:.1?}", started.elapsed());
    for tag in ["small", "large"] {
        assert_mirrored(&world.upstream, &world.target, "lib/huge", tag).await;
    }
    let seen = world.down().seen();
    let refused = seen.iter().filter(|s| s.status == 413).count();
    let bodies: Vec<(String, u64, u16)> = seen
        .iter()
        .filter(|s| matches!(s.method.as_str(), "PATCH" | "PUT"))
        .map(|s| {
            (
                s.method.clone(),
                s.header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                s.status,
            )
        })
        .collect();
    eprintln!("413s: {refused}; bodies: {bodies:?}");
    assert!(
        (1..=4).contains(&refused),
        "a few 413s teach the size: {refused}"
    );
    assert!(
        bodies
            .iter()
            .filter(|(_, _, status)| *status != 413)
            .all(|(_, n, _)| *n <= 10 * MIB),
        "every accepted body is within the limit: {bodies:?}"
    );
    assert!(
        seen.iter().all(|s| s.status != 400),
        "no part below 5 MiB but the last:\n{}",
        seen.dump()
    );
    let upstream_gets = world.up().seen().count("GET", "blobs", None);
    eprintln!("upstream blob GETs (restarts included): {upstream_gets}");
    assert!(uploads_left(&world.target).is_empty());

    world.down().reset_log();
    let out = world.sync(&config).await;
    assert_eq!(summary(&out), (0, 2, 0));
    assert!(upload_requests(&world.down().seen()).is_empty());
}

/// Issue 19 item 6: behind a 10 MiB body limit (nginx's 413) with a 5 MiB minimum part, a
/// 12 MiB layer sent as one body is refused, and the upload goes on in the same session from
/// the refused bytes, in 6 MiB chunks: the upstream registry's own access log shows each blob
/// pulled once, and the image lands whole with no session left behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_413_goes_on_in_smaller_chunks_without_pulling_the_blob_again() {
    let world = World::start(Proxied::Both).await;
    let image = big_image(&world.upstream, "lib/huge", "v1", 12 * MIB, 33).await;
    Quirk::BodyLimit {
        max_body: 10 * MIB,
        min_part: 5 * MIB,
    }
    .install(world.down());
    let config = config_file(&world, &["lib/huge:v1"], "");
    let pulls_before = blob_pulls(&world.upstream).await;
    let out = world.sync(&config).await;
    out.assert_code(0);
    assert_mirrored(&world.upstream, &world.target, "lib/huge", "v1").await;
    let seen = world.down().seen();
    let refused: Vec<(String, u64)> = seen
        .iter()
        .filter(|s| s.status == 413)
        .map(|s| {
            let length = s.header("content-length").and_then(|v| v.parse().ok());
            (s.method.clone(), length.unwrap_or(0))
        })
        .collect();
    assert_eq!(
        refused,
        vec![("PUT".to_string(), 12 * MIB)],
        "the whole blob refused once; then 6 MiB chunks pass"
    );
    let patches: Vec<u64> = seen
        .iter()
        .filter(|s| s.method == "PATCH" && s.status == 202)
        .filter_map(|s| s.header("content-length").and_then(|v| v.parse().ok()))
        .collect();
    assert_eq!(
        patches,
        vec![6 * MIB, 6 * MIB],
        "the rest went up in halves"
    );
    let pulls = blob_pulls(&world.upstream).await - pulls_before;
    assert_eq!(
        pulls,
        image.blobs.len(),
        "each blob pulled once from upstream (the layer was not pulled again after the 413s)"
    );
    let sessions = seen
        .iter()
        .filter(|s| s.method == "POST" && s.path.contains("/lib/huge/blobs/uploads/"))
        .count();
    assert_eq!(sessions, image.blobs.len(), "one upload session per blob");
    assert!(uploads_left(&world.target).is_empty());
}

/// Blob GETs answered 200 in the registry's own access log (the harness's seeding excluded).
async fn blob_pulls(reg: &Registry) -> usize {
    reg.access_log()
        .await
        .iter()
        .filter(|a| {
            !a.is_harness() && a.method == "GET" && a.kind() == Some("blobs") && a.status == 200
        })
        .count()
}

/// Item 6 (mount refused with 202: Harbor across projects, ECR): the session the 202 opened is
/// used for the blob, and no second mount is tried this run.
#[tokio::test(flavor = "multi_thread")]
async fn refused_mount_session_is_used_and_not_asked_again() {
    let world = World::start(Proxied::Both).await;
    let layers = vec![layer(41, 3000), layer(42, 4000), layer(43, 5000)];
    push_image(
        &world.upstream,
        "team-a/app",
        "v1",
        ImageSpec::new(Format::Oci, layers.clone()).label("team", "a"),
    )
    .await;
    push_image(
        &world.upstream,
        "team-b/app",
        "v1",
        ImageSpec::new(Format::Oci, layers).label("team", "b"),
    )
    .await;
    Quirk::MountRefused.install(world.down());
    let config = world.write(
        &world
            .config(&["team-a/app:v1", "team-b/app:v1"])
            .top("concurrency: 1\n"),
    );
    let out = world.sync(&config).await;
    out.assert_code(0);
    assert_mirrored(&world.upstream, &world.target, "team-a/app", "v1").await;
    assert_mirrored(&world.upstream, &world.target, "team-b/app", "v1").await;
    let seen = world.down().seen();
    let mounts = seen
        .iter()
        .filter(|s| s.method == "POST" && s.query.contains("mount="))
        .count();
    let posts_b = seen
        .iter()
        .filter(|s| s.method == "POST" && s.path == "/v2/team-b/app/blobs/uploads/")
        .count();
    let deletes = seen.iter().filter(|s| s.method == "DELETE").count();
    eprintln!("{}", seen.dump());
    assert_eq!(mounts, 1, "one mount attempt, then none");
    // team-b needs 4 blobs: its config (new) and 3 shared layers. The refused mount's session
    // carries the first shared layer, so 4 POSTs in all (the mount one included), not 5.
    assert_eq!(posts_b, 4);
    assert_eq!(deletes, 0, "the refused mount's session is not thrown away");
    assert!(uploads_left(&world.target).is_empty());

    world.down().reset_log();
    let out = world.sync(&config).await;
    assert_eq!(summary(&out), (0, 2, 0));
    assert!(upload_requests(&world.down().seen()).is_empty());
}

/// Item 7: upload `Location` relative, on another host:port, and carrying a query (`_state`,
/// as distribution sends it): chunked and single uploads work.
#[tokio::test(flavor = "multi_thread")]
async fn upload_location_relative_other_host_and_with_query() {
    for style in ["relative", "other-host"] {
        let world = World::start(Proxied::Both).await;
        big_image(&world.upstream, "lib/loc", "v1", 12 * MIB, 51).await;
        let side = Proxy::start(&world.target).await;
        match style {
            "relative" => Quirk::LocationRelative.install(world.down()),
            _ => Quirk::LocationOtherHost(side.host()).install(world.down()),
        };
        let config = config_file(&world, &["lib/loc:v1"], "  chunk_size: 5MiB\n");
        let out = world.sync(&config).await;
        out.assert_code(0);
        assert_mirrored(&world.upstream, &world.target, "lib/loc", "v1").await;
        let down = world.down().seen();
        let elsewhere = side.seen();
        let location = down
            .iter()
            .find(|s| s.method == "POST")
            .map(|s| s.status)
            .unwrap_or(0);
        assert_eq!(location, 202);
        match style {
            "relative" => {
                assert!(down.iter().any(|s| s.method == "PATCH"));
                assert!(elsewhere.is_empty());
            }
            _ => {
                let patches: Vec<&Seen> =
                    elsewhere.iter().filter(|s| s.method == "PATCH").collect();
                assert_eq!(
                    patches.len(),
                    3,
                    "12 MiB in 5 MiB chunks, at the other host"
                );
                assert!(
                    patches.iter().all(|s| s.query.contains("_state=")),
                    "the Location's own query is kept"
                );
                assert!(elsewhere.iter().any(|s| s.method == "PUT"
                    && s.query.contains("_state=")
                    && s.query.contains("digest=")));
            }
        }
        let out = world.sync(&config).await;
        assert_eq!(summary(&out), (0, 1, 0), "{style}");
    }
}

/// Issue 14 item 6: a copy cut off at the grace period leaves no upload session at the target
/// (the run cancels what it abandoned); a failed upload does not either.
#[tokio::test(flavor = "multi_thread")]
async fn abandoned_upload_sessions_are_cancelled() {
    // Cut off: the upstream blob trickles; the run stops after 2 s with a 1 s grace.
    let world = World::start(Proxied::Both).await;
    big_image(&world.upstream, "lib/slow", "v1", 30 * MIB, 61).await;
    world.up().add(Rule::new(
        "GET /v2/lib/slow/blobs/*",
        Action::Throttle(2 * MIB),
    ));
    let config = config_file(&world, &["lib/slow:v1"], "  chunk_size: 5MiB\n");
    let out = mirrorsync(&[
        "sync",
        "--once",
        "--max-duration",
        "2s",
        "--grace-period",
        "1s",
        "--config",
        &config.display().to_string(),
    ])
    .await;
    out.assert_code(3);
    let seen = world.down().seen();
    assert!(
        seen.iter().any(|s| s.method == "PATCH"),
        "the upload had started:\n{}",
        seen.dump()
    );
    assert!(seen.iter().any(|s| s.method == "DELETE" && s.status == 204));
    assert_eq!(uploads_left(&world.target), Vec::<PathBuf>::new());

    // Failed: the target refuses the final PUT.
    let world = World::start(Proxied::Both).await;
    big_image(&world.upstream, "lib/fail", "v1", 6 * MIB, 62).await;
    world.down().add(Rule::new(
        "PUT /v2/lib/fail/blobs/uploads/*",
        Action::status(400),
    ));
    let config = config_file(&world, &["lib/fail:v1"], "  chunk_size: 5MiB\n");
    let out = world.sync(&config).await;
    out.assert_code(1);
    eprintln!("{}", world.down().seen().dump());
    assert_eq!(uploads_left(&world.target), Vec::<PathBuf>::new());
}

/// A token answer with `access_token` only and no `expires_in` (GitLab, Quay and other
/// OAuth-style servers). Reports: <https://github.com/distribution/distribution/pull/979>
/// (`expires_in` optional, 60 s default).
fn access_token_only(body: &[u8]) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        let token = map.remove("token");
        map.remove("expires_in");
        map.remove("issued_at");
        if let Some(token) = token {
            map.insert("access_token".into(), token);
        }
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Item 8: a token server on another host (`localhost` vs the registry's `127.0.0.1`) that
/// answers `access_token` only without `expires_in`, and fails twice with 503: the requests are
/// retried, no credentials are sent when none are configured, and the sync completes.
#[tokio::test(flavor = "multi_thread")]
async fn token_server_elsewhere_flaky_and_oauth_shaped() {
    // The harness seeds as a user; mirrorsync has no credentials (anonymous pull).
    let token_server = TokenServer::start(vec![("seed".into(), "seedpw".into())], true);
    let token_base = token_server.realm().trim_end_matches("/token").to_string();
    let token_proxy = Proxy::start_to(Some(token_base)).await;
    let realm = format!("http://localhost:{}/token", token_proxy.port());
    let upstream = Registry::start_with_realm(
        RegistryOptions {
            token: Some(&token_server),
            ..Default::default()
        },
        Some(realm),
    )
    .await;
    seed_corpus(&upstream, "lib/tok").await;
    let target = Registry::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    token_proxy.add(Rule::new("GET /token*", Action::status(503)).first(2));
    token_proxy.add(Rule::new("GET /token*", Action::MapBody(access_token_only)));
    token_server.clear_requests();
    let mark = token_proxy.mark();
    let config = ConfigYaml::to_registry(&target.host())
        .upstream(&upstream.host())
        .images(&[
            upstream.image_ref("lib/tok", "a"),
            upstream.image_ref("lib/tok", "multi"),
        ])
        .write(dir.path());
    let metrics = dir.path().join("metrics.prom");
    let out = mirrorsync_with_env(
        &[
            "sync",
            "--once",
            "--config",
            &config.display().to_string(),
            "--metrics-file",
            &metrics.display().to_string(),
        ],
        &[("DOCKER_CONFIG", &dir.path().display().to_string())],
    )
    .await;
    out.assert_code(0);
    // The token requests are counted with the registry's own requests.
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    let registry = format!("registry=\"{}\"", upstream.host());
    let failed_token_requests = text.lines().find(|l| {
        l.starts_with("mirrorsync_http_requests_total{")
            && l.contains(&registry)
            && l.contains("method=\"GET\"")
            && l.contains("code=\"503\"")
    });
    assert_eq!(
        failed_token_requests.and_then(|l| l.rsplit(' ').next()),
        Some("2"),
        "{text}"
    );
    assert_mirrored(&upstream, &target, "lib/tok", "a").await;
    assert_mirrored(&upstream, &target, "lib/tok", "multi").await;
    let asked = token_proxy.since(mark);
    eprintln!("token requests:\n{}", asked.dump());
    assert_eq!(asked.iter().filter(|s| s.status == 503).count(), 2);
    assert!(asked.iter().filter(|s| s.status == 200).count() >= 1);
    assert!(
        asked.iter().all(|s| !s.has_authorization()),
        "no credentials to a realm when none are configured"
    );
    assert!(token_server.requests().iter().all(|r| !r.had_basic));

    let out = mirrorsync_with_env(
        &["sync", "--once", "--config", &config.display().to_string()],
        &[("DOCKER_CONFIG", &dir.path().display().to_string())],
    )
    .await;
    assert_eq!(summary(&out), (0, 2, 0), "{}", out.stderr);
}

/// Item 10: a homelab registry with a self-signed certificate marked CA:TRUE, given in
/// `ca_file`, is trusted; another self-signed certificate in `ca_file` is not.
#[tokio::test(flavor = "multi_thread")]
async fn self_signed_ca_true_certificate_in_ca_file() {
    let cert = TestCa::self_signed();
    let upstream = Registry::start().await;
    push_image(&upstream, "lib/home", "v1", oci_image(71, 2000)).await;
    let target = Registry::start_with(RegistryOptions {
        tls: Some(&cert),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config_with = |ca: &Path| {
        ConfigYaml::to_tls_registry(&target.host(), ca)
            .upstream(&upstream.host())
            .images(&[upstream.image_ref("lib/home", "v1")])
            .write(dir.path())
    };
    let other = TestCa::self_signed();
    let out = mirrorsync(&[
        "sync",
        "--once",
        "--config",
        &config_with(&other.ca_pem_path()).display().to_string(),
    ])
    .await;
    out.assert_code(1);
    assert!(
        out.stdout.to_ascii_lowercase().contains("tls"),
        "{}",
        out.stdout
    );

    let config = config_with(&cert.ca_pem_path());
    let out = mirrorsync(&["sync", "--once", "--config", &config.display().to_string()]).await;
    out.assert_code(0);
    assert_mirrored(&upstream, &target, "lib/home", "v1").await;
    let out = mirrorsync(&["sync", "--once", "--config", &config.display().to_string()]).await;
    assert_eq!(summary(&out), (0, 1, 0));
}

/// Item 11: a plain-HTTP registry configured without `insecure: true` fails at once (no
/// retries) with a message naming the host and the setting; a `registries:` entry no image
/// uses (`localhost:P` for `127.0.0.1:P`) is warned about at load.
#[tokio::test(flavor = "multi_thread")]
async fn plain_http_where_tls_expected_fails_fast_and_typos_are_warned() {
    let upstream = Registry::start().await;
    push_image(&upstream, "lib/plain", "v1", oci_image(81, 1000)).await;
    let target = Registry::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ConfigYaml::to_registry(&target.host())
        .upstream(&format!("localhost:{}", upstream.port()))
        .images(&[upstream.image_ref("lib/plain", "v1")])
        .write(dir.path());
    let started = Instant::now();
    let out = mirrorsync(&["sync", "--once", "--config", &config.display().to_string()]).await;
    let took = started.elapsed();
    out.assert_code(1);
    let line = failed_line(&out, "lib/plain:v1");
    assert!(
        line.contains(&upstream.host()) && line.contains("insecure: true"),
        "{line}"
    );
    assert!(!out.stderr.contains("retrying"), "{}", out.stderr);
    assert!(took < Duration::from_secs(5), "failed at once: {took:?}");
    assert!(
        out.stderr
            .contains(&format!("localhost:{}", upstream.port()))
            && out.stderr.contains("not used by any image"),
        "{}",
        out.stderr
    );
}

/// A referrer manifest (an OCI 1.1 artifact) for `subject`, pushed by digest only: an empty
/// config and one layer, `artifactType` set, `subject` naming the image.
pub(crate) async fn push_referrer(
    reg: &Registry,
    repo: &str,
    subject: &PushedImage,
    artifact_type: &str,
    payload: &[u8],
) -> Listed {
    let empty = push_blob(reg, repo, b"{}")
        .await
        .with_media_type("application/vnd.oci.empty.v1+json");
    let blob = push_blob(reg, repo, payload)
        .await
        .with_media_type("application/octet-stream");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty.to_json(),
        "layers": [blob.to_json()],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.manifest_bytes.len()},
    });
    let bytes = serde_json::to_vec(&manifest).expect("json");
    let digest = push_manifest(reg, repo, &sha256_digest(&bytes), OCI_MANIFEST, &bytes).await;
    Listed {
        media_type: OCI_MANIFEST.into(),
        digest,
        size: bytes.len(),
        artifact_type: artifact_type.into(),
    }
}

/// `images` with `referrers: true`, through `up` straight into the target (no `down`).
fn referrers_config(w: &World, images: &[&str]) -> PathBuf {
    let items: Vec<String> = images
        .iter()
        .map(|image| format!("{{ source: \"{}\", referrers: true }}", w.image(image)))
        .collect();
    w.write(
        &ConfigYaml::to_registry(&w.target.host())
            .upstream(&w.up().host())
            .images(&items),
    )
}

/// An upstream with the OCI referrers API: the referrers it lists are planned, copied by digest
/// with their blobs, and listed in the `sha256-<hex>` fallback index at a target without the
/// API (distribution 2.8), next to what that index listed already. A no-op run GETs no
/// manifest.
#[tokio::test(flavor = "multi_thread")]
async fn referrers_api_upstream_into_a_target_without_it() {
    let w = World::start(Proxied::Both).await;
    let image = push_image(&w.upstream, "app/signed", "1.0", oci_image(71, 3_000)).await;
    let sig = push_referrer(
        &w.upstream,
        "app/signed",
        &image,
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        b"signature",
    )
    .await;
    let sbom = push_referrer(
        &w.upstream,
        "app/signed",
        &image,
        "application/spdx+json",
        b"{\"spdxVersion\":\"SPDX-2.3\"}",
    )
    .await;
    // The target's fallback index already lists another referrer: it must stay.
    let other = push_referrer(
        &w.target,
        "app/signed",
        &image,
        "application/vnd.example.other",
        b"other",
    )
    .await;
    let hex = image.digest.trim_start_matches("sha256:");
    let fallback_tag = format!("sha256-{hex}");
    let existing = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": other.media_type, "digest": other.digest, "size": other.size, "artifactType": other.artifact_type}],
    });
    push_manifest(
        &w.target,
        "app/signed",
        &fallback_tag,
        OCI_INDEX,
        &serde_json::to_vec(&existing).expect("json"),
    )
    .await;
    Quirk::Referrers {
        subject: image.digest.clone(),
        referrers: vec![sig.clone(), sbom.clone()],
    }
    .install(w.up());
    let config = referrers_config(&w, &["app/signed:1.0"]);

    let plan = mirrorsync(&["plan", "--config", &config.display().to_string()]).await;
    plan.assert_code(0);
    // Each referrer's payload is to copy; its empty config is at the target already.
    for listed in [&sig, &sbom] {
        let line = plan
            .stdout
            .lines()
            .find(|l| l.contains(&format!("-> app/signed@{} ", listed.digest)))
            .unwrap_or_else(|| {
                panic!(
                    "plan does not list referrer {}\n{}",
                    listed.digest, plan.stdout
                )
            });
        assert!(
            line.starts_with("new: ") && line.contains("1 blob to copy"),
            "{line}"
        );
    }
    assert!(
        plan.stdout.contains("3 tags: 3 to sync"),
        "plan counts the image and its two referrers\n{}",
        plan.stdout
    );
    assert!(
        head_manifest(&w.target, "app/signed", &sig.digest)
            .await
            .is_none(),
        "plan wrote"
    );

    let cold = w.sync(&config).await;
    cold.assert_code(0);
    assert_eq!(summary(&cold), (3, 0, 0), "{}", cold.stdout);
    for listed in [&sig, &sbom] {
        let up = get_manifest(&w.upstream, "app/signed", &listed.digest).await;
        let down = get_manifest(&w.target, "app/signed", &listed.digest).await;
        assert!(
            down.is_some(),
            "referrer {} missing at the target",
            listed.digest
        );
        assert_eq!(down, up, "referrer {} bytes at the target", listed.digest);
        assert_image_complete(&w.target, "app/signed", &listed.digest).await;
    }
    let (bytes, media_type, _) = get_manifest(&w.target, "app/signed", &fallback_tag)
        .await
        .expect("fallback tag at the target");
    assert_eq!(media_type, OCI_INDEX);
    let index: serde_json::Value = serde_json::from_slice(&bytes).expect("fallback index json");
    let entries = index["manifests"].as_array().expect("manifests");
    let digests: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["digest"].as_str())
        .collect();
    assert_eq!(
        digests,
        [
            other.digest.as_str(),
            sig.digest.as_str(),
            sbom.digest.as_str()
        ]
    );
    assert_eq!(
        entries[1]["artifactType"], sig.artifact_type,
        "artifactType kept"
    );

    let mark = w.up().mark();
    let again = w.sync(&config).await;
    again.assert_code(0);
    assert_eq!(summary(&again), (0, 3, 0), "{}", again.stdout);
    let seen = w.up().since(mark);
    assert_eq!(
        tag_gets(&seen, "app/signed") + digest_gets(&seen, "app/signed"),
        0,
        "a no-op run GETs no manifest upstream"
    );
    assert_eq!(
        get_manifest(&w.target, "app/signed", &fallback_tag)
            .await
            .map(|m| m.0),
        Some(bytes),
        "the fallback index is left as it is"
    );
}

/// An upstream without the referrers API (distribution 2.8: 404) is asked once per run, then
/// its `sha256-<hex>` fallback tags are used as before.
#[tokio::test(flavor = "multi_thread")]
async fn referrers_api_missing_upstream_is_asked_once_per_run() {
    let w = World::start(Proxied::Both).await;
    let mut fallbacks = Vec::new();
    for (i, tag) in ["1.0", "2.0"].into_iter().enumerate() {
        let image = push_image(
            &w.upstream,
            "app/plain",
            tag,
            oci_image(80 + i as u64, 2_000),
        )
        .await;
        let sig = push_referrer(
            &w.upstream,
            "app/plain",
            &image,
            "application/x.sig",
            tag.as_bytes(),
        )
        .await;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": sig.media_type, "digest": sig.digest, "size": sig.size}],
        });
        let fallback = format!("sha256-{}", image.digest.trim_start_matches("sha256:"));
        push_manifest(
            &w.upstream,
            "app/plain",
            &fallback,
            OCI_INDEX,
            &serde_json::to_vec(&index).expect("json"),
        )
        .await;
        fallbacks.push((fallback, sig));
    }
    let config = referrers_config(&w, &["app/plain:1.0", "app/plain:2.0"]);
    let cold = w.sync(&config).await;
    cold.assert_code(0);
    let asked = w
        .up()
        .seen()
        .iter()
        .filter(|s| s.path.contains("/referrers/"))
        .count();
    assert_eq!(asked, 1, "the missing referrers API is asked once per run");
    for (fallback, sig) in &fallbacks {
        assert_eq!(
            head_manifest(&w.target, "app/plain", fallback).await,
            head_manifest(&w.upstream, "app/plain", fallback).await,
            "{fallback} copied as is"
        );
        assert!(
            head_manifest(&w.target, "app/plain", &sig.digest)
                .await
                .is_some()
        );
        assert_image_complete(&w.target, "app/plain", fallback).await;
    }
}
