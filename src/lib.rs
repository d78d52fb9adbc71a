//! mirrorsync keeps a private container registry stocked with the images its clusters pull.
//!
//! The flow of one run, and where each step lives:
//! 1. [`config`] reads `sync.yaml` into a validated [`config::Config`]: the list of tags to mirror
//!    ([`reference`] normalises image names as Docker does) and where each lands at the target.
//! 2. [`copy::Engine`] takes each tag: HEAD upstream and target ([`registry`]); same digest means
//!    unchanged, and nothing more is asked upstream.
//! 3. Otherwise it fetches the manifest by digest ([`manifest`] finds what it references), makes
//!    every blob present at the [`target`] (skip, cross-repository mount, or a streamed and verified
//!    copy), pushes child manifests, and writes the tag last.
//! 4. [`report`] prints one line per changed tag and the totals; the exit code says whether every
//!    tag is in sync.

pub mod cli;
pub mod config;
pub mod copy;
pub mod manifest;
pub mod metrics;
pub mod reference;
pub mod registry;
pub mod report;
pub mod schedule;
pub mod target;

use std::sync::Arc;

use config::{Config, TargetKind};
use copy::{Engine, Mode};
use report::RunReport;

/// One pass over every configured tag; prints the summary and returns the exit code.
pub async fn run_once(config: Config, mode: Mode) -> i32 {
    let started = std::time::Instant::now();
    let engine = match Engine::new(Arc::new(config), mode, None) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let tags = engine
        .run(
            &copy::RunControl::default(),
            &std::collections::HashMap::new(),
        )
        .await;
    let report = RunReport {
        tags,
        duration: started.elapsed(),
        planned: mode == Mode::Plan,
    };
    print!("{}", report.render());
    report.exit_code()
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
    let mut failed = 0;
    let mut endpoints = Vec::new();
    if let TargetKind::Registry(e) = &config.target.kind {
        endpoints.push(("target".to_string(), e.clone()));
    }
    for host in hosts {
        endpoints.push((host.clone(), config.registry(&host).endpoint));
    }
    for (name, endpoint) in endpoints {
        let client = registry::RegistryClient::new(registry::ClientOptions::new(
            &endpoint.host,
            endpoint.insecure,
            endpoint.ca_file.clone(),
            endpoint.credentials.clone(),
        ));
        let result = match client {
            Ok(c) => c.ping().await,
            Err(e) => Err(e),
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
