//! The run report a pipeline reads (`--report FILE`): one JSON document per run, compared here
//! with what the registries hold (skopeo, the registry API, the pushed bytes). A cold sync
//! reports new tags with their digests and blob counts; a no-op run reports every tag
//! unchanged; a missing tag is failed with its reason and no secret; SIGTERM and
//! `--max-duration` leave a whole report with the tags never started deferred and exit 3; `plan`
//! reports new and updated tags and writes nothing to the target; a path that cannot be written
//! stops the run before any request; a config error or a pass that cannot start still leaves a
//! report; the file is replaced whole; the README's example has the keys of a real report.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// Reads and parses the report; panics with the run's output when it is absent or not JSON.
fn read_report(path: &Path, out: &Output) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "no report at {} ({e})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            path.display(),
            out.stdout,
            out.stderr
        )
    });
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "report is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// The report's entry for the tag whose source ends with `/repo:tag`.
fn entry<'a>(report: &'a Value, repo_tag: &str) -> &'a Value {
    report["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .find(|t| {
            t["source"]
                .as_str()
                .is_some_and(|s| s.ends_with(&format!("/{repo_tag}")))
        })
        .unwrap_or_else(|| panic!("no entry for {repo_tag}:\n{report:#}"))
}

/// The document's frame: schema version, command, exit code equal to the process's, times.
fn assert_frame(report: &Value, out: &Output, command: &str) {
    assert_eq!(report["schemaVersion"], 1, "{report:#}");
    assert_eq!(report["command"], command);
    assert_eq!(
        report["exitCode"].as_i64(),
        out.code.map(i64::from),
        "exit code in the report is the process's\n{report:#}\n{}",
        out.stderr
    );
    for (text, unix) in [("startedAt", "startedAtUnix"), ("endedAt", "endedAtUnix")] {
        let at = report[text].as_str().expect(text);
        let parsed = chrono::DateTime::parse_from_rfc3339(at).expect("RFC 3339");
        assert!(at.ends_with('Z'), "{text} is UTC: {at}");
        assert_eq!(Some(parsed.timestamp()), report[unix].as_i64(), "{text}");
    }
    assert!(report["endedAtUnix"].as_i64() >= report["startedAtUnix"].as_i64());
}

/// `totals` counted from the entries: tags per result and the sums of the blob counters.
fn assert_totals_add_up(report: &Value) {
    let tags = report["tags"].as_array().expect("tags");
    let totals = &report["totals"];
    assert_eq!(totals["tags"].as_u64(), Some(tags.len() as u64));
    for result in ["unchanged", "new", "updated", "failed", "deferred"] {
        let n = tags.iter().filter(|t| t["result"] == result).count() as u64;
        assert_eq!(totals[result].as_u64(), Some(n), "{result}\n{report:#}");
    }
    for key in ["blobsCopied", "blobsMounted", "blobsPresent", "bytesCopied"] {
        let sum: u64 = tags.iter().map(|t| t[key].as_u64().expect(key)).sum();
        assert_eq!(totals[key].as_u64(), Some(sum), "{key}");
    }
}

/// `sha256:` of the manifest bytes skopeo reads at `image` (a `docker://` reference).
async fn digest_by_skopeo(image: &str) -> String {
    sha256_digest(&skopeo_inspect_raw(&format!("docker://{image}"), &["--tls-verify=false"]).await)
}

/// Runs mirrorsync with `--report <report>` appended.
async fn run_with_report(args: &[&str], report: &Path) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    let report = report.display().to_string();
    all.extend(["--report", &report]);
    mirrorsync(&all).await
}

/// Upstream `team/web:1` (OCI, two layers) and `team/api:2` (Docker, one layer), a target with
/// prefix `mirror`.
async fn two_images(upstream: &Registry) -> (PushedImage, PushedImage) {
    let web = push_image(
        upstream,
        "team/web",
        "1",
        ImageSpec::new(Format::Oci, vec![layer(1, 30_000), layer(2, 5_000)]),
    )
    .await;
    let api = push_image(upstream, "team/api", "2", docker_image(3, 20_000)).await;
    (web, api)
}

