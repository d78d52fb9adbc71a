//! User story: the CronJob pod is killed at any instant, and the mirror is never left pointing at
//! half an image; the next run finishes the job, copying only what is still missing.
//!
//! A corpus with a 300 MiB layer, a multi-arch index and several small images sits behind the
//! fault proxy. After a measured full run, 20 trials (fixed seed) start `sync --once` and SIGKILL
//! it at a pseudo-random instant within that run time; after every kill each tag that resolves
//! at the target must be a complete image. Every few trials a final run completes the sync, and
//! its upstream blob GETs must be only for blobs absent at the target before it; then the target
//! is reset. SIGTERM and `--max-duration` with a throttled upstream stop new tags, exit 3, list
//! the DEFERRED tags, and leave no partial tag; a second SIGTERM exits at once with 3, the tags
//! finished before it saved. `--nocapture` prints the trial results.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;
const SEED: u64 = 0x6b11_1ed5;
const TRIALS: usize = 20;
/// At most this many trials in a row on one target; then a final run completes it and the
/// target is reset (also as soon as a trial finishes the sync before its kill).
const GROUP: usize = 5;

/// One configured tag and every blob and manifest digest it needs.
struct Tagged {
    repo: String,
    tag: String,
    blobs: Vec<String>,
}

async fn seed_corpus(up: &Registry) -> Vec<Tagged> {
    let mut out = Vec::new();
    let big = push_image(
        up,
        "kill/big",
        "v1",
        oci_image(1, 4000).big_layer(300 * MIB, 2),
    )
    .await;
    out.push(Tagged {
        repo: "kill/big".into(),
        tag: "v1".into(),
        blobs: big.blobs.iter().map(|b| b.digest.clone()).collect(),
    });
    let amd = push_image(
        up,
        "kill/multi",
        None,
        ImageSpec::new(
            Format::Oci,
            vec![layer(10, 3 * MIB as usize), layer(11, 50_000)],
        ),
    )
    .await;
    let arm = push_image(
        up,
        "kill/multi",
        None,
        oci_image(12, 3 * MIB as usize).platform("linux/arm64"),
    )
    .await;
    let att = attestation_manifest(up, "kill/multi", &amd).await;
    let index = push_index(
        up,
        "kill/multi",
        "v1",
        Format::Oci,
        &[(amd, None), (arm, None), (att, None)],
    )
    .await;
    out.push(Tagged {
        repo: "kill/multi".into(),
        tag: "v1".into(),
        blobs: index.blobs.iter().map(|b| b.digest.clone()).collect(),
    });
    for i in 0..4u64 {
        let repo = format!("kill/small{i}");
        let img = push_image(
            up,
            &repo,
            "v1",
            ImageSpec::new(
                Format::Docker,
                vec![
                    layer(20 + i, (1 + i as usize) * MIB as usize),
                    layer(30 + i, 10_000),
                ],
            ),
        )
        .await;
        out.push(Tagged {
            repo,
            tag: "v1".into(),
            blobs: img.blobs.iter().map(|b| b.digest.clone()).collect(),
        });
    }
    out
}

fn config(dir: &Path, proxy: &Proxy, target: &Registry, corpus: &[Tagged], extra: &str) -> PathBuf {
    let images: Vec<String> = corpus
        .iter()
        .map(|t| proxy.image_ref(&t.repo, &t.tag))
        .collect();
    ConfigYaml::to_registry(&target.host())
        .top(extra)
        .upstream(&proxy.host())
        .images(&images)
        .write(dir)
}

enum Ended {
    Exited(Option<i32>),
    Killed,
}

