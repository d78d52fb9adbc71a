//! User story: my registry is not CNCF distribution, and nobody modelled a quirk on it. Whatever
//! podman and Docker can push there and pull from there, mirrorsync can too; what it cannot store
//! is said in words, and the next run finds what landed in sync.
//!
//! The witness is a registry implementation we did not write and never imitated
//! ([`OtherRegistry`]: `container-registry` from crates.io). It refuses a body on the closing
//! upload `PUT` and manifests pushed by digest, routes exactly two path components, appends every
//! `PATCH` whatever its `Content-Range`, and has no upload status, cancel or manifest `DELETE`.
//! Seeding it goes through skopeo; results are read back with skopeo (which checks every digest
//! it reads) and the harness's own client.

use crate::common;

use std::path::{Path, PathBuf};

use common::*;

const MIB: usize = 1 << 20;

/// `auth:` lines for the other registry's credentials, the password in a file under `dir`.
fn auth_lines(dir: &Path, indent: &str) -> String {
    let file = dir.join("other-registry-password");
    std::fs::write(&file, OTHER_PASSWORD).expect("write password file");
    format!(
        "{indent}auth: {{ username: {OTHER_USER}, password_file: \"{}\" }}\n",
        file.display()
    )
}

/// The manifest bytes under `repo:tag` at the other registry, as skopeo reads them.
async fn raw_manifest(other: &OtherRegistry, repo: &str, tag: &str) -> Vec<u8> {
    skopeo_inspect_raw(
        &format!("docker://{}/{repo}:{tag}", other.host()),
        &["--tls-verify=false", &format!("--creds={}", creds())],
    )
    .await
}

