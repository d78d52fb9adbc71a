//! `mirrorsync sync` without `--once`: runs on the config's cron `schedule`, never two at
//! once, serving `/metrics` and `/healthz` (liveness: see [`crate::liveness`]). Each run reads
//! every `password_file` again, and builds its clients from the Docker config as it is then, so
//! rotated secrets need no reload. SIGHUP reloads
//! the configuration (keeping the old one when the new one is invalid; either way recorded in
//! `mirrorsync_config_last_reload_*`, and the series of tags it no longer lists are dropped at
//! once); SIGTERM or SIGINT stops between runs, or within one after a grace period for running
//! transfers; a second one stops a run at once (see [`crate::signals`]).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::copy::Mode;
use crate::copy::progress::Progress;
use crate::exit;
use crate::liveness::Liveness;
use crate::metrics::{self, Metrics, RunResult};
use crate::outcome::TagId;
use crate::run::{RunError, RunOptions, unix_now};
use crate::schedule::Schedule;
use crate::shard::Shard;
use crate::signals::{self, RunControl};
use crate::state_fallback::{Memory, StateFallback};

/// What the daemon needs beyond the configuration.
pub struct DaemonOptions {
    pub config_path: PathBuf,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub run_now: bool,
    pub shard: Option<Shard>,
    pub grace: Duration,
    /// `/healthz` fails when a due run has not started, or a run in progress made no progress,
    /// for this long.
    pub liveness_timeout: Duration,
}

/// Why the daemon cannot take a configuration (at start, or on SIGHUP).
#[derive(Debug, thiserror::Error)]
enum ConfigRefused {
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("{}: `sync` without --once needs a `schedule` (cron) in the configuration", .0.display())]
    NoSchedule(PathBuf),
}

/// The schedule parsed when the configuration was loaded; the daemon cannot run without one.
fn schedule_of(config: &Config) -> Result<Schedule, ConfigRefused> {
    config
        .schedule
        .clone()
        .ok_or_else(|| ConfigRefused::NoSchedule(config.path.clone()))
}

/// Runs until a stop signal; returns the exit code.
pub async fn run(initial: Config, options: DaemonOptions) -> i32 {
    let schedule = match schedule_of(&initial) {
        Ok(s) => s,
        Err(e) => {
            crate::report::fatal(&e);
            return exit::USAGE;
        }
    };
    let metrics = Metrics::new();
    metrics.record_config_load(true, unix_now());
    let shutdown = CancellationToken::new();
    let now = CancellationToken::new();
    let hangup = Arc::new(Notify::new());
    if let Err(e) = watch_signals(shutdown.clone(), now.clone(), Arc::clone(&hangup)) {
        crate::report::fatal(format!("cannot install signal handlers: {e}"));
        return exit::FAILED;
    }
    let first_due = match schedule.sleep_until_next(Utc::now()) {
        Some((wait, _)) if !options.run_now => due_in(wait),
        _ => Instant::now(),
    };
    let liveness = Liveness::new(options.liveness_timeout, first_due);
    if let Some(addr) = options.metrics_addr {
        let live = Arc::clone(&liveness);
        let healthy: metrics::HealthCheck = Arc::new(move || live.check());
        match metrics::serve(addr, Arc::clone(&metrics), healthy).await {
            Ok((bound, _)) => tracing::info!(address = %bound, "serving /metrics and /healthz"),
            Err(e) => {
                crate::report::fatal(format!("cannot serve metrics on {addr}: {e}"));
                return exit::USAGE;
            }
        }
    }
    tracing::info!(schedule = %schedule.describe(), "waiting for the schedule");
    let run_now = options.run_now;
    let mut daemon = Daemon {
        options,
        config: initial,
        schedule,
        metrics,
        shutdown,
        now,
        hangup,
        liveness,
        memory: Memory::default(),
    };
    daemon.run_on_schedule(run_now).await
}

/// The daemon once started: its configuration (replaced on SIGHUP), signals and liveness.
struct Daemon {
    options: DaemonOptions,
    config: Config,
    schedule: Schedule,
    metrics: Arc<Metrics>,
    /// The first SIGTERM/SIGINT: stop between runs, or within one after the grace period.
    shutdown: CancellationToken,
    /// The second one: stop a run at once.
    now: CancellationToken,
    hangup: Arc<Notify>,
    liveness: Arc<Liveness>,
    /// The state of the last run, for runs that cannot read it from the target.
    memory: Memory,
}

