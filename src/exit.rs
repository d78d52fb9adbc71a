//! The process exit codes, named once. `mirrorsync --help` documents them (the `Cli` docs);
//! the `--report` document and the run-summary event carry the same numbers.

/// Every tag is in sync (`check`: everything a sync needs answered).
pub const SUCCESS: i32 = 0;
/// Some tags failed (the others were still synced), the run could not start, or its report
/// could not be written.
pub const FAILED: i32 = 1;
/// A configuration or usage error: nothing was synced.
pub const USAGE: i32 = 2;
/// Stopped early with work left and nothing failed: tags deferred (pull-quota reserve, a
/// signal, `--max-duration`), or a second signal. `--deferred-exit-code` may replace it.
pub const WORK_LEFT: i32 = 3;

/// The code for the operating system (a code out of its range reads as [`FAILED`]).
pub fn to_process(code: i32) -> std::process::ExitCode {
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(FAILED as u8))
}
