//! How a run is told to stop or reload, for `sync --once` and the daemon alike.
//!
//! The first SIGTERM or SIGINT during a run stops it gently: no new tag starts, running tags
//! get the grace period (`--grace-period`). A second one means "now": running tags are
//! abandoned at once, the tags that finished are recorded in the run state, and the process
//! exits with 3. Between the daemon's runs the first signal ends it (nothing is stopped).
//! SIGHUP asks the daemon to reload its configuration.

use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// SIGTERM and SIGINT handlers, installed at once (so a signal that arrives before the first
/// `recv` is not lost and does not kill the process with the default action).
///
/// Once installed, tokio keeps the handlers for the life of the process: a later SIGTERM no
/// longer kills it by default, so a caller that wants "a second signal forces exit" keeps calling
/// [`Terminate::recv`].
#[derive(Debug)]
pub struct Terminate {
    term: Signal,
    int: Signal,
}

impl Terminate {
    /// Installs the handlers.
    pub fn install() -> std::io::Result<Terminate> {
        Ok(Terminate {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT and returns its name (`"SIGTERM"` or `"SIGINT"`).
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// SIGHUP notifications (config reload): `while hangups.recv().await.is_some() { ... }`.
/// Several SIGHUPs that arrive before the next `recv` are delivered as one.
pub fn hangups() -> std::io::Result<Signal> {
    signal(SignalKind::hangup())
}

/// How a run may be stopped early.
#[derive(Clone)]
pub struct RunControl {
    /// Cancelled on the first SIGTERM or SIGINT, or when `--max-duration` is up: no new tag
    /// starts after it.
    pub stop: CancellationToken,
    /// Cancelled on the second signal: running tags are abandoned at once.
    pub now: CancellationToken,
    /// How long running tags may go on after a stop before they are abandoned.
    pub grace: Duration,
}

impl Default for RunControl {
    fn default() -> Self {
        RunControl {
            stop: CancellationToken::new(),
            now: CancellationToken::new(),
            grace: Duration::from_secs(30),
        }
    }
}

impl RunControl {
    /// A stop that cannot wait: running work is abandoned, the process exits with 3.
    pub fn stopped_now(&self) -> bool {
        self.now.is_cancelled()
    }
}

/// Watches SIGTERM and SIGINT for the life of the process: the first cancels `stop`, the
/// second cancels `now` (and `stop`, in case a caller gave it a fresh token since).
pub fn watch_stop(stop: CancellationToken, now: CancellationToken) -> std::io::Result<()> {
    let mut terminate = Terminate::install()?;
    tokio::spawn(async move {
        let signal = terminate.recv().await;
        tracing::warn!(signal, "stopping: no new work starts");
        stop.cancel();
        let signal = terminate.recv().await;
        tracing::warn!(
            signal,
            "second signal: stopping now; running tags are abandoned, finished ones are saved, exit 3"
        );
        stop.cancel();
        now.cancel();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(std::process::id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    // Both signal tests run in one test so that no other test of this module is in flight
    // while the process signals itself.
    #[tokio::test]
    async fn signals_are_delivered() {
        let mut hup = hangups().unwrap();
        let mut term = Terminate::install().unwrap();
        kill("HUP");
        tokio::time::timeout(Duration::from_secs(10), hup.recv())
            .await
            .expect("SIGHUP delivered")
            .expect("stream open");
        kill("TERM");
        let name = tokio::time::timeout(Duration::from_secs(10), term.recv())
            .await
            .expect("SIGTERM delivered");
        assert_eq!(name, "SIGTERM");
    }
}
