//! mirrorsync keeps a private container registry stocked with the images its clusters pull.
//!
//! The flow of one run, and where each step lives:
//! 1. [`config`] reads `sync.yaml` into a validated [`config::Config`]: the list of tags to mirror
//!    ([`reference`](mod@reference) normalises image names as Docker does) and where each lands at the target.
//! 2. [`copy::Engine`] takes each tag: HEAD upstream and target ([`registry`]); same digest means
//!    unchanged, and nothing more is asked upstream.
//! 3. Otherwise it fetches the manifest by digest ([`manifest`] finds what it references), makes
//!    every blob present at the [`target`] (skip, cross-repository mount, or a streamed and verified
//!    copy), pushes child manifests, and writes the tag last.
//! 4. [`report`] prints one line per changed tag and the totals; the exit code says whether every
//!    tag is in sync.
//!
//! Around a pass ([`run::run_pass`]): [`state`] carries lag and blob locations from one stateless
//! run to the next (kept in the target itself), [`metrics`] exports what Prometheus alerts on,
//! [`prune`] removes tags a filter no longer selects, and [`shard`] splits the list over pods.
//! [`daemon`] runs passes on the config's cron [`schedule`]; [`tags`] chooses tags from a
//! repository's tag list. [`commands`] are what `main` calls; [`signals`] says how a run is
//! stopped. [`outcome`] holds how each tag ended, the data [`report`], [`metrics`] and [`state`]
//! read; [`run_report`] writes them as the JSON document of `--report`.

pub mod atomic_file;
pub mod cli;
pub mod commands;
pub mod config;
pub mod copy;
pub mod daemon;
pub mod history;
pub mod layout_source;
pub mod liveness;
pub mod manifest;
pub mod metrics;
pub mod outcome;
pub mod prune;
pub mod reference;
pub mod registry;
pub mod report;
pub mod run;
pub mod run_report;
pub mod schedule;
pub mod shard;
pub mod signals;
pub mod state;
pub mod tags;
pub mod target;
pub mod verify;
