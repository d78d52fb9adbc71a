//! User story: a mirror is carried across an air gap on disk. The connected side writes an OCI
//! layout with `digests: preserve`; the directory is copied; the far side runs the same image
//! list with `registries.<host>.path` pointing at the copy and loads its private registry, whose
//! digests equal upstream's (Docker schema2, manifest lists, OCI indexes with attestations, a
//! cosign signature tag). The next carry is a delta (`since:`) holding only the changed blobs;
//! loaded without its base it fails with the missing digests before anything is pushed. A
//! truncated file fails only its tags and is named; a SIGKILL during a load leaves no tag
//! pointing at missing content.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;

/// An image the corpus holds upstream: repository, tag, and its digest there.
#[derive(Clone, Debug)]
struct Pinned {
    repo: String,
    tag: String,
    digest: String,
}

fn pinned(repo: &str, tag: &str, image: &PushedImage) -> Pinned {
    Pinned {
        repo: repo.into(),
        tag: tag.into(),
        digest: image.digest.clone(),
    }
}

/// Docker schema2 image, Docker manifest list, OCI index with an attestation, a signed image
/// with a cosign signature tag, and three tags of which a regex selects two.
async fn seed_corpus(up: &Registry) -> Vec<Pinned> {
    let mut out = Vec::new();
    let docker = push_image(
        up,
        "carry/docker",
        "1.0",
        ImageSpec::new(Format::Docker, vec![layer(1, 40_000), layer(2, 5_000)]),
    )
    .await;
    out.push(pinned("carry/docker", "1.0", &docker));
    let amd = push_image(up, "carry/list", None, docker_image(3, 20_000)).await;
    let arm = push_image(
        up,
        "carry/list",
        None,
        docker_image(4, 20_000).platform("linux/arm64/v8"),
    )
    .await;
    for tag in ["1.0", "1.1", "2.0"] {
        let list = push_index(
            up,
            "carry/list",
            tag,
            Format::Docker,
            &[(amd.clone(), None), (arm.clone(), None)],
        )
        .await;
        if tag != "2.0" {
            out.push(pinned("carry/list", tag, &list));
        }
    }
    let img = push_image(up, "carry/oci", None, oci_image(5, 30_000)).await;
    let att = attestation_manifest(up, "carry/oci", &img).await;
    let index = push_index(
        up,
        "carry/oci",
        "1.0",
        Format::Oci,
        &[(img.clone(), None), (att, None)],
    )
    .await;
    out.push(pinned("carry/oci", "1.0", &index));
    let signed = push_image(up, "carry/signed", "1.0", oci_image(6, 3_000)).await;
    out.push(pinned("carry/signed", "1.0", &signed));
    let sig = push_image(
        up,
        "carry/signed",
        None,
        oci_image(7, 300).label("sig", "1"),
    )
    .await;
    let sig_tag = format!("sha256-{}.sig", signed.digest.trim_start_matches("sha256:"));
    push_manifest(
        up,
        "carry/signed",
        &sig_tag,
        &sig.media_type,
        &sig.manifest_bytes,
    )
    .await;
    out.push(pinned("carry/signed", &sig_tag, &sig));
    out
}

/// The `images:` block both sides share.
fn images_yaml(up: &str) -> String {
    format!(
        "images:\n  - {up}/carry/docker:1.0\n  - {{ source: \"{up}/carry/list\", tags: [{{ regex: \"^1\\\\.\" }}] }}\n  - {up}/carry/oci:1.0\n  - {{ source: \"{up}/carry/signed:1.0\", referrers: true }}\n"
    )
}

/// Near side: upstream (plain HTTP) into a layout.
fn export_config(dir: &Path, up: &Registry, target: &str, images: &str) -> PathBuf {
    let yaml = format!(
        "target:\n{target}registries:\n  \"{}\":\n    insecure: true\n{images}",
        up.host()
    );
    write_config(dir, &yaml)
}

/// Far side: the upstream host served from `layout`, into the far registry.
fn load_config(dir: &Path, up_host: &str, layout: &Path, far: &Registry, extra: &str) -> PathBuf {
    let yaml = format!(
        "target:\n  registry: \"{}\"\n  insecure: true\nregistries:\n  \"{up_host}\":\n    path: \"{}\"\n{extra}{}",
        far.host(),
        layout.display(),
        images_yaml(up_host)
    );
    write_config(dir, &yaml)
}

async fn run(config: &Path, command: &str) -> Output {
    let config = config.display().to_string();
    match command {
        "plan" => mirrorsync(&["plan", "--config", &config]).await,
        _ => mirrorsync(&["sync", "--once", "--config", &config]).await,
    }
}

/// Copies a directory tree (the "carry").
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

