//! `mirrorsync sync` without `--once`: passes on the config's cron `schedule`, never two at
//! once, serving `/metrics` and `/healthz`. SIGHUP reloads the configuration (keeping the old one
//! when the new one is invalid); SIGTERM or SIGINT stops between passes, or within one after a
//! grace period for running transfers; a second one stops a pass at once (see [`crate::signals`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::copy::Mode;
use crate::metrics::{self, Metrics};
use crate::run::{PassOptions, run_pass};
use crate::schedule::Schedule;
use crate::shard::Shard;
use crate::signals::{self, RunControl};

/// What the daemon needs beyond the configuration.
pub struct DaemonOptions {
    pub config_path: PathBuf,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub run_now: bool,
    pub shard: Option<Shard>,
    pub grace: Duration,
}

fn schedule_of(config: &Config) -> Result<Schedule, String> {
    let expr = config.schedule.as_deref().ok_or_else(|| {
        format!(
            "{}: `sync` without --once needs a `schedule` (cron) in the configuration",
            config.path.display()
        )
    })?;
    Schedule::parse(expr, &config.timezone)
        .map_err(|e| format!("{}: schedule: {e}", config.path.display()))
}

/// Runs until a stop signal; returns the exit code.
pub async fn run(initial: Config, options: DaemonOptions) -> i32 {
    let mut schedule = match schedule_of(&initial) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let mut config = initial;
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let now = CancellationToken::new();
    let hangup = Arc::new(Notify::new());
    if let Err(e) = watch_signals(shutdown.clone(), now.clone(), Arc::clone(&hangup)) {
        eprintln!("error: cannot install signal handlers: {e}");
        return 1;
    }

    // Healthy while the last pass is younger than twice the schedule's interval.
    let last_pass = Arc::new(Mutex::new(std::time::Instant::now()));
    let interval = Arc::new(Mutex::new(
        schedule
            .interval(Utc::now())
            .unwrap_or(Duration::from_secs(3600)),
    ));
    if let Some(addr) = options.metrics_addr {
        let (last, every) = (Arc::clone(&last_pass), Arc::clone(&interval));
        let healthy: metrics::HealthCheck = Arc::new(move || {
            let age = last.lock().map(|t| t.elapsed()).unwrap_or_default();
            let limit = every
                .lock()
                .map(|d| *d * 2)
                .unwrap_or(Duration::from_secs(7200));
            if age <= limit {
                Ok(())
            } else {
                Err(format!(
                    "last pass ended {}s ago, more than twice the schedule interval ({}s)",
                    age.as_secs(),
                    limit.as_secs() / 2
                ))
            }
        });
        match metrics::serve(addr, Arc::clone(&metrics), healthy).await {
            Ok((bound, _)) => tracing::info!(address = %bound, "serving /metrics and /healthz"),
            Err(e) => {
                eprintln!("error: cannot serve metrics on {addr}: {e}");
                return 2;
            }
        }
    }
    tracing::info!(schedule = %schedule.describe(), "waiting for the schedule");

    let mut run_now = options.run_now;
    loop {
        if !run_now {
            let now = Utc::now();
            let Some((wait, _)) = schedule.sleep_until_next(now) else {
                eprintln!("error: the schedule never fires again");
                return 2;
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // Idle between passes: nothing is stopped, so a clean exit.
                _ = shutdown.cancelled() => return 0,
                _ = hangup.notified() => {
                    reload(&options.config_path, &mut config, &mut schedule, &interval);
                    continue;
                }
            }
        }
        run_now = false;
        let pass_start = Utc::now();
        let pass = PassOptions {
            progress: false,
            mode: Mode::Sync,
            shard: options.shard,
            control: RunControl {
                stop: shutdown.child_token(),
                now: now.clone(),
                grace: options.grace,
            },
        };
        let exit = match run_pass(&config, &pass, &metrics).await {
            Ok(report) => {
                print!("{}", report.render());
                report.exit_code()
            }
            Err(e) => {
                tracing::error!(error = %e, "pass could not start");
                1
            }
        };
        if let Ok(mut t) = last_pass.lock() {
            *t = std::time::Instant::now();
        }
        // Occurrences that fell due while the pass ran were skipped, never run concurrently.
        let mut due = pass_start;
        let end = Utc::now();
        let mut skipped = 0;
        while let Some(next) = schedule.next_after(due) {
            if next > end || skipped >= 10_000 {
                break;
            }
            skipped += 1;
            due = next;
        }
        for _ in 0..skipped {
            metrics.inc_skipped_passes();
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "scheduled passes fell due while a pass was running and were skipped"
            );
        }
        if now.is_cancelled() {
            return 3;
        }
        if shutdown.is_cancelled() {
            return exit;
        }
    }
}

fn reload(
    path: &std::path::Path,
    config: &mut Config,
    schedule: &mut Schedule,
    interval: &Arc<Mutex<Duration>>,
) {
    match Config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|c| schedule_of(&c).map(|s| (c, s)))
    {
        Ok((new_config, new_schedule)) => {
            tracing::info!(tags = new_config.images.len(), schedule = %new_schedule.describe(), "configuration reloaded");
            if let Ok(mut every) = interval.lock() {
                *every = new_schedule.interval(Utc::now()).unwrap_or(*every);
            }
            *config = new_config;
            *schedule = new_schedule;
        }
        Err(e) => {
            tracing::error!(error = %e, "new configuration is invalid; keeping the previous one")
        }
    }
}

fn watch_signals(
    shutdown: CancellationToken,
    now: CancellationToken,
    hangup: Arc<Notify>,
) -> std::io::Result<()> {
    signals::watch_stop(shutdown, now)?;
    let mut hangups = signals::hangups()?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            hangup.notify_one();
        }
    });
    Ok(())
}
