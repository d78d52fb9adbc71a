//! The integration tests, in one binary so the harness in `tests/common/` compiles once.
//!
//! Each file of this folder is one user-facing area (its first comment says which). To add one:
//! create `tests/it/<area>.rs` starting with `use crate::common;` (then `use common::*;`), and
//! add `mod <area>;` below. Run one area with `cargo test --release --test it <area>::`.

#[path = "../common/mod.rs"]
mod common;

mod airgap;
mod big_layer;
mod config_errors;
mod fan_out;
mod faults;
mod harness;
mod hostile;
mod interop;
mod kill_safety;
mod kubernetes;
mod lag_sides;
mod logs;
mod observability;
mod other_registry;
mod preflight;
mod prune_safety;
mod rate_limits;
mod refusing_targets;
mod rotating_credentials;
mod run_report;
mod schedule_forms;
mod selection;
mod series_modes;
mod settings_coverage;
mod state_garbage;
mod sync_auth;
mod sync_economy;
mod sync_formats;
mod target_limits;
mod throttled;
