//! What operators alert on and look at when mirrorsync runs unattended: the metrics of a
//! `sync --once` pushed to a real Prometheus Pushgateway or written as a node-exporter textfile
//! (and linted by `promtool check metrics`), sync lag that survives stateless CronJob runs, the
//! long-running `mirrorsync sync` daemon (per-second schedule, skipped overlapping passes,
//! SIGHUP reload, SIGTERM stop, `/metrics` and `/healthz`), and JSON logs.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::exposition::*;
use common::observe::*;
use common::util::now_unix;
use common::*;
use reqwest::Method;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Worlds.

/// Sum of the sizes of the distinct blobs of `images`, and how many there are.
fn unique_blobs(images: &[&PushedImage]) -> (u64, usize) {
    let mut seen = BTreeMap::new();
    for img in images {
        for b in &img.blobs {
            seen.insert(b.digest.clone(), b.size);
        }
    }
    (seen.values().sum(), seen.len())
}

/// Three tags: `team/app:1.0` and `team/app:2.0` sharing a base layer, and `ops/tool:1`.
async fn seed_three(upstream: &Registry) -> Vec<PushedImage> {
    let base = layer(300, 60_000);
    let a = push_image(
        upstream,
        "team/app",
        "1.0",
        ImageSpec::new(Format::Oci, vec![base.clone(), layer(301, 12_000)]),
    )
    .await;
    let b = push_image(
        upstream,
        "team/app",
        "2.0",
        ImageSpec::new(Format::Oci, vec![base, layer(302, 9_000)]),
    )
    .await;
    let c = push_image(upstream, "ops/tool", "1", docker_image(303, 7_000)).await;
    vec![a, b, c]
}

const THREE: [(&str, &str); 3] = [("team/app", "1.0"), ("team/app", "2.0"), ("ops/tool", "1")];

