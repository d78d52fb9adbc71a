//! The commands behind `mirrorsync sync`, `plan` and `check`, and the metric export of a
//! `--once` run. `main` parses the command line and loads the configuration; these return the
//! process exit code.

use std::sync::Arc;

use crate::config::{Config, TargetKind};
use crate::copy::Mode;
use crate::run::RunOptions;
use crate::run_report::{ReportCommand, ReportFile};
use crate::shard::Shard;
use crate::signals::RunControl;
use crate::state_fallback::{PushgatewayGroup, StateFallback};
use crate::{cli, copy, daemon, exit, metrics, run, signals};

/// The shard from `--shard`, else from an Indexed Job's environment.
fn shard_of(flag: Option<Shard>) -> Result<Option<Shard>, String> {
    match flag {
        Some(s) => Ok(Some(s)),
        None => Shard::from_env(|k| std::env::var(k).ok()).transpose(),
    }
}

/// `mirrorsync sync`: one run with `--once`, else the scheduled daemon.
pub async fn sync(config: Config, args: cli::SyncArgs, progress: bool) -> i32 {
    if let Err(e) = args.check_mode() {
        eprintln!("error: {e}");
        return exit::USAGE;
    }
    let Some(file) = open_report(args.report.as_deref(), ReportCommand::Sync) else {
        return exit::USAGE;
    };
    let shard = match shard_of(args.shard.shard) {
        Ok(s) => s,
        Err(e) => {
            crate::report::fatal(&e);
            return file.write_error(&e, exit::USAGE).await;
        }
    };
    if !args.once && args.deferred_exit_code.is_some() {
        eprintln!(
            "error: --deferred-exit-code applies to `sync --once` only (the daemon's passes have no exit code)"
        );
        return exit::USAGE;
    }
    if !args.once {
        let options = daemon::DaemonOptions {
            config_path: args.config.config.clone(),
            metrics_addr: args.metrics_addr,
            run_now: args.run_now,
            shard,
            grace: args.grace_period,
            liveness_timeout: args.liveness_timeout,
        };
        return daemon::run(config, options).await;
    }
    sync_once(config, args, shard, file, progress).await
}

/// `mirrorsync sync --once`: one run, its summary, report file and metrics.
async fn sync_once(
    config: Config,
    args: cli::SyncArgs,
    shard: Option<Shard>,
    file: ReportFile,
    progress: bool,
) -> i32 {
    let control = once_control(&args);
    let metrics = metrics::Metrics::new();
    let options = RunOptions {
        progress,
        mode: Mode::Sync,
        shard,
        control,
        fallback: StateFallback {
            memory: None,
            textfile: args.metrics_file.clone(),
            pushgateway: args.pushgateway.as_ref().map(|url| PushgatewayGroup {
                url: url.clone(),
                labels: std::iter::once(("job".to_string(), "mirrorsync".to_string()))
                    .chain(
                        push_grouping(&args, shard)
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v)),
                    )
                    .collect(),
            }),
            target_name: None,
        },
        activity: None,
    };
    let location = crate::run_report::locations(&config);
    let code = match run::run(&config, &options, &metrics).await {
        Ok(report) => {
            print!("{}", report.render_end());
            // A second signal: whatever the tags did, the run was cut short.
            let code = if options.control.stopped_now() {
                exit::WORK_LEFT
            } else {
                deferred_exit(
                    report.exit_code(),
                    report.deferred(),
                    args.deferred_exit_code,
                )
            };
            report.log_summary(code);
            file.write_run(&report, code, &location).await
        }
        Err(e) => {
            crate::report::fatal(&e);
            metrics.count_run(metrics::RunResult::Failed);
            file.write_error(&e.to_string(), exit::FAILED).await
        }
    };
    export_metrics(&metrics, &args, shard).await;
    code
}

/// How a `--once` run stops: SIGTERM/SIGINT (a second one at once), and `--max-duration`.
fn once_control(args: &cli::SyncArgs) -> RunControl {
    let control = RunControl {
        grace: args.grace_period,
        ..RunControl::default()
    };
    if let Err(e) = signals::watch_stop(control.stop.clone(), control.now.clone()) {
        tracing::warn!(error = %e, "cannot watch for SIGTERM");
    }
    if let Some(limit) = args.max_duration {
        let stop = control.stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            tracing::warn!(
                max_duration_s = limit.as_secs(),
                "--max-duration reached: no new work starts"
            );
            stop.cancel();
        });
    }
    control
}

/// The exit code of a `--once` run: [`exit::WORK_LEFT`] (work left, nothing failed) becomes `--deferred-exit-code`.
fn deferred_exit(code: i32, deferred: usize, deferred_exit_code: Option<u8>) -> i32 {
    match deferred_exit_code {
        Some(n) if code == exit::WORK_LEFT => {
            tracing::info!(
                deferred,
                exit_code = n,
                "tags were deferred to the next run; exiting with --deferred-exit-code"
            );
            i32::from(n)
        }
        _ => code,
    }
}