fn refs(upstream: &Registry) -> Vec<String> {
    vec![
        upstream.image_ref("team/web", "1"),
        upstream.image_ref("team/api", "2"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_sync_reports_each_tag_as_the_target_holds_it() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let (web, api) = two_images(&upstream).await;
    let s = Scenario::registry_to_registry(&upstream, &target, "mirror", &refs(&upstream));
    let path = s.dir.path().join("report.json");
    let out = run_with_report(&["sync", "--once", "--config", &s.config_arg()], &path).await;
    out.assert_code(0);
    let report = read_report(&path, &out);
    assert_frame(&report, &out, "sync");
    assert_totals_add_up(&report);
    assert_eq!(report["error"], Value::Null);
    assert_eq!(report["totals"]["new"], 2, "{report:#}");
    for (repo, tag, pushed) in [("team/web", "1", &web), ("team/api", "2", &api)] {
        let e = entry(&report, &format!("{repo}:{tag}"));
        let at = format!("{}/mirror/{repo}:{tag}", target.host());
        assert_eq!(e["source"], upstream.image_ref(repo, tag));
        assert_eq!(e["target"], at.as_str());
        assert_eq!(e["targetName"], Value::Null);
        assert_eq!(e["result"], "new");
        assert_eq!(e["oldDigest"], Value::Null);
        assert_eq!(e["reason"], Value::Null);
        assert_eq!(e["failureCause"], Value::Null);
        // The digest reported is the one the target serves, and the one pushed upstream.
        assert_eq!(e["newDigest"], digest_by_skopeo(&at).await.as_str());
        assert_eq!(e["newDigest"], pushed.digest.as_str());
        // Every blob (config and layers) crossed once; their sizes are the bytes.
        assert_eq!(e["blobsCopied"].as_u64(), Some(pushed.blobs.len() as u64));
        let bytes: u64 = pushed.blobs.iter().map(|b| b.size).sum();
        assert_eq!(e["bytesCopied"].as_u64(), Some(bytes), "{e:#}");
        assert_eq!(e["blobsMounted"], 0);
        assert_eq!(e["blobsPresent"], 0);
        assert!(e["durationMs"].is_u64());
    }
    // Written atomically: nothing but the report and the config is left in the directory.
    let mut names: Vec<String> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["report.json", "sync.yaml"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_with_nothing_to_do_reports_every_tag_unchanged() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let (web, api) = two_images(&upstream).await;
    let s = Scenario::registry_to_registry(&upstream, &target, "", &refs(&upstream));
    s.sync().await.assert_code(0);
    let path = s.dir.path().join("report.json");
    let out = run_with_report(&["sync", "--once", "--config", &s.config_arg()], &path).await;
    out.assert_code(0);
    let report = read_report(&path, &out);
    assert_frame(&report, &out, "sync");
    assert_totals_add_up(&report);
    assert_eq!(report["totals"]["unchanged"], 2, "{report:#}");
    assert_eq!(report["totals"]["bytesCopied"], 0);
    for (repo_tag, pushed) in [("team/web:1", &web), ("team/api:2", &api)] {
        let e = entry(&report, repo_tag);
        assert_eq!(e["result"], "unchanged");
        let held = digest_by_skopeo(&format!("{}/{repo_tag}", target.host())).await;
        assert_eq!(e["oldDigest"], held.as_str());
        assert_eq!(e["newDigest"], held.as_str());
        assert_eq!(e["newDigest"], pushed.digest.as_str());
        assert_eq!(e["blobsCopied"], 0);
    }
}

const UPSTREAM_USER: &str = "puller";
const UPSTREAM_PASSWORD: &str = "Up-Pa55word-d41c8e";
const SIGNATURE: &str = "Sig-b7e0f2a9c4";

#[tokio::test(flavor = "multi_thread")]
async fn failed_tags_carry_their_reason_and_no_secret() {
    let upstream = Registry::start_with(RegistryOptions {
        htpasswd: Some((UPSTREAM_USER.into(), UPSTREAM_PASSWORD.into())),
        ..Default::default()
    })
    .await;
    let target = Registry::start().await;
    let (web, _) = two_images(&upstream).await;
    push_image(&upstream, "team/cdn", "1", oci_image(9, 4_000)).await;
    let up = Proxy::start(&upstream).await;
    // `team/cdn`'s blobs are redirected to a signed URL that the "CDN" refuses.
    let cdn = Proxy::standalone().await;
    cdn.add(Rule::new("* *", Action::status(403)));
    up.add(Rule::new(
        "GET /v2/team/cdn/blobs/*",
        Action::redirect(
            307,
            &format!(
                "http://{}/object?X-Amz-Signature={SIGNATURE}&X-Amz-Credential=AKIA",
                cdn.host()
            ),
        ),
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "target:\n  registry: \"{t}\"\n  insecure: true\n\
             registries:\n  \"{u}\":\n    insecure: true\n    auth: {{ username: {UPSTREAM_USER}, password_env: UP_PASSWORD }}\n\
             images:\n  - {u}/team/web:1\n  - {u}/team/ghost:1\n  - {u}/team/cdn:1\n",
            t = target.host(),
            u = up.host(),
        ),
    );
    let path = dir.path().join("report.json");
    let out = mirrorsync_with_env(
        &[
            "sync",
            "--once",
            "--config",
            &config.display().to_string(),
            "--report",
            &path.display().to_string(),
        ],
        &[("UP_PASSWORD", UPSTREAM_PASSWORD)],
    )
    .await;
    out.assert_code(1);
    let report = read_report(&path, &out);
    assert_frame(&report, &out, "sync");
    assert_totals_add_up(&report);
    assert_eq!(report["totals"]["failed"], 2, "{report:#}");
    let ghost = entry(&report, "team/ghost:1");
    assert_eq!(ghost["result"], "failed");
    assert_eq!(ghost["failureCause"], "other");
    assert_eq!(ghost["newDigest"], Value::Null);
    let reason = ghost["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("not found") && reason.contains("team/ghost"),
        "{reason}"
    );
    // The same words as the summary line on stdout.
    assert!(
        failed_line(&out, "team/ghost:1").ends_with(reason),
        "{}",
        out.stdout
    );
    let cdn_entry = entry(&report, "team/cdn:1");
    assert_eq!(cdn_entry["result"], "failed");
    assert!(
        cdn_entry["reason"]
            .as_str()
            .is_some_and(|r| r.contains("403")),
        "{cdn_entry:#}"
    );
    assert_eq!(
        entry(&report, "team/web:1")["newDigest"],
        web.digest.as_str()
    );
    assert_eq!(head_manifest(&target, "team/ghost", "1").await, None);
    assert_eq!(head_manifest(&target, "team/cdn", "1").await, None);
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in [UPSTREAM_PASSWORD, SIGNATURE, "X-Amz-Credential"] {
        assert!(!text.contains(secret), "{secret} in the report:\n{text}");
    }
}

/// A run cut short: exit 3; the big tag (running at the stop, finished in the grace period) is
/// reported new and is at the target; the four others are deferred with a reason and absent.
async fn assert_cut_short(report: &Value, out: &Output, target: &Registry) {
    out.assert_code(3);
    assert_frame(report, out, "sync");
    assert_totals_add_up(report);
    let big = entry(report, "slow/big:v1");
    assert_eq!(big["result"], "new", "{report:#}");
    assert_eq!(
        head_manifest(target, "slow/big", "v1").await.as_deref(),
        big["newDigest"].as_str()
    );
    for i in 0..4 {
        let repo = format!("slow/small{i}");
        let e = entry(report, &format!("{repo}:v1"));
        assert_eq!(e["result"], "deferred", "{report:#}");
        assert!(
            e["reason"].as_str().is_some_and(|r| r.contains("stopped")),
            "{e:#}"
        );
        assert_eq!(e["newDigest"], Value::Null);
        assert_eq!(head_manifest(target, &repo, "v1").await, None);
    }
    assert_eq!(report["totals"]["deferred"], 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_run_leaves_a_whole_report_with_the_rest_deferred() {
    let slow = slow_world(40 * MIB).await;
    let (proxy, target, dir, cfg) = (
        slow.world.up(),
        &slow.world.target,
        &slow.world.dir,
        &slow.config,
    );
    let big_blobs = slow.big.blobs.len();
    let path = dir.path().join("report.json");
    let child = spawn_mirrorsync(&[
        "sync",
        "--once",
        "--config",
        &cfg.display().to_string(),
        "--report",
        &path.display().to_string(),
    ]);
    // Every blob of the big tag is being pulled (none is left to start, which a stop would
    // defer): the run is under way, one tag in.
    let started = Instant::now();
    loop {
        let pulled: BTreeSet<String> = proxy
            .seen()
            .iter()
            .filter(|s| s.is("GET", "blobs", Some("slow/big")))
            .filter_map(|s| s.reference())
            .collect();
        if pulled.len() == big_blobs {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "blob GETs: {pulled:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sigterm(&child);
    let out = wait_output(child, Duration::from_secs(60), "exits after SIGTERM").await;
    let report = read_report(&path, &out);
    assert_cut_short(&report, &out, target).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_duration_leaves_a_whole_report_with_the_rest_deferred() {
    let slow = slow_world(40 * MIB).await;
    let (target, dir, cfg) = (&slow.world.target, &slow.world.dir, &slow.config);
    let path = dir.path().join("report.json");
    let out = run_with_report(
        &[
            "sync",
            "--once",
            "--config",
            &cfg.display().to_string(),
            "--max-duration",
            "1s",
        ],
        &path,
    )
    .await;
    let report = read_report(&path, &out);
    assert_cut_short(&report, &out, target).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_reports_new_and_updated_tags_and_writes_nothing_to_the_target() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let (web, _) = two_images(&upstream).await;
    let first = Scenario::registry_to_registry(
        &upstream,
        &target,
        "",
        &[upstream.image_ref("team/web", "1")],
    );
    first.sync().await.assert_code(0);
    // Upstream moves team/web:1 (one layer shared, one new); team/api:2 is new at the target.
    let moved = push_image(
        &upstream,
        "team/web",
        "1",
        ImageSpec::new(Format::Oci, vec![layer(1, 30_000), layer(7, 6_000)]),
    )
    .await;
    let s = Scenario::registry_to_registry(&upstream, &target, "", &refs(&upstream));
    let path = s.dir.path().join("plan.json");
    let mark = target.log_mark().await;
    let out = run_with_report(&["plan", "--config", &s.config_arg()], &path).await;
    out.assert_code(0);
    let log = target.access_log_since(mark).await;
    assert_eq!(
        log.writes(None),
        0,
        "plan wrote to the target:\n{}",
        log.dump()
    );
    assert_eq!(
        head_manifest(&target, "team/web", "1").await.as_deref(),
        Some(web.digest.as_str())
    );
    let report = read_report(&path, &out);
    assert_frame(&report, &out, "plan");
    assert_totals_add_up(&report);
    let w = entry(&report, "team/web:1");
    assert_eq!(w["result"], "updated", "{report:#}");
    assert_eq!(w["oldDigest"], web.digest.as_str());
    assert_eq!(w["newDigest"], moved.digest.as_str());
    // To copy: the new config and the new layer; the shared layer is present.
    assert_eq!(w["blobsCopied"], 2, "{w:#}");
    assert_eq!(w["blobsPresent"], 1, "{w:#}");
    let a = entry(&report, "team/api:2");
    assert_eq!(a["result"], "new");
    assert_eq!(a["oldDigest"], Value::Null);
    assert_eq!(head_manifest(&target, "team/api", "2").await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_path_that_cannot_be_written_stops_the_run_before_any_request() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    two_images(&upstream).await;
    let s = Scenario::registry_to_registry(&upstream, &target, "", &refs(&upstream));
    let not_a_dir = s.dir.path().join("plain-file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let (up_mark, target_mark) = (upstream.log_mark().await, target.log_mark().await);
    for (bad, why) in [
        (not_a_dir.join("report.json"), "plain-file"),
        (s.dir.path().join("absent").join("report.json"), "absent"),
        (s.dir.path().to_path_buf(), "is a directory"),
    ] {
        for command in [&["sync", "--once"][..], &["plan"][..]] {
            let mut args = command.to_vec();
            let config = s.config_arg();
            args.extend(["--config", config.as_str()]);
            let out = run_with_report(&args, &bad).await;
            out.assert_code(2);
            let said = out.stderr.trim_end();
            assert!(
                said.contains(&bad.display().to_string()) && said.contains(why),
                "{command:?} {}: {said}",
                bad.display()
            );
        }
    }
    let up_log = upstream.access_log_since(up_mark).await.not_harness();
    let target_log = target.access_log_since(target_mark).await.not_harness();
    assert!(up_log.is_empty(), "{}", up_log.dump());
    assert!(target_log.is_empty(), "{}", target_log.dump());
    assert_eq!(head_manifest(&target, "team/web", "1").await, None);
    // The daemon has no report: a usage error, not a flag ignored.
    let report = s.dir.path().join("daemon.json");
    let out = run_with_report(&["sync", "--config", &s.config_arg()], &report).await;
    out.assert_code(2);
    assert!(out.stderr.contains("--report"), "{}", out.stderr);
    assert!(!report.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_cannot_start_still_reports_why() {
    let dir = tempfile::tempdir().unwrap();
    // A config error: exit 2, the error (file, line, key) in the report, no tags.
    let config = write_config(
        dir.path(),
        "target:\n  path: ./mirror\nimages:\n  - nginx:1.25\nconcurency: 4\n",
    );
    let path = dir.path().join("report.json");
    for command in [&["sync", "--once"][..], &["plan"][..]] {
        let mut args = command.to_vec();
        let config_arg = config.display().to_string();
        args.extend(["--config", &config_arg]);
        let out = run_with_report(&args, &path).await;
        out.assert_code(2);
        let report = read_report(&path, &out);
        assert_frame(&report, &out, command[0]);
        let error = report["error"].as_str().expect("error");
        assert!(
            error.contains("sync.yaml:5") && error.contains("concurency"),
            "{error}"
        );
        assert_eq!(report["tags"], serde_json::json!([]));
        assert_eq!(report["totals"]["tags"], 0);
    }
    // The pass cannot start (the Docker config is not JSON): exit 1, the error in the report.
    std::fs::write(dir.path().join("docker.json"), "{ not json").unwrap();
    let config = write_config(
        dir.path(),
        "target:\n  path: ./mirror\ndocker_config: docker.json\nimages:\n  - nginx:1.25\n",
    );
    let out = run_with_report(
        &["sync", "--once", "--config", &config.display().to_string()],
        &path,
    )
    .await;
    out.assert_code(1);
    let report = read_report(&path, &out);
    assert_frame(&report, &out, "sync");
    let error = report["error"].as_str().expect("error");
    assert!(error.contains("docker.json"), "{error}");
    assert_eq!(report["tags"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_replaces_the_previous_one_whole() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    two_images(&upstream).await;
    let s = Scenario::registry_to_registry(&upstream, &target, "", &refs(&upstream));
    let path = s.dir.path().join("report.json");
    std::fs::write(&path, "the previous report").unwrap();
    // A second name for the previous file: a report written into the same file (truncated,
    // then filled) would change it too; a new file renamed over the name leaves it alone.
    let kept = s.dir.path().join("kept.json");
    std::fs::hard_link(&path, &kept).unwrap();
    let out = run_with_report(&["sync", "--once", "--config", &s.config_arg()], &path).await;
    out.assert_code(0);
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap(),
        "the previous report"
    );
    let report = read_report(&path, &out);
    assert_eq!(report["totals"]["new"], 2);
}

/// Every key path of a JSON value (`tags[].source`, `totals.new`...).
fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let path = format!("{prefix}.{k}");
                out.insert(path.clone());
                key_paths(v, &path, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_example_has_the_keys_of_a_real_report() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let marker = "report of a real run";
    let after = &readme[readme
        .find(marker)
        .expect("README has the run report example")..];
    let start = after.find("```json\n").expect("a json block") + 8;
    let end = after[start..].find("```").expect("block end") + start;
    let example: Value = serde_json::from_str(&after[start..end]).expect("README example is JSON");

    let upstream = Registry::start().await;
    let target = Registry::start().await;
    two_images(&upstream).await;
    let s = Scenario::registry_to_registry(&upstream, &target, "", &refs(&upstream));
    let path = s.dir.path().join("report.json");
    let out = run_with_report(&["sync", "--once", "--config", &s.config_arg()], &path).await;
    let real = read_report(&path, &out);
    let (mut want, mut got) = (BTreeSet::new(), BTreeSet::new());
    key_paths(&example, "", &mut want);
    key_paths(&real, "", &mut got);
    assert_eq!(want, got, "README example keys vs a real report's");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_that_cannot_be_written_at_the_end_fails_the_run_naming_the_file() {
    let upstream = Registry::start().await;
    let proxy = Proxy::start(&upstream).await;
    let target = Registry::start().await;
    push_image(&upstream, "team/web", "1", oci_image(1, 3_000)).await;
    // The manifest GET waits 3 s: the run is in progress while the report's directory goes.
    proxy.add(Rule::new(
        "GET /v2/team/web/manifests/*",
        Action::Stall(Duration::from_secs(3)),
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigYaml::to_registry(&target.host())
        .upstream(&proxy.host())
        .images(&[proxy.image_ref("team/web", "1")])
        .write(dir.path());
    let reports = dir.path().join("reports");
    std::fs::create_dir(&reports).unwrap();
    let path = reports.join("report.json");
    let child = spawn_mirrorsync(&[
        "sync",
        "--once",
        "--config",
        &config.display().to_string(),
        "--report",
        &path.display().to_string(),
    ]);
    let started = Instant::now();
    while !proxy
        .seen()
        .iter()
        .any(|r| r.is("GET", "manifests", Some("team/web")))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no manifest GET"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_dir(&reports).unwrap();
    let out = wait_output(child, Duration::from_secs(60), "exits").await;
    let stderr = &out.stderr;
    // The tag itself was synced; the run fails for the report alone.
    assert!(head_manifest(&target, "team/web", "1").await.is_some());
    assert_eq!(out.code, Some(1), "{stderr}");
    assert!(
        stderr.contains("could not write the run report")
            && stderr.contains(&path.display().to_string()),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oci_layout_target_is_reported_as_skopeo_reads_it() {
    let upstream = Registry::start().await;
    two_images(&upstream).await;
    let layout = tempfile::tempdir().unwrap();
    let s = Scenario::registry_to_layout(&upstream, layout.path(), &refs(&upstream));
    let path = s.dir.path().join("report.json");
    let out = run_with_report(&["sync", "--once", "--config", &s.config_arg()], &path).await;
    out.assert_code(0);
    let report = read_report(&path, &out);
    assert_totals_add_up(&report);
    for (repo, tag) in [("team/web", "1"), ("team/api", "2")] {
        let e = entry(&report, &format!("{repo}:{tag}"));
        let at = format!("oci:{}/{repo}:{tag}", layout.path().display());
        assert_eq!(e["target"], at.as_str());
        assert_eq!(e["result"], "new");
        // The digest the layout holds (Docker manifests are converted to OCI there).
        let held = sha256_digest(&skopeo_inspect_raw(&at, &[]).await);
        assert_eq!(e["newDigest"], held.as_str(), "{repo}");
    }
}
