//! Whether the daemon's scheduler is alive: what `/healthz` answers, for a liveness probe.
//!
//! Liveness says "restart me", so it fails only when the scheduler is stuck, never because
//! runs fail (the metrics and alerts say that) or because a run is long (a first sync of a big
//! list may take hours):
//! - between runs: the next run fell due more than the timeout ago and has not started;
//! - during a run: no tag finished and no byte moved for the timeout.
//!
//! Progress is read from an activity counter the run keeps (tags done plus bytes received),
//! sampled whenever the check runs: a change since the previous check is progress.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A counter that grows while a run makes progress.
pub type Activity = Arc<dyn Fn() -> u64 + Send + Sync>;

enum Phase {
    /// Waiting for the next run, due at this instant.
    Waiting { due: Instant },
    /// A run is in progress.
    Running {
        activity: Activity,
        last_value: u64,
        last_progress: Instant,
    },
}

/// The scheduler's liveness, updated by the daemon's loop and read by `/healthz`.
pub struct Liveness {
    timeout: Duration,
    phase: Mutex<Phase>,
}

impl Liveness {
    /// Waiting for a first run due at `due`.
    pub fn new(timeout: Duration, due: Instant) -> Arc<Liveness> {
        Arc::new(Liveness {
            timeout,
            phase: Mutex::new(Phase::Waiting { due }),
        })
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Between runs: the next one is due at `due`.
    pub fn waiting_until(&self, due: Instant) {
        *self.phase() = Phase::Waiting { due };
    }

    /// A run starts now; `activity` grows while it makes progress.
    pub fn run_started(&self, activity: Activity) {
        self.run_started_at(activity, Instant::now());
    }

    fn run_started_at(&self, activity: Activity, now: Instant) {
        let last_value = activity();
        *self.phase() = Phase::Running {
            activity,
            last_value,
            last_progress: now,
        };
    }

    /// Ok while the scheduler is alive, else why not.
    pub fn check(&self) -> Result<(), String> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), String> {
        let timeout = self.timeout;
        match &mut *self.phase() {
            Phase::Waiting { due } => {
                let late = now.saturating_duration_since(*due);
                if late > timeout {
                    Err(format!(
                        "the scheduler is stuck: a pass fell due {}s ago and has not started \
                         (--liveness-timeout {}s)",
                        late.as_secs(),
                        timeout.as_secs()
                    ))
                } else {
                    Ok(())
                }
            }
            Phase::Running {
                activity,
                last_value,
                last_progress,
            } => {
                let value = activity();
                if value != *last_value {
                    *last_value = value;
                    *last_progress = now;
                }
                let idle = now.saturating_duration_since(*last_progress);
                if idle > timeout {
                    Err(format!(
                        "the running pass made no progress (no tag finished, no byte moved) for \
                         {}s (--liveness-timeout {}s)",
                        idle.as_secs(),
                        timeout.as_secs()
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const T: Duration = Duration::from_secs(60);

    #[test]
    fn waiting_fails_only_when_a_due_run_is_long_overdue() {
        let t0 = Instant::now();
        let l = Liveness::new(T, t0 + Duration::from_secs(3600));
        // A run due in an hour, or due less than the timeout ago: alive.
        assert!(l.check_at(t0).is_ok());
        assert!(l.check_at(t0 + Duration::from_secs(3600 + 59)).is_ok());
        let e = l.check_at(t0 + Duration::from_secs(3600 + 61)).unwrap_err();
        assert!(e.contains("fell due 61s ago"), "{e}");
        l.waiting_until(t0 + Duration::from_secs(7200));
        assert!(l.check_at(t0 + Duration::from_secs(3600 + 61)).is_ok());
    }

    #[test]
    fn a_run_in_progress_is_alive_while_it_moves_and_dead_when_it_stalls() {
        let t0 = Instant::now();
        let counter = Arc::new(AtomicU64::new(0));
        let l = Liveness::new(T, t0);
        let c = Arc::clone(&counter);
        l.run_started_at(Arc::new(move || c.load(Ordering::Relaxed)), t0);
        // A long run that keeps moving bytes stays alive far past the timeout.
        for minute in 1..=180u64 {
            counter.fetch_add(1000, Ordering::Relaxed);
            let now = t0 + Duration::from_secs(minute * 50);
            assert!(l.check_at(now).is_ok(), "minute {minute}");
        }
        // Then nothing moves: alive until the timeout, dead after.
        let last = t0 + Duration::from_secs(180 * 50);
        assert!(l.check_at(last + Duration::from_secs(59)).is_ok());
        let e = l.check_at(last + Duration::from_secs(61)).unwrap_err();
        assert!(e.contains("no progress") && e.contains("61s"), "{e}");
        // Progress again revives it; the run ends and waiting starts over.
        counter.fetch_add(1, Ordering::Relaxed);
        assert!(l.check_at(last + Duration::from_secs(62)).is_ok());
        l.waiting_until(last + Duration::from_secs(100));
        assert!(l.check_at(last + Duration::from_secs(150)).is_ok());
    }
}