/// The Pushgateway grouping labels of a `--once` run: instance, and shard when sharded.
fn push_grouping(args: &cli::SyncArgs, shard: Option<Shard>) -> Vec<(&'static str, String)> {
    let instance = args
        .instance
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "mirrorsync".to_string());
    let mut grouping = vec![("instance", instance)];
    if let Some(s) = shard {
        grouping.push(("shard", format!("{}-of-{}", s.index, s.count)));
    }
    grouping
}

/// Pushes and/or writes the metrics of a `--once` run. A failure is logged, not fatal: the
/// sync itself happened.
async fn export_metrics(
    metrics: &Arc<metrics::Metrics>,
    args: &cli::SyncArgs,
    shard: Option<Shard>,
) {
    let body = metrics.render();
    if let Some(path) = &args.metrics_file
        && let Err(e) = metrics::write_textfile(path, &body)
    {
        tracing::error!(path = %path.display(), error = %e, "could not write the metrics textfile");
    }
    if let Some(url) = &args.pushgateway {
        let labels = push_grouping(args, shard);
        let grouping: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let http = reqwest::Client::new();
        if let Err(e) = metrics::push(&http, url, &grouping, body).await {
            tracing::error!(error = %e, "could not push metrics to the Pushgateway");
        }
    }
}

/// `mirrorsync plan`: what a sync would do; writes nothing anywhere.
pub async fn plan(config: Config, args: cli::PlanArgs, progress: bool) -> i32 {
    let Some(file) = open_report(args.report.as_deref(), ReportCommand::Plan) else {
        return exit::USAGE;
    };
    let shard = match shard_of(args.shard.shard) {
        Ok(s) => s,
        Err(e) => {
            crate::report::fatal(&e);
            return file.write_error(&e, exit::USAGE).await;
        }
    };
    let options = RunOptions {
        progress,
        mode: Mode::Plan,
        shard,
        control: RunControl::default(),
        fallback: StateFallback::default(),
        activity: None,
    };
    let location = crate::run_report::locations(&config);
    match run::run(&config, &options, &metrics::Metrics::new()).await {
        Ok(report) => {
            print!("{}", report.render_end());
            let code = report.exit_code();
            report.log_summary(code);
            file.write_run(&report, code, &location).await
        }
        Err(e) => {
            crate::report::fatal(&e);
            file.write_error(&e.to_string(), exit::FAILED).await
        }
    }
}

/// The `--report` file, checked before the run; `None` (after saying why) when it cannot be
/// written: a usage error.
fn open_report(path: Option<&std::path::Path>, command: ReportCommand) -> Option<ReportFile> {
    ReportFile::open(path, command)
        .map_err(|e| crate::report::fatal(format!("{e}; the run did not start")))
        .ok()
}

/// `mirrorsync check`: the configuration already loaded; with `connect`, prove what a sync
/// needs (see [`copy::Engine::preflight`]). Exit 1 when something is missing.
pub async fn check(config: Config, connect: bool) -> i32 {
    let views = config.per_target();
    for view in &views {
        let name = view
            .target
            .name
            .as_ref()
            .map(|n| format!(" (target {n})"))
            .unwrap_or_default();
        println!(
            "{}: {} tags to mirror into {}{name}",
            config.path.display(),
            view.images.len(),
            match &view.target.kind {
                TargetKind::Registry(e) => e.host.clone(),
                TargetKind::Path(p) => p.display().to_string(),
            }
        );
    }
    if let Some(schedule) = &config.schedule {
        let next = schedule
            .next_after(chrono::Utc::now())
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| "never".to_string());
        println!("schedule: {}; next pass at {next}", schedule.describe());
    }
    if !connect {
        return exit::SUCCESS;
    }
    let mut failed = 0;
    for view in views {
        let prefix = view
            .target
            .name
            .as_ref()
            .map(|n| format!("[{n}] "))
            .unwrap_or_default();
        // The engine a sync builds, so the clients (credentials from `auth:` or the Docker
        // config, CA, limits) are exactly a sync's; in plan mode it writes nothing.
        let engine = match copy::Engine::new(Arc::new(view), Mode::Plan, None).await {
            Ok(engine) => engine,
            Err(e) => {
                println!("FAILED  {prefix}{e}");
                failed += 1;
                continue;
            }
        };
        for probe in engine.preflight().await {
            match probe.result {
                Ok(()) => println!("ok      {prefix}{}", probe.what),
                Err(why) => {
                    failed += 1;
                    println!("FAILED  {prefix}{}: {why}", probe.what);
                }
            }
        }
    }
    if failed > 0 {
        exit::FAILED
    } else {
        exit::SUCCESS
    }
}