/// skopeo copies `repo:tag` out of `host` (with `creds`, `user:password`) into an OCI layout
/// under `dir`, reading and checking every blob.
async fn skopeo_copies_out(dir: &Path, host: &str, creds: Option<&str>, repo: &str, tag: &str) {
    let dest = format!(
        "oci:{}",
        dir.join(format!("out-{}-{tag}", repo.replace('/', "_")))
            .display()
    );
    let src = format!("docker://{host}/{repo}:{tag}");
    let mut args = vec!["copy".to_string(), "--src-tls-verify=false".to_string()];
    args.extend(creds.map(|c| format!("--src-creds={c}")));
    args.extend([src.clone(), dest]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = skopeo(&args).await;
    assert_eq!(out.code, Some(0), "skopeo copy {src}: {}", out.stderr);
}

/// `user:password` of the other registry.
fn creds() -> String {
    format!("{OTHER_USER}:{OTHER_PASSWORD}")
}

/// Pushes `lib/app:oci` (a 3 MiB layer and a small one, from `seed` and `seed + 1`) and
/// `lib/app:docker` (Docker schema 2, from `seed + 2`); returns them.
async fn single_platform(reg: &Registry, seed: u64) -> (PushedImage, PushedImage) {
    let layers = vec![layer(seed, 3 * MIB), layer(seed + 1, 20_000)];
    let oci = push_image(reg, "lib/app", "oci", ImageSpec::new(Format::Oci, layers)).await;
    let docker = push_image(reg, "lib/app", "docker", docker_image(seed + 2, 50_000)).await;
    (oci, docker)
}

/// Pushes `repo:v1`, an OCI index of a linux/amd64 and a linux/arm64 image (layers from
/// `seed` and `seed + 1`); returns the two images.
async fn two_platforms(reg: &Registry, repo: &str, seed: u64) -> (PushedImage, PushedImage) {
    let amd = push_image(reg, repo, None, oci_image(seed, 5_000)).await;
    let arm = push_image(
        reg,
        repo,
        None,
        oci_image(seed + 1, 6_000).platform("linux/arm64"),
    )
    .await;
    let children = [
        (amd.clone(), amd.platform.clone()),
        (arm.clone(), arm.platform.clone()),
    ];
    push_index(reg, repo, "v1", Format::Oci, &children).await;
    (amd, arm)
}

/// Pushes `lib/big:v1` (one 12 MiB layer from `seed`) and writes a config that syncs it into
/// `target_host` (the other registry, or a proxy in front of it) in 5 MiB chunks.
async fn big_in_chunks(
    upstream: &Registry,
    target_host: &str,
    dir: &Path,
    seed: u64,
) -> (PushedImage, PathBuf) {
    let img = push_image(
        upstream,
        "lib/big",
        "v1",
        ImageSpec::new(Format::Oci, vec![layer(seed, 12 * MIB)]),
    )
    .await;
    let config = ConfigYaml::to_registry(target_host)
        .target_lines(&auth_lines(dir, "  "))
        .target_lines("  chunk_size: 5MiB\n")
        .upstream(&upstream.host())
        .images(&[format!("{}/lib/big:v1", upstream.host())])
        .write(dir);
    (img, config)
}

/// `mirrorsync sync --once --config <config>`.
async fn sync_once(config: &Path) -> Output {
    mirrorsync(&["sync", "--once", "--config", &config.display().to_string()]).await
}

/// A config mirroring `items` from `upstream` into the other registry, with its credentials.
fn config(dir: &Path, target: &OtherRegistry, upstream: &Registry, items: &[String]) -> PathBuf {
    ConfigYaml::to_registry(&target.host())
        .target_lines(&auth_lines(dir, "  "))
        .upstream(&upstream.host())
        .images(items)
        .write(dir)
}

/// Into it: single-platform OCI and Docker images land with upstream's digests and skopeo copies
/// them out; a multi-platform index fails alone, saying why and what to set; with one platform
/// and `platforms_mode: single` it lands as that platform's manifest; a second run is a no-op.
#[tokio::test(flavor = "multi_thread")]
async fn into_a_registry_we_never_imitated() {
    let upstream = Registry::start().await;
    let other = OtherRegistry::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (oci, docker) = single_platform(&upstream, 900).await;
    let (_, arm) = two_platforms(&upstream, "lib/multi", 903).await;
    let image = |r: &str| format!("{}/{r}", upstream.host());
    let items = [
        image("lib/app:oci"),
        image("lib/app:docker"),
        image("lib/multi:v1"),
    ];

    let out = sync_once(&config(dir.path(), &other, &upstream, &items)).await;
    out.assert_code(1);
    assert!(
        out.stdout
            .contains("3 tags: 2 synced, 0 unchanged, 1 failed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let line = failed_line(&out, "lib/multi:v1");
    assert!(
        line.contains("the target refuses manifests pushed by digest")
            && line.contains("`platforms:`"),
        "{line}"
    );
    for (tag, pushed) in [("oci", &oci), ("docker", &docker)] {
        let raw = raw_manifest(&other, "lib/app", tag).await;
        assert_eq!(
            raw, pushed.manifest_bytes,
            "lib/app:{tag}: upstream's bytes"
        );
        assert_eq!(sha256_digest(&raw), pushed.digest);
        skopeo_copies_out(dir.path(), &other.host(), Some(&creds()), "lib/app", tag).await;
    }
    // The 3 MiB layer through the harness's own client: every byte.
    let big = &oci.blobs[1];
    let body = other
        .client()
        .get(&format!("/v2/lib/app/blobs/{}", big.digest))
        .await
        .expect("blob GET")
        .bytes()
        .await
        .expect("blob body");
    assert_eq!(sha256_digest(&body), big.digest);

    // The same run again: nothing to copy for what landed.
    let again = sync_once(&config(dir.path(), &other, &upstream, &items[..2])).await;
    again.assert_code(0);
    assert!(
        again
            .stdout
            .contains("2 tags: 0 synced, 2 unchanged, 0 failed")
            && again.stdout.contains("0 blobs copied"),
        "{}",
        again.stdout
    );

    // One platform, stored as that platform's own manifest.
    let single = format!(
        "{{ source: \"{}\", platforms: [linux/arm64], platforms_mode: single }}",
        image("lib/multi:v1")
    );
    let out = sync_once(&config(dir.path(), &other, &upstream, &[single])).await;
    out.assert_code(0);
    assert_eq!(
        raw_manifest(&other, "lib/multi", "v1").await,
        arm.manifest_bytes
    );
    skopeo_copies_out(dir.path(), &other.host(), Some(&creds()), "lib/multi", "v1").await;
}

/// Once it has refused a manifest pushed by digest, the run's later multi-platform tags fail
/// in words before anything is pulled for their platforms (one tag at a time: the first tag's
/// refusal comes before the second starts).
#[tokio::test(flavor = "multi_thread")]
async fn after_one_refusal_later_multi_platform_tags_pull_nothing() {
    let upstream = Registry::start().await;
    let other = OtherRegistry::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    two_platforms(&upstream, "lib/multi", 930).await;
    two_platforms(&upstream, "lib/multi2", 940).await;
    let config = ConfigYaml::to_registry(&other.host())
        .top("concurrency: 1\n")
        .target_lines(&auth_lines(dir.path(), "  "))
        .upstream(&upstream.host())
        .images(&[
            format!("{}/lib/multi:v1", upstream.host()),
            format!("{}/lib/multi2:v1", upstream.host()),
        ])
        .write(dir.path());
    let mark = upstream.log_mark().await;
    let out = sync_once(&config).await;
    out.assert_code(1);
    for repo in ["lib/multi", "lib/multi2"] {
        let line = failed_line(&out, &format!("{repo}:v1"));
        assert!(
            line.contains("the target refuses manifests pushed by digest"),
            "{line}"
        );
    }
    let line = failed_line(&out, "lib/multi2:v1");
    assert!(line.contains("refused earlier in this run"), "{line}");
    let log = upstream.access_log_since(mark).await;
    assert!(log.blob_gets(Some("lib/multi")) > 0, "{}", log.dump());
    assert_eq!(log.blob_gets(Some("lib/multi2")), 0, "{}", log.dump());
    assert_eq!(
        log.manifest_gets(Some("lib/multi2")),
        1,
        "the index alone: {}",
        log.dump()
    );
}

/// It routes exactly two path components: under `prefix: mirror` (`mirror/lib/app`) its
/// upload POST answers 404. `check --connect` says so before a sync, naming the path and the
/// keys that change it; the sync fails the tags with the same words.
#[tokio::test(flavor = "multi_thread")]
async fn a_third_path_component_is_refused_in_words() {
    let upstream = Registry::start().await;
    let other = OtherRegistry::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    single_platform(&upstream, 960).await;
    let config = ConfigYaml::to_registry(&other.host())
        .target_lines(&auth_lines(dir.path(), "  "))
        .target_lines("  prefix: mirror\n")
        .upstream(&upstream.host())
        .images(&[format!("{}/lib/app:oci", upstream.host())])
        .write(dir.path());
    let said = |text: &str| {
        text.contains("mirror/lib/app") && text.contains("`prefix`") && text.contains("`target:`")
    };
    let check = mirrorsync(&[
        "check",
        "--connect",
        "--config",
        &config.display().to_string(),
    ])
    .await;
    check.assert_code(1);
    assert!(said(&check.stdout), "{}\n{}", check.stdout, check.stderr);
    let out = sync_once(&config).await;
    out.assert_code(1);
    assert!(said(failed_line(&out, "lib/app:oci")), "{}", out.stdout);
}

/// Out of it: images that skopeo pushed there (its POST, PATCH, empty PUT) are mirrored into
/// distribution with their digests, every blob whole; a second run copies nothing.
#[tokio::test(flavor = "multi_thread")]
async fn from_a_registry_we_never_imitated() {
    let seed = Registry::start().await;
    let other = OtherRegistry::start().await;
    let target = Registry::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (oci, docker) = single_platform(&seed, 910).await;
    for r in ["lib/app:oci", "lib/app:docker"] {
        let src = format!("docker://{}/{r}", seed.host());
        let dest = format!("docker://{}/{r}", other.host());
        let creds = format!("--dest-creds={}", creds());
        let out = skopeo(&[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &creds,
            &src,
            &dest,
        ])
        .await;
        assert_eq!(out.code, Some(0), "seeding {r}: {}", out.stderr);
    }

    let config = ConfigYaml::to_registry(&target.host())
        .upstream(&other.host())
        .upstream_lines(&auth_lines(dir.path(), "    "))
        .images(&[
            format!("{}/lib/app:oci", other.host()),
            format!("{}/lib/app:docker", other.host()),
        ])
        .write(dir.path());
    let out = sync_once(&config).await;
    out.assert_code(0);
    for (repo, tag, pushed) in [("lib/app", "oci", &oci), ("lib/app", "docker", &docker)] {
        assert_eq!(
            head_manifest(&target, repo, tag).await.as_deref(),
            Some(pushed.digest.as_str()),
            "{repo}:{tag} at the target"
        );
        assert_image_complete(&target, repo, tag).await;
        skopeo_copies_out(dir.path(), &target.host(), None, repo, tag).await;
    }

    let mark = target.log_mark().await;
    let again = sync_once(&config).await;
    again.assert_code(0);
    assert!(again.stdout.contains("2 unchanged"), "{}", again.stdout);
    let log = target.access_log_since(mark).await;
    assert_eq!(log.mirrored_writes(), 0, "{}", log.dump());
}

/// A layer over `chunk_size` goes in several `PATCH`es (it appends each one and answers a
/// `Range` of that chunk alone, not of the whole upload) and lands whole.
#[tokio::test(flavor = "multi_thread")]
async fn layers_over_chunk_size_land_whole_in_it() {
    let upstream = Registry::start().await;
    let other = OtherRegistry::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (img, config) = big_in_chunks(&upstream, &other.host(), dir.path(), 920).await;
    let out = sync_once(&config).await;
    out.assert_code(0);
    assert_eq!(
        raw_manifest(&other, "lib/big", "v1").await,
        img.manifest_bytes
    );
    skopeo_copies_out(dir.path(), &other.host(), Some(&creds()), "lib/big", "v1").await;
}

/// It appends every `PATCH` body to the session whatever its `Content-Range` says, and has no
/// upload status to resume from: a `PATCH` it took but whose answer came back 502 (a proxy in
/// front of it) must not be sent into that session again. The blob goes again in a new
/// session, and lands whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_answered_502_is_not_appended_twice() {
    let upstream = Registry::start().await;
    let other = OtherRegistry::start().await;
    let proxy = Proxy::start_to(Some(other.url())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (img, config) = big_in_chunks(&upstream, &proxy.host(), dir.path(), 950).await;
    proxy.add(Rule::new("PATCH /v2/lib/big/uploads/*", Action::ForwardAs(502)).first(2));
    let out = sync_once(&config).await;
    out.assert_code(0);

    let seen = proxy.since(0);
    let failed: Vec<&str> = seen
        .iter()
        .filter(|s| s.method == "PATCH" && s.status == 502)
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(failed.len(), 2, "{seen:#?}");
    for session in failed {
        let sent = seen
            .iter()
            .filter(|s| s.method != "DELETE" && s.path == session);
        assert_eq!(sent.count(), 1, "{session} written to again: {seen:#?}");
    }
    assert_eq!(
        raw_manifest(&other, "lib/big", "v1").await,
        img.manifest_bytes
    );
    skopeo_copies_out(dir.path(), &other.host(), Some(&creds()), "lib/big", "v1").await;
}

/// It has no manifest `DELETE` (405). `prune: true` then leaves the tags no longer selected
/// where they are, says once why and what to change, and the run still succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn prune_where_nothing_can_be_deleted_says_so_once() {
    let upstream = Registry::start().await;
    let other = OtherRegistry::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    for (n, tag) in ["1", "2", "3"].iter().enumerate() {
        push_image(&upstream, "lib/app", *tag, oci_image(970 + n as u64, 3_000)).await;
    }
    let config = |tags: &str| {
        let entry = format!(
            "{{ source: \"{}/lib/app\", tags: [{tags}], prune: true }}",
            upstream.host()
        );
        ConfigYaml::to_registry(&other.host())
            .target_lines(&auth_lines(dir.path(), "  "))
            .upstream(&upstream.host())
            .images(&[entry])
            .write(dir.path())
    };
    sync_once(&config("\"1\", \"2\", \"3\""))
        .await
        .assert_code(0);
    let out = sync_once(&config("\"1\"")).await;
    out.assert_code(0);
    let said: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("the target does not delete manifests"))
        .collect();
    assert_eq!(said.len(), 1, "{}", out.stderr);
    assert!(said[0].contains("storage.delete.enabled"), "{}", said[0]);
    for tag in ["2", "3"] {
        let raw = raw_manifest(&other, "lib/app", tag).await;
        assert!(!raw.is_empty(), "lib/app:{tag} still there");
    }
}
