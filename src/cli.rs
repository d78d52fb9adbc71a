//! Command-line arguments: `sync [--once]`, `plan`, `check`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::shard::Shard;

/// Keeps a private container registry stocked with the images its clusters pull.
///
/// Exit codes: 0 every tag is in sync; 1 some tags failed (the others were still synced);
/// 2 configuration or usage error; 3 stopped early with work left (signal, --max-duration,
/// pull-quota reserve reached; `sync --once --deferred-exit-code N` makes this N).
#[derive(Debug, Parser)]
#[command(name = "mirrorsync", version, about, long_about)]
pub struct Cli {
    /// Log format on stderr: text, or json (one event per line, for Kubernetes).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `debug` or `mirrorsync=debug`.
    #[arg(long, env = "MIRRORSYNC_LOG", default_value = "info", global = true)]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy every configured tag that is missing or behind at the target: one pass with
    /// --once, else passes on the config's `schedule`.
    Sync(SyncArgs),
    /// Show per tag unchanged / new / updated and the blobs and bytes a sync would copy.
    /// Writes nothing anywhere.
    Plan(PlanArgs),
    /// Validate the configuration (and with --connect, prove pull, push and write access).
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file [default: $MIRRORSYNC_CONFIG, then ./sync.yaml]
    #[arg(
        long,
        short = 'c',
        env = "MIRRORSYNC_CONFIG",
        default_value = "sync.yaml"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct ShardArg {
    /// Sync only this share of the list, INDEX/COUNT (e.g. 0/3). Default: from
    /// MIRRORSYNC_SHARDS and JOB_COMPLETION_INDEX when set (a Kubernetes Indexed Job).
    #[arg(long, value_parser = Shard::parse)]
    pub shard: Option<Shard>,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub shard: ShardArg,
    /// Run one pass and exit (for a CronJob or by hand).
    #[arg(long)]
    pub once: bool,
    /// Stop starting new work after this long (e.g. 50m, 1h30m, 90s) and exit 3 with what is
    /// left; running transfers get --grace-period to finish.
    #[arg(long, value_parser = parse_duration)]
    pub max_duration: Option<Duration>,
    /// How long running transfers may go on after a stop (signal or --max-duration).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub grace_period: Duration,
    /// With --once: push the run's metrics to this Prometheus Pushgateway
    /// (job `mirrorsync`, grouped by instance, and shard when sharded). A user and password
    /// in the URL are sent as Basic auth and never logged; from the environment (e.g. a
    /// Kubernetes Secret) they stay out of the process's arguments.
    #[arg(long, env = "MIRRORSYNC_PUSHGATEWAY", hide_env_values = true)]
    pub pushgateway: Option<String>,
    /// With --pushgateway: its `instance` label [default: $HOSTNAME, else "mirrorsync"].
    #[arg(long)]
    pub instance: Option<String>,
    /// With --once: write the metrics as a node-exporter textfile (atomically).
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// Without --once: serve /metrics and /healthz on this address (e.g. 0.0.0.0:9090).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Without --once: start with a pass instead of waiting for the schedule.
    #[arg(long)]
    pub run_now: bool,
    /// With --once: the exit code of a run where no tag failed but some were deferred
    /// (pull-quota reserve reached, --max-duration, a signal) [default: 3]. 0 lets a
    /// Kubernetes Job succeed on a routine deferral; the summary and the metrics still count
    /// the deferred tags.
    #[arg(long, value_name = "N")]
    pub deferred_exit_code: Option<u8>,
    /// Without --once: /healthz (liveness) fails when a due pass has not started, or a running
    /// pass has finished no tag and moved no byte, for this long (e.g. 30m, 90s). Failing passes
    /// and long passes that make progress keep it healthy: alert on the metrics for those.
    #[arg(long, value_parser = parse_duration, default_value = "30m")]
    pub liveness_timeout: Duration,
    /// With --once: write the run report, one JSON document (schema in the README), to this
    /// file, atomically, whatever the end of the run (cut short, failed to start).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

impl SyncArgs {
    /// A flag that would do nothing in this mode is a usage error, not silently ignored.
    pub fn check_mode(&self) -> Result<(), String> {
        let once_only = [
            ("--max-duration", self.max_duration.is_some()),
            (
                "--pushgateway (or MIRRORSYNC_PUSHGATEWAY)",
                self.pushgateway.is_some(),
            ),
            ("--metrics-file", self.metrics_file.is_some()),
            ("--report", self.report.is_some()),
        ];
        let daemon_only = [
            ("--metrics-addr", self.metrics_addr.is_some()),
            ("--run-now", self.run_now),
        ];
        if self.once {
            if let Some((flag, _)) = daemon_only.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "{flag} applies only to the daemon (`sync` without --once); a --once run \
                     exports metrics with --pushgateway or --metrics-file"
                ));
            }
        } else if let Some((flag, _)) = once_only.iter().find(|(_, set)| *set) {
            return Err(format!(
                "{flag} applies only to `sync --once`; the daemon serves its metrics with \
                 --metrics-addr and runs each pass to the end"
            ));
        }
        if self.instance.is_some() && self.pushgateway.is_none() {
            return Err(
                "--instance is the Pushgateway's grouping label: it needs --pushgateway".into(),
            );
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub shard: ShardArg,
    /// Write what a sync would do as the run report, one JSON document (schema in the
    /// README), to this file, atomically.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Also prove what a sync needs, with the credentials it would use: pull access to each
    /// upstream repository, push access to the target, a writable OCI layout directory.
    #[arg(long)]
    pub connect: bool,
}

/// `90s`, `50m`, `1h30m`, `2h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => {
                return Err(format!(
                    "duration {text:?}: unknown unit {ch:?} (use s, m, h, d)"
                ));
            }
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("duration {text:?}: expected a number before {ch:?}"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(format!("duration {text:?}: end with a unit (s, m, h, d)"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("50m"), Ok(Duration::from_secs(3000)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("5m3").is_err());
        assert!(parse_duration("").is_err());
    }
}
