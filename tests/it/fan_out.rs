//! One pull, several targets (`targets:`): every upstream blob and manifest crosses the link
//! once per run however many targets need it, each target is diffed and written on its own, and
//! a target that is down fails only its own tags. Counted at the upstream's access log, checked
//! at each target directly.

use crate::common;

use common::*;

/// An index of two platforms sharing a base layer, a Docker image on the same base, and a big
/// layer: the tags to sync.
async fn seed(upstream: &Registry) -> Vec<String> {
    let base = layer(200, 90_000);
    push_multi_arch(
        upstream,
        "library/web",
        "1.26",
        Format::Oci,
        (
            ImageSpec::new(Format::Oci, vec![base.clone(), layer(201, 9_000)]),
            ImageSpec::new(Format::Oci, vec![base.clone(), layer(202, 9_000)])
                .platform("linux/arm64"),
        ),
        &[],
    )
    .await;
    push_image(
        upstream,
        "library/worker",
        "2",
        ImageSpec::new(Format::Docker, vec![base, layer(203, 3_000_000)]),
    )
    .await;
    vec![
        upstream.image_ref("library/web", "1.26"),
        upstream.image_ref("library/worker", "2"),
    ]
}

/// A config with one target per registry, named `a`, `b`, `c`...
fn fan_out_config(
    dir: &std::path::Path,
    upstream: &Registry,
    targets: &[&Registry],
    extra: &str,
    images: &[String],
) -> std::path::PathBuf {
    let mut yaml = String::from("targets:\n");
    for (i, target) in targets.iter().enumerate() {
        let name = (b'a' + i as u8) as char;
        yaml.push_str(&format!(
            "  - name: {name}\n    registry: \"{}\"\n    insecure: true\n    prefix: mirror\n",
            target.host()
        ));
    }
    yaml.push_str(extra);
    yaml.push_str(&format!(
        "registries:\n  \"{}\":\n    insecure: true\nimages:\n",
        upstream.host()
    ));
    for image in images {
        yaml.push_str(&format!("  - {image}\n"));
    }
    write_config(dir, &yaml)
}

/// Every blob GET in `log` is for a distinct digest; their number.
fn distinct_blob_gets(log: &[Access]) -> usize {
    let gets: Vec<String> = log
        .iter()
        .filter(|a| a.method == "GET" && a.kind() == Some("blobs"))
        .filter_map(|a| a.reference())
        .collect();
    let mut unique = gets.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        gets.len(),
        unique.len(),
        "a blob was pulled twice:\n{}",
        log.dump()
    );
    unique.len()
}

