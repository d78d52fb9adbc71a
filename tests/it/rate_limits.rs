//! User story: mirrorsync is a good citizen of upstream registries.
//!
//! Measured at the fault proxy in front of a real upstream registry: a `requests_per_second`
//! limit holds over a whole run; `bytes_per_second` slows a big blob down; an imitated Docker Hub
//! pull quota (`ratelimit-remaining: N;w=21600`, one pull per manifest GET) is spent only on
//! changed tags and never below `rate_limit_reserve`, the rest deferred (exit 3) and first in
//! line next run; upstream mirrors serve what they hold, the origin the rest, and a mirror that
//! is down does not stop the sync. `--nocapture` prints the figures.

use crate::common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

/// The test that loads the CPU on purpose runs alone; the others share.
static LOAD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A config syncing `images` (`repo:tag` through the proxy), with YAML lines for
/// `registries.<proxy>` (indented four spaces) and the top level.
fn config_file(world: &World, images: &[String], upstream_lines: &str, top: &str) -> PathBuf {
    world.write(&world.config(images).upstream_lines(upstream_lines).top(top))
}

async fn sync(config: &std::path::Path, extra: &[&str]) -> (Output, Duration) {
    let mut args = vec![
        "sync".to_string(),
        "--once".to_string(),
        "--config".to_string(),
        config.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let out = mirrorsync(&args).await;
    (out, started.elapsed())
}

/// A small single-platform image, distinct per `seed`.
async fn small_image(reg: &Registry, repo: &str, tag: &str, seed: u64) -> PushedImage {
    push_image(reg, repo, tag, oci_image(seed, 5_000 + seed as usize)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_per_second_with_burst_holds_over_a_whole_run() {
    let _shared = LOAD.read().await;
    let world = World::start(Proxied::Upstream).await;
    let mut images = Vec::new();
    for r in 0..4u64 {
        let repo = format!("rps/app{r}");
        let img = small_image(&world.upstream, &repo, "t0", 200 + r).await;
        for t in 1..5 {
            push_manifest(
                &world.upstream,
                &repo,
                &format!("t{t}"),
                &img.media_type,
                &img.manifest_bytes,
            )
            .await;
        }
        images.extend((0..5).map(|t| format!("{repo}:t{t}")));
    }
    assert_eq!(images.len(), 20);
    let config = config_file(
        &world,
        &images,
        "    requests_per_second: 5\n    burst: 1\n",
        "",
    );
    let (out, took) = sync(&config, &[]).await;
    out.assert_code(0);
    let seen = world.up().seen();
    let max = seen.max_in_window(Duration::from_secs(1));
    let span = seen.last().unwrap().at - seen.first().unwrap().at;
    let rate = (seen.len() - 1) as f64 / span.as_secs_f64();
    eprintln!(
        "requests_per_second 5, burst 1: {} requests in {span:.2?} ({rate:.2}/s average), at most {max} in any 1 s window; run {took:.1?}",
        seen.len()
    );
    // 20 HEADs, 4 manifest GETs, 8 blob GETs, the ping.
    assert!(seen.len() >= 33, "{}", seen.dump());
    assert!(
        max <= 5 + 1,
        "{max} requests within one second:\n{}",
        seen.dump()
    );
    assert!(
        span >= Duration::from_secs_f64((seen.len() - 2) as f64 / 5.0),
        "{} requests in {span:?}:\n{}",
        seen.len(),
        seen.dump()
    );
    for r in 0..4 {
        assert_image_complete(&world.target, &format!("rps/app{r}"), "t4").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_per_second_slows_a_big_blob_down() {
    let _shared = LOAD.read().await;
    let world = World::start(Proxied::Upstream).await;
    let size = 20 * MIB;
    let img = push_image(&world.upstream, "bps/app", "v1", oci_image(300, size)).await;
    let config = config_file(
        &world,
        &["bps/app:v1".to_string()],
        "    bytes_per_second: 5MiB\n",
        "",
    );
    let (out, took) = sync(&config, &[]).await;
    out.assert_code(0);
    eprintln!(
        "bytes_per_second 5MiB: 20 MiB blob synced in {took:.2?} ({:.1} MiB/s)",
        size as f64 / MIB as f64 / took.as_secs_f64()
    );
    assert!(
        took >= Duration::from_millis(3500),
        "20 MiB at 5 MiB/s took {took:?}"
    );
    let big = &img.blobs[1];
    assert_eq!(big.size, size as u64);
    assert_eq!(
        blob_sha256(&world.target, "bps/app", &big.digest)
            .await
            .as_deref(),
        Some(big.digest.as_str())
    );
}

/// Manifest GETs (pulls) in `seen`, as the references asked for, in arrival order.
fn pulls(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.is("GET", "manifests", None))
        .map(|s| s.reference().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_quota_is_spent_on_changed_tags_only_down_to_the_reserve_and_deferred_tags_go_first() {
    let _shared = LOAD.read().await;
    let world = World::start(Proxied::Upstream).await;
    let repo = "hub/app";
    let mut digests = std::collections::HashMap::new();
    for (i, tag) in [
        "u0", "u1", "u2", "c0", "c1", "c2", "c3", "c4", "c5", "n0", "n1",
    ]
    .iter()
    .enumerate()
    {
        let img = small_image(&world.upstream, repo, tag, 400 + i as u64).await;
        digests.insert(tag.to_string(), img.digest);
    }
    let refs = |tags: &[&str]| {
        tags.iter()
            .map(|t| format!("{repo}:{t}"))
            .collect::<Vec<_>>()
    };
    let limits = "    rate_limit_reserve: 2\n";
    let serial = "concurrency: 1\n";

    // Run 1, no quota: u0..u2 reach the target.
    let first = config_file(&world, &refs(&["u0", "u1", "u2"]), limits, serial);
    sync(&first, &[]).await.0.assert_code(0);

    // Run 2: five pulls left, reserve 2: three of the six changed tags, the rest deferred.
    world.up().set_quota(Some(5));
    let mark = world.up().mark();
    let metrics = world.dir.path().join("metrics.prom");
    let second = config_file(
        &world,
        &refs(&["u0", "u1", "u2", "c0", "c1", "c2", "c3", "c4", "c5"]),
        limits,
        serial,
    );
    let (out, _) = sync(&second, &["--metrics-file", &metrics.display().to_string()]).await;
    out.assert_code(3);
    let seen = world.up().since(mark);
    let spent = pulls(&seen);
    eprintln!(
        "quota 5, reserve 2: pulls spent on {spent:?}; {} HEADs; {} left\n{}",
        seen.count("HEAD", "manifests", None),
        world.up().quota().unwrap(),
        out.stdout
    );
    assert_eq!(seen.count("HEAD", "manifests", None), 9, "{}", seen.dump());
    // Which three of the six changed tags get the pulls is the engine's order; the rest wait.
    let changed = ["c0", "c1", "c2", "c3", "c4", "c5"];
    let (pulled, deferred): (Vec<&str>, Vec<&str>) =
        changed.iter().partition(|t| spent.contains(&digests[**t]));
    assert_eq!(
        (spent.len(), pulled.len()),
        (3, 3),
        "pulls only for changed tags, each once, down to the reserve:\n{}",
        seen.dump()
    );
    assert_eq!(world.up().quota(), Some(2), "the reserve is left");
    for t in deferred.iter().copied() {
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains(&format!("/{repo}:{t} -> ")))
            .unwrap_or_else(|| panic!("no line for {t}:\n{}", out.stdout));
        assert!(line.starts_with("DEFERRED "), "{line}");
        assert_eq!(
            head_manifest(&world.target, repo, t).await,
            None,
            "{t} was deferred"
        );
    }
    for t in pulled.iter().copied() {
        assert_image_complete(&world.target, repo, t).await;
    }
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    let gauge = text
        .lines()
        .find(|l| l.starts_with("mirrorsync_ratelimit_remaining{"))
        .unwrap_or_else(|| panic!("no mirrorsync_ratelimit_remaining in:\n{text}"));
    eprintln!("metrics: {gauge}");
    assert!(gauge.contains(&world.up().host()), "{gauge}");
    assert!(gauge.trim_end().ends_with(" 2"), "{gauge}");

    // Run 3, quota restored, two new tags listed first: the deferred tags are pulled first.
    world.up().set_quota(Some(100));
    let mark = world.up().mark();
    let third = config_file(
        &world,
        &refs(&[
            "n0", "n1", "u0", "u1", "u2", "c0", "c1", "c2", "c3", "c4", "c5",
        ]),
        limits,
        serial,
    );
    let (out, _) = sync(&third, &[]).await;
    out.assert_code(0);
    let spent = pulls(&world.up().since(mark));
    eprintln!("quota restored: pulls in order {spent:?}");
    let expected: Vec<String> = deferred
        .iter()
        .chain(["n0", "n1"].iter())
        .map(|t| digests[*t].clone())
        .collect();
    assert_eq!(spent, expected, "deferred tags first, then the new ones");
    for t in ["c3", "c4", "c5", "n0", "n1"] {
        assert_image_complete(&world.target, repo, t).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_quota_reserve_holds_when_tags_are_copied_concurrently() {
    let _shared = LOAD.read().await;
    // The default concurrency (64): six changed tags start their copies at once.
    let world = World::start(Proxied::Upstream).await;
    let repo = "hub/par";
    let mut images = Vec::new();
    for i in 0..6u64 {
        small_image(&world.upstream, repo, &format!("c{i}"), 500 + i).await;
        images.push(format!("{repo}:c{i}"));
    }
    world.up().set_quota(Some(5));
    let config = config_file(&world, &images, "    rate_limit_reserve: 2\n", "");
    let (out, _) = sync(&config, &[]).await;
    let seen = world.up().seen();
    let asked = pulls(&seen).len();
    let spent = seen
        .iter()
        .filter(|s| s.is("GET", "manifests", None) && s.status == 200)
        .count();
    eprintln!(
        "concurrent copies, quota 5, reserve 2: {spent} pulls spent ({asked} manifest GETs asked), {:?} left, exit {:?}\n{}",
        world.up().quota(),
        out.code,
        out.stdout
    );
    assert_eq!(
        spent,
        3,
        "pulls must stop at the reserve (5 left, reserve 2) whatever the concurrency:\n{}",
        seen.dump()
    );
    out.assert_code(3);
    assert_eq!(world.up().quota(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn content_comes_from_a_mirror_where_present_and_from_the_origin_otherwise() {
    let _shared = LOAD.read().await;
    let world = World::start(Proxied::Upstream).await;
    let mirror = Registry::start().await;
    let repo = "lib/app";
    // v1: a whole image the mirror also holds (manifest and blobs, by digest).
    let spec_a = ImageSpec::new(Format::Oci, vec![layer(600, 200_000), layer(601, 100_000)]);
    let a = push_image(&world.upstream, repo, "v1", spec_a.clone()).await;
    push_image(&mirror, repo, None, spec_a).await;
    // v2: the mirror holds only its layer (not the config, not the manifest).
    let layer_b = layer(602, 150_000);
    let b = push_image(
        &world.upstream,
        repo,
        "v2",
        ImageSpec::new(Format::Oci, vec![layer_b.clone()]),
    )
    .await;
    push_blob(&mirror, repo, &layer_b).await;
    // v3: an index; the mirror holds its amd64 child whole, not the arm64 child nor the index.
    let amd = oci_image(603, 120_000);
    let arm = oci_image(604, 130_000).platform("linux/arm64");
    let amd_img = push_image(&world.upstream, repo, None, amd.clone()).await;
    let arm_img = push_image(&world.upstream, repo, None, arm).await;
    let index = push_index(
        &world.upstream,
        repo,
        "v3",
        Format::Oci,
        &[(amd_img.clone(), None), (arm_img.clone(), None)],
    )
    .await;
    push_image(&mirror, repo, None, amd).await;

    let mirror_mark = mirror.log_mark().await;
    let config = config_file(
        &world,
        &[
            format!("{repo}:v1"),
            format!("{repo}:v2"),
            format!("{repo}:v3"),
        ],
        &format!("    mirrors: [\"{}\"]\n", mirror.url()),
        "",
    );
    let (out, took) = sync(&config, &[]).await;
    out.assert_code(0);
    let origin = world.up().seen();
    let at_mirror = mirror.access_log_since(mirror_mark).await.not_harness();

    let mut origin_blobs: Vec<String> = origin
        .iter()
        .filter(|s| s.is("GET", "blobs", None))
        .map(|s| s.reference().unwrap())
        .collect();
    origin_blobs.sort();
    let mut missing_at_mirror = vec![b.blobs[0].digest.clone()]; // v2's config
    missing_at_mirror.extend(arm_img.blobs.iter().map(|d| d.digest.clone()));
    missing_at_mirror.sort();
    let mut origin_manifests = pulls(&origin);
    origin_manifests.sort();
    let mut lacking = vec![
        b.digest.clone(),
        index.digest.clone(),
        arm_img.digest.clone(),
    ];
    lacking.sort();
    eprintln!(
        "mirror: {} blob GETs and {} manifest GETs at the mirror; origin: {} blob GETs, {} manifest GETs ({took:.1?})",
        at_mirror.blob_gets(None),
        at_mirror.manifest_gets(None),
        origin_blobs.len(),
        origin_manifests.len()
    );
    assert_eq!(
        origin_blobs,
        missing_at_mirror,
        "origin blob GETs only for what the mirror lacks:\n{}",
        origin.dump()
    );
    assert_eq!(
        origin_manifests,
        lacking,
        "origin manifest GETs only for what the mirror lacks:\n{}",
        origin.dump()
    );
    assert_eq!(
        origin.count("HEAD", "manifests", None),
        3,
        "tags resolve at the origin"
    );
    assert!(
        at_mirror.blob_gets(None) >= a.blobs.len() + 1 + amd_img.blobs.len(),
        "the mirror was asked first:\n{}",
        at_mirror.dump()
    );
    for tag in ["v1", "v2", "v3"] {
        assert_eq!(
            head_manifest(&world.target, repo, tag).await,
            head_manifest(&world.upstream, repo, tag).await
        );
        assert_image_complete(&world.target, repo, tag).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_that_is_down_does_not_stop_the_sync() {
    let _shared = LOAD.read().await;
    let world = World::start(Proxied::Upstream).await;
    let repo = "lib/down";
    push_image(
        &world.upstream,
        repo,
        "v1",
        ImageSpec::new(Format::Oci, vec![layer(700, 100_000), layer(701, 50_000)]),
    )
    .await;
    let closed = common::util::free_port();
    let config = config_file(
        &world,
        &[format!("{repo}:v1")],
        &format!("    mirrors: [\"http://127.0.0.1:{closed}\"]\n"),
        "",
    );
    let (out, took) = sync(&config, &[]).await;
    out.assert_code(0);
    let origin = world.up().seen();
    eprintln!(
        "mirror down: synced from the origin in {took:.1?} ({} blob GETs, {} manifest GETs)",
        origin.count("GET", "blobs", None),
        origin.count("GET", "manifests", None)
    );
    assert_eq!(origin.count("GET", "blobs", None), 3, "{}", origin.dump());
    assert_eq!(
        origin.count("GET", "manifests", None),
        1,
        "{}",
        origin.dump()
    );
    assert_image_complete(&world.target, repo, "v1").await;
}

/// Tags `t0`..`t<n-1>` of `repo`, each its own small image (seeds from `seed`): the
/// `repo:tag` list and the digests, in tag order.
async fn small_tags(reg: &Registry, repo: &str, n: u64, seed: u64) -> (Vec<String>, Vec<String>) {
    let (mut images, mut digests) = (Vec::new(), Vec::new());
    for i in 0..n {
        let img = small_image(reg, repo, &format!("t{i}"), seed + i).await;
        images.push(format!("{repo}:t{i}"));
        digests.push(img.digest);
    }
    (images, digests)
}

#[tokio::test(flavor = "multi_thread")]
async fn with_concurrency_1_changed_tags_are_copied_in_priority_order_even_under_load() {
    let _alone = LOAD.write().await;
    // The order of phase 2 is what makes deferred tags "first in line next run" (and which tags a
    // scarce pull quota is spent on). With `concurrency: 1` it must not depend on which task the
    // scheduler happens to poll first: checked three times with the CPU busy.
    let world = World::start(Proxied::Upstream).await;
    let repo = "order/app";
    let (images, digests) = small_tags(&world.upstream, repo, 10, 800).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    let mut orders = Vec::new();
    for round in 0..3 {
        let target = Registry::start().await;
        let dir = tempfile::tempdir().unwrap();
        let items: Vec<String> = images.iter().map(|i| world.image(i)).collect();
        let cfg = ConfigYaml::to_registry(&target.host())
            .top("concurrency: 1\n")
            .upstream(&world.up().host())
            .images(&items)
            .write(dir.path());
        let mark = world.up().mark();
        let (out, _) = sync(&cfg, &[]).await;
        out.assert_code(0);
        let got = pulls(&world.up().since(mark));
        let positions: Vec<usize> = got
            .iter()
            .map(|d| digests.iter().position(|x| x == d).unwrap())
            .collect();
        eprintln!("round {round}: tags copied in order {positions:?}");
        orders.push(positions);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in spinners {
        let _ = s.join();
    }
    let expected: Vec<usize> = (0..10).collect();
    for (round, order) in orders.iter().enumerate() {
        assert_eq!(
            order, &expected,
            "round {round}: copies did not start in file order"
        );
    }
}

/// The line of a textfile metric that starts with `prefix`, parsed as a number.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn deferred_exit_code_lets_a_routine_quota_deferral_succeed() {
    let _shared = LOAD.read().await;
    let world = World::start(Proxied::Upstream).await;
    let repo = "hub/quota";
    let mut images = Vec::new();
    for i in 0..6u64 {
        small_image(&world.upstream, repo, &format!("d{i}"), 600 + i).await;
        images.push(format!("{repo}:d{i}"));
    }
    let config = config_file(
        &world,
        &images,
        "    rate_limit_reserve: 2\n",
        "concurrency: 1\n",
    );
    let metrics = world.dir.path().join("metrics.prom");
    let metrics_arg = metrics.display().to_string();

    // Five pulls left, reserve 2: three tags copied, three deferred. A CronJob run with
    // --deferred-exit-code 0 succeeds, and still says what was deferred.
    world.up().set_quota(Some(5));
    let (out, _) = sync(
        &config,
        &["--deferred-exit-code", "0", "--metrics-file", &metrics_arg],
    )
    .await;
    out.assert_code(0);
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("DEFERRED "))
            .count(),
        3,
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("3 deferred"), "{}", out.stdout);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(
        metric(&text, "mirrorsync_run_tags{result=\"deferred\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "mirrorsync_run_last_success_timestamp_seconds"),
        None,
        "a deferral is not a fully successful run:\n{text}"
    );

    // Any code can be chosen; without the flag it is 3.
    world.up().set_quota(Some(2));
    sync(&config, &["--deferred-exit-code", "7"])
        .await
        .0
        .assert_code(7);
    sync(&config, &[]).await.0.assert_code(3);

    // A failed tag still fails the run, whatever the deferred code. (A tag missing upstream
    // would itself wait for a pull: a HEAD's 404 is confirmed with a GET. One the upstream
    // refuses outright fails without one.)
    let mut with_missing = images.clone();
    with_missing.push(format!("{repo}:refused"));
    world.up().add(Rule::new(
        &format!("HEAD /v2/{repo}/manifests/refused"),
        Action::Respond {
            status: 403,
            headers: vec![],
            body: bytes::Bytes::new(),
        },
    ));
    let broken = config_file(
        &world,
        &with_missing,
        "    rate_limit_reserve: 2\n",
        "concurrency: 1\n",
    );
    world.up().set_quota(Some(3));
    let (out, _) = sync(&broken, &["--deferred-exit-code", "0"]).await;
    out.assert_code(1);
    assert!(out.stdout.contains("DEFERRED "), "{}", out.stdout);
    // (`world.config` rewrites the one config file.)
    let config = config_file(
        &world,
        &images,
        "    rate_limit_reserve: 2\n",
        "concurrency: 1\n",
    );

    // Quota back: everything in sync, exit 0 with or without the flag.
    world.up().set_quota(Some(100));
    sync(&config, &["--deferred-exit-code", "7"])
        .await
        .0
        .assert_code(0);
    for i in 0..6 {
        assert_image_complete(&world.target, repo, &format!("d{i}")).await;
    }

    // The daemon has no exit code per pass: the flag is a usage error there.
    let out = mirrorsync(&[
        "sync",
        "--config",
        &config.display().to_string(),
        "--deferred-exit-code",
        "0",
    ])
    .await;
    out.assert_code(2);
    assert!(
        out.stderr.contains("--deferred-exit-code"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_tag_is_copied_while_later_tags_are_still_being_inspected() {
    let _shared = LOAD.read().await;
    // No barrier between inspecting and copying. With `concurrency: 1` (so two inspections at
    // once) and the last tag's HEAD held back 2 s by the proxy, the first tag's copy (its
    // manifest GET) must not wait for that HEAD; and copies still start in file order.
    let world = World::start(Proxied::Upstream).await;
    let repo = "pipe/app";
    let (images, digests) = small_tags(&world.upstream, repo, 8, 950).await;
    world.up().add(Rule::new(
        &format!("HEAD /v2/{repo}/manifests/t7"),
        Action::Stall(Duration::from_secs(2)),
    ));
    let config = config_file(&world, &images, "", "concurrency: 1\n");
    let (out, _) = sync(&config, &[]).await;
    out.assert_code(0);
    let seen = world.up().seen();
    let held = seen
        .iter()
        .find(|s| s.is("HEAD", "manifests", None) && s.reference().as_deref() == Some("t7"))
        .expect("the last tag was HEADed");
    let first_copy = seen
        .iter()
        .find(|s| s.is("GET", "manifests", None))
        .expect("a manifest GET");
    assert!(
        first_copy.at < held.at + Duration::from_secs(1),
        "the first copy waited for the held-back HEAD of the last tag (GET at {:?}, HEAD sent at {:?}, answered 2 s later):\n{}",
        first_copy.at,
        held.at,
        seen.dump()
    );
    let got = pulls(&seen);
    assert_eq!(got, digests, "copies did not start in file order");
    for i in 0..8 {
        assert_image_complete(&world.target, repo, &format!("t{i}")).await;
    }
}
