//! The `mirrorsync` binary: arguments -> library call -> exit code.

use std::process::ExitCode;

use clap::Parser;
use mirrorsync::Config;
use mirrorsync::cli::{Cli, Command, LogFormat};
use mirrorsync::exit;
use mirrorsync::{ReportCommand, ReportFile};

fn main() -> ExitCode {
    let started = std::time::SystemTime::now();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_tracing(cli.log_format, &cli.log_level);
    mirrorsync::use_json_logs(cli.log_format == LogFormat::Json);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let config_path = match &cli.command {
        Command::Sync(a) => &a.config.config,
        Command::Plan(a) => &a.config.config,
        Command::Check(a) => &a.config.config,
    };
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            mirrorsync::fatal(&e);
            // A pipeline that asked for a run report gets one, with the error.
            let code = report_file(&cli.command, started)
                .write_error_blocking(&e.to_string(), exit::USAGE);
            return exit::to_process(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            mirrorsync::fatal(format!("cannot start the async runtime: {e}"));
            return exit::to_process(exit::FAILED);
        }
    };
    let progress = cli.log_format == LogFormat::Text;
    let code = runtime.block_on(async {
        match cli.command {
            Command::Sync(args) => mirrorsync::commands::sync(config, args, progress).await,
            Command::Plan(args) => mirrorsync::commands::plan(config, args, progress).await,
            Command::Check(args) => mirrorsync::commands::check(config, args.connect).await,
        }
    });
    // Transfers abandoned after a grace period must not hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    exit::to_process(code)
}

/// The `--report` file of `sync` and `plan` (none for `check`).
fn report_file(command: &Command, started: std::time::SystemTime) -> ReportFile {
    let (path, kind) = match command {
        Command::Sync(a) if a.once => (a.report.as_deref(), ReportCommand::Sync),
        Command::Plan(a) => (a.report.as_deref(), ReportCommand::Plan),
        _ => (None, ReportCommand::Sync),
    };
    ReportFile::started_at(path, kind, started)
}

/// A command line clap refuses (exit 2), or `--help`/`--version` (exit 0, on stdout). With
/// `--log-format json` among the arguments the refusal is one JSON event, like every other error.
fn usage_error(error: clap::Error) -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let json = args
        .windows(2)
        .any(|w| w[0] == "--log-format" && w[1] == "json")
        || args.iter().any(|a| a == "--log-format=json");
    if !error.use_stderr() || !json {
        error.exit();
    }
    init_tracing(LogFormat::Json, "info");
    let message = error.render().to_string();
    tracing::error!(error = %message.trim_end(), "invalid command line");
    exit::to_process(error.exit_code())
}

fn init_tracing(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