/// How a wait for the schedule ended.
enum Wait {
    /// A run is due.
    Due,
    /// SIGHUP: the configuration was reloaded (or kept); the next occurrence is computed again.
    Reloaded,
    /// Stopped, or the schedule never fires again: exit with this code.
    Exit(i32),
}

impl Daemon {
    /// Runs on each occurrence of the schedule (the first at once with `run_now`), never two
    /// runs at once; returns the exit code once stopped.
    async fn run_on_schedule(&mut self, mut run_now: bool) -> i32 {
        loop {
            if !run_now {
                match self.wait_until_due().await {
                    Wait::Due => {}
                    Wait::Reloaded => continue,
                    Wait::Exit(code) => return code,
                }
            }
            run_now = false;
            let run_start = Utc::now();
            let code = self.run_once().await;
            // Until the loop computes the next occurrence: due now.
            self.liveness.waiting_until(Instant::now());
            self.skip_missed(run_start);
            if self.now.is_cancelled() {
                return exit::WORK_LEFT;
            }
            if self.shutdown.is_cancelled() {
                return code;
            }
        }
    }

    /// Sleeps until the next occurrence, a stop signal or a SIGHUP.
    async fn wait_until_due(&mut self) -> Wait {
        let Some((wait, next)) = self.schedule.sleep_until_next(Utc::now()) else {
            crate::report::fatal("the schedule never fires again");
            return Wait::Exit(exit::USAGE);
        };
        self.liveness.waiting_until(due_in(wait));
        tracing::info!(next_pass = %next.to_rfc3339(), wait_s = wait.as_secs(), "next pass scheduled");
        tokio::select! {
            _ = tokio::time::sleep(wait) => Wait::Due,
            // Idle between runs: nothing is stopped, so a clean exit.
            _ = self.shutdown.cancelled() => Wait::Exit(exit::SUCCESS),
            _ = self.hangup.notified() => {
                self.reload();
                Wait::Reloaded
            }
        }
    }

    /// One run over the configuration as it is now; its exit code (the run-summary event's).
    async fn run_once(&mut self) -> i32 {
        let activity = Arc::new(Progress::default());
        self.liveness.run_started({
            let activity = Arc::clone(&activity);
            Arc::new(move || {
                let tags = activity.tags_done.load(Ordering::Relaxed) as u64;
                tags.wrapping_add(activity.bytes.load(Ordering::Relaxed))
            })
        });
        let options = RunOptions {
            progress: false,
            mode: Mode::Sync,
            shard: self.options.shard,
            control: RunControl {
                stop: self.shutdown.child_token(),
                now: self.now.clone(),
                grace: self.options.grace,
            },
            fallback: StateFallback {
                memory: Some(Arc::clone(&self.memory)),
                ..StateFallback::default()
            },
            activity: Some(activity),
        };
        // Secrets rotate without a reload (a mounted Secret updated, a token refreshed by a
        // sidecar); the Docker config and its helpers are read by each run anyway.
        for problem in self.config.reread_password_files() {
            tracing::warn!(problem = %problem, "could not read a password file again");
        }
        tracing::info!(tags = self.config.images.len(), "pass started");
        match crate::run::run(&self.config, &options, &self.metrics).await {
            Ok(report) => {
                print!("{}", report.render_end());
                let code = if self.now.is_cancelled() {
                    exit::WORK_LEFT
                } else {
                    report.exit_code()
                };
                report.log_summary(code);
                code
            }
            Err(RunError::Start(e)) => {
                tracing::error!(error = %e, "pass could not start");
                self.metrics.count_run(RunResult::Failed);
                exit::FAILED
            }
        }
    }

