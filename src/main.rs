//! The `mirrorsync` binary: arguments -> library call -> exit code.

use std::process::ExitCode;

use clap::Parser;
use mirrorsync::cli::{Cli, Command, LogFormat};
use mirrorsync::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, &cli.log_level);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let config_path = match &cli.command {
        Command::Sync(a) => &a.config.config,
        Command::Plan(a) => &a.config.config,
        Command::Check(a) => &a.config.config,
    };
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
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
    ExitCode::from(u8::try_from(code).unwrap_or(1))
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