/// Starts `sync --once` and SIGKILLs it after `delay` unless it exits first.
async fn run_and_kill(config: &Path, delay: Duration) -> (Ended, Duration) {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin_path())
        .args(["sync", "--once", "--config", &config.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mirrorsync");
    let pid = child.id().expect("pid") as libc::pid_t;
    tokio::select! {
        status = child.wait() => (Ended::Exited(status.expect("wait").code()), started.elapsed()),
        _ = tokio::time::sleep(delay) => {
            // SAFETY: `pid` is our own child, not yet reaped (wait has not returned).
            let r = unsafe { libc::kill(pid, libc::SIGKILL) };
            assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
            let _ = child.wait().await;
            (Ended::Killed, started.elapsed())
        }
    }
}

/// Every tag that resolves at the target must be a complete image; returns how many resolve.
async fn assert_no_partial_tag(target: &Registry, corpus: &[Tagged], context: &str) -> usize {
    let mut present = 0;
    for t in corpus {
        if head_manifest(target, &t.repo, &t.tag).await.is_some() {
            eprintln!("  {context}: {}:{} present, checking", t.repo, t.tag);
            assert_image_complete(target, &t.repo, &t.tag).await;
            present += 1;
        }
    }
    present
}

/// Blob digests of the corpus absent from the repository that needs them.
async fn absent_blobs(target: &Registry, corpus: &[Tagged]) -> BTreeSet<String> {
    let mut absent = BTreeSet::new();
    for t in corpus {
        for b in &t.blobs {
            if blob_size(target, &t.repo, b).await.is_none() {
                absent.insert(b.clone());
            }
        }
    }
    absent
}

/// The final run: completes the sync, pulling only blobs that were absent before it.
async fn final_run(
    proxy: &Proxy,
    upstream: &Registry,
    target: &Registry,
    corpus: &[Tagged],
    config: &Path,
) {
    let absent = absent_blobs(target, corpus).await;
    let mark = proxy.mark();
    let out = mirrorsync(&["sync", "--once", "--config", &config.display().to_string()]).await;
    out.assert_code(0);
    let seen = proxy.since(mark);
    let pulled = pulled_blobs(&seen);
    eprintln!(
        "  final run: {} blobs absent before it, {} pulled",
        absent.len(),
        pulled.len()
    );
    assert_only_missing(&pulled, &absent, &seen);
    for t in corpus {
        assert_eq!(
            head_manifest(target, &t.repo, &t.tag).await,
            head_manifest(upstream, &t.repo, &t.tag).await,
            "{}:{}",
            t.repo,
            t.tag
        );
        assert_image_complete(target, &t.repo, &t.tag).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_points_never_leaves_a_partial_tag() {
    let test_started = Instant::now();
    let upstream = Registry::start().await;
    let proxy = Proxy::start(&upstream).await;
    let corpus = seed_corpus(&upstream).await;
    eprintln!("seeded the corpus in {:.1?}", test_started.elapsed());
    let dir = tempfile::tempdir().unwrap();

    // One full run to learn how long a sync takes.
    let mut target = Registry::start().await;
    let mut cfg = config(dir.path(), &proxy, &target, &corpus, "");
    let started = Instant::now();
    mirrorsync(&["sync", "--once", "--config", &cfg.display().to_string()])
        .await
        .assert_code(0);
    let full = started.elapsed();
    eprintln!("a full run takes {full:.2?}");
    target = Registry::start().await;
    cfg = config(dir.path(), &proxy, &target, &corpus, "");

    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let (mut killed, mut finished, mut tag_checks, mut final_runs) = (0, 0, 0, 0);
    for trial in 0..TRIALS {
        let absent = absent_blobs(&target, &corpus).await;
        let mark = proxy.mark();
        let delay = Duration::from_secs_f64(rng.random_range(0.05..full.as_secs_f64()));
        let (ended, ran) = run_and_kill(&cfg, delay).await;
        let present = assert_no_partial_tag(&target, &corpus, &format!("trial {trial}")).await;
        tag_checks += present;
        // Killed or not, a run pulls only blobs that were absent when it started, each once.
        let pulled = pulled_blobs(&proxy.since(mark));
        assert_only_missing(&pulled, &absent, &proxy.since(mark));
        match ended {
            Ended::Killed => {
                killed += 1;
                eprintln!(
                    "trial {trial}: SIGKILL after {ran:.2?}; {present}/{} tags present, all complete; pulled {} of {} absent blobs",
                    corpus.len(),
                    pulled.len(),
                    absent.len()
                );
            }
            Ended::Exited(code) => {
                finished += 1;
                eprintln!(
                    "trial {trial}: exited {code:?} after {ran:.2?}, before the kill at {delay:.2?}; pulled {} of {} absent blobs",
                    pulled.len(),
                    absent.len()
                );
                assert_eq!(code, Some(0));
            }
        }
        // Every GROUP trials, or when a run finished the job: complete it, then start over.
        let done = matches!(ended, Ended::Exited(_));
        if done || trial % GROUP == GROUP - 1 {
            final_run(&proxy, &upstream, &target, &corpus, &cfg).await;
            final_runs += 1;
            target = Registry::start().await;
            cfg = config(dir.path(), &proxy, &target, &corpus, "");
        }
    }
    eprintln!(
        "{TRIALS} trials: {killed} killed mid-run, {finished} finished first; {tag_checks} tags checked complete after kills, none partial; {final_runs} final runs pulled only missing blobs; {:.1?} in all",
        test_started.elapsed()
    );
    assert!(
        killed >= TRIALS / 2,
        "most trials must kill a running sync ({killed} of {TRIALS})"
    );
}

/// Digests of the blob GETs in `seen`, in order.
fn pulled_blobs(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.is("GET", "blobs", None))
        .map(|s| s.reference().unwrap_or_default())
        .collect()
}

fn assert_only_missing(pulled: &[String], absent: &BTreeSet<String>, seen: &[Seen]) {
    let unique: BTreeSet<&String> = pulled.iter().collect();
    let extra: Vec<&&String> = unique
        .iter()
        .filter(|d| !absent.contains(d.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "pulled blobs the target already held: {extra:?}\n{}",
        seen.dump()
    );
    assert_eq!(
        pulled.len(),
        unique.len(),
        "a blob was pulled twice:\n{}",
        seen.dump()
    );
}

const SLOW_TAGS: [&str; 5] = [
    "slow/big",
    "slow/small0",
    "slow/small1",
    "slow/small2",
    "slow/small3",
];

/// Stopped early: exit 3; `synced` tags (the one in flight at the stop, when it finished within
/// the grace period) are complete at the target; every other tag is DEFERRED and absent.
async fn assert_stopped_early(out: &Output, target: &Registry, synced: usize) {
    out.assert_code(3);
    let mut done = 0;
    for repo in SLOW_TAGS {
        let needle = format!("/{repo}:v1 -> ");
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_else(|| panic!("no summary line for {repo}:\n{}", out.stdout));
        if line.starts_with("DEFERRED ") {
            assert_eq!(
                head_manifest(target, repo, "v1").await,
                None,
                "{repo} was deferred but its tag is at the target"
            );
        } else {
            done += 1;
            assert_image_complete(target, repo, "v1").await;
        }
    }
    assert_eq!(done, synced, "tags synced:\n{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_duration_lets_the_running_tag_finish_and_defers_the_rest() {
    let slow = slow_world(40 * MIB).await;
    let (target, cfg) = (&slow.world.target, &slow.config);
    let started = Instant::now();
    let out = mirrorsync(&[
        "sync",
        "--once",
        "--config",
        &cfg.display().to_string(),
        "--max-duration",
        "1s",
    ])
    .await;
    eprintln!(
        "--max-duration 1s, 40 MiB at 20 MiB/s in flight: exit {:?} after {:.1?}\n{}",
        out.code,
        started.elapsed(),
        out.stdout
    );
    assert_stopped_early(&out, target, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_duration_abandons_a_transfer_after_the_grace_period_without_a_partial_tag() {
    let slow = slow_world(100 * MIB).await;
    let (target, cfg) = (&slow.world.target, &slow.config);
    let started = Instant::now();
    let out = mirrorsync(&[
        "sync",
        "--once",
        "--config",
        &cfg.display().to_string(),
        "--max-duration",
        "1s",
        "--grace-period",
        "1s",
    ])
    .await;
    let took = started.elapsed();
    eprintln!(
        "--max-duration 1s --grace-period 1s, 100 MiB at 20 MiB/s: exit {:?} after {took:.1?}\n{}",
        out.code, out.stdout
    );
    assert!(took < Duration::from_secs(6), "stopped after {took:?}");
    assert_stopped_early(&out, target, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_new_tags_and_exits_3() {
    let slow = slow_world(40 * MIB).await;
    let (target, cfg) = (&slow.world.target, &slow.config);
    let started = Instant::now();
    let child = spawn_mirrorsync(&["sync", "--once", "--config", &cfg.display().to_string()]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    sigterm(&child);
    let out = wait_output(child, Duration::from_secs(60), "exits after SIGTERM").await;
    eprintln!(
        "SIGTERM after 1 s: exit {:?} after {:.1?}\n{}",
        out.code,
        started.elapsed(),
        out.stdout
    );
    assert_stopped_early(&out, target, 1).await;
}

/// The run state a registry target holds (`mirrorsync/state:latest`), as JSON.
async fn saved_state(target: &Registry) -> serde_json::Value {
    let (bytes, _, _) = get_manifest(target, "mirrorsync/state", "latest")
        .await
        .expect("a saved state");
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).expect("state manifest");
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("state layer");
    let path = format!("/v2/mirrorsync/state/blobs/{layer}");
    let body = target
        .client()
        .get(&path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
        .bytes()
        .await
        .expect("state body");
    serde_json::from_slice(&body).expect("state document")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_exits_at_once_with_the_finished_tags_saved() {
    // 200 MiB at 20 MiB/s: the big tag needs about 10 s, far more than the test allows after
    // the second signal. Two tags at once: a small one finishes first while the big one runs.
    let slow = slow_world(200 * MIB).await;
    let (target, cfg) = (&slow.world.target, &slow.config);
    let yaml = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(cfg, yaml.replace("concurrency: 1\n", "concurrency: 2\n")).unwrap();
    let child = spawn_mirrorsync(&["sync", "--once", "--config", &cfg.display().to_string()]);
    let started = Instant::now();
    while head_manifest(target, "slow/small0", "v1").await.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "slow/small0 never reached the target"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = Instant::now();
    // The first signal did not end the process (30 s grace period).
    sigterm(&child);
    let out = wait_output(
        child,
        Duration::from_secs(60),
        "exits after the second SIGTERM",
    )
    .await;
    let took = second.elapsed();
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    eprintln!(
        "second SIGTERM: exit {:?} after {took:.1?}\n{stdout}",
        out.code
    );
    assert_eq!(out.code, Some(3), "{stdout}\n{stderr}");
    assert!(
        took < Duration::from_secs(4),
        "exited {took:?} after the second signal"
    );
    assert_eq!(
        stderr.matches("second signal").count(),
        1,
        "one log line for the second signal:\n{stderr}"
    );
    // The big tag was abandoned: deferred, and not at the target.
    let big = stdout
        .lines()
        .find(|l| l.contains("/slow/big:v1 -> "))
        .unwrap_or_else(|| panic!("no line for slow/big:\n{stdout}"));
    assert!(big.starts_with("DEFERRED "), "{big}");
    assert_eq!(head_manifest(target, "slow/big", "v1").await, None);
    // The tag finished before the signals is complete at the target and recorded as in sync.
    assert_image_complete(target, "slow/small0", "v1").await;
    let state = saved_state(target).await;
    let tags = state["tags"].as_object().expect("tags in the state");
    let entry = |repo: &str| {
        tags.iter()
            .find(|(k, _)| k.contains(&format!("/{repo}:v1 -> ")))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{repo} not in the state: {state}"))
    };
    let small = entry("slow/small0");
    assert!(small["last_synced"].is_number(), "{small}");
    assert!(small.get("pending_since").is_none(), "{small}");
    let big = entry("slow/big");
    assert!(big["pending_since"].is_number(), "{big}");
}