    /// Occurrences that fell due while a run went on were skipped, never run concurrently:
    /// counted and logged.
    fn skip_missed(&self, run_start: chrono::DateTime<Utc>) {
        let mut due = run_start;
        let end = Utc::now();
        let mut skipped = 0;
        while let Some(next) = self.schedule.next_after(due) {
            if next > end || skipped >= 10_000 {
                break;
            }
            skipped += 1;
            due = next;
        }
        for _ in 0..skipped {
            self.metrics.inc_skipped_runs();
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "scheduled passes fell due while a pass was running and were skipped"
            );
        }
    }

    /// SIGHUP: the configuration read again; an invalid one keeps the previous.
    fn reload(&mut self) {
        match Config::load(&self.options.config_path)
            .map_err(ConfigRefused::from)
            .and_then(|c| schedule_of(&c).map(|s| (c, s)))
        {
            Ok((new_config, new_schedule)) => {
                tracing::info!(tags = new_config.images.len(), schedule = %new_schedule.describe(), "configuration reloaded");
                self.metrics.record_config_load(true, unix_now());
                let listed = Listed::new(&new_config, self.options.shard);
                self.metrics
                    .retain_tags(&|source, target| listed.contains(source, target));
                self.config = new_config;
                self.schedule = new_schedule;
            }
            Err(e) => {
                self.metrics.record_config_load(false, unix_now());
                tracing::error!(error = %e, "new configuration is invalid; keeping the previous one")
            }
        }
    }
}

/// The instant `wait` from now (a century when that is past what an `Instant` can hold).
fn due_in(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// The tags a configuration lists (this shard's share), as the `source` and `target` labels of
/// their series: a tag named in `images`, or any tag of a repository chosen by tag filters.
struct Listed {
    tags: HashSet<(String, String)>,
    filtered_repositories: Vec<String>,
}

impl Listed {
    fn new(config: &Config, shard: Option<Shard>) -> Listed {
        let (mut images, mut selections) = (Vec::new(), Vec::new());
        for view in config.per_target() {
            match shard {
                Some(s) => {
                    images.extend(s.select(&view.images));
                    selections.extend(s.select_selections(&view.selections));
                }
                None => {
                    images.extend(view.images);
                    selections.extend(view.selections);
                }
            }
        }
        Listed {
            tags: images.iter().map(|item| TagId::of(item).labels()).collect(),
            filtered_repositories: selections
                .iter()
                .map(|s| s.target_repository.clone())
                .collect(),
        }
    }

    fn contains(&self, source: &str, target: &str) -> bool {
        self.tags
            .contains(&(source.to_string(), target.to_string()))
            || self.filtered_repositories.iter().any(|repo| {
                target == repo
                    || target
                        .strip_prefix(repo.as_str())
                        .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('@'))
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_tags_are_the_images_and_the_filtered_repositories() {
        let yaml = "schedule: \"0 * * * *\"\ntarget:\n  registry: mirror.example:5000\n  prefix: m\nimages:\n  - nginx:1.25\n  - source: redis\n    tags:\n      - regex: '^7\\.'\n  - quay.io/coreos/flannel@sha256:0000000000000000000000000000000000000000000000000000000000000000\n";
        let config = Config::from_str(yaml, std::path::Path::new("sync.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let listed = Listed::new(&config, None);
        assert!(listed.contains("docker.io/library/nginx:1.25", "m/library/nginx:1.25"));
        assert!(!listed.contains("docker.io/library/nginx:1.26", "m/library/nginx:1.26"));
        // Any tag the filters may choose in a listed repository, and its listing failure.
        assert!(listed.contains("docker.io/library/redis:7.2", "m/library/redis:7.2"));
        assert!(listed.contains("docker.io/library/redis (tag filters)", "m/library/redis"));
        assert!(!listed.contains("docker.io/library/redisx:7.2", "m/library/redisx:7.2"));
        assert!(listed.contains(
            "quay.io/coreos/flannel@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "m/coreos/flannel@sha256:0000000000000000000000000000000000000000000000000000000000000000"
        ));
        // A shard lists only its share.
        let shard = Shard::parse("0/2").unwrap();
        let mine = Listed::new(&config, Some(shard));
        let other = Listed::new(&config, Some(Shard::parse("1/2").unwrap()));
        let nginx = ("docker.io/library/nginx:1.25", "m/library/nginx:1.25");
        assert_ne!(
            mine.contains(nginx.0, nginx.1),
            other.contains(nginx.0, nginx.1)
        );
    }
}
