//! User story: the limits I set for my target registry hold, and a flag that would do nothing in
//! the mode I run is refused instead of ignored.
//!
//! `target.bytes_per_second` paces every blob byte written to the target (uploads from upstream
//! and copies between target repositories when the target refuses a mount), measured as the
//! wall time of a run; `target.concurrency` bounds the upload sessions open at once, counted at
//! a proxy in front of the target. `--nocapture` prints the figures.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;

/// A config mirroring `images` from `upstream` into the registry at `target_host`, with YAML
/// lines (indented two spaces) under `target:`.
fn config(
    dir: &Path,
    upstream: &Registry,
    target_host: &str,
    target_extra: &str,
    images: &str,
) -> PathBuf {
    write_config(
        dir,
        &format!(
            "target:\n  registry: \"{target_host}\"\n  insecure: true\n{target_extra}\
             registries:\n  \"{u}\": {{ insecure: true }}\n\
             images:\n{images}",
            u = upstream.host()
        ),
    )
}

async fn sync_once(config: &Path, env_dir: &TempDir) -> (Output, Duration) {
    let started = Instant::now();
    let out = mirrorsync_with_env(
        &["sync", "--once", "--config", config.to_str().unwrap()],
        &[("DOCKER_CONFIG", env_dir.path().to_str().unwrap())],
    )
    .await;
    (out, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn target_bytes_per_second_paces_uploads() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let size = 20 * MIB;
    let img = push_image(
        &upstream,
        "big/app",
        "1.0",
        ImageSpec::new(Format::Oci, vec![]).big_layer(size, 77),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &upstream,
        &target.host(),
        "  bytes_per_second: 2MiB\n",
        &format!("  - {}\n", upstream.image_ref("big/app", "1.0")),
    );
    let (out, took) = sync_once(&config, &dir).await;
    out.assert_code(0);
    let (_, _, digest) = get_manifest(&target, "big/app", "1.0").await.expect("tag");
    assert_eq!(digest, img.digest);
    eprintln!("20 MiB up under target.bytes_per_second 2MiB: {took:.1?}");
    // 20 MiB at 2 MiB/s is 10 s (less a quarter-second burst); a limit can only slow a run
    // down, so only the lower bound is asserted.
    assert!(
        took >= Duration::from_secs(8),
        "20 MiB went up in {took:.1?} under a 2 MiB/s target limit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn target_bytes_per_second_paces_copies_within_the_target() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let proxy = Proxy::start(&target).await;
    // The target refuses cross-repository mounts (opens a plain upload session instead), so the
    // second repository gets the blob by a copy within the target.
    proxy.add(Rule::new(
        "POST /v2/*/blobs/uploads/?*mount=*",
        Action::respond(
            202,
            &[("Location", "/v2/refused/blobs/uploads/no-such-session")],
            "",
        ),
    ));
    let size = 8 * MIB;
    let img = push_image(
        &upstream,
        "big/app",
        "1.0",
        ImageSpec::new(Format::Oci, vec![]).big_layer(size, 78),
    )
    .await;
    let layer = img.blobs.last().unwrap().digest.clone();
    let source = upstream.image_ref("big/app", "1.0");
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &upstream,
        &proxy.host(),
        "  bytes_per_second: 2MiB\n",
        &format!(
            "  - {{ source: \"{source}\", target: one/app }}\n  - {{ source: \"{source}\", target: two/app }}\n"
        ),
    );
    let u_mark = upstream.log_mark().await;
    let (out, took) = sync_once(&config, &dir).await;
    out.assert_code(0);
    for repo in ["one/app", "two/app"] {
        let (_, _, digest) = get_manifest(&target, repo, "1.0").await.expect("tag");
        assert_eq!(digest, img.digest);
    }
    // The layer crossed the upstream link once; the second copy was read from the target.
    let log = upstream.access_log_since(u_mark).await;
    let gets = log
        .iter()
        .filter(|a| a.method == "GET" && a.reference().as_deref() == Some(layer.as_str()))
        .count();
    assert_eq!(gets, 1, "{}", log.dump());
    let seen = proxy.seen();
    assert_eq!(
        seen.blob_gets_of(&layer).len(),
        1,
        "one read within the target:\n{}",
        seen.dump()
    );
    eprintln!("8 MiB up plus 8 MiB copied within the target at 2 MiB/s: {took:.1?}");
    // 16 MiB written at 2 MiB/s: 8 s less one burst. Without pacing the copy within the
    // target, the run would take about half.
    assert!(
        took >= Duration::from_secs(7),
        "16 MiB written in {took:.1?} under a 2 MiB/s target limit"
    );
}

/// The most upload sessions open at once at the target, from its own access log, whose lines
/// are written as responses complete: +1 at each `POST .../blobs/uploads/` that opened one
/// (202), -1 at its `PUT` (commit) or `DELETE` (cancel).
fn max_open_uploads(log: &[Access]) -> usize {
    let (mut open, mut max) = (0i64, 0i64);
    for a in log.iter().filter(|a| a.kind() == Some("uploads")) {
        match a.method.as_str() {
            "POST" if a.status == 202 => open += 1,
            "PUT" | "DELETE" if a.reference().is_some_and(|r| !r.is_empty()) => open -= 1,
            _ => {}
        }
        max = max.max(open);
    }
    max as usize
}

#[tokio::test(flavor = "multi_thread")]
async fn target_concurrency_bounds_uploads_in_flight() {
    let upstream = Registry::start().await;
    let proxy = Proxy::start(&upstream).await;
    let target = Registry::start().await;
    // Each blob streams from upstream at 1 MiB/s straight into its upload (about 250 ms), so
    // uploads that are allowed to overlap do.
    proxy.add(Rule::new(
        "GET /v2/*/blobs/*",
        Action::Throttle(1024 * 1024),
    ));
    let layers = |seed: u64| (0..5).map(|i| layer(seed + i, 256 * 1024)).collect();
    push_image(
        &upstream,
        "wide/a",
        "1",
        ImageSpec::new(Format::Oci, layers(500)),
    )
    .await;
    push_image(
        &upstream,
        "wide/b",
        "1",
        ImageSpec::new(Format::Oci, layers(600)),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = |target_extra: &str, repo: &str| {
        ConfigYaml::to_registry(&target.host())
            .target_lines(target_extra)
            .upstream(&proxy.host())
            .images(&[proxy.image_ref(repo, "1")])
            .write(dir.path())
    };

    // Control: with the default (32), several uploads are open at once, so the count sees
    // overlap when there is some.
    let mark = target.log_mark().await;
    sync_once(&config("", "wide/a"), &dir)
        .await
        .0
        .assert_code(0);
    let log = target.access_log_since(mark).await.not_harness();
    let control_max = max_open_uploads(&log);
    assert!(
        control_max > 1,
        "no overlap with the default:\n{}",
        log.dump()
    );

    let mark = target.log_mark().await;
    sync_once(&config("  concurrency: 1\n", "wide/b"), &dir)
        .await
        .0
        .assert_code(0);
    let log = target.access_log_since(mark).await.not_harness();
    let uploads = log
        .iter()
        .filter(|a| a.method == "PUT" && a.kind() == Some("uploads"))
        .filter(|a| a.repo().as_deref() == Some("wide/b"))
        .count();
    let max = max_open_uploads(&log);
    eprintln!(
        "uploads open at once: {control_max} with the default, {max} with target.concurrency 1 ({uploads} uploads)"
    );
    assert_eq!(uploads, 6, "config and 5 layers:\n{}", log.dump());
    assert_eq!(max, 1, "{}", log.dump());
    assert_image_complete(&target, "wide/b", "1").await;
}

/// Runs `sync` with `args` on a config that would work, with a short time limit (a daemon that
/// wrongly started would run until killed).
async fn refused(args: &[&str], env: &[(&str, &str)], flag: &str) {
    let upstream = Registry::start().await;
    push_image(&upstream, "team/app", "1.0", oci_image(9, 1024)).await;
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    let config = write_config(
        dir.path(),
        &format!(
            "schedule: \"* * * * *\"\ntarget:\n  path: {}\n\
             registries:\n  \"{u}\": {{ insecure: true }}\n\
             images:\n  - {u}/team/app:1.0\n",
            mirror.display(),
            u = upstream.host()
        ),
    );
    let mut all = vec!["sync", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let mut all_env = vec![("DOCKER_CONFIG", dir.path().to_str().unwrap())];
    all_env.extend_from_slice(env);
    let mark = upstream.log_mark().await;
    let out = common::bin::run_with(bin_path(), &all, &all_env, Duration::from_secs(30)).await;
    out.assert_code(2);
    assert!(
        out.stderr.contains(flag)
            && (out.stderr.contains("applies only to") || out.stderr.contains("needs")),
        "{args:?}: stderr should say why {flag} is refused:\n{}",
        out.stderr
    );
    assert!(!mirror.exists(), "{args:?}: nothing may be synced");
    assert!(
        upstream
            .access_log_since(mark)
            .await
            .not_harness()
            .is_empty(),
        "{args:?}: nothing may be asked upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flags_that_do_nothing_in_a_mode_are_usage_errors() {
    // --once: the daemon's flags.
    refused(
        &["--once", "--metrics-addr", "127.0.0.1:0"],
        &[],
        "--metrics-addr",
    )
    .await;
    refused(&["--once", "--run-now"], &[], "--run-now").await;
    refused(&["--once", "--instance", "pod-1"], &[], "--instance").await;
    // The daemon: the flags of a single run.
    refused(
        &["--pushgateway", "http://127.0.0.1:9"],
        &[],
        "--pushgateway",
    )
    .await;
    refused(
        &[],
        &[("MIRRORSYNC_PUSHGATEWAY", "http://127.0.0.1:9")],
        "MIRRORSYNC_PUSHGATEWAY",
    )
    .await;
    refused(
        &["--metrics-file", "/tmp/never.prom"],
        &[],
        "--metrics-file",
    )
    .await;
    refused(&["--max-duration", "1m"], &[], "--max-duration").await;
}
