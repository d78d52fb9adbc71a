//! Command-line arguments: `sync [--once]`, `plan`, `check`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Keeps a private container registry stocked with the images its clusters pull.
///
/// Exit codes: 0 every tag is in sync; 1 some tags failed (the others were still synced);
/// 2 configuration or usage error; 3 stopped early with work left.
#[derive(Debug, Parser)]
#[command(name = "mirrorsync", version, about, long_about)]
pub struct Cli {
    /// Log format on stderr.
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
    /// Copy every configured tag that is missing or behind at the target.
    Sync(SyncArgs),
    /// Show per tag unchanged / new / updated and the blobs and bytes a sync would copy.
    /// Writes nothing anywhere.
    Plan(ConfigArg),
    /// Validate the configuration (and with --connect, reach every registry).
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
pub struct SyncArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Run one pass and exit (for a CronJob or by hand).
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Also reach every registry the configuration names.
    #[arg(long)]
    pub connect: bool,
}