async fn assert_mirrored(upstream: &Registry, target: &Registry) {
    for (repo, tag) in [("library/web", "1.26"), ("library/worker", "2")] {
        assert_eq!(
            head_manifest(target, &format!("mirror/{repo}"), tag).await,
            head_manifest(upstream, repo, tag).await,
            "{} mirror/{repo}:{tag}",
            target.host()
        );
        assert_image_complete(target, &format!("mirror/{repo}"), tag).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_targets_pull_each_blob_and_manifest_once() {
    let upstream = Registry::start().await;
    let (a, b, c) = (
        Registry::start().await,
        Registry::start().await,
        Registry::start().await,
    );
    let images = seed(&upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let extra = format!("spool_dir: \"{}\"\n", spool.display());
    let config = fan_out_config(dir.path(), &upstream, &[&a, &b, &c], &extra, &images);
    let metrics = dir.path().join("metrics.prom");

    // plan says, per target, what a sync would do, and writes nothing.
    let plan = mirrorsync(&["plan", "--config", &config.display().to_string()]).await;
    plan.assert_code(0);
    for name in ["a", "b", "c"] {
        assert!(
            plan.stdout.contains(&format!(
                "new: {} -> [{name}] mirror/library/worker:2",
                images[1]
            )),
            "{}",
            plan.stdout
        );
        assert!(
            plan.stdout.contains(&format!("[{name}] 2 tags: 2 to sync")),
            "{}",
            plan.stdout
        );
    }
    for target in [&a, &b, &c] {
        assert_eq!(
            head_manifest(target, "mirror/library/worker", "2").await,
            None
        );
    }

    let mark = upstream.log_mark().await;
    let out = sync_once_with_metrics_file(&config, &metrics).await;
    out.assert_code(0);
    let log = upstream.access_log_since(mark).await;
    // base, two platform layers, the big layer, three configs: each pulled once for three targets.
    assert_eq!(distinct_blob_gets(&log), 7, "{}", log.dump());
    // The index, its two children, the Docker image: each manifest fetched once.
    assert_eq!(log.manifest_gets(None), 4, "{}", log.dump());
    for target in [&a, &b, &c] {
        assert_mirrored(&upstream, target).await;
    }
    // Lines say which target each tag went to.
    for name in ["a", "b", "c"] {
        assert!(
            out.stdout
                .contains(&format!("-> [{name}] mirror/library/worker:2")),
            "{}",
            out.stdout
        );
    }
    // Every target read every spooled blob whole the first time (no early end of file).
    assert!(
        !out.stderr.contains("from the spool not stored"),
        "{}",
        out.stderr
    );
    // A totals line per target, then the run's.
    for name in ["a", "b", "c"] {
        assert!(
            out.stdout.contains(&format!("[{name}] 2 tags: 2 synced")),
            "{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("\n6 tags: 6 synced"), "{}", out.stdout);
    // The spool is gone when the run ends.
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    // Per-target series carry the target's name; a target's own requests are counted under
    // its name, those upstream once for all.
    let text = std::fs::read_to_string(&metrics).unwrap();
    for name in ["a", "b", "c"] {
        assert!(
            text.contains(&format!("method=\"PUT\",registry=\"target:{name}\"}}")),
            "{text}"
        );
    }
    for name in ["a", "b", "c"] {
        assert!(
            text.contains(&format!(
                "mirrorsync_run_tags{{result=\"synced\",target_name=\"{name}\"}} 2"
            )),
            "{text}"
        );
    }

    // A second run: one HEAD per tag upstream (not one per tag and target), nothing pulled.
    let mark = upstream.log_mark().await;
    sync_once_with_metrics_file(&config, &metrics)
        .await
        .assert_code(0);
    let log = upstream.access_log_since(mark).await;
    assert_eq!(log.manifest_heads(None), 2, "{}", log.dump());
    assert_eq!(log.manifest_gets(None), 0, "{}", log.dump());
    assert_eq!(distinct_blob_gets(&log), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_is_down_fails_only_its_own_tags() {
    let upstream = Registry::start().await;
    let a = Registry::start().await;
    let mut b = Registry::start().await;
    let c = Registry::start().await;
    let images = seed(&upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fan_out_config(dir.path(), &upstream, &[&a, &b, &c], "", &images);
    b.kill();

    let mark = upstream.log_mark().await;
    let out = mirrorsync(&["sync", "--once", "--config", &config.display().to_string()]).await;
    out.assert_code(1);
    assert!(
        out.stdout.contains("FAILED docker") || out.stdout.contains("FAILED 127.0.0.1"),
        "{}",
        out.stdout
    );
    let failed: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAILED"))
        .collect();
    assert_eq!(failed.len(), 2, "{}", out.stdout);
    assert!(
        failed.iter().all(|l| l.contains("-> [b] ")),
        "{}",
        out.stdout
    );
    assert_mirrored(&upstream, &a).await;
    assert_mirrored(&upstream, &c).await;
    // The two live targets still shared one pull.
    let log = upstream.access_log_since(mark).await;
    assert_eq!(distinct_blob_gets(&log), 7, "{}", log.dump());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_goes_only_to_the_targets_it_names() {
    let upstream = Registry::start().await;
    let (a, b) = (Registry::start().await, Registry::start().await);
    push_image(&upstream, "library/only", "1", oci_image(210, 2_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "targets:\n  - name: a\n    registry: \"{}\"\n    insecure: true\n  - name: b\n    registry: \"{}\"\n    insecure: true\n    prefix: other\nregistries:\n  \"{}\":\n    insecure: true\nimages:\n  - source: {}\n    targets: [b]\n",
        a.host(),
        b.host(),
        upstream.host(),
        upstream.image_ref("library/only", "1"),
    );
    let config = write_config(dir.path(), &yaml);
    mirrorsync(&["sync", "--once", "--config", &config.display().to_string()])
        .await
        .assert_code(0);
    assert_eq!(head_manifest(&a, "library/only", "1").await, None);
    assert_eq!(
        head_manifest(&b, "other/library/only", "1").await,
        head_manifest(&upstream, "library/only", "1").await,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_larger_than_spool_size_is_pulled_by_each_target() {
    let upstream = Registry::start().await;
    let (a, b) = (Registry::start().await, Registry::start().await);
    let images = seed(&upstream).await;
    let dir = tempfile::tempdir().unwrap();
    // Room for the small blobs, not for the 3 MB layer.
    let config = fan_out_config(
        dir.path(),
        &upstream,
        &[&a, &b],
        "spool_size: 1MiB\n",
        &images,
    );
    let mark = upstream.log_mark().await;
    let out = mirrorsync(&["sync", "--once", "--config", &config.display().to_string()]).await;
    out.assert_code(0);
    let log = upstream.access_log_since(mark).await;
    let gets: Vec<String> = log
        .iter()
        .filter(|a| a.method == "GET" && a.kind() == Some("blobs"))
        .filter_map(|a| a.reference())
        .collect();
    let mut unique = gets.clone();
    unique.sort();
    unique.dedup();
    // The big layer twice (once per target), every other blob once.
    assert_eq!(gets.len(), unique.len() + 1, "{}", log.dump());
    assert!(out.stderr.contains("spool_size"), "{}", out.stderr);
    assert_mirrored(&upstream, &a).await;
    assert_mirrored(&upstream, &b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_and_a_layout_target_are_written_from_one_pull() {
    let upstream = Registry::start().await;
    let a = Registry::start().await;
    let images = seed(&upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("carry");
    let mut yaml = format!(
        "targets:\n  - name: a\n    registry: \"{}\"\n    insecure: true\n    prefix: mirror\n  - name: carry\n    path: \"{}\"\n    prefix: mirror\nregistries:\n  \"{}\":\n    insecure: true\nimages:\n",
        a.host(),
        layout.display(),
        upstream.host()
    );
    for image in &images {
        yaml.push_str(&format!("  - {image}\n"));
    }
    let config = write_config(dir.path(), &yaml);
    let mark = upstream.log_mark().await;
    let out = mirrorsync(&["sync", "--once", "--config", &config.display().to_string()]).await;
    out.assert_code(0);
    let log = upstream.access_log_since(mark).await;
    assert_eq!(distinct_blob_gets(&log), 7, "{}", log.dump());
    assert_mirrored(&upstream, &a).await;
    // skopeo reads the export: the worker image with its two layers.
    let raw = skopeo_inspect_raw(
        &format!("oci:{}:2", layout.join("mirror/library/worker").display()),
        &[],
    )
    .await;
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        2,
        "{manifest}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_spool_dir_falls_back_to_a_pull_per_target() {
    let upstream = Registry::start().await;
    let (a, b) = (Registry::start().await, Registry::start().await);
    let images = seed(&upstream).await;
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the spool directory would go.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let extra = format!("spool_dir: \"{}\"\n", blocker.display());
    let config = fan_out_config(dir.path(), &upstream, &[&a, &b], &extra, &images);
    let mark = upstream.log_mark().await;
    let out = mirrorsync(&["sync", "--once", "--config", &config.display().to_string()]).await;
    out.assert_code(0);
    assert!(
        out.stderr.contains("cannot write to spool_dir"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("not-a-dir"), "{}", out.stderr);
    let log = upstream.access_log_since(mark).await;
    let gets = log
        .iter()
        .filter(|a| a.method == "GET" && a.kind() == Some("blobs"))
        .count();
    // Every blob pulled once per target.
    assert_eq!(gets, 14, "{}", log.dump());
    assert_mirrored(&upstream, &a).await;
    assert_mirrored(&upstream, &b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_stopped_mid_run_holds_neither_other_back() {
    let upstream = Registry::start().await;
    let a = Registry::start().await;
    let mut b = Registry::start().await;
    let c = Registry::start().await;
    let mut images = seed(&upstream).await;
    let big = push_big_blob(&upstream, "library/big", 24 * 1024 * 1024, 7).await;
    let config_blob = push_blob(
        &upstream,
        "library/big",
        br#"{"architecture":"amd64","os":"linux"}"#,
    )
    .await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_blob.digest, "size": config_blob.size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": big.digest, "size": big.size}],
    });
    push_manifest(
        &upstream,
        "library/big",
        "1",
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    )
    .await;
    images.push(upstream.image_ref("library/big", "1"));
    let dir = tempfile::tempdir().unwrap();
    // b is slow (4 MiB/s): it reads the spool behind a and c, then is stopped mid-upload.
    let yaml = format!(
        "targets:\n  - name: a\n    registry: \"{}\"\n    insecure: true\n    prefix: mirror\n  - name: b\n    registry: \"{}\"\n    insecure: true\n    prefix: mirror\n    bytes_per_second: 4MiB\n  - name: c\n    registry: \"{}\"\n    insecure: true\n    prefix: mirror\nregistries:\n  \"{}\":\n    insecure: true\nimages:\n{}",
        a.host(),
        b.host(),
        c.host(),
        upstream.host(),
        images
            .iter()
            .map(|i| format!("  - {i}\n"))
            .collect::<String>()
    );
    let config = write_config(dir.path(), &yaml);
    let config_arg = config.display().to_string();
    let mark = upstream.log_mark().await;
    let args = ["sync", "--once", "--config", &config_arg];
    let sync = mirrorsync(&args);
    let stop_b = async {
        // Once b has opened its first upload, stop it while the big layer (6 s at 4 MiB/s)
        // is on its way.
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let uploading = b.access_log_now().iter().any(|e| e.method == "POST");
            if uploading || !b.is_running() {
                tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
                b.kill();
                break;
            }
        }
    };
    let (out, ()) = tokio::join!(sync, stop_b);
    out.assert_code(1);
    for target in [&a, &c] {
        assert_mirrored(&upstream, target).await;
        assert_image_complete(target, "mirror/library/big", "1").await;
    }
    // Lines come as tags finish: every tag of a and c before b's failures.
    let lines: Vec<&str> = out.stdout.lines().collect();
    let last_good = lines
        .iter()
        .rposition(|l| l.contains("-> [a] ") || l.contains("-> [c] "))
        .unwrap();
    let first_failed = lines.iter().position(|l| l.starts_with("FAILED")).unwrap();
    assert!(last_good < first_failed, "{}", out.stdout);
    assert!(
        lines
            .iter()
            .filter(|l| l.starts_with("FAILED"))
            .all(|l| l.contains("-> [b] ")),
        "{}",
        out.stdout
    );
    // The big layer crossed the upstream link once.
    let log = upstream.access_log_since(mark).await;
    distinct_blob_gets(&log);
}
