//! The commands behind `mirrorsync sync`, `plan` and `check`, and the metric export of a
//! `--once` run. `main` parses the command line and loads the configuration; these return the
//! process exit code.

use std::sync::Arc;

use crate::config::{Config, TargetKind};
use crate::copy::Mode;
use crate::run::PassOptions;
use crate::shard::Shard;
use crate::signals::RunControl;
use crate::{cli, daemon, metrics, registry, run, signals};

/// The shard from `--shard`, else from an Indexed Job's environment.
fn shard_of(flag: Option<Shard>) -> Result<Option<Shard>, String> {
    match flag {
        Some(s) => Ok(Some(s)),
        None => Shard::from_env(|k| std::env::var(k).ok()).transpose(),
    }
}

/// `mirrorsync sync`: one pass with `--once`, else the scheduled daemon.
pub async fn sync(config: Config, args: cli::SyncArgs, progress: bool) -> i32 {
    let shard = match shard_of(args.shard.shard) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if !args.once {
        let options = daemon::DaemonOptions {
            config_path: args.config.config.clone(),
            metrics_addr: args.metrics_addr,
            run_now: args.run_now,
            shard,
            grace: args.grace_period,
        };
        return daemon::run(config, options).await;
    }
    let control = RunControl {
        grace: args.grace_period,
        ..RunControl::default()
    };
    let stop = control.stop.clone();
    if let Err(e) = signals::watch_stop(control.stop.clone(), control.now.clone()) {
        tracing::warn!(error = %e, "cannot watch for SIGTERM");
    }
    if let Some(limit) = args.max_duration {
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            tracing::warn!(
                max_duration_s = limit.as_secs(),
                "--max-duration reached: no new work starts"
            );
            stop.cancel();
        });
    }
    let metrics = metrics::Metrics::new();
    let options = PassOptions {
        progress,
        mode: Mode::Sync,
        shard,
        control,
    };
    let code = match run::run_pass(&config, &options, &metrics).await {
        Ok(report) => {
            print!("{}", report.render());
            report.exit_code()
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    // A second signal: whatever the tags did, the run was cut short.
    let code = if options.control.stopped_now() {
        3
    } else {
        code
    };
    export_metrics(&metrics, &args, shard).await;
    code
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
        let instance = args
            .instance
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "mirrorsync".to_string());
        let shard_label = shard.map(|s| format!("{}-of-{}", s.index, s.count));
        let mut grouping = vec![("instance", instance.as_str())];
        if let Some(label) = &shard_label {
            grouping.push(("shard", label.as_str()));
        }
        let http = reqwest::Client::new();
        if let Err(e) = metrics::push(&http, url, &grouping, body).await {
            tracing::error!(error = %e, "could not push metrics to the Pushgateway");
        }
    }
}

/// `mirrorsync plan`: what a sync would do; writes nothing anywhere.
pub async fn plan(config: Config, args: cli::PlanArgs, progress: bool) -> i32 {
    let shard = match shard_of(args.shard.shard) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let options = PassOptions {
        progress,
        mode: Mode::Plan,
        shard,
        control: RunControl::default(),
    };
    match run::run_pass(&config, &options, &metrics::Metrics::new()).await {
        Ok(report) => {
            print!("{}", report.render());
            report.exit_code()
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `mirrorsync check`: the configuration already loaded; with `connect`, ping every registry.
pub async fn check(config: Config, connect: bool) -> i32 {
    println!(
        "{}: {} tags to mirror into {}",
        config.path.display(),
        config.images.len(),
        match &config.target.kind {
            TargetKind::Registry(e) => e.host.clone(),
            TargetKind::Path(p) => p.display().to_string(),
        }
    );
    if !connect {
        return 0;
    }
    let mut hosts: Vec<String> = config
        .images
        .iter()
        .map(|i| i.source.registry().to_string())
        .collect();
    hosts.sort();
    hosts.dedup();
    // The same clients a sync builds: the target with its `auth:`, each upstream with its
    // `auth:` or else the Docker config's credentials, and the configured limits.
    let docker = match registry::CredentialStore::load(config.docker_config.as_deref()) {
        Ok(store) => store,
        Err(e) => {
            println!("FAILED  docker config: {e}");
            return 1;
        }
    };
    let mut failed = 0;
    let mut endpoints = Vec::new();
    if let TargetKind::Registry(e) = &config.target.kind {
        let mut usage = registry::Usage::new("target");
        usage.limits = config.target.limits;
        endpoints.push(("target".to_string(), e.clone(), None, usage));
    }
    for host in hosts {
        let settings = config.registry(&host);
        let mut usage = registry::Usage::new(host.clone());
        usage.limits = settings.limits();
        endpoints.push((host.clone(), settings.endpoint, Some(host), usage));
    }
    for (name, endpoint, docker_name, usage) in endpoints {
        let lookup = docker_name.as_deref().map(|n| (&docker, n));
        let result = match registry::RegistryClient::for_endpoint(&endpoint, lookup, usage).await {
            Ok(c) => c
                .verify_credentials()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => println!("ok      {name} ({})", endpoint.host),
            Err(e) => {
                failed += 1;
                println!("FAILED  {name} ({}): {e}", endpoint.host);
            }
        }
    }
    if failed > 0 { 1 } else { 0 }
}
