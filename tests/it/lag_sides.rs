//! User story: `mirrorsync_tag_lag_seconds` means one thing whichever side is down. A tag that a
//! pass cannot confirm in sync has lag = now - the last time it was confirmed, with the upstream
//! down and with the target down, in stateless `--once` runs (textfile or Pushgateway) and in the
//! daemon. With the target down the state document (kept in the target) cannot be read: the
//! history then comes from the previous textfile, the previous Pushgateway group, or the daemon's
//! memory of its last pass.

use crate::common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::observe::Pushgateway;
use common::util::free_port;
use common::*;

/// (in_sync, last_synced, lag) of `target` from Prometheus text, by a plain line scan.
fn series(text: &str, target: &str) -> (Option<f64>, Option<f64>, Option<f64>) {
    let value = |name: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{")) && l.contains(&format!("target=\"{target}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    (
        value("mirrorsync_tag_in_sync"),
        value("mirrorsync_tag_last_synced_timestamp_seconds"),
        value("mirrorsync_tag_lag_seconds"),
    )
}

fn last_success(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with("mirrorsync_run_last_success_timestamp_seconds "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn config(dir: &Path, upstream: &str, target: &str) -> std::path::PathBuf {
    config_yaml(upstream, target).write(dir)
}

/// `team/app:1` from `upstream` into `target`.
fn config_yaml(upstream: &str, target: &str) -> ConfigYaml {
    ConfigYaml::to_registry(target)
        .upstream(upstream)
        .images(&[format!("{upstream}/team/app:1")])
}

/// Runs `sync --once` with `extra` args; returns the textfile (when one is written).
async fn once(config: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["sync", "--once", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    mirrorsync(&args).await
}

/// Given a tag in sync at time t1, when `down` makes one side unreachable and two more runs
/// fail, then each run reports the tag out of sync, last confirmed at t1, with lag = now - t1
/// growing from run to run, and the last fully successful run still at t1.
async fn assert_lag_grows(
    read: impl AsyncFn() -> String,
    run: impl AsyncFn() -> Output,
    down: impl FnOnce(),
) {
    let out = run().await;
    out.assert_code(0);
    let text = read().await;
    let (in_sync, t1, lag) = series(&text, "team/app:1");
    assert_eq!((in_sync, lag), (Some(1.0), Some(0.0)), "{text}");
    let t1 = t1.expect("last synced after run 1");
    let success = last_success(&text).expect("last success after run 1");
    down();
    let mut lags = Vec::new();
    for attempt in 2..=3 {
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let before = now();
        let out = run().await;
        let after = now();
        assert_eq!(
            out.code,
            Some(1),
            "run {attempt} fails:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        let text = read().await;
        let (in_sync, last, lag) = series(&text, "team/app:1");
        let lag = lag.unwrap_or_else(|| panic!("run {attempt}: no lag series:\n{text}"));
        assert_eq!(in_sync, Some(0.0), "run {attempt}:\n{text}");
        assert_eq!(
            last,
            Some(t1),
            "run {attempt}: last confirmed stays at run 1:\n{text}"
        );
        assert!(
            lag >= before - t1 - 0.5 && lag <= after - t1 + 0.5,
            "run {attempt}: lag {lag} should be now - t1 ({} .. {})\n{}",
            before - t1,
            after - t1,
            out.stderr
        );
        assert_eq!(
            last_success(&text),
            Some(success),
            "run {attempt}: the last success is still known:\n{text}"
        );
        lags.push(lag);
    }
    assert!(lags[1] > lags[0] + 1.0, "lag grows: {lags:?}");
}

/// Stateless runs with a textfile; the upstream (or the target) goes down after the first.
async fn lag_grows_in_textfile_runs(upstream_goes_down: bool, seed: u64) {
    let mut upstream = Registry::start().await;
    let mut target = Registry::start().await;
    push_image(&upstream, "team/app", "1", oci_image(seed, 2_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &upstream.host(), &target.host());
    let textfile = dir.path().join("m.prom");
    let file = textfile.display().to_string();
    let down = if upstream_goes_down {
        &mut upstream
    } else {
        &mut target
    };
    assert_lag_grows(
        async || std::fs::read_to_string(&textfile).unwrap(),
        async || once(&config, &["--metrics-file", &file]).await,
        move || down.kill(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_grows_with_the_upstream_down_in_stateless_runs() {
    lag_grows_in_textfile_runs(true, 70).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_grows_with_the_target_down_from_the_previous_textfile() {
    lag_grows_in_textfile_runs(false, 71).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_grows_with_the_target_down_from_the_previous_pushgateway_group() {
    let pg = Pushgateway::start().await;
    let upstream = Registry::start().await;
    let mut target = Registry::start().await;
    push_image(&upstream, "team/app", "1", oci_image(72, 2_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &upstream.host(), &target.host());
    let url = pg.url("");
    let target_ref = &mut target;
    assert_lag_grows(
        async || pg.group_text("lagtest").await,
        async || once(&config, &["--pushgateway", &url, "--instance", "lagtest"]).await,
        move || target_ref.kill(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_keeps_lag_growing_with_the_target_down() {
    common::client::init_crypto();
    let upstream = Registry::start().await;
    let mut target = Registry::start().await;
    push_image(&upstream, "team/app", "1", oci_image(73, 2_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_yaml(&upstream.host(), &target.host())
        .top("schedule: \"*/2 * * * * *\"\n")
        .write(dir.path());
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut daemon = tokio::process::Command::new(bin_path())
        .args(["sync", "--config", config.to_str().unwrap(), "--run-now"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let scrape = async || -> String {
        match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    // In sync after the first pass.
    let deadline = Instant::now() + Duration::from_secs(30);
    let t1 = loop {
        let text = scrape().await;
        if let (Some(1.0), Some(t1), Some(0.0)) = series(&text, "team/app:1") {
            break t1;
        }
        assert!(Instant::now() < deadline, "never in sync:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    target.kill();
    // Passes go on failing; the lag must come to more than 4 s, counted from t1.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape().await;
        let (in_sync, last, lag) = series(&text, "team/app:1");
        if in_sync == Some(0.0) {
            assert_eq!(last, Some(t1), "{text}");
            let lag = lag.expect("lag");
            assert!(lag <= now() - t1 + 0.5, "lag {lag} counts from t1:\n{text}");
            if lag > 4.0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "lag did not grow with the target down:\n{text}\n{}",
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = daemon.start_kill();
    let _ = daemon.wait().await;
}