/// A registry-to-registry config (no prefix) with an optional `schedule` and extra upstream
/// settings (YAML lines indented for `registries.<upstream>`).
fn config_yaml(
    upstream: &Registry,
    target: &Registry,
    schedule: Option<&str>,
    upstream_extra: &str,
    images: &[String],
) -> String {
    let schedule = schedule.map_or(String::new(), |s| format!("schedule: \"{s}\"\n"));
    ConfigYaml::to_registry(&target.host())
        .top(&schedule)
        .upstream(&upstream.host())
        .upstream_lines(upstream_extra)
        .images(images)
        .yaml()
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Access-log entries by (method, status).
fn by_method_status(log: &[Access]) -> BTreeMap<(String, String), f64> {
    let mut m = BTreeMap::new();
    for a in log {
        *m.entry((a.method.clone(), a.status.to_string()))
            .or_insert(0.0) += 1.0;
    }
    m
}

/// `mirrorsync_http_requests_total` of one `registry` label by (method, code).
fn requests_metric(e: &Exposition, registry: &str) -> BTreeMap<(String, String), f64> {
    let mut m = BTreeMap::new();
    for s in e.find("mirrorsync_http_requests_total", &[("registry", registry)]) {
        *m.entry((s.labels["method"].clone(), s.labels["code"].clone()))
            .or_insert(0.0) += s.value;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// 1. Pushgateway.

/// Pushgateway `GET /api/v1/metrics` for one group, as an [`Exposition`] (types lower-cased).
fn pushgateway_group(api: &Value, job: &str, instance: &str) -> Option<Exposition> {
    let groups = api["data"].as_array()?;
    let group = groups.iter().find(|g| {
        g["labels"]["job"].as_str() == Some(job)
            && g["labels"]["instance"].as_str() == Some(instance)
    })?;
    let mut e = Exposition {
        text: serde_json::to_string_pretty(group).unwrap_or_default(),
        ..Exposition::default()
    };
    for (name, family) in group.as_object()? {
        let Some(metrics) = family["metrics"].as_array() else {
            continue;
        };
        e.types.insert(
            name.clone(),
            family["type"].as_str().unwrap_or_default().to_lowercase(),
        );
        e.helps.insert(
            name.clone(),
            family["help"].as_str().unwrap_or_default().to_string(),
        );
        for m in metrics {
            let labels = m["labels"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let value = m["value"]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            e.samples.push(Sample {
                name: name.clone(),
                labels,
                value,
            });
        }
    }
    Some(e)
}

#[tokio::test(flavor = "multi_thread")]
async fn once_pushes_its_metrics_to_a_real_pushgateway() {
    let pg = Pushgateway::start().await;
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let images = seed_three(&upstream).await;
    let refs: Vec<String> = THREE
        .iter()
        .map(|(r, t)| upstream.image_ref(r, t))
        .collect();
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &refs);

    let up_mark = upstream.log_mark().await;
    let target_mark = target.log_mark().await;
    let before = now_unix();
    let out = mirrorsync(&[
        "sync",
        "--once",
        "--config",
        &scenario.config_arg(),
        "--pushgateway",
        &pg.url(""),
        "--instance",
        "ci-node-1",
    ])
    .await;
    out.assert_code(0);
    let after = now_unix();
    let up_log = upstream.access_log_since(up_mark).await;
    let target_log = target.access_log_since(target_mark).await;

    let (_, _, api) = get(&pg.url("/api/v1/metrics"))
        .await
        .expect("Pushgateway API");
    let api: Value = serde_json::from_str(&api).expect("Pushgateway API JSON");
    let e = pushgateway_group(&api, "mirrorsync", "ci-node-1").unwrap_or_else(|| {
        panic!(
            "no group job=mirrorsync instance=ci-node-1 at the Pushgateway:\n{api:#}\n--- stderr ---\n{}",
            out.stderr
        )
    });
    let group = api["data"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["labels"]["instance"] == "ci-node-1"))
        .expect("group");
    assert_eq!(
        group["last_push_successful"],
        Value::Bool(true),
        "{group:#}"
    );
    assert_contract_families(&e);
    // Every sample carries the grouping labels.
    for s in &e.samples {
        assert_eq!(s.labels.get("job").map(String::as_str), Some("mirrorsync"));
        assert_eq!(
            s.labels.get("instance").map(String::as_str),
            Some("ci-node-1")
        );
    }

    // One pass, a successful one; the daemon's config pair is not pushed.
    let runs = "mirrorsync_runs_total";
    assert_eq!(e.value(runs, &[("result", "success")]), 1.0, "{}", e.text);
    assert_eq!(e.value(runs, &[("result", "failed")]), 0.0, "{}", e.text);
    assert_eq!(e.value(runs, &[("result", "deferred")]), 0.0, "{}", e.text);
    for (name, _) in DAEMON_ONLY {
        assert!(e.find(name, &[]).is_empty(), "{name} pushed:\n{}", e.text);
    }
    let started = e.value("mirrorsync_process_start_time_seconds", &[]);
    assert!(
        started >= before as f64 - 1.0 && started <= after as f64 + 1.0,
        "process start {started} outside [{before}, {after}]"
    );

    // The run: 3 tags synced, none otherwise.
    let tags = "mirrorsync_run_tags";
    assert_eq!(e.value(tags, &[("result", "synced")]), 3.0, "{}", e.text);
    for result in ["unchanged", "failed", "deferred"] {
        assert_eq!(
            e.value(tags, &[("result", result)]),
            0.0,
            "{result}: {}",
            e.text
        );
    }
    let last_success = e.value("mirrorsync_run_last_success_timestamp_seconds", &[]);
    assert!(
        last_success >= before as f64 && last_success <= after as f64 + 1.0,
        "last success {last_success} not within the run [{before}, {after}]"
    );
    let duration = e.value("mirrorsync_run_duration_seconds", &[]);
    assert!(
        duration > 0.0 && duration <= (after - before + 1) as f64,
        "run duration {duration}"
    );

    // Blobs: each distinct blob copied once, and the bytes are exactly theirs.
    let all: Vec<&PushedImage> = images.iter().collect();
    let (unique_bytes, unique_count) = unique_blobs(&all);
    assert_eq!(
        e.value("mirrorsync_blobs_total", &[("action", "copied")]),
        unique_count as f64,
        "{}",
        e.text
    );
    assert_eq!(
        e.value(
            "mirrorsync_bytes_copied_total",
            &[("registry", &upstream.host())]
        ),
        unique_bytes as f64,
        "{}",
        e.text
    );
    // A --once run is one run: its per-run gauges, which a dashboard sums over runs, hold
    // what its counters hold.
    assert_eq!(
        e.value("mirrorsync_run_blobs", &[("action", "copied")]),
        unique_count as f64,
        "{}",
        e.text
    );
    assert_eq!(
        e.value(
            "mirrorsync_run_bytes_copied",
            &[("registry", &upstream.host())]
        ),
        unique_bytes as f64,
        "{}",
        e.text
    );
    let per_run: Vec<_> = e.find("mirrorsync_run_http_requests", &[]);
    let counted: Vec<_> = e.find("mirrorsync_http_requests_total", &[]);
    assert!(!per_run.is_empty(), "{}", e.text);
    assert_eq!(
        per_run
            .iter()
            .map(|s| (s.labels.clone(), s.value))
            .collect::<Vec<_>>(),
        counted
            .iter()
            .map(|s| (s.labels.clone(), s.value))
            .collect::<Vec<_>>(),
        "{}",
        e.text
    );
    // The local registries send no ratelimit headers: no reading, and no time of one.
    assert!(
        e.find("mirrorsync_ratelimit_remaining_timestamp_seconds", &[])
            .is_empty(),
        "{}",
        e.text
    );

    // ...which is also what the upstream served.
    let served: BTreeSet<String> = up_log
        .iter()
        .filter(|a| a.method == "GET" && a.kind() == Some("blobs") && a.status == 200)
        .filter_map(|a| a.reference())
        .collect();
    assert_eq!(served.len(), unique_count, "{}", up_log.dump());

    // Every request, per registry, method and code, as both registries logged them.
    let up_metric = requests_metric(&e, &upstream.host());
    assert!(
        !up_metric.is_empty(),
        "no request counted for the upstream:\n{}",
        e.text
    );
    assert_eq!(
        up_metric,
        by_method_status(&up_log),
        "upstream requests: metric vs access log\n{}",
        up_log.dump()
    );
    let mut target_metric = requests_metric(&e, &target.host());
    if target_metric.is_empty() {
        target_metric = requests_metric(&e, "target");
    }
    assert!(
        !target_metric.is_empty(),
        "no request counted for the target:\n{}",
        e.text
    );
    assert_eq!(
        target_metric,
        by_method_status(&target_log),
        "target requests: metric vs access log\n{}",
        target_log.dump()
    );

    // Per tag: in sync, no lag, seen in sync during this run.
    for (repo, tag) in THREE {
        let labels = [
            ("source", upstream.image_ref(repo, tag)),
            ("target", format!("{repo}:{tag}")),
        ];
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            e.value("mirrorsync_tag_in_sync", &labels),
            1.0,
            "{}",
            e.text
        );
        assert_eq!(
            e.value("mirrorsync_tag_lag_seconds", &labels),
            0.0,
            "{}",
            e.text
        );
        let synced = e.value("mirrorsync_tag_last_synced_timestamp_seconds", &labels);
        assert!(
            synced >= before as f64 && synced <= after as f64 + 1.0,
            "{repo}:{tag} last synced {synced} not within [{before}, {after}]"
        );
        assert!(synced > now_unix() as f64 - 60.0);
    }
}

/// The Helm chart hands the Pushgateway URL, credentials included, over from a Secret as
/// MIRRORSYNC_PUSHGATEWAY: the push authenticates with them, and neither the logs (debug level
/// included) nor `--help` show the password.
#[tokio::test(flavor = "multi_thread")]
async fn once_pushes_with_credentials_from_the_environment_and_never_shows_them() {
    const PASSWORD: &str = "pg-Secret-9f3k";
    let pg = Pushgateway::start_with_basic_auth("pusher", PASSWORD).await;
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    seed_three(&upstream).await;
    let refs: Vec<String> = THREE
        .iter()
        .map(|(r, t)| upstream.image_ref(r, t))
        .collect();
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &refs);
    let url = format!("http://pusher:{PASSWORD}@127.0.0.1:{}", pg.port);

    // Without credentials the Pushgateway refuses: what lands there came with them.
    let (code, _, _) = get(&pg.url("/api/v1/metrics")).await.expect("answer");
    assert_eq!(code, 401, "the Pushgateway must require Basic auth");

    let env = [("MIRRORSYNC_PUSHGATEWAY", url.as_str())];
    let out = mirrorsync_with_env(
        &[
            "sync",
            "--once",
            "--config",
            &scenario.config_arg(),
            "--instance",
            "from-env",
            "--log-level",
            "debug",
        ],
        &env,
    )
    .await;
    out.assert_code(0);
    let (code, _, api) = get(&format!("{url}/api/v1/metrics"))
        .await
        .expect("Pushgateway API");
    assert_eq!(code, 200, "{api}");
    let api: Value = serde_json::from_str(&api).expect("Pushgateway API JSON");
    let e = pushgateway_group(&api, "mirrorsync", "from-env").unwrap_or_else(|| {
        panic!(
            "no group instance=from-env at the Pushgateway:\n{api:#}\n--- stderr ---\n{}",
            out.stderr
        )
    });
    assert_eq!(
        e.value("mirrorsync_run_tags", &[("result", "synced")]),
        3.0,
        "{}",
        e.text
    );
    for (what, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(
            !text.contains(PASSWORD),
            "the password in the {what}:\n{text}"
        );
    }

    // A push that fails (wrong password) names the Pushgateway, not the password.
    let wrong = format!("http://pusher:Wrong-{PASSWORD}@127.0.0.1:{}", pg.port);
    let out = mirrorsync_with_env(
        &["sync", "--once", "--config", &scenario.config_arg()],
        &[("MIRRORSYNC_PUSHGATEWAY", wrong.as_str())],
    )
    .await;
    assert!(
        out.stderr
            .contains("could not push metrics to the Pushgateway")
            && out.stderr.contains(&format!("127.0.0.1:{}", pg.port)),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(PASSWORD), "{}", out.stderr);
    assert!(!out.stdout.contains(PASSWORD), "{}", out.stdout);

    let help = mirrorsync_with_env(&["sync", "--help"], &env).await;
    help.assert_code(0);
    assert!(
        help.stdout.contains("MIRRORSYNC_PUSHGATEWAY") && !help.stdout.contains(PASSWORD),
        "{}",
        help.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// 2. promtool on the textfile and on /metrics.

#[tokio::test(flavor = "multi_thread")]
async fn textfile_and_metrics_endpoint_pass_promtool() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    seed_three(&upstream).await;
    let refs: Vec<String> = THREE
        .iter()
        .map(|(r, t)| upstream.image_ref(r, t))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sync.yaml");
    write_file(
        &config,
        &config_yaml(&upstream, &target, Some("0 0 1 1 *"), "", &refs),
    );
    let textfile_dir = dir.path().join("textfile");
    std::fs::create_dir(&textfile_dir).expect("mkdir");
    let textfile = textfile_dir.join("mirrorsync.prom");

    let out = sync_once_with_metrics_file(&config, &textfile).await;
    out.assert_code(0);
    let text = std::fs::read_to_string(&textfile).expect("the textfile was written");
    // Written atomically: nothing else is left in the collector's directory.
    let entries: Vec<String> = std::fs::read_dir(&textfile_dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, vec!["mirrorsync.prom".to_string()]);
    assert_promtool_clean(&text, "the --metrics-file textfile");
    let e = Exposition::parse(&text);
    assert_contract_families(&e);
    assert_eq!(e.value("mirrorsync_run_tags", &[("result", "synced")]), 3.0);

    // The daemon's /metrics, after a pass started by --run-now (a schedule that is far away).
    let daemon = Daemon::start(&config, &["--run-now"]).await;
    let e = poll(
        Duration::from_secs(20),
        || format!("no run on /metrics\n{}", daemon.logs()),
        || async {
            daemon
                .metrics()
                .await
                .filter(|e| !e.find("mirrorsync_run_duration_seconds", &[]).is_empty())
        },
    )
    .await;
    let (status, content_type, body) = get(&daemon.url("/metrics")).await.expect("/metrics");
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "Content-Type {content_type}"
    );
    assert_promtool_clean(&body, "the daemon's /metrics");
    // The daemon's pass found everything already there (state from the --once run).
    assert_eq!(
        e.value("mirrorsync_run_tags", &[("result", "unchanged")]),
        3.0,
        "{}",
        e.text
    );
    let e = Exposition::parse(&body);
    assert_contract_families(&e);
    for (name, kind) in DAEMON_ONLY {
        assert_eq!(
            e.types.get(*name).map(String::as_str),
            Some(*kind),
            "{name}"
        );
    }
    assert_eq!(
        e.value("mirrorsync_config_last_reload_successful", &[]),
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Lag across stateless runs.

/// Parsed `--metrics-file` of one `--once` run, with its exit code.
async fn once_with_textfile(config: &Path, textfile: &Path) -> (Output, Exposition) {
    let _ = std::fs::remove_file(textfile);
    let out = sync_once_with_metrics_file(config, textfile).await;
    let text = std::fs::read_to_string(textfile).unwrap_or_else(|e| {
        panic!(
            "no textfile ({e})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.stdout, out.stderr
        )
    });
    (out, Exposition::parse(&text))
}

/// One tag's (in_sync, last_synced, lag) from an exposition.
fn tag_series(e: &Exposition, source: &str, target: &str) -> (f64, Option<f64>, f64) {
    let labels = [("source", source), ("target", target)];
    (
        e.value("mirrorsync_tag_in_sync", &labels),
        e.value_opt("mirrorsync_tag_last_synced_timestamp_seconds", &labels),
        e.value("mirrorsync_tag_lag_seconds", &labels),
    )
}

/// Whether a timestamp read back is `expected` (to a millisecond: the state document's JSON
/// may not round-trip the last bits of an f64).
fn same_time(actual: Option<f64>, expected: f64) -> bool {
    actual.is_some_and(|a| (a - expected).abs() < 1e-3)
}

/// `DELETE /v2/<repo>/blobs/<digest>` (the registries run with deletes enabled).
async fn delete_blob(reg: &Registry, repo: &str, digest: &str) {
    let path = format!("/v2/{repo}/blobs/{digest}");
    let resp = reg
        .client()
        .send(Method::DELETE, &path, &[], None)
        .await
        .unwrap_or_else(|e| panic!("DELETE {path}: {e:#}"));
    assert_eq!(resp.status().as_u16(), 202, "DELETE {path}");
    assert_eq!(
        blob_sha256(reg, repo, digest).await,
        None,
        "{path} still served"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_grows_across_failing_stateless_runs_and_resets_after_a_good_one() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    push_image(&upstream, "team/app", "stable", oci_image(400, 20_000)).await;
    let old_edge = push_image(&upstream, "team/app", "edge", oci_image(401, 20_000)).await;
    let (stable_src, edge_src) = (
        upstream.image_ref("team/app", "stable"),
        upstream.image_ref("team/app", "edge"),
    );
    let scenario = Scenario::registry_to_registry(
        &upstream,
        &target,
        "",
        &[stable_src.clone(), edge_src.clone()],
    );
    let textfile = scenario.dir.path().join("mirrorsync.prom");

    // Run 1: both in sync.
    let (out, e1) = once_with_textfile(&scenario.config, &textfile).await;
    out.assert_code(0);
    let (in_sync, edge_synced_1, lag) = tag_series(&e1, &edge_src, "team/app:edge");
    assert_eq!((in_sync, lag), (1.0, 0.0), "{}", e1.text);
    let edge_synced_1 = edge_synced_1.expect("edge last synced after run 1");
    let last_success_1 = e1.value("mirrorsync_run_last_success_timestamp_seconds", &[]);

    // Upstream moves edge to an image whose new layer it cannot serve: every sync of it fails.
    let missing = layer(402, 30_000);
    let new_edge = push_image(
        &upstream,
        "team/app",
        "edge",
        ImageSpec::new(Format::Oci, vec![layer(401, 20_000), missing.clone()]),
    )
    .await;
    delete_blob(&upstream, "team/app", &sha256_digest(&missing)).await;

    // Runs 2-4: edge failing, its lag growing, last synced frozen at run 1.
    let mut lags = Vec::new();
    let mut stable_synced = edge_synced_1;
    for run in 2..=4 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (out, e) = once_with_textfile(&scenario.config, &textfile).await;
        assert_eq!(
            out.code,
            Some(1),
            "run {run}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.stdout,
            out.stderr
        );
        let (in_sync, synced, lag) = tag_series(&e, &edge_src, "team/app:edge");
        assert_eq!(in_sync, 0.0, "run {run}: edge in sync?\n{}", e.text);
        assert!(
            same_time(synced, edge_synced_1),
            "run {run}: edge last synced must stay at run 1's time {edge_synced_1}\n{}",
            e.text
        );
        lags.push(lag);
        let (in_sync, synced, lag) = tag_series(&e, &stable_src, "team/app:stable");
        assert_eq!((in_sync, lag), (1.0, 0.0), "run {run}: stable\n{}", e.text);
        let synced = synced.expect("stable last synced");
        assert!(
            synced > stable_synced,
            "run {run}: stable last synced must advance"
        );
        stable_synced = synced;
        assert_eq!(e.value("mirrorsync_run_tags", &[("result", "failed")]), 1.0);
        assert_eq!(
            e.value("mirrorsync_run_tags", &[("result", "unchanged")]),
            1.0
        );
        // The last successful run is still run 1, though this process never saw it.
        assert!(
            same_time(
                e.value_opt("mirrorsync_run_last_success_timestamp_seconds", &[]),
                last_success_1
            ),
            "run {run}: last success must stay at run 1's {last_success_1}\n{}",
            e.text
        );
        // The target's tag never points at content it does not fully hold.
        assert_eq!(
            head_manifest(&target, "team/app", "edge").await,
            Some(old_edge.digest.clone())
        );
    }
    assert!(
        lags[0] < lags[1] && lags[1] < lags[2],
        "edge lag must grow strictly across failing runs: {lags:?}"
    );
    assert!(
        lags[2] - lags[0] >= 2.0,
        "two runs >= 1.1 s apart add >= 2 s of lag: {lags:?}"
    );

    // The upstream can serve the layer again: run 5 syncs edge, lag back to 0.
    push_blob(&upstream, "team/app", &missing).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (out, e) = once_with_textfile(&scenario.config, &textfile).await;
    out.assert_code(0);
    let (in_sync, synced, lag) = tag_series(&e, &edge_src, "team/app:edge");
    assert_eq!((in_sync, lag), (1.0, 0.0), "{}", e.text);
    assert!(synced.expect("edge last synced") > edge_synced_1);
    assert!(e.value("mirrorsync_run_last_success_timestamp_seconds", &[]) > last_success_1);
    assert_eq!(
        head_manifest(&target, "team/app", "edge").await,
        Some(new_edge.digest.clone())
    );

    // Run 6 changes nothing: at the target it writes mirrorsync's own state and nothing else.
    let mark = target.log_mark().await;
    let (out, e) = once_with_textfile(&scenario.config, &textfile).await;
    out.assert_code(0);
    let log = target.access_log_since(mark).await;
    assert_eq!(log.mirrored_writes(), 0, "{}", log.dump());
    assert_eq!(
        e.value("mirrorsync_run_tags", &[("result", "unchanged")]),
        2.0
    );
    assert!(
        head_manifest(&target, "mirrorsync/state", "latest")
            .await
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_survives_stateless_runs_into_an_oci_layout() {
    let upstream = Registry::start().await;
    push_image(&upstream, "team/lib", "1", oci_image(410, 10_000)).await;
    let source = upstream.image_ref("team/lib", "1");
    let layout = tempfile::tempdir().expect("tempdir");
    let scenario =
        Scenario::registry_to_layout(&upstream, layout.path(), std::slice::from_ref(&source));
    let textfile = scenario.dir.path().join("mirrorsync.prom");

    let (out, e) = once_with_textfile(&scenario.config, &textfile).await;
    out.assert_code(0);
    let (_, synced_1, _) = tag_series(&e, &source, "team/lib:1");
    assert!(
        layout
            .path()
            .join(".mirrorsync-state-latest.json")
            .is_file(),
        "state file in the layout"
    );

    let missing = layer(411, 10_000);
    push_image(
        &upstream,
        "team/lib",
        "1",
        ImageSpec::new(Format::Oci, vec![missing.clone()]),
    )
    .await;
    delete_blob(&upstream, "team/lib", &sha256_digest(&missing)).await;
    let mut lags = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (out, e) = once_with_textfile(&scenario.config, &textfile).await;
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        let (in_sync, synced, lag) = tag_series(&e, &source, "team/lib:1");
        assert_eq!(in_sync, 0.0, "{}", e.text);
        assert!(
            same_time(synced, synced_1.expect("synced in run 1")),
            "last synced must stay at run 1's {synced_1:?}\n{}",
            e.text
        );
        lags.push(lag);
    }
    assert!(
        lags[0] < lags[1] && lags[1] < lags[2],
        "lag must grow across failing runs: {lags:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. The daemon: per-second passes, skipped overlapping passes, SIGHUP reload, SIGTERM.

/// Non-harness requests for `tag` of `team/svc` at the upstream: HEADs of its manifest.
fn heads_of(log: &[Access], tag: &str) -> usize {
    log.iter()
        .filter(|a| {
            !a.is_harness()
                && a.method == "HEAD"
                && a.kind() == Some("manifests")
                && a.repo().as_deref() == Some("team/svc")
                && a.reference().as_deref() == Some(tag)
        })
        .count()
}

/// The daemon's state loads (`G`: GET of the state manifest) and saves (`P`: its PUT) at the
/// target, in log order: one pass is one `G` then one `P`.
fn state_sequence(log: &[Access]) -> String {
    log.iter()
        .filter(|a| {
            !a.is_harness()
                && a.kind() == Some("manifests")
                && a.repo().as_deref() == Some("mirrorsync/state")
        })
        .filter_map(|a| match a.method.as_str() {
            "GET" => Some('G'),
            "PUT" => Some('P'),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_runs_passes_skips_overlaps_reloads_on_sighup_and_stops_on_sigterm() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    for i in 0..6u64 {
        push_image(
            &upstream,
            "team/svc",
            format!("t{i}").as_str(),
            oci_image(500 + i, 4_000),
        )
        .await;
    }
    let refs = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| upstream.image_ref("team/svc", &format!("t{i}")))
            .collect()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sync.yaml");
    let every_second = Some("*/1 * * * * *");
    write_file(
        &config,
        &config_yaml(&upstream, &target, every_second, "", &refs(2)),
    );

    let mut daemon = Daemon::start(&config, &["--run-now", "--grace-period", "2s"]).await;

    // Several passes: /metrics has a run, and the upstream saw >= 3 HEADs of each tag.
    poll(
        Duration::from_secs(20),
        || format!("3 passes\n{}", daemon.logs()),
        || async {
            let e = daemon.metrics().await?;
            e.find("mirrorsync_run_duration_seconds", &[]).first()?;
            (heads_of(&upstream.access_log_now(), "t0") >= 3).then_some(())
        },
    )
    .await;
    assert_eq!(daemon.healthz().await, 200, "healthy while passes run");
    for tag in ["t0", "t1"] {
        assert!(
            head_manifest(&target, "team/svc", tag).await.is_some(),
            "{tag}"
        );
    }
    // The first pass copied the blobs; the passes since found the tags unchanged: the counters
    // keep the first pass's copies, the per-run gauges show the last pass's own (none).
    let e = poll(
        Duration::from_secs(10),
        || format!("a pass after the copying one\n{}", daemon.logs()),
        || async {
            let e = daemon.metrics().await?;
            (e.value("mirrorsync_runs_total", &[("result", "success")]) >= 2.0).then_some(e)
        },
    )
    .await;
    assert!(
        e.value("mirrorsync_blobs_total", &[("action", "copied")]) > 0.0,
        "{}",
        e.text
    );
    assert_eq!(
        e.value("mirrorsync_run_blobs", &[("action", "copied")]),
        0.0,
        "{}",
        e.text
    );
    assert_eq!(
        e.value(
            "mirrorsync_run_bytes_copied",
            &[("registry", &upstream.host())]
        ),
        0.0,
        "{}",
        e.text
    );

    // (b) SIGHUP with a valid config that adds t2: t2 reaches the target.
    write_file(
        &config,
        &config_yaml(&upstream, &target, every_second, "", &refs(3)),
    );
    daemon.signal(libc::SIGHUP);
    poll(
        Duration::from_secs(15),
        || format!("t2 at the target after SIGHUP\n{}", daemon.logs()),
        || async { head_manifest(&target, "team/svc", "t2").await },
    )
    .await;

    // SIGHUP with an invalid config: an error line, and passes go on with the old config.
    write_file(
        &config,
        &format!(
            "no_such_key: 1\n{}",
            config_yaml(&upstream, &target, every_second, "", &refs(1))
        ),
    );
    daemon.signal(libc::SIGHUP);
    poll(
        Duration::from_secs(10),
        || format!("an error about the invalid config\n{}", daemon.logs()),
        || async {
            let err = daemon.stderr();
            err.lines()
                .any(|l| l.contains("ERROR") && l.contains("keeping the previous"))
                .then_some(())
        },
    )
    .await;
    let t2_heads = heads_of(&upstream.access_log().await, "t2");
    poll(
        Duration::from_secs(10),
        || format!("passes with the old config (t2) go on\n{}", daemon.logs()),
        || async { (heads_of(&upstream.access_log_now(), "t2") >= t2_heads + 2).then_some(()) },
    )
    .await;
    assert_eq!(daemon.try_exit(), None, "still running\n{}", daemon.logs());

    // (a) Passes that take longer than the schedule's second (2 requests/s upstream, 6 tags):
    // due passes are skipped and counted, never run alongside. (A pass slowed down by a busy
    // machine may already have been counted: compare with the count before.)
    let skipped_before = daemon
        .metrics()
        .await
        .expect("/metrics")
        .value("mirrorsync_schedule_skipped_passes_total", &[]);
    write_file(
        &config,
        &config_yaml(
            &upstream,
            &target,
            every_second,
            "    requests_per_second: 2\n    burst: 1\n",
            &refs(6),
        ),
    );
    daemon.signal(libc::SIGHUP);
    let skipped = poll(
        Duration::from_secs(25),
        || format!("skipped passes counted\n{}", daemon.logs()),
        || async {
            head_manifest(&target, "team/svc", "t5").await?;
            let e = daemon.metrics().await?;
            let v = e.value("mirrorsync_schedule_skipped_passes_total", &[]);
            (v > skipped_before).then_some(v)
        },
    )
    .await;
    let e = daemon.metrics().await.expect("/metrics");
    assert_eq!(
        e.types
            .get("mirrorsync_schedule_skipped_passes_total")
            .map(String::as_str),
        Some("counter")
    );
    // Every second since the start fell due once: it either ran a pass or was skipped, never
    // both (the first pass, from --run-now, was not a due one).
    // Each pass loads the state once (it saves it only when it changed).
    let saves = state_sequence(&target.access_log().await)
        .matches('G')
        .count();
    let skipped_now = daemon
        .metrics()
        .await
        .expect("/metrics")
        .value("mirrorsync_schedule_skipped_passes_total", &[]);
    let elapsed = daemon.started.elapsed().as_secs_f64();
    let occurrences = (saves - 1) as f64 + skipped_now;
    assert!(
        occurrences <= elapsed + 1.5 && occurrences >= elapsed - 10.0,
        "{saves} passes and {skipped_now} skipped in {elapsed:.1} s of a per-second schedule\n{}",
        daemon.logs()
    );
    assert!(skipped_now >= skipped);
    for i in 3..6 {
        assert!(
            head_manifest(&target, "team/svc", &format!("t{i}"))
                .await
                .is_some(),
            "t{i} synced by the slow pass\n{}",
            daemon.logs()
        );
    }

    // (c) SIGTERM: exits promptly with 0 (between passes) or 3 (work left in a pass).
    let stop = Instant::now();
    daemon.signal(libc::SIGTERM);
    let code = daemon.wait_exit(Duration::from_secs(10)).await;
    assert!(
        matches!(code, Some(0) | Some(3)),
        "exit after SIGTERM: {code:?} after {:?}\n{}",
        stop.elapsed(),
        daemon.logs()
    );
    assert!(
        stop.elapsed() < Duration::from_secs(8),
        "{:?}",
        stop.elapsed()
    );

    // Passes never overlapped: at the target, each pass loads the state, then saves it when it
    // changed; two saves with no load between them would be two passes at once.
    let target_log = target.access_log().await;
    let seq = state_sequence(&target_log);
    let passes = seq.matches('G').count();
    assert!(passes >= 6, "passes: {seq}");
    assert!(
        seq.starts_with('G') && !seq.contains("PP"),
        "state loads (G) and saves (P): passes overlapped: {seq}"
    );
    // One summary line on stdout per completed pass.
    let stdout = daemon.stdout();
    let summaries = stdout
        .lines()
        .filter(|l| l.contains(" synced, ") && l.contains(" unchanged, "))
        .count();
    assert_eq!(
        summaries, passes,
        "one summary per pass, printed whole after it\n{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_stopped_between_passes_exits_0_even_after_a_failed_pass() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    push_image(&upstream, "team/ok", "1", oci_image(600, 3_000)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sync.yaml");
    write_file(
        &config,
        &config_yaml(
            &upstream,
            &target,
            Some("0 0 1 1 *"),
            "",
            &[
                upstream.image_ref("team/ok", "1"),
                upstream.image_ref("team/absent", "1"),
            ],
        ),
    );
    let mut daemon = Daemon::start(&config, &[]).await;
    // No --run-now and a yearly schedule: no pass yet, and healthy (well within 2 intervals).
    let (status, _, body) = get(&daemon.url("/healthz")).await.expect("/healthz");
    assert_eq!(status, 200, "{body}");
    let e = daemon.metrics().await.expect("/metrics");
    assert!(
        e.find("mirrorsync_run_duration_seconds", &[]).is_empty(),
        "no run yet:\n{}",
        e.text
    );
    let asked = upstream.access_log().await.not_harness();
    assert!(asked.is_empty(), "no pass, no request:\n{}", asked.dump());
    daemon.signal(libc::SIGTERM);
    let code = daemon.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(code, Some(0), "no pass ran\n{}", daemon.logs());
    drop(daemon);

    let mut daemon = Daemon::start(&config, &["--run-now"]).await;
    poll(
        Duration::from_secs(15),
        || format!("the pass ends\n{}", daemon.logs()),
        || async { daemon.stdout().contains("1 failed").then_some(()) },
    )
    .await;
    // Between passes now (the next one is next January).
    daemon.signal(libc::SIGTERM);
    let code = daemon.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(
        code,
        Some(0),
        "SIGTERM between passes exits 0 (nothing was stopped), whatever the last pass did\n{}",
        daemon.logs()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. JSON logs.

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_event_per_line_with_one_event_per_synced_tag() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    let images = seed_three(&upstream).await;
    let refs: Vec<String> = THREE
        .iter()
        .map(|(r, t)| upstream.image_ref(r, t))
        .collect();
    let scenario = Scenario::registry_to_registry(&upstream, &target, "", &refs);

    let out = scenario.sync_with_flags(&["--log-format", "json"]).await;
    out.assert_code(0);
    let events = json_lines(&out.stderr);
    assert!(!events.is_empty(), "no log line at all");

    let tag_events: Vec<&Value> = events
        .iter()
        .filter(|e| e.get("source").is_some() && e.get("result").is_some())
        .collect();
    assert_eq!(
        tag_events.len(),
        3,
        "one event per synced tag:\n{}",
        out.stderr
    );
    let mut bytes = 0;
    for ((repo, tag), image) in THREE.iter().zip(&images) {
        let source = upstream.image_ref(repo, tag);
        let matching: Vec<&&Value> = tag_events
            .iter()
            .filter(|e| e["source"].as_str() == Some(source.as_str()))
            .collect();
        assert_eq!(matching.len(), 1, "{source}:\n{}", out.stderr);
        let e = matching[0];
        assert_eq!(
            e["target"].as_str(),
            Some(format!("{repo}:{tag}").as_str()),
            "{e}"
        );
        assert_eq!(e["digest"].as_str(), Some(image.digest.as_str()), "{e}");
        let result = e["result"].as_str().unwrap_or_default();
        assert!(matches!(result, "new" | "synced"), "result {result:?}: {e}");
        bytes += e["bytes_copied"]
            .as_u64()
            .unwrap_or_else(|| panic!("bytes_copied: {e}"));
        assert!(e["duration_ms"].as_u64().is_some(), "duration_ms: {e}");
    }
    let all: Vec<&PushedImage> = images.iter().collect();
    assert_eq!(bytes, unique_blobs(&all).0, "bytes over the tag events");
    // The summary is on stdout, not mixed into the JSON stream.
    assert!(
        out.stdout.contains("3 tags: 3 synced"),
        "summary on stdout:\n{}",
        out.stdout
    );

    // A no-op run logs JSON too (and no tag event above debug level is required).
    let out = scenario.sync_with_flags(&["--log-format", "json"]).await;
    out.assert_code(0);
    json_lines(&out.stderr);
}

// ---------------------------------------------------------------------------------------------
// 6. /healthz.

#[tokio::test(flavor = "multi_thread")]
async fn healthz_fails_when_a_running_pass_makes_no_progress() {
    // An upstream that accepts connections and never answers: a pass cannot complete.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_host = silent.local_addr().expect("addr").to_string();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let target = Registry::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sync.yaml");
    write_file(
        &config,
        &format!(
            "schedule: \"*/1 * * * * *\"\ntarget:\n  registry: \"{}\"\n  insecure: true\nregistries:\n  \"{silent_host}\":\n    insecure: true\nimages:\n  - {silent_host}/team/app:1\n",
            target.host()
        ),
    );
    let daemon = Daemon::start(&config, &["--liveness-timeout", "2s"]).await;
    assert_eq!(
        daemon.healthz().await,
        200,
        "healthy at start\n{}",
        daemon.logs()
    );
    let (status, body) = poll(
        Duration::from_secs(10),
        || format!("/healthz never failed\n{}", daemon.logs()),
        || async {
            match get(&daemon.url("/healthz")).await {
                Some((s, _, body)) if s != 200 => Some((s, body)),
                _ => None,
            }
        },
    )
    .await;
    let age = daemon.started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(
        age >= Duration::from_secs(2),
        "unhealthy only after the 2 s --liveness-timeout, not after {age:?}"
    );
    assert!(body.contains("no progress"), "503 says why: {body}");
    holder.abort();
}

// ---------------------------------------------------------------------------------------------
// 7. Passes and reloads, counted; series of removed tags gone at the reload.

#[tokio::test(flavor = "multi_thread")]
async fn daemon_counts_passes_and_reloads_and_drops_removed_tags_at_the_reload() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    for i in 0..2u64 {
        push_image(
            &upstream,
            "team/svc",
            format!("t{i}").as_str(),
            oci_image(800 + i, 3_000),
        )
        .await;
    }
    let refs = |tags: &[&str]| -> Vec<String> {
        tags.iter()
            .map(|t| upstream.image_ref("team/svc", t))
            .collect()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sync.yaml");
    // One pass (--run-now), then none until next January: whatever changes below is the
    // reload's doing, not a pass's.
    let yearly = Some("0 0 1 1 *");
    write_file(
        &config,
        &config_yaml(&upstream, &target, yearly, "", &refs(&["t0", "t1"])),
    );
    let before = now_unix() as f64;
    let daemon = Daemon::start(&config, &["--run-now"]).await;
    let runs = "mirrorsync_runs_total";
    let e = poll(
        Duration::from_secs(20),
        || format!("a successful pass\n{}", daemon.logs()),
        || async {
            let e = daemon.metrics().await?;
            (e.value(runs, &[("result", "success")]) == 1.0).then_some(e)
        },
    )
    .await;
    assert_eq!(e.value(runs, &[("result", "failed")]), 0.0);
    assert_eq!(e.value(runs, &[("result", "deferred")]), 0.0);
    assert_eq!(
        e.value("mirrorsync_config_last_reload_successful", &[]),
        1.0
    );
    let loaded = e.value(
        "mirrorsync_config_last_reload_success_timestamp_seconds",
        &[],
    );
    let started = e.value("mirrorsync_process_start_time_seconds", &[]);
    assert!(
        loaded >= before - 1.0 && started >= before - 1.0 && started <= loaded + 1.0,
        "loaded {loaded}, started {started}, test began {before}"
    );
    let t1 = (upstream.image_ref("team/svc", "t1"), "team/svc:t1");
    assert_eq!(tag_series(&e, &t1.0, t1.1).0, 1.0, "t1 in sync\n{}", e.text);

    // A reload that drops t1: its three series go at once, no pass in between.
    write_file(
        &config,
        &config_yaml(&upstream, &target, yearly, "", &refs(&["t0"])),
    );
    daemon.signal(libc::SIGHUP);
    let e = poll(
        Duration::from_secs(10),
        || format!("t1's series gone after the reload\n{}", daemon.logs()),
        || async {
            let e = daemon.metrics().await?;
            let labels = [("source", t1.0.as_str())];
            let gone = e.find("mirrorsync_tag_in_sync", &labels).is_empty()
                && e.find("mirrorsync_tag_lag_seconds", &labels).is_empty()
                && e.find("mirrorsync_tag_last_synced_timestamp_seconds", &labels)
                    .is_empty();
            gone.then_some(e)
        },
    )
    .await;
    let t0 = upstream.image_ref("team/svc", "t0");
    assert_eq!(
        tag_series(&e, &t0, "team/svc:t0").0,
        1.0,
        "t0 kept\n{}",
        e.text
    );
    let passes: f64 = e.find(runs, &[]).iter().map(|s| s.value).sum();
    assert_eq!(
        passes, 1.0,
        "no pass ran: the reload dropped them\n{}",
        e.text
    );
    assert_eq!(
        e.value("mirrorsync_config_last_reload_successful", &[]),
        1.0
    );
    let reloaded = e.value(
        "mirrorsync_config_last_reload_success_timestamp_seconds",
        &[],
    );
    assert!(reloaded > loaded, "{reloaded} after {loaded}");

    // An invalid config: 0, the last success time kept, the old config's series kept.
    write_file(
        &config,
        &format!(
            "no_such_key: 1\n{}",
            config_yaml(&upstream, &target, yearly, "", &refs(&[]))
        ),
    );
    daemon.signal(libc::SIGHUP);
    let e = poll(
        Duration::from_secs(10),
        || format!("a failed reload on /metrics\n{}", daemon.logs()),
        || async {
            let e = daemon.metrics().await?;
            (e.value("mirrorsync_config_last_reload_successful", &[]) == 0.0).then_some(e)
        },
    )
    .await;
    assert_eq!(
        e.value(
            "mirrorsync_config_last_reload_success_timestamp_seconds",
            &[]
        ),
        reloaded
    );
    assert_eq!(tag_series(&e, &t0, "team/svc:t0").0, 1.0, "{}", e.text);

    // A valid one again: back to 1.
    write_file(
        &config,
        &config_yaml(&upstream, &target, yearly, "", &refs(&["t0"])),
    );
    daemon.signal(libc::SIGHUP);
    poll(
        Duration::from_secs(10),
        || format!("a good reload on /metrics\n{}", daemon.logs()),
        || async {
            let e = daemon.metrics().await?;
            (e.value("mirrorsync_config_last_reload_successful", &[]) == 1.0).then_some(())
        },
    )
    .await;

    // A stateless run with a tag that cannot be synced counts a failed pass.
    let failing = dir.path().join("failing.yaml");
    write_file(
        &failing,
        &config_yaml(
            &upstream,
            &target,
            None,
            "",
            &[
                upstream.image_ref("team/svc", "t0"),
                upstream.image_ref("team/absent", "1"),
            ],
        ),
    );
    let textfile = dir.path().join("m.prom");
    let out = sync_once_with_metrics_file(&failing, &textfile).await;
    out.assert_code(1);
    let e = Exposition::parse(&std::fs::read_to_string(&textfile).expect("textfile"));
    assert_eq!(e.value(runs, &[("result", "failed")]), 1.0, "{}", e.text);
    assert_eq!(e.value(runs, &[("result", "success")]), 0.0, "{}", e.text);
}

// ---------------------------------------------------------------------------------------------
// 8. /healthz is liveness: a long pass that moves bytes stays healthy.

#[tokio::test(flavor = "multi_thread")]
async fn healthz_stays_200_through_a_long_first_pass_that_keeps_moving_bytes() {
    let upstream = Registry::start().await;
    let target = Registry::start().await;
    // 6 MiB at 1 MiB/s: a first pass of about 6 s, three times the 2 s liveness timeout and
    // six times the 1 s schedule interval.
    push_image(
        &upstream,
        "team/big",
        "1",
        oci_image(900, 1_000).big_layer(6 << 20, 901),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sync.yaml");
    write_file(
        &config,
        &config_yaml(
            &upstream,
            &target,
            Some("*/1 * * * * *"),
            "    bytes_per_second: 1MiB\n",
            &[upstream.image_ref("team/big", "1")],
        ),
    );
    let daemon = Daemon::start(&config, &["--run-now", "--liveness-timeout", "2s"]).await;
    let started = Instant::now();
    let mut probes = 0;
    loop {
        let (status, _, body) = get(&daemon.url("/healthz"))
            .await
            .expect("/healthz answers");
        assert_eq!(
            status,
            200,
            "unhealthy {:?} into a pass that moves bytes: {body}\n{}",
            started.elapsed(),
            daemon.logs()
        );
        probes += 1;
        if head_manifest(&target, "team/big", "1").await.is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pass did not end\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "the pass took only {took:?}: not longer than the liveness timeout and twice the interval"
    );
    println!("healthy through a {took:?} pass ({probes} probes)");
}

// ---------------------------------------------------------------------------------------------
// 9. Slow clients of /metrics.

/// Open file descriptors and resident memory (KiB) of process `pid`.
fn fds_and_rss(pid: libc::pid_t) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    (fds, rss)
}

#[tokio::test(flavor = "multi_thread")]
async fn scrapes_are_answered_within_a_second_while_hundreds_of_slow_clients_hang_on() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sync.yaml");
    // No pass runs (next January); no registry is contacted.
    write_file(
        &config,
        "schedule: \"0 0 1 1 *\"\ntarget:\n  registry: \"127.0.0.1:9\"\n  insecure: true\nregistries:\n  \"127.0.0.1:9\":\n    insecure: true\nimages:\n  - 127.0.0.1:9/team/app:1\n",
    );
    let daemon = Daemon::start(&config, &[]).await;
    let addr = format!("127.0.0.1:{}", daemon.port);
    let (fds_before, rss_before) = fds_and_rss(daemon.pid());

    // 300 connections that send nothing, and 100 that trickle a request head a byte at a time.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    let mut trickling = Vec::new();
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            .await
            .expect("write");
        trickling.push(s);
    }
    let trickler = tokio::spawn(async move {
        loop {
            for s in trickling.iter_mut() {
                let _ = s.write_all(b"a").await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds_during, rss_during) = fds_and_rss(daemon.pid());

    // Meanwhile, a normal client's scrapes are answered promptly.
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let (status, _, body) = get(&daemon.url("/metrics")).await.expect("/metrics");
        let took = t.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("mirrorsync_process_start_time_seconds"),
            "{body}"
        );
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest scrape {slowest:?}"
    );

    // Bounded: one descriptor per connection and a few KiB each.
    assert!(
        fds_during <= fds_before + 400 + 16,
        "{fds_before} descriptors before, {fds_during} with 400 slow clients"
    );
    assert!(
        rss_during <= rss_before + 32 * 1024,
        "VmRSS {rss_before} KiB before, {rss_during} KiB with 400 slow clients"
    );

    // The header-read timeout (10 s) closes every one of them, idle or trickling.
    let deadline = Instant::now() + Duration::from_secs(20);
    let fds_after = loop {
        let (fds, _) = fds_and_rss(daemon.pid());
        if fds <= fds_before + 2 || Instant::now() > deadline {
            break fds;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (_, rss_after) = fds_and_rss(daemon.pid());
    trickler.abort();
    drop(idle);
    assert!(
        fds_after <= fds_before + 2,
        "{fds_before} descriptors before, {fds_after} 20 s later: slow clients not closed"
    );
    assert!(
        rss_after <= rss_during + 8 * 1024,
        "VmRSS {rss_during} KiB with the clients, {rss_after} KiB after"
    );
    println!(
        "slowest scrape {slowest:?}; descriptors {fds_before} -> {fds_during} -> {fds_after}; \
         VmRSS {rss_before} -> {rss_during} -> {rss_after} KiB"
    );
}