/// Every blob file under a layout root: digest -> size.
fn blob_files(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if dir.ends_with("blobs/sha256") {
                let name = entry.file_name().to_string_lossy().to_string();
                out.insert(
                    format!("sha256:{name}"),
                    entry.metadata().expect("meta").len(),
                );
            }
        }
    }
    out
}

fn tree_bytes(root: &Path) -> u64 {
    blob_files(root).values().sum()
}

/// Every pinned tag at `far` has upstream's digest and is complete.
async fn assert_far_equals_upstream(far: &Registry, corpus: &[Pinned]) {
    for p in corpus {
        let (bytes, _, digest) = get_manifest(far, &p.repo, &p.tag)
            .await
            .unwrap_or_else(|| panic!("{}:{} missing at the far registry", p.repo, p.tag));
        assert_eq!(
            digest, p.digest,
            "{}:{} digest at the far registry",
            p.repo, p.tag
        );
        assert_eq!(sha256_digest(&bytes), p.digest);
        assert_image_complete(far, &p.repo, &p.tag).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_carried_across_on_disk_keeps_every_digest_and_a_delta_holds_only_what_changed() {
    let mut up = Registry::start().await;
    let far = Registry::start().await;
    let mut corpus = seed_corpus(&up).await;
    let up_host = up.host();
    let work = tempfile::tempdir().expect("tempdir");
    let (near, carry, delta) = (
        work.path().join("near"),
        work.path().join("carry"),
        work.path().join("delta"),
    );

    // Connected side: a full export with digests preserved.
    let full = format!("  path: \"{}\"\n  digests: preserve\n", near.display());
    let export = export_config(work.path(), &up, &full, &images_yaml(&up_host));
    run(&export, "sync").await.assert_code(0);
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(near.join("carry/docker/index.json")).expect("index.json"),
    )
    .expect("json");
    assert_eq!(
        index["manifests"][0]["mediaType"], "application/vnd.docker.distribution.manifest.v2+json",
        "a preserved layout keeps the Docker media type: {index}"
    );
    // skopeo reads the OCI-typed content of a preserved layout with upstream's bytes.
    let raw = skopeo_inspect_raw(
        &format!("oci:{}:1.0", near.join("carry/oci").display()),
        &[],
    )
    .await;
    assert_eq!(
        sha256_digest(&raw),
        corpus[3].digest,
        "skopeo reads carry/oci:1.0"
    );

    // The disk is carried: a plain copy of the directory.
    copy_tree(&near, &carry);

    // One tag changes upstream; the next carry is a delta against the first export.
    let moved = push_image(
        &up,
        "carry/docker",
        "1.0",
        ImageSpec::new(Format::Docker, vec![layer(1, 40_000), layer(8, 7_000)]),
    )
    .await;
    let target = format!(
        "  path: \"{}\"\n  digests: preserve\n  since: \"{}\"\n",
        delta.display(),
        near.display()
    );
    let config_dir = tempfile::tempdir().expect("tempdir");
    let export = export_config(config_dir.path(), &up, &target, &images_yaml(&up_host));
    run(&export, "sync").await.assert_code(0);
    let in_delta = blob_files(&delta);
    let mut expected: BTreeMap<String, u64> = moved
        .blobs
        .iter()
        .filter(|b| !blob_files(&near).contains_key(&b.digest))
        .map(|b| (b.digest.clone(), b.size))
        .collect();
    expected.insert(moved.digest.clone(), moved.manifest_bytes.len() as u64);
    assert_eq!(in_delta, expected, "the delta holds exactly the new blobs");
    assert_eq!(expected.len(), 3, "new layer, config and manifest");
    eprintln!(
        "full export {} bytes, delta {} bytes",
        tree_bytes(&near),
        tree_bytes(&delta)
    );
    let dirs: Vec<String> = std::fs::read_dir(delta.join("carry"))
        .expect("delta repositories")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        dirs,
        vec!["docker".to_string()],
        "only the changed repository"
    );

    // Far side: upstream is gone; the same image list loads from the carried copy.
    up.kill();
    let far_dir = tempfile::tempdir().expect("tempdir");
    let load = load_config(far_dir.path(), &up_host, &carry, &far, "");
    let plan = run(&load, "plan").await;
    plan.assert_code(0);
    assert!(plan.stdout.contains("carry/list:1.1"), "{}", plan.stdout);
    run(&load, "sync").await.assert_code(0);
    assert_far_equals_upstream(&far, &corpus).await;
    let mut listed = tags(&far, "carry/list").await;
    listed.sort();
    assert_eq!(
        listed,
        vec!["1.0", "1.1"],
        "the regex chose from the layout's tags"
    );

    // The delta alone lacks its base: nothing is pushed, and the missing digests are named.
    let mark = far.log_mark().await;
    let alone_dir = tempfile::tempdir().expect("tempdir");
    let alone = load_config(alone_dir.path(), &up_host, &delta, &far, "");
    let out = run(&alone, "sync").await;
    out.assert_code(1);
    let line = failed_line(&out, "carry/docker:1.0");
    assert!(
        line.contains("lacks") && line.contains(&moved.blobs[1].digest),
        "the unchanged base layer is named: {line}"
    );
    let writes = far.access_log_since(mark).await.mirrored_writes();
    assert_eq!(writes, 0, "nothing pushed from an incomplete layout");

    // Merged into the carried copy, the delta loads: the changed tag moves, nothing else.
    copy_tree(&delta, &carry);
    let mark = far.log_mark().await;
    run(&load, "sync").await.assert_code(0);
    corpus[0].digest = moved.digest.clone();
    assert_far_equals_upstream(&far, &corpus).await;
    let log = far.access_log_since(mark).await;
    let written: Vec<String> = log.writes_by_repo().into_keys().collect();
    assert_eq!(
        written,
        vec!["carry/docker".to_string(), "mirrorsync/state".to_string()],
        "only the changed repository is written:\n{}",
        log.dump()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_file_in_the_carry_fails_only_its_tags_and_is_named() {
    let up = Registry::start().await;
    let far = Registry::start().await;
    let corpus = seed_corpus(&up).await;
    let work = tempfile::tempdir().expect("tempdir");
    let near = work.path().join("near");
    let full = format!("  path: \"{}\"\n  digests: preserve\n", near.display());
    let export = export_config(work.path(), &up, &full, &images_yaml(&up.host()));
    run(&export, "sync").await.assert_code(0);

    // The first layer of carry/docker:1.0 loses its tail on the way.
    let (bytes, _, _) = get_manifest(&up, "carry/docker", "1.0")
        .await
        .expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    let victim = manifest["layers"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let file = near
        .join("carry/docker/blobs/sha256")
        .join(victim.trim_start_matches("sha256:"));
    let size = std::fs::metadata(&file).expect("blob").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(size / 2))
        .expect("truncate");

    let far_dir = tempfile::tempdir().expect("tempdir");
    let load = load_config(far_dir.path(), &up.host(), &near, &far, "");
    let out = run(&load, "sync").await;
    out.assert_code(1);
    let line = failed_line(&out, "carry/docker:1.0");
    assert!(
        line.contains(&file.display().to_string()),
        "the file is named: {line}"
    );
    assert_eq!(head_manifest(&far, "carry/docker", "1.0").await, None);
    assert_eq!(
        blob_size(&far, "carry/docker", &victim).await,
        None,
        "nothing half-written"
    );
    assert_far_equals_upstream(&far, &corpus[1..]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_a_load_from_a_layout_leaves_no_tag_pointing_at_missing_content() {
    let up = Registry::start().await;
    let far = Registry::start().await;
    let mut corpus = seed_corpus(&up).await;
    let big = push_image(
        &up,
        "carry/big",
        "1.0",
        docker_image(9, 1000).big_layer(6 << 20, 3),
    )
    .await;
    corpus.push(pinned("carry/big", "1.0", &big));
    let work = tempfile::tempdir().expect("tempdir");
    let near = work.path().join("near");
    let images = format!(
        "{}  - {}/carry/big:1.0\n",
        images_yaml(&up.host()),
        up.host()
    );
    let full = format!("  path: \"{}\"\n  digests: preserve\n", near.display());
    let export = export_config(work.path(), &up, &full, &images);
    run(&export, "sync").await.assert_code(0);

    // The load reads the layout at 1 MiB/s, so the big layer is mid-copy when killed.
    let far_dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "target:\n  registry: \"{}\"\n  insecure: true\nregistries:\n  \"{}\":\n    path: \"{}\"\n    bytes_per_second: 1MiB\n{images}",
        far.host(),
        up.host(),
        near.display()
    );
    let load = write_config(far_dir.path(), &yaml);
    let mut child = tokio::process::Command::new(bin_path())
        .args(["sync", "--once", "--config", &load.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mirrorsync");
    let pid = child.id().expect("pid") as libc::pid_t;
    let big_layer = big.blobs.last().expect("big layer").digest.clone();
    common::observe::poll(
        std::time::Duration::from_secs(60),
        || "an upload into carry/big".into(),
        || async {
            let log = far.access_log().await;
            log.iter()
                .any(|a| a.is_write() && a.repo().as_deref() == Some("carry/big"))
                .then_some(())
        },
    )
    .await;
    // SAFETY: `pid` is our own child, not yet reaped.
    let r = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    let _ = child.wait().await;

    for p in &corpus {
        if head_manifest(&far, &p.repo, &p.tag).await.is_some() {
            assert_image_complete(&far, &p.repo, &p.tag).await;
        }
    }
    assert_eq!(
        head_manifest(&far, "carry/big", "1.0").await,
        None,
        "killed mid-copy"
    );
    assert_eq!(blob_size(&far, "carry/big", &big_layer).await, None);
    // The next run finishes the job.
    let again = load_config(far_dir.path(), &up.host(), &near, &far, "");
    let images_only = std::fs::read_to_string(&again).expect("config")
        + &format!("  - {}/carry/big:1.0\n", up.host());
    let again = write_config(far_dir.path(), &images_only);
    run(&again, "sync").await.assert_code(0);
    assert_far_equals_upstream(&far, &corpus).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn air_gap_settings_in_the_wrong_place_are_config_errors_that_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().display().to_string();
    let cases = [
        (
            "target:\n  registry: r.example:5000\n  digests: preserve\nimages: [busybox]\n"
                .to_string(),
            "3:12",
            "target.digests",
        ),
        (
            format!("target:\n  path: \"{layout}/out\"\n  digests: same\nimages: [busybox]\n"),
            "3:12",
            "target.digests",
        ),
        (
            format!(
                "target:\n  path: \"{layout}/out\"\n  since: \"{layout}/nowhere\"\nimages: [busybox]\n"
            ),
            "3:10",
            "target.since",
        ),
        (
            format!(
                "target:\n  path: \"{layout}/out\"\nregistries:\n  docker.io:\n    path: \"{layout}\"\n    mirrors: [\"https://mirror.gcr.io\"]\nimages: [busybox]\n"
            ),
            "5:5",
            "registries.docker.io.mirrors",
        ),
        (
            format!(
                "target:\n  path: \"{layout}/out\"\nregistries:\n  docker.io:\n    path: \"{layout}/nowhere\"\nimages: [busybox]\n"
            ),
            "5:11",
            "registries.docker.io.path",
        ),
    ];
    for (yaml, at, key) in cases {
        let config = write_config(dir.path(), &yaml);
        let out = mirrorsync(&["check", "--config", &config.display().to_string()]).await;
        out.assert_code(2);
        let expected = format!("{}:{at}", config.display());
        assert!(
            out.stderr.contains(&expected) && out.stderr.contains(key),
            "{yaml}\nwants {expected} and {key}:\n{}",
            out.stderr
        );
    }
}

/// An upstream with the OCI referrers API: a layout has no such API, so the referrers go into
/// its `sha256-<hex>` fallback index; the far side loads them, by digest, with the image.
#[tokio::test(flavor = "multi_thread")]
async fn referrers_listed_upstream_travel_in_the_layouts_fallback_index() {
    let upstream = Registry::start().await;
    let up = Proxy::start(&upstream).await;
    let far = Registry::start().await;
    let image = push_image(&upstream, "carry/ref", "1.0", docker_image(11, 2_000)).await;
    let sig = crate::interop::push_referrer(
        &upstream,
        "carry/ref",
        &image,
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        b"signature",
    )
    .await;
    Quirk::Referrers {
        subject: image.digest.clone(),
        referrers: vec![sig.clone()],
    }
    .install(&up);
    let work = tempfile::tempdir().expect("tempdir");
    let near = work.path().join("near");
    let images = format!(
        "images:\n  - {{ source: \"{}/carry/ref:1.0\", referrers: true }}\n",
        up.host()
    );
    let yaml = format!(
        "target:\n  path: \"{}\"\n  digests: preserve\nregistries:\n  \"{}\":\n    insecure: true\n{images}",
        near.display(),
        up.host()
    );
    run(&write_config(work.path(), &yaml), "sync")
        .await
        .assert_code(0);
    let fallback = format!("sha256-{}", image.digest.trim_start_matches("sha256:"));
    let index = skopeo_inspect_raw(
        &format!("oci:{}:{fallback}", near.join("carry/ref").display()),
        &[],
    )
    .await;
    let index: serde_json::Value = serde_json::from_slice(&index).expect("fallback index");
    assert_eq!(
        index["manifests"][0]["digest"],
        sig.digest.as_str(),
        "{index}"
    );

    let far_dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "target:\n  registry: \"{}\"\n  insecure: true\nregistries:\n  \"{}\":\n    path: \"{}\"\n{images}",
        far.host(),
        up.host(),
        near.display()
    );
    run(&write_config(far_dir.path(), &yaml), "sync")
        .await
        .assert_code(0);
    assert_eq!(
        head_manifest(&far, "carry/ref", "1.0").await,
        Some(image.digest.clone())
    );
    let (_, _, digest) = get_manifest(&far, "carry/ref", &sig.digest)
        .await
        .expect("the signature at the far registry");
    assert_eq!(digest, sig.digest);
    let (bytes, _, _) = get_manifest(&far, "carry/ref", &fallback)
        .await
        .expect("the fallback index at the far registry");
    let listed: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(
        listed["manifests"][0]["digest"],
        sig.digest.as_str(),
        "{listed}"
    );
}
