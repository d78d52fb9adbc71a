//! User story: an image with a very large layer is mirrored with flat, bounded memory.
//!
//! Given images with a 256 MiB and a 1 GiB generated layer upstream, when I run
//! `mirrorsync sync --once` (measured with `wait4`), then it exits 0, the target serves the
//! layer with the right size and a recomputed sha256 equal to its digest, the layer crossed the
//! upstream link once, and mirrorsync's peak RSS stays under 100 MiB and does not grow with the
//! layer size. Peak RSS and wall time are printed (`--nocapture` shows them).

use crate::common;

use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;
/// The contract: memory stays bounded whatever the blob size.
const RSS_LIMIT_KIB: u64 = 100 * 1024;

struct Measured {
    rss_kib: u64,
    wall: Duration,
}

/// Seeds `repo:v1` with one `size`-byte generated layer at `upstream`, syncs it into `target`
/// in a measured run, verifies the result at the target, and returns the measurements.
async fn sync_big_layer(
    upstream: &Registry,
    target: &Registry,
    repo: &str,
    size: u64,
    seed: u64,
) -> Measured {
    let seeded = Instant::now();
    let img = push_image(
        upstream,
        repo,
        "v1",
        oci_image(seed, 1000).big_layer(size, seed + 1),
    )
    .await;
    eprintln!(
        "{repo}: seeded {} MiB upstream in {:.1?}",
        size / MIB,
        seeded.elapsed()
    );
    let big = img
        .blobs
        .iter()
        .find(|b| b.size == size)
        .expect("the big layer")
        .clone();

    let dir = tempfile::tempdir().unwrap();
    let config = ConfigYaml::to_registry(&target.host())
        .upstream(&upstream.host())
        .images(&[upstream.image_ref(repo, "v1")])
        .write(dir.path());
    let u_mark = upstream.log_mark().await;
    let started = Instant::now();
    let (out, rss_kib) = run_measured_with_env(
        &["sync", "--once", "--config", config.to_str().unwrap()],
        &[("DOCKER_CONFIG", dir.path().to_str().unwrap())],
    )
    .await;
    let wall = started.elapsed();
    eprintln!(
        "{repo}: synced a {} MiB layer: peak RSS {:.1} MiB, wall time {:.1?} ({:.0} MiB/s)",
        size / MIB,
        rss_kib as f64 / 1024.0,
        wall,
        size as f64 / MIB as f64 / wall.as_secs_f64()
    );
    out.assert_code(0);

    // The target holds the exact manifest and the layer, whose content hashes to its digest.
    let (_, _, digest) = get_manifest(target, repo, "v1")
        .await
        .expect("tag at the target");
    assert_eq!(digest, img.digest);
    assert_image_complete(target, repo, "v1").await;
    assert_eq!(blob_size(target, repo, &big.digest).await, Some(size));
    let verified = Instant::now();
    assert_eq!(
        blob_sha256(target, repo, &big.digest).await.as_deref(),
        Some(big.digest.as_str()),
        "the big layer's content at the target"
    );
    eprintln!(
        "{repo}: recomputed the target's layer digest in {:.1?}",
        verified.elapsed()
    );
    // It crossed the upstream link exactly once.
    let log = upstream.access_log_since(u_mark).await;
    let gets = log
        .iter()
        .filter(|a| a.method == "GET" && a.reference().as_deref() == Some(big.digest.as_str()))
        .count();
    assert_eq!(gets, 1, "{}", log.dump());

    assert!(
        rss_kib < RSS_LIMIT_KIB,
        "{repo}: peak RSS {rss_kib} KiB for a {} MiB layer; limit {RSS_LIMIT_KIB} KiB",
        size / MIB
    );
    Measured { rss_kib, wall }
}

#[tokio::test(flavor = "multi_thread")]
async fn big_layers_stream_with_flat_memory() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    // One after the other, so the two measurements do not compete for the CPU.
    let small = sync_big_layer(&upstream, &target, "big/quarter", 256 * MIB, 256).await;
    let large = sync_big_layer(&upstream, &target, "big/gib", 1 << 30, 1024).await;
    eprintln!(
        "peak RSS: 256 MiB layer {:.1} MiB ({:.1?}); 1 GiB layer {:.1} MiB ({:.1?})",
        small.rss_kib as f64 / 1024.0,
        small.wall,
        large.rss_kib as f64 / 1024.0,
        large.wall
    );
    // Flat: four times the data may not cost more than a little extra memory (a buffer-the-blob
    // bug would add at least the 768 MiB difference).
    assert!(
        large.rss_kib <= small.rss_kib + 32 * 1024,
        "peak RSS grew with the layer size: {} KiB (256 MiB) -> {} KiB (1 GiB)",
        small.rss_kib,
        large.rss_kib
    );
}
