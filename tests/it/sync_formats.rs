//! Every manifest format a hot image comes in is mirrored byte for byte, digests preserved.

use crate::common;

use common::*;

/// Given an image upstream, when it is synced, then the target serves the same bytes under the
/// same digest and every blob it references, with recomputed digests.
async fn assert_mirrored(
    upstream: &Registry,
    target: &Registry,
    src_repo: &str,
    dst_repo: &str,
    tag: &str,
) {
    let (up_bytes, up_type, up_digest) = get_manifest(upstream, src_repo, tag)
        .await
        .expect("upstream manifest");
    let (bytes, media_type, digest) = get_manifest(target, dst_repo, tag)
        .await
        .unwrap_or_else(|| panic!("{dst_repo}:{tag} missing at the target"));
    assert_eq!(digest, up_digest, "{dst_repo}:{tag}: digest preserved");
    assert_eq!(bytes, up_bytes, "{dst_repo}:{tag}: exact bytes");
    assert_eq!(media_type, up_type, "{dst_repo}:{tag}: media type");
    let walked = assert_image_complete(target, dst_repo, tag).await;
    for blob in &walked.blobs {
        assert_eq!(
            blob_sha256(target, dst_repo, blob).await.as_deref(),
            Some(blob.as_str()),
            "{dst_repo}: blob {blob} content"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn single_arch_oci_and_docker_schema2_images_are_mirrored_exactly() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    push_image(
        &upstream,
        "library/ocimage",
        "1.0",
        ImageSpec::new(Format::Oci, vec![layer(1, 30_000), layer(2, 5_000)]),
    )
    .await;
    push_image(
        &upstream,
        "team/dockerimage",
        "2.1",
        docker_image(3, 20_000),
    )
    .await;

    let scenario = Scenario::registry_to_registry(
        &upstream,
        &target,
        "mirror",
        &[
            upstream.image_ref("library/ocimage", "1.0"),
            upstream.image_ref("team/dockerimage", "2.1"),
        ],
    );
    let out = scenario.sync().await;
    out.assert_code(0);

    assert_mirrored(
        &upstream,
        &target,
        "library/ocimage",
        "mirror/library/ocimage",
        "1.0",
    )
    .await;
    assert_mirrored(
        &upstream,
        &target,
        "team/dockerimage",
        "mirror/team/dockerimage",
        "2.1",
    )
    .await;
    let raw = skopeo_inspect_raw(
        &format!("docker://{}/mirror/team/dockerimage:2.1", target.host()),
        &["--tls-verify=false"],
    )
    .await;
    assert_eq!(
        sha256_digest(&raw),
        get_manifest(&upstream, "team/dockerimage", "2.1")
            .await
            .unwrap()
            .2
    );
    assert!(
        out.stdout.contains(&format!(
            "{} -> mirror/library/ocimage:1.0 sha256:",
            upstream.image_ref("library/ocimage", "1.0")
        )),
        "summary line per changed tag:\n{}",
        out.stdout
    );
    assert!(out.stdout.contains("3 blobs copied"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_arch_index_with_attestations_and_docker_manifest_list() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let base = layer(10, 40_000);
    let index = push_multi_arch(
        &upstream,
        "library/multi",
        "3",
        Format::Oci,
        (
            ImageSpec::new(Format::Oci, vec![base.clone(), layer(11, 3_000)]),
            ImageSpec::new(Format::Oci, vec![base.clone(), layer(12, 3_000)])
                .platform("linux/arm64/v8"),
        ),
        &[0, 1],
    )
    .await
    .index;
    push_multi_arch(
        &upstream,
        "library/list",
        "stable",
        Format::Docker,
        (
            docker_image(20, 9_000),
            docker_image(21, 9_000).platform("linux/arm/v7"),
        ),
        &[],
    )
    .await;

    let scenario = Scenario::registry_to_registry(
        &upstream,
        &target,
        "",
        &[
            upstream.image_ref("library/multi", "3"),
            upstream.image_ref("library/list", "stable"),
        ],
    );
    scenario.sync().await.assert_code(0);

    assert_mirrored(&upstream, &target, "library/multi", "library/multi", "3").await;
    assert_mirrored(&upstream, &target, "library/list", "library/list", "stable").await;
    let walked = assert_image_complete(&target, "library/multi", "3").await;
    assert_eq!(
        walked.manifests.len(),
        5,
        "index + 2 images + 2 attestation manifests"
    );
    assert!(walked.manifests.contains(&index.digest));
    // skopeo can pull every platform back out of the mirror.
    let out_dir = tempfile::tempdir().unwrap();
    let out = skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/library/multi:3", target.host()),
        &format!("dir:{}", out_dir.path().join("out").display()),
    ])
    .await;
    assert_eq!(out.code, Some(0), "skopeo copy --all: {}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn platform_filter_keeps_only_chosen_platforms_and_their_attestations() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let MultiArch {
        first: amd,
        second: arm,
        attestations,
        index,
    } = push_multi_arch(
        &upstream,
        "library/app",
        "1",
        Format::Oci,
        (
            oci_image(30, 50_000),
            oci_image(31, 60_000).platform("linux/arm64/v8"),
        ),
        &[0, 1],
    )
    .await;
    let arm_att = &attestations[1];
    let entry = format!(
        "{{ source: \"{}\", tags: [\"1\"], platforms: [linux/arm64] }}",
        upstream.image_ref("library/app", "").trim_end_matches(':')
    );
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &[entry]);
    scenario.sync().await.assert_code(0);

    let (bytes, _, digest) = get_manifest(&target, "library/app", "1")
        .await
        .expect("filtered index");
    assert_ne!(digest, index.digest, "a filtered index has its own digest");
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let kept: Vec<&str> = doc["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(kept, vec![arm.digest.as_str(), arm_att.digest.as_str()]);
    assert_eq!(
        doc["annotations"]["io.mirrorsync.source.digest"],
        index.digest.as_str()
    );
    assert_image_complete(&target, "library/app", "1").await;
    assert!(
        blob_size(&target, "library/app", &amd.blobs[1].digest)
            .await
            .is_none(),
        "amd64 layer not copied"
    );

    // Nothing changed upstream: the second run spends no upstream GET and writes nothing.
    let up_mark = upstream.log_mark().await;
    let target_mark = target.log_mark().await;
    let out = scenario.sync().await;
    out.assert_code(0);
    let up_log = upstream.access_log_since(up_mark).await;
    assert_eq!(up_log.manifest_gets(None), 0, "{}", up_log.dump());
    assert_eq!(
        target.access_log_since(target_mark).await.mirrored_writes(),
        0
    );
    assert!(out.stdout.contains("1 unchanged"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_layout_target_needs_no_registry_and_reads_back_with_skopeo() {
    let upstream = Registry::start().await;
    let index = push_multi_arch(
        &upstream,
        "library/tool",
        "2",
        Format::Oci,
        (
            oci_image(40, 10_000),
            oci_image(41, 10_000).platform("linux/arm64"),
        ),
        &[],
    )
    .await
    .index;
    let single = push_image(&upstream, "team/single", "v1", docker_image(42, 7_000)).await;

    let layout = tempfile::tempdir().unwrap();
    let scenario = Scenario::registry_to_layout(
        &upstream,
        layout.path(),
        &[
            upstream.image_ref("library/tool", "2"),
            upstream.image_ref("team/single", "v1"),
        ],
    );
    scenario.sync().await.assert_code(0);

    let tool = format!("oci:{}:2", layout.path().join("library/tool").display());
    assert_eq!(
        sha256_digest(&skopeo_inspect_raw(&tool, &[]).await),
        index.digest
    );
    let out_dir = tempfile::tempdir().unwrap();
    let copied = skopeo(&[
        "copy",
        "--all",
        &tool,
        &format!("oci:{}:copy", out_dir.path().display()),
    ])
    .await;
    assert_eq!(
        copied.code,
        Some(0),
        "skopeo copy from the layout: {}",
        copied.stderr
    );
    // Docker schema2 content is converted to OCI for the layout (as skopeo does for oci:), with
    // the upstream digest recorded in an annotation; the blobs are the same.
    let single_ref = format!("oci:{}:v1", layout.path().join("team/single").display());
    let converted: serde_json::Value =
        serde_json::from_slice(&skopeo_inspect_raw(&single_ref, &[]).await).unwrap();
    assert_eq!(converted["mediaType"], OCI_MANIFEST);
    assert_eq!(
        converted["annotations"]["io.mirrorsync.source.digest"],
        single.digest.as_str()
    );
    assert_eq!(
        converted["layers"][0]["digest"],
        single.blobs[1].digest.as_str()
    );

    // Second run: nothing changed, so no upstream GET at all.
    let mark = upstream.log_mark().await;
    let out = scenario.sync().await;
    out.assert_code(0);
    let log = upstream.access_log_since(mark).await;
    assert_eq!(
        log.manifest_gets(None) + log.blob_gets(None),
        0,
        "{}",
        log.dump()
    );
    assert!(out.stdout.contains("2 unchanged"), "{}", out.stdout);
}
