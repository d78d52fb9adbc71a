//! mirrorsync keeps a private container registry stocked with the images its clusters pull.
//!
//! Words used throughout, one per concept:
//! - **run**: one sync (or `plan`) over the configured tags ([`run::run`]): a `sync --once`, a
//!   `plan`, or one occurrence of the daemon's schedule, summed up in a [`report::RunReport`];
//!   what stops it before any tag is tried is a [`run::RunError`]. (The daemon's log lines,
//!   `/healthz` and `--help` call a scheduled run a "pass"; that text is the product's and stays.)
//! - **occurrence**: a time the cron [`schedule`] falls due; the daemon starts one run per
//!   occurrence and skips those that fall due while a run is in progress.
//! - **tag**: one configured image to mirror, named by its [`outcome::TagId`] (its source and
//!   where it lands at the target, a [`reference::TargetImage`]); the same from run to run.
//! - **outcome**: how a tag ended in a run ([`outcome::TagOutcome`]); its **result** is one of
//!   unchanged, synced, failed, deferred ([`outcome::TagResult`]).
//! - **state**: the document the target keeps for the next run ([`state::State`]: lag, blob
//!   locations, tags mirrorsync created); its **fallback** ([`state_fallback`]) stands in when
//!   the target cannot give it.
//! - **exit code**: one of [`exit`]'s four.
//!
//! The flow of one run, and where each step lives:
//! 1. [`config`] reads `sync.yaml` into a validated [`config::Config`]: the list of tags to mirror
//!    ([`reference`](mod@reference) normalises image names as Docker does) and where each lands at the target.
//! 2. [`copy::Engine`] takes each tag: HEAD upstream and target ([`registry`]); same digest means
//!    unchanged, and nothing more is asked upstream.
//! 3. Otherwise it fetches the manifest by digest ([`manifest`] finds what it references), makes
//!    every blob present at the target, a registry or an OCI layout ([`destination`]): skip,
//!    cross-repository mount, or a streamed and verified copy; pushes child manifests, and writes
//!    the tag last.
//! 4. [`report`] prints one line per changed tag and the totals; the exit code says whether every
//!    tag is in sync.
//!
//! Around a run ([`run::run`]): [`state`] carries lag and blob locations from one stateless
//! run to the next (kept in the target itself), [`metrics`] exports what Prometheus alerts on,
//! [`prune`] removes tags a filter no longer selects, and [`shard`] splits the list over pods.
//! [`daemon`] starts runs on the config's cron [`schedule`]; [`tags`] chooses tags from a
//! repository's tag list. [`commands`] are what `main` calls; [`signals`] says how a run is
//! stopped. [`outcome`] holds how each tag ended, the data [`report`], [`metrics`] and [`state`]
//! read; [`run_report`] writes them as the JSON document of `--report`.

mod atomic_file;
pub mod cli;
pub mod commands;
mod config;
mod copy;
mod daemon;
mod destination;
pub mod exit;
mod layout_source;
mod liveness;
mod manifest;
mod metrics;
mod outcome;
mod prune;
mod reference;
mod registry;
mod report;
mod run;
mod run_report;
mod schedule;
mod shard;
mod signals;
mod state;
mod state_fallback;
mod tags;
mod verify;

pub use config::Config;
pub use report::{fatal, use_json_logs};
pub use run_report::{ReportCommand, ReportFile};
